"""The daemon as a process: systemd notification, SIGHUP reload, bounded SIGTERM shutdown.

`python -m mape_k run --mock` runs on a free port; the test plays systemd by binding the
$NOTIFY_SOCKET datagram socket itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prom_support import free_port

from fakes import K8S_SERVICE_LINKS, alias_bomb

pytestmark = pytest.mark.integration
DEADLINE_S = 20.0


class Notify:
    """The systemd side of sd_notify: a datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(DEADLINE_S)

    def expect(self, message: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            data = self.sock.recv(4096).decode()
            if message in data.split("\n"):
                return
        pytest.fail(f"no {message} from the daemon within {DEADLINE_S} s")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notify]:
    handle = Notify(tmp_path / "notify.sock")
    yield handle
    handle.sock.close()


def start(
    tmp_path: Path,
    config: Path,
    notify: Notify,
    *args: str,
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        **(extra_env or {}),
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "1000000",  # feed every 0.5 s
        "MAPEK_SERVER__PORT": str(port),
        "MAPEK_KNOWLEDGE__PATH": str(tmp_path / "k.sqlite3"),
        "MAPEK_LOGGING__FORMAT": "json",
    }
    with (tmp_path / "daemon.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "mape_k", "run", "--mock", "--config", str(config), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}"


def write_config(path: Path, *, interval: float, shutdown_timeout: float = 5.0) -> Path:
    path.write_text(
        f"orchestrator: {{interval_s: {interval}, shutdown_timeout_s: {shutdown_timeout}}}\n",
        encoding="utf-8",
    )
    return path


def wait_log(tmp_path: Path, event: str, containing: str = "") -> str:
    """The first log line of `event` (that contains `containing`), waiting for it."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        text = (tmp_path / "daemon.log").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if f'"event": "{event}"' in line and containing in line:
                return line
        time.sleep(0.05)  # polling a log file another process writes
    pytest.fail(f"no {event} {containing!r} in the daemon log:\n{text[-3000:]}")


def test_notify_ready_watchdog_and_stopping_then_exit_zero_on_sigterm(tmp_path, notify):
    config = write_config(tmp_path / "c.yaml", interval=1)
    process, url = start(tmp_path, config, notify)
    try:
        notify.expect("READY=1")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        notify.expect("WATCHDOG=1")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        notify.expect("STOPPING=1")
        assert process.wait(timeout=DEADLINE_S) == 0
        assert time.monotonic() - started < 5.0 + 2.0  # shutdown_timeout_s + start-up slack
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sighup_with_an_invalid_file_keeps_the_running_config(tmp_path, notify):
    config = write_config(tmp_path / "c.yaml", interval=30)
    process, url = start(tmp_path, config, notify)
    try:
        notify.expect("READY=1")
        config.write_text("orchestrator: {interval_s: -1}\n", encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        line = wait_log(tmp_path, "config_reload_failed")
        assert "orchestrator.interval_s" in line
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200

        # A file that would expand to gigabytes (nested YAML aliases): refused at once, and
        # the daemon keeps serving on the running config.
        config.write_text(alias_bomb(), encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        wait_log(tmp_path, "config_reload_failed", "expands to more than")
        assert httpx.get(f"{url}/healthz", timeout=1).status_code == 200

        config.write_text("executor: {dry_run: true}\n", encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        wait_log(tmp_path, "config_reloaded")
        stats = httpx.get(f"{url}/stats", timeout=5).json()
        assert stats["orchestrator"]["dry_run"] is True
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_S) == 0


def test_sighup_applies_the_planner_and_names_what_needs_a_restart(tmp_path, notify):
    config = tmp_path / "c.yaml"
    config.write_text(
        "orchestrator: {interval_s: 1}\nplanner: {remediations: {high_failure_rate: []}}\n",
        encoding="utf-8",
    )
    process, _ = start(tmp_path, config, notify, "--fault", "error_burst")
    try:
        notify.expect("READY=1")
        # The fault lasts until a restart clears it; with no candidates nothing acts on it.
        wait_log(tmp_path, "iteration_completed", "no remediation for high_failure_rate/charter")
        config.write_text(
            "orchestrator: {interval_s: 1}\nserver: {max_body_bytes: 4096}\n", encoding="utf-8"
        )
        process.send_signal(signal.SIGHUP)
        partial = json.loads(wait_log(tmp_path, "config_reload_partial"))
        assert partial["restart_required_for"] == ["server.max_body_bytes"]
        reloaded = json.loads(wait_log(tmp_path, "config_reloaded"))
        assert reloaded["applied"] == ["planner"]
        acted = wait_log(tmp_path, "iteration_completed", '"result": "acted"')
        assert "restart_service for high_failure_rate/charter" in acted
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_S) == 0


def test_kubernetes_service_links_do_not_stop_the_daemon(tmp_path, notify):
    links = K8S_SERVICE_LINKS
    config = write_config(tmp_path / "c.yaml", interval=30)
    process, url = start(tmp_path, config, notify, extra_env=links)
    try:
        notify.expect("READY=1")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_S) == 0
    warnings = [
        line
        for line in (tmp_path / "daemon.log").read_text(encoding="utf-8").splitlines()
        if "service-link" in line
    ]
    assert warnings == [
        "mape-k: warning: ignoring Kubernetes service-link variables "
        + ", ".join(sorted(links))
        + " (a Service named mapek; `enableServiceLinks: false` in the pod spec drops them)"
    ]
