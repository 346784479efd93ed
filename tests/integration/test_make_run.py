"""`make run` (`mape-k run --mock --fault error_burst`) shows the whole loop at once.

The daemon runs as a process with the default configuration and only the port, the store
and the log format set; the test reads its log lines as they arrive. The fault is detected
and remedied on the first iteration, within 10 s of start (before, the first iteration saw
no violation and the next came 30 s later).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prom_support import free_port

pytestmark = pytest.mark.integration
FIRST_ACTION_S = 10.0


def test_make_run_detects_and_remedies_the_fault_within_ten_seconds(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPEK_")}
    env |= {
        "MAPEK_SERVER__PORT": str(free_port()),
        "MAPEK_KNOWLEDGE__PATH": str(tmp_path / "k.sqlite3"),
        "MAPEK_LOGGING__FORMAT": "json",
    }
    events: list[tuple[float, dict[str, Any]]] = []
    acted = threading.Event()
    command = [sys.executable, "-m", "mape_k", "run", "--mock", "--fault", "error_burst"]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        started = time.monotonic()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    event = {"event": "non-json", "line": line}
                events.append((time.monotonic() - started, event))
                if event.get("event") == "policy_executed":
                    acted.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            acted.wait(timeout=FIRST_ACTION_S)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
            reader.join(timeout=5)
    shown = "\n".join(f"{at:5.1f} {event}" for at, event in events)
    completed = [
        at
        for at, e in events
        if e.get("event") == "policy_executed"
        and e.get("status") == "completed"
        and e.get("actions") == ["restart_service"]
    ]
    assert completed, shown
    assert completed[0] <= FIRST_ACTION_S, shown
    iterations = [e for _, e in events if e.get("event") == "iteration_completed"]
    assert iterations, shown
    assert iterations[0]["result"] == "acted", shown  # detected on the first iteration
    assert not [e for _, e in events if e.get("event") == "non-json"], shown
