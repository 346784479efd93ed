"""`mape-k replay` as an operator runs it: the real CLI, as a subprocess, on a store a real
simulated episode wrote (`mape-k simulate --records --store`: an error burst the daemon
fixes with a restart, on a simulated clock): a floor that prices the restart out drops it,
with its verified outcome, and the store is untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SRC = Path(__file__).resolve().parents[2] / "src"
# Eight simulated minutes: the burst, the restart, its verification.
BURST = """
name: short_burst
description: an error burst the daemon fixes with a restart
regime: calm
duration_s: 480
faults:
  - kind: error_burst
    at_s: 60
    duration_s: 240
"""


def mapek(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "mape_k", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def test_replay_of_a_simulated_episode_with_a_higher_floor(tmp_path):
    store = tmp_path / "knowledge.sqlite3"
    scenario = tmp_path / "burst.yaml"
    scenario.write_text(BURST, encoding="utf-8")
    done = mapek(
        "simulate",
        "--scenario",
        str(scenario),
        "--policy",
        "mape-k",
        "--seed",
        "1",
        "--records",
        "--no-counterfactual",
        "--store",
        str(store),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    [acted] = [
        r for r in map(json.loads, done.stdout.splitlines()) if "id" in r and r.get("execution")
    ]
    assert acted["execution"]["actions"][0]["type"] == "restart_service"
    before = hashlib.sha256(store.read_bytes()).hexdigest()

    floor = tmp_path / "floor.yaml"
    floor.write_text("planner:\n  min_score: 0.7\n", encoding="utf-8")
    done = mapek("replay", "--store", str(store), "--config", str(floor), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    [row] = [line for line in lines if "restart_service on charter" in line]
    assert "high_failure_rate/charter" in row
    assert "nothing: no candidate (none configured, or below planner.min_score 0.7)" in row
    assert row.endswith("recorded action's outcome: SUCCESS")
    assert "recorded actions dropped: 1 (success 1)" in lines
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
