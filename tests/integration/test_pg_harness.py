"""The PostgreSQL harness the store's HA tests stand on (tests/integration/pg_support.py):
a real cluster as an unprivileged user on loopback, which keeps what was committed through
a restart and a crash, and which hangs, boundedly, while paused."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from pg_support import PostgresProcess, start_postgres

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresProcess]:
    with start_postgres() as handle:
        yield handle


def test_it_runs_unprivileged_on_loopback_and_keeps_commits_through_restarts(postgres):
    assert postgres.psql("SELECT 1") == "1"
    assert postgres.psql("SHOW listen_addresses") == "127.0.0.1"
    assert postgres.psql("SELECT current_setting('is_superuser')") == "on"  # our cluster
    assert postgres.dsn == f"postgresql://mapek@127.0.0.1:{postgres.port}/mapek"
    postgres.psql("CREATE TABLE IF NOT EXISTS t (n int); INSERT INTO t VALUES (1)")
    postgres.restart()
    assert postgres.psql("SELECT count(*) FROM t") == "1"
    postgres.psql("INSERT INTO t VALUES (2)")
    postgres.kill()  # a crash: the committed row survives WAL replay
    postgres.start()
    assert postgres.psql("SELECT sum(n) FROM t") == "3"


def test_a_paused_cluster_hangs_its_clients_boundedly_and_resumes(postgres):
    postgres.pause()
    try:
        started = time.monotonic()
        with pytest.raises(subprocess.CalledProcessError):
            postgres.psql("SELECT 1")  # PGCONNECT_TIMEOUT=3: no answer, not a hang
        assert time.monotonic() - started < 10
    finally:
        postgres.resume()
    assert postgres.psql("SELECT 1") == "1"
