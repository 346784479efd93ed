"""`mape-k replay` as an operator runs it: the real CLI, as a subprocess, on a store a real
simulated episode wrote (`mape-k simulate --records --store`: an error burst the daemon
fixes with a restart, on a simulated clock): a floor that prices the restart out drops it,
with its verified outcome, and the store is untouched. The same journal on a real
PostgreSQL replays the same, read only. A slow ramp the daemon scales ahead of on a
predicted overload replays the same with the configuration it ran with, and a rule that
no longer acts on its predictions drops that scale-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pg_support import start_postgres
from prom_support import free_port

from mape_k import replay as rp
from mape_k.cli import main
from mape_k.errors import StoreError
from mape_k.pgstore import PostgresStore
from mape_k.store import Store

pytestmark = pytest.mark.timeout(120)

SRC = Path(__file__).resolve().parents[2] / "src"
SECRET = "s3cr3t-Pa55word"
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

# slow_ramp_predicted for 45 simulated minutes: the scale-up on the prediction (at ~36).
RULES = """
  - {name: high_failure_rate, query: failure_rate, threshold: 0.05, severity: critical}
  - {name: policy_regression, query: policy_error_rate, threshold: 0.02, severity: critical}
  - {name: members_unhealthy, query: unhealthy_members, threshold: 0.0, severity: critical}
  - name: overload
    query: saturation
    threshold: 0.9
    severity: critical
    predict: {horizon_s: 900, window_s: 900, method: linear, act: true, max_cost: 0.25}
  - {name: high_latency, query: p99_latency_s, threshold: 0.5, severity: warning}
  - {name: queue_backlog, query: queue_depth, threshold: 100.0, severity: warning}
"""
RAMP = f"""
name: short_ramp_predicted
description: slow_ramp_predicted, 45 minutes of it
regime: calm
duration_s: 2700
load:
  ramp_per_min: 0.01
  start_s: 120
settings:
  monitor.rules:{RULES}"""


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


def simulate(scenario: str, store: Path, cwd: Path) -> list[dict[str, Any]]:
    """`mape-k simulate` of one episode of `scenario` (YAML), its store kept; its records."""
    path = cwd / "scenario.yaml"
    path.write_text(scenario, encoding="utf-8")
    done = mapek(
        "simulate",
        "--scenario",
        str(path),
        "--policy",
        "mape-k",
        "--seed",
        "1",
        "--records",
        "--no-counterfactual",
        "--store",
        str(store),
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return [r for r in map(json.loads, done.stdout.splitlines()) if "id" in r]


@pytest.fixture(scope="module")
def episode(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A store a real simulated episode wrote, and its one acting decision record."""
    tmp_path = tmp_path_factory.mktemp("episode")
    store = tmp_path / "knowledge.sqlite3"
    [acted] = [r for r in simulate(BURST, store, tmp_path) if r.get("execution")]
    assert acted["execution"]["actions"][0]["type"] == "restart_service"
    return store, acted


def test_replay_of_a_simulated_episode_with_a_higher_floor(episode, tmp_path):
    store, _ = episode
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


def test_replay_reads_a_postgresql_store_read_only(episode, tmp_path, capsys):
    """The same journal on a real PostgreSQL: the same report, through sessions that
    refuse a write, and the URL's password never shown."""
    store, _ = episode
    floor = tmp_path / "floor.yaml"
    floor.write_text("planner:\n  min_score: 0.7\n", encoding="utf-8")
    args = ["replay", "--config", str(floor), "--json", "--store"]
    assert main([*args, str(store)]) == 0
    expected = json.loads(capsys.readouterr().out)
    with start_postgres() as postgres:
        url = postgres.dsn.replace("mapek@", f"mapek:{SECRET}@")
        with Store.open(store) as source, PostgresStore.open(url) as shared:
            journal = rp.read_journal(source)
            for record in journal.iterations:
                shared.record_iteration(
                    record["id"],
                    started_at=record["started_at"],
                    result=record["result"],
                    record={k: v for k, v in record.items() if k not in {"id", "started_at"}},
                )
            for execution in journal.executions:
                shared.upsert_execution(execution)
            for outcome in journal.outcomes:
                shared.record_outcome(outcome)
            rows = len(shared.recent_iterations(10_000))
        assert main([*args, url]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["summary"] == expected["summary"]
        assert got["differences"] == expected["differences"]
        assert SECRET not in got["store"]
        with rp.open_copy(url) as opened, pytest.raises(StoreError, match="read-only"):
            opened.record_control(at=1.0, route="POST /x", body={}, caller="test")
        with PostgresStore.open(url) as shared:
            assert len(shared.recent_iterations(10_000)) == rows
            assert shared.recent_control(10) == []
        # unreachable: one line, exit 2, no password
        dead = f"postgresql://mapek:{SECRET}@127.0.0.1:{free_port()}/mapek"
        assert main([*args, dead]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert SECRET not in err


def test_replay_of_a_prediction_driven_scale_up(tmp_path):
    """The audit's case: the same configuration replays every decision, the scale-up on
    the predicted overload too; `predict.act: false` drops it, with its outcome."""
    store = tmp_path / "ramp.sqlite3"
    [acted] = [r for r in simulate(RAMP, store, tmp_path) if r.get("execution")]
    assert acted["causes"] == []
    assert acted["predicted"][0]["kind"] == "overload"
    same = tmp_path / "same.yaml"
    same.write_text(f"monitor:\n  rules:{RULES}", encoding="utf-8")
    done = mapek("replay", "--store", str(store), "--config", str(same), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ", 0 different" in done.stdout
    assert "recorded actions dropped: 0" in done.stdout.splitlines()
    off = tmp_path / "off.yaml"
    off.write_text(same.read_text(encoding="utf-8").replace("act: true", "act: false"))
    done = mapek("replay", "--store", str(store), "--config", str(off), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    [row] = [line for line in lines if "scale_up on charter" in line]
    assert "overload/charter" in row
    assert "nothing: predicted overload/charter not acted on" in row
    assert row.endswith("recorded action's outcome: SUCCESS")
    assert "recorded actions dropped: 1 (success 1)" in lines
