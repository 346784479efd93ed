"""`mape-k replay` as an operator runs it: the real CLI, as a subprocess, on a store a real
simulated episode wrote (`mape-k simulate --records --store`: an error burst the daemon
fixes with a restart, on a simulated clock): a floor that prices the restart out drops it,
with its verified outcome, and the store is untouched. The same journal on a real
PostgreSQL replays the same, read only.
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


@pytest.fixture(scope="module")
def episode(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A store a real simulated episode wrote, and its one acting decision record."""
    tmp_path = tmp_path_factory.mktemp("episode")
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
