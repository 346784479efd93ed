"""High availability end to end: three replicas on one real PostgreSQL, against the stack.

The stack (stack.py) runs the simulator, Prometheus and Alertmanager (which delivers to
every replica) and three daemons `mape-k`, `mape-k-2`, `mape-k-3` sharing a throwaway
PostgreSQL cluster (tests/integration/pg_support.py) with a 2 s leader lease. Every
failover below happens while the leader is remedying a fault, and is judged from outside:
the simulator's action log (what reached the Charter, with idempotency keys and what it
refused), the shared journal read from PostgreSQL (executions with the epoch that wrote
them, outcomes), and each replica's /stats.

* SIGKILL of the leader, inside an execution (its restart refused and being retried) or
  just after its call reached the Charter: a standby leads within the lease TTL plus one
  interval, reconciles what the dead leader left unfinished, and measures what it did;
* SIGSTOP of the leader past its TTL, SIGCONT after another took over: the old leader's
  late calls are refused (by the store: its journal entry; by the Charter: its epoch);
* PostgreSQL restarted while a fault is handled: nothing is lost or done twice.

Counted over the 20 failovers: actions applied twice (0), actions no journal entry accounts
for (0), executions left unfinished (0), completed executions without exactly one outcome
(0). The figures go to build/ha_failover.json (bench/ha.py reports them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from pg_support import PostgresProcess

from mape_k.stack import Stack, replica_name

pytestmark = [pytest.mark.e2e]

T = TypeVar("T")
REPLICAS = [replica_name(i) for i in (1, 2, 3)]
TTL_S = 2.0
INTERVAL_S = 1.0
POLL_S = 0.05
KILLS = 14  # SIGKILL failovers; with the pauses and database restarts: 20
PAUSES = 3
DB_RESTARTS = 3
UNFINISHED = ("pending", "in_progress")
ENV = {
    "MAPEK_HA__LEASE_TTL_S": str(TTL_S),
    # A refused call is retried for 1.4-2.8 s: the window to fail over inside an execution.
    "MAPEK_CHARTER__BACKOFF_S": "0.4",
    "MAPEK_EXECUTOR__VERIFY_DELAY_S": "1",
    "MAPEK_EXECUTOR__VERIFY_DEADLINE_S": "3",
    # A restart makes failures worse for 3 s: verified after 1 s it is a DEGRADATION, and
    # the panic revert would freeze the loop (the freeze is shared: every leader after it).
    "MAPEK_GUARDS__PANIC__ENABLED": "false",
    # An error burst's one fix, always proposed (refused on purpose, it must not be priced
    # out); no throttle first: each round is one remediation, quickly verified.
    "MAPEK_PLANNER__REMEDIATIONS": json.dumps(
        {"high_failure_rate": [[{"type": "restart_service"}]]}
    ),
    "MAPEK_PLANNER__MIN_SCORE": "-1",
    # Rounds repeat one remediation within minutes, which these guards rightly stop.
    "MAPEK_GUARDS__COOLDOWN__ENABLED": "false",
    "MAPEK_GUARDS__VELOCITY__ENABLED": "false",
    "MAPEK_GUARDS__OSCILLATION__ENABLED": "false",
    "MAPEK_GUARDS__TARGET_BREAKER__ENABLED": "false",
    # Refused on purpose round after round: the Charter circuit must not open (it is shared
    # state, and would hold every later leader for a minute).
    "MAPEK_GUARDS__CHARTER_BREAKER__ENABLED": "false",
    "MAPEK_KNOWLEDGE__STATEMENT_TIMEOUT_S": "2",
    "MAPEK_KNOWLEDGE__CONNECT_TIMEOUT_S": "1",
}


async def until(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    why: Callable[[], str] = lambda: "",
) -> T:
    """Poll `probe` (another process's state) until truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not seen within {timeout_s:g} s{why()}")
        await asyncio.sleep(POLL_S)  # polling another process, bounded


class Journal:
    """The shared journal and lease, read from PostgreSQL (autocommit, one short read each)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                return conn.execute(sql).fetchall()
        except psycopg.OperationalError:
            return []  # the database is being restarted: the caller polls again

    def lease(self) -> tuple[str, int] | None:
        rows = self._rows(
            "SELECT holder, epoch FROM leases"
            " WHERE expires_at > extract(epoch from clock_timestamp())"
        )
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def epoch(self) -> int:
        rows = self._rows("SELECT epoch FROM leases")
        return int(rows[0][0]) if rows else 0

    def executions(self) -> dict[str, dict[str, Any]]:
        rows = self._rows("SELECT id, status, epoch, record FROM executions")
        return {
            r[0]: {**json.loads(r[3]), "status": r[1], "epoch": r[2]} for r in rows
        }  # the columns win over the record's copy

    def outcomes(self) -> Counter[str]:
        return Counter(r[0] for r in self._rows("SELECT execution_id FROM outcomes"))


def effects(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Mutating calls that had an effect (not a replay of a key, not refused)."""
    return [a for a in state["actions"] if not a["replayed"] and not a["error"]]


@pytest.mark.timeout(420)
async def test_twenty_failovers_lose_nothing_and_apply_nothing_twice(
    tmp_path: Path, pg: PostgresProcess
) -> None:
    journal = Journal(pg.dsn)
    rng = random.Random(20261202)
    report: dict[str, Any] = {"kills": [], "pauses": [], "db_restarts": []}
    async with Stack.start(
        tmp_path / "stack",
        ports="free",
        orchestrator_interval_s=INTERVAL_S,
        daemon_env={**ENV, "MAPEK_KNOWLEDGE__URL": pg.dsn},
        replicas=len(REPLICAS),
    ) as stack:

        def why() -> str:
            return "".join(
                f"\n--- {name} log tail:\n{stack.logs(name, tail=2500)}" for name in REPLICAS
            )

        async def leader() -> tuple[str, int]:
            return await until(journal.lease, timeout_s=10, what="a leader", why=why)

        async def quiet() -> dict[str, Any]:
            """The simulator read while no execution runs and no fault is active."""

            async def probe() -> dict[str, Any] | None:
                if any(e["status"] in UNFINISHED for e in journal.executions().values()):
                    return None
                state = await stack.sim_state()
                return None if state["active_faults"] else state

            return await until(probe, timeout_s=40, what="a quiet moment", why=why)

        async def remedy_started(seen: frozenset[str]) -> dict[str, Any]:
            """An execution journaled since `seen` (the leader is acting on the fault)."""

            def probe() -> dict[str, Any] | None:
                fresh = [e for i, e in journal.executions().items() if i not in seen]
                return fresh[0] if fresh else None

            return await until(probe, timeout_s=20, what="the leader acting", why=why)

        async def new_leader(old_epoch: int, not_holder: str | None) -> tuple[str, int, float]:
            """The next leader (another holder, a newer epoch) and when it was first seen."""

            def probe() -> tuple[str, int] | None:
                lease = journal.lease()
                if lease is None or lease[1] <= old_epoch or lease[0] == not_holder:
                    return None
                return lease

            holder, epoch = await until(probe, timeout_s=TTL_S + 10, what="a new leader", why=why)
            return holder, epoch, time.monotonic()

        await leader()

        # --- 1. SIGKILL the leader mid-fault ------------------------------------------------
        modes = ["inside"] * (KILLS // 2) + ["after_call"] * (KILLS - KILLS // 2)
        rng.shuffle(modes)
        restarts: list[asyncio.Task[None]] = []
        for round_no, mode in enumerate(modes):
            round_at = time.monotonic()
            # Inside: every mutating call refused (and retried): the leader dies mid-execution.
            await stack.set_chaos(503 if mode == "inside" else None)
            await quiet()
            seen = frozenset(journal.executions())
            holder, epoch = await leader()
            injected_at = time.monotonic()
            await stack.inject("error_burst", 0.7, 0.0)
            started = await remedy_started(seen)
            detected_at = time.monotonic()
            if mode == "after_call":
                key = started["actions"][0]["idempotency_key"]

                async def arrived(key: str = key) -> bool:
                    return any(
                        a["idempotency_key"] == key for a in effects(await stack.sim_state())
                    )

                await until(arrived, timeout_s=10, what=f"round {round_no}: the call", why=why)
            await asyncio.sleep(rng.uniform(0.0, 0.2))  # the kill point (seeded)
            killed_at = time.monotonic()
            stack.kill(holder)
            await stack.set_chaos(None)
            _, new_epoch, led_at = await new_leader(epoch, holder)
            entry = {
                "mode": mode,
                "failover_s": round(led_at - killed_at, 3),
                "epoch": new_epoch,
                "quiet_s": round(injected_at - round_at, 3),
                "detect_s": round(detected_at - injected_at, 3),
            }
            if mode == "inside":  # the fault is still there: the new leader must act on it

                async def acted(new_epoch: int = new_epoch) -> float | None:
                    runs = journal.executions()
                    mine = {i for i, e in runs.items() if e["epoch"] == new_epoch}
                    state = await stack.sim_state()
                    hit = [a for a in effects(state) if a["idempotency_key"].split(":")[0] in mine]
                    return time.monotonic() if hit else None

                acted_at = await until(acted, timeout_s=15, what="the new leader acting", why=why)
                entry["acted_s"] = round(acted_at - killed_at, 3)
            # The fault is remedied: by the dead leader's call, or by the new leader.
            await quiet()
            entry["round_s"] = round(time.monotonic() - round_at, 3)
            report["kills"].append(entry)
            # Back as a follower, while the next round runs (it waits for its /readyz).
            restarts.append(asyncio.create_task(stack.restart(holder)))
        await asyncio.gather(*restarts)

        # --- 2. SIGSTOP the leader past its TTL, SIGCONT it after a takeover ------------------
        for _ in range(PAUSES):
            await stack.set_chaos(503)  # the leader is paused while retrying its first call
            await quiet()
            seen = frozenset(journal.executions())
            holder, epoch = await leader()
            await stack.inject("error_burst", 0.7, 0.0)
            started = await remedy_started(seen)
            key = started["actions"][0]["idempotency_key"]

            async def retrying(key: str = key) -> bool:
                """Its first call refused (503): the leader sleeps before retrying it."""
                state = await stack.sim_state()
                return any(r["idempotency_key"] == key for r in state["rejected"])

            await until(retrying, timeout_s=5, what="the leader's first call refused", why=why)
            paused_at = time.monotonic()
            stack.signal(holder, signal.SIGSTOP)
            _, new_epoch, led_at = await new_leader(epoch, holder)
            await stack.set_chaos(None)

            async def fenced(new_epoch: int = new_epoch) -> bool:
                """The new leader has called the Charter (its takeover's lookup, at least)."""
                return (await stack.sim_state())["epoch"] >= new_epoch

            await until(fenced, timeout_s=10, what="the new leader's first call", why=why)
            before = await stack.sim_state()
            stack.signal(holder, signal.SIGCONT)
            # The old leader's pending retry goes out with its old epoch (refused), or its
            # action's own timeout ran out while it was paused; either way the execution ends.
            ended = f'"policy_id": "{started["id"]}", "status"'
            await until(
                lambda holder=holder, ended=ended: ended in stack.logs(holder, tail=200_000),
                timeout_s=15,
                what="the old leader's execution to end",
                why=why,
            )
            after = await stack.sim_state()
            refused = [
                r
                for r in after["rejected"]
                if r["idempotency_key"] == key and r.get("epoch") == epoch and r["status"] == 409
            ]
            runs = journal.executions()
            old = {i for i, e in runs.items() if e["epoch"] == epoch}
            late = [a for a in effects(after) if a not in effects(before)]
            by_old = [a for a in late if a["idempotency_key"].split(":")[0] in old]
            assert not by_old, f"the resumed old leader acted: {by_old}"

            # The new leader settled the execution the old one was in: that entry stands
            # (the old leader's late "after" entry was refused by the store).
            # Paused inside the execution, the old leader's last entry is refused by the
            # store and the new leader's reconcile stands; one that ended just before the
            # pause wrote its own end. Either way the entry is final, never left open.
            def final(execution_id: str = started["id"]) -> dict[str, Any] | None:
                entry = journal.executions().get(execution_id)
                return None if entry is None or entry["status"] in UNFINISHED else entry

            # The new leader's reconcile writes its entry just after its lookup reached the
            # Charter (what `fenced` saw): waited for, bounded, never assumed.
            settled = await until(final, timeout_s=15, what="the paused execution's end", why=why)
            old_log = stack.logs(holder, tail=200_000)
            inside = any(
                '"journal_failed"' in line and started["id"] in line
                for line in old_log.splitlines()
            )
            # (Which of the two wrote it depends on where the pause caught the old leader.)
            assert settled["epoch"] in (epoch, new_epoch), (inside, settled)
            await quiet()  # the new leader remedies the fault
            report["pauses"].append(
                {
                    "failover_s": round(led_at - paused_at, 3),
                    "epoch": new_epoch,
                    "stale_call_refused": bool(refused),
                    "paused_inside": inside,
                }
            )
        assert any(p["paused_inside"] for p in report["pauses"]), report["pauses"]

        # --- 3. PostgreSQL restarted while a fault is handled ---------------------------------
        for _ in range(DB_RESTARTS):
            await quiet()
            seen = frozenset(journal.executions())
            _, epoch = await leader()
            await stack.inject("error_burst", 0.7, 0.0)
            await remedy_started(seen)
            restarted_at = time.monotonic()
            await asyncio.to_thread(pg.restart)
            _, new_epoch = await leader()
            report["db_restarts"].append(
                {
                    "back_s": round(time.monotonic() - restarted_at, 3),
                    "new_epoch": new_epoch != epoch,
                }
            )
            await quiet()

        # --- what the 20 failovers did, counted -----------------------------------------------
        await quiet()
        state = await stack.sim_state()
        applied = effects(state)
        keys = Counter(a["idempotency_key"] for a in applied)
        twice = {k: n for k, n in keys.items() if n > 1 or not k}
        runs = journal.executions()
        journaled_keys = {s["idempotency_key"] for e in runs.values() for s in e["actions"]}
        unaccounted = [
            a["idempotency_key"]
            for a in applied
            if a["idempotency_key"].removesuffix(":rollback") not in journaled_keys
        ]
        unfinished = [i for i, e in runs.items() if e["status"] in UNFINISHED]
        completed = {i for i, e in runs.items() if e["status"] == "completed" and not e["dry_run"]}

        async def measured() -> bool:
            return all(journal.outcomes()[i] == 1 for i in completed)

        await until(measured, timeout_s=20, what="an outcome for every completed execution")
        outcomes = journal.outcomes()
        lost = [i for i in completed if outcomes[i] != 1]
        kills = [k["failover_s"] for k in report["kills"] + report["pauses"]]
        report["summary"] = {
            "failovers": len(report["kills"]) + len(report["pauses"]) + len(report["db_restarts"]),
            "failover_median_s": statistics.median(kills),
            "failover_max_s": max(kills),
            "applied_twice": len(twice),
            "unaccounted": len(unaccounted),
            "unfinished": len(unfinished),
            "lost_outcomes": len(lost),
            "executions": len(runs),
            "effects": len(applied),
            "stale_refused": sum(1 for r in state["rejected"] if r.get("epoch") is not None),
            "ttl_s": TTL_S,
            "interval_s": INTERVAL_S,
        }
        # The figures for bench/ha.py, where the build outputs go (git ignores build/).
        out = Path(__file__).resolve().parents[2] / "build" / "ha_failover.json"
        with contextlib.suppress(OSError):
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        assert report["summary"]["failovers"] == KILLS + PAUSES + DB_RESTARTS == 20
        assert not twice, f"actions applied twice: {twice}"
        assert not unaccounted, f"actions no journal entry accounts for: {unaccounted}"
        assert not unfinished, f"executions left unfinished: {unfinished}"
        assert not lost, f"completed executions without exactly one outcome: {lost}"
        # A standby leads, and acts on the fault the dead leader left, within the lease TTL
        # plus one interval (and the poll's resolution).
        assert max(kills) <= TTL_S + INTERVAL_S + 0.5, report["kills"] + report["pauses"]
        acted = [k["acted_s"] for k in report["kills"] if "acted_s" in k]
        assert acted, "no round left the fault to the new leader"
        assert max(acted) <= TTL_S + INTERVAL_S + 0.5, report["kills"]
