"""Two daemon processes on one real PostgreSQL: roles, the shared inbox, fail closed.

`python -m mape_k run --mock` twice, sharing a throwaway PostgreSQL cluster (pg_support)
with a 2 s lease. What an operator sees from outside: `/readyz` names each replica's role;
a control call that changes state is refused by the follower (409, naming the leader); an
alert delivered to the follower reaches the leader through the shared inbox; with the
database stopped no replica leads and `/readyz` answers 503 with the reason, and when it
is back a replica leads again without a restart. (The failovers themselves, against the
Charter simulator: tests/e2e/test_ha_failover.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pg_support import PostgresProcess
from prom_support import free_port

from fakes import shipped_alert_group

pytestmark = pytest.mark.integration
T = TypeVar("T")
DEADLINE_S = 20.0
ADMIN = "integration-admin-token-0123456789"


def until(probe: Callable[[], T | None], *, what: str, timeout_s: float = DEADLINE_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not seen within {timeout_s:g} s")
        time.sleep(0.05)  # polling another process's endpoint, bounded


class Replica:
    def __init__(self, tmp_path: Path, name: str, dsn: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"{name}.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MAPEK_")},
            "MAPEK_SERVER__PORT": str(self.port),
            "MAPEK_SERVER__ADMIN_TOKEN": ADMIN,
            "MAPEK_KNOWLEDGE__URL": dsn,
            "MAPEK_KNOWLEDGE__CONNECT_TIMEOUT_S": "1",
            "MAPEK_KNOWLEDGE__STATEMENT_TIMEOUT_S": "1",
            "MAPEK_HA__REPLICA_ID": name,
            "MAPEK_HA__LEASE_TTL_S": "2",
            "MAPEK_ORCHESTRATOR__INTERVAL_S": "0.5",
            "MAPEK_LOGGING__FORMAT": "json",
        }
        with self.log.open("wb") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mape_k", "run", "--mock"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=5)

    def role(self) -> str | None:
        ha = self.get("/stats").json()["ha"]
        return str(ha["role"]) if ha["lease"] is not None else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def replicas(tmp_path: Path, pg: PostgresProcess) -> Iterator[list[Replica]]:
    started = [Replica(tmp_path, name, pg.dsn) for name in ("a", "b")]
    try:
        yield started
    finally:
        for replica in started:
            replica.stop()


def roles(replicas: list[Replica]) -> dict[str, Replica] | None:
    """{'leader': ..., 'follower': ...} once both say so."""
    seen = {replica.role(): replica for replica in replicas}
    return seen if set(seen) == {"leader", "follower"} else None


@pytest.mark.timeout(120)
def test_roles_the_shared_inbox_and_fail_closed(
    replicas: list[Replica], pg: PostgresProcess
) -> None:
    by_role = until(lambda: roles(replicas), what="one leader and one follower")
    leader, follower = by_role["leader"], by_role["follower"]

    # /readyz: both ready (a follower takes webhooks), each naming its role.
    ready = {r.name: r.get("/readyz") for r in replicas}
    assert all(response.status_code == 200 for response in ready.values()), ready
    assert ready[leader.name].json()["checks"]["role"].startswith("leader (epoch ")
    assert ready[follower.name].json()["checks"]["role"].startswith(f"follower: {leader.name}")
    metrics = {r.name: r.get("/metrics").text for r in replicas}
    assert "mapek_leader 1.0" in metrics[leader.name]
    assert "mapek_leader 0.0" in metrics[follower.name]

    # A follower refuses what would change the shared state, and says who leads.
    refused = httpx.post(
        f"{follower.url}/api/v1/freeze",
        json={"reason": "test"},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=5,
    )
    assert refused.status_code == 409, refused.text
    assert f"{leader.name} leads" in refused.json()["error"]
    assert not follower.get("/stats").json()["guards"]["freeze"]

    # An alert delivered to the follower only reaches the leader (the shared inbox).
    def leader_alerts() -> int:
        return int(leader.get("/stats").json()["alerts"]["firing"])

    assert leader_alerts() == 0
    delivered = httpx.post(
        f"{follower.url}/api/v1/alerts",
        content=shipped_alert_group(1),
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert delivered.status_code == 200, delivered.text
    until(leader_alerts, what="the follower's alert in the leader's inbox")

    # The database gone: no replica leads, /readyz 503 with the reason, on both.
    pg.stop()

    def both_unready() -> dict[str, Any] | None:
        answers = {r.name: r.get("/readyz") for r in replicas}
        if any(a.status_code != 503 for a in answers.values()):
            return None
        checks = {name: a.json()["checks"] for name, a in answers.items()}
        # Each says so once it has tried to renew (every third of the TTL at most).
        return checks if all(c["lease"] != "ok" for c in checks.values()) else None

    checks = until(both_unready, what="both replicas unready without the database")
    for name, check in checks.items():
        assert check["lease"].startswith("no leader lease: "), (name, check)
        assert "postgresql://mapek@127.0.0.1" in check["lease"], (name, check)
        assert check["role"].startswith("no leader lease"), (name, check)
    leaders = [r for r in replicas if "mapek_leader 1.0" in r.get("/metrics").text]
    assert not leaders, "a replica believes it leads without the database"

    # Back: a replica leads again, no restart (the same processes).
    pg.start()
    until(lambda: roles(replicas), what="a leader again once the database is back")
    until(
        lambda: all(r.get("/readyz").status_code == 200 for r in replicas),
        what="both replicas ready again",
    )
    assert all(r.process.poll() is None for r in replicas)  # the same processes
