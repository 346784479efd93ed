"""Issue 17's cost of high availability: what a replica pays per iteration on PostgreSQL,
with the SQLite single node as the floor beside each figure, and how long a failover takes.

1. Store writes per iteration: one iteration's writes through the real backends
   (`record_iteration` of a ~5 kB decision record that does not compress, `upsert_execution`
   twice (in progress, then completed), `record_outcome`, `record_guard_decision` x3,
   `set_state` once), on the SQLite store in a temporary directory (the floor) and on a
   throwaway PostgreSQL on loopback (tests/integration/pg_support.py), unfenced and fenced
   (the lease held, `set_fence`: every write checks the lease row in its transaction).
   Median and p95 over --iterations, after a warm-up.
2. Iteration time: the stack (stack.py) idle at a 1 s orchestrator interval, on SQLite
   (the default single node: the floor), on PostgreSQL with 1 replica and with 3 replicas;
   `phases_s.total` of the newest --stack-iterations decision records of the leader (and
   of a follower) from their /stats.
3. Failover time: read from the JSON that tests/e2e/test_ha_failover.py writes into the
   checkout's build/ (`build/ha_failover.json`), if present.

Not in `make bench` (it needs the `ha` extra, a PostgreSQL and three stacks):
`python -m bench.ha [--iterations N] [--stack-iterations N] [--failover FILE] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, percentile, quiet_logs, table
from mape_k.config import KnowledgeConfig
from mape_k.models import ActionType, ExecutionStatus, GuardDecision, GuardVerdict
from mape_k.pgstore import PostgresStore
from mape_k.stack import Stack, replica_name
from mape_k.store import Fence, Store

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration"))
from pg_support import PostgresProcess, start_postgres  # the tests' harness, by path

import builders  # the tests' builders of the domain values, by path

AnyStore = Store | PostgresStore
WARMUP = 20
RECORD_BYTES = 5000
INTERVAL_S = 1.0
# What tests/e2e/test_ha_failover.py runs with: the leader lease and the loop's interval.
FAILOVER_TTL_S = 2.0
FAILOVER_INTERVAL_S = 1.0
FAILOVER_COMMAND = ".venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_ha_failover.py"


# --- 1. store writes per iteration ---------------------------------------------------------


def decision_record(i: int) -> dict[str, Any]:
    """A decision record shaped like the loop's, ~5 kB of JSON that does not compress
    (PostgreSQL's TOAST would squeeze repeated text)."""
    pad = "".join(
        hashlib.sha256(f"{i}:{n}".encode()).hexdigest() for n in range(RECORD_BYTES // 80)
    )
    return {
        "id": f"it-{i}",
        "started_at": builders.NOW + i,
        "inputs": {"violations": [{"kind": "high_failure_rate", "component": "charter"}]},
        "causes": [{"name": "high_failure_rate", "target": "charter", "confidence": 0.6}],
        "candidates": [{"policy_id": f"p-{i}", "score": 0.15, "why": pad}],
        "guard_decisions": [],
        "choice": {"policy_id": f"p-{i}", "why": "best score"},
        "result": "acted",
        "phases_s": {"monitor": 0.004, "analyze": 0.001, "plan": 0.001, "total": 0.01},
    }


class Iteration:
    """One iteration's writes, as the loop does them, built once per index."""

    def __init__(self, i: int) -> None:
        self.i = i
        self.record = decision_record(i)
        policy = builders.policy(ActionType.RESTART_SERVICE, id=f"p-{i}")
        ex_id = f"ex-{i}"
        self.running = builders.execution(
            ex_id, policy=policy, status=ExecutionStatus.IN_PROGRESS, started_at=builders.NOW + i
        )
        self.done = builders.execution(
            ex_id,
            policy=policy,
            status=ExecutionStatus.COMPLETED,
            started_at=builders.NOW + i,
            finished_at=builders.NOW + i + 0.5,
        )
        self.outcome = builders.outcome_of(
            self.done, value_before=0.3, value_after=0.01, threshold=0.05, recorded_at=NOW_I(i)
        )
        self.guards = [
            GuardDecision(guard="freeze", verdict=GuardVerdict.ALLOW, reason="not frozen"),
            GuardDecision(guard="cooldown", verdict=GuardVerdict.ALLOW, reason="none recent"),
            GuardDecision(
                guard="velocity", verdict=GuardVerdict.ALLOW, reason="1 of 6", policy_id=f"p-{i}"
            ),
        ]

    def write(self, store: AnyStore) -> None:
        store.record_iteration(
            f"it-{self.i}", started_at=builders.NOW + self.i, result="acted", record=self.record
        )
        store.upsert_execution(self.running)
        store.upsert_execution(self.done)
        store.record_outcome(self.outcome)
        for decision in self.guards:
            store.record_guard_decision(decision, at=builders.NOW + self.i)
        store.set_state("breakers", {"charter": "closed", "i": self.i}, at=builders.NOW + self.i)


def NOW_I(i: int) -> float:  # noqa: N802 - reads as the builders' NOW
    return builders.NOW + i + 1.0


def time_writes(stores: list[AnyStore], n: int) -> list[dict[str, float]]:
    """Each iteration's writes to every store in turn (interleaved: the cluster's and the
    machine's drift falls on every backend alike); figures per store."""
    times: list[list[float]] = [[] for _ in stores]
    for i in range(n + WARMUP):
        one = Iteration(i)
        for index, store in enumerate(stores):
            started = time.perf_counter()
            one.write(store)
            if i >= WARMUP:
                times[index].append(time.perf_counter() - started)
    return [
        {
            "n": n,
            "median_ms": statistics.median(t) * 1000,
            "p95_ms": percentile(t, 95) * 1000,
        }
        for t in times
    ]


def database(postgres: PostgresProcess, name: str) -> str:
    postgres.psql(f"CREATE DATABASE {name}", database="postgres")
    return postgres.dsn.rsplit("/", 1)[0] + f"/{name}"


def store_writes(postgres: PostgresProcess, n: int) -> list[dict[str, Any]]:
    max_bytes = KnowledgeConfig().max_bytes
    labels = [
        "SQLite (floor)",
        "PostgreSQL, unfenced",
        "PostgreSQL, fenced (lease held)",
        "PostgreSQL, fenced, no byte budget (max_bytes None)",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
        stores: list[AnyStore] = [Store.open(Path(tmp) / "k.sqlite3", max_bytes=max_bytes)]
        try:
            for name, budget in (
                ("w_unfenced", max_bytes),
                ("w_fenced", max_bytes),
                ("w_nob", None),
            ):
                stores.append(PostgresStore.open(database(postgres, name), max_bytes=budget))
            for store in stores[2:]:
                lease = store.lease_acquire("bench", 600.0)
                store.set_fence(Fence(lease.holder, lease.epoch))
            figures = time_writes(stores, n)
        finally:
            for store in stores:
                store.close()
    return [{"backend": label, **f} for label, f in zip(labels, figures, strict=True)]


# --- 2. iteration time at 1 and 3 replicas ------------------------------------------------


async def stats(client: httpx.AsyncClient, stack: Stack, replica: str, limit: int) -> Any:
    response = await client.get(f"{stack.urls[replica]}/stats", params={"limit": limit})
    response.raise_for_status()
    return response.json()


def totals(records: list[dict[str, Any]], *, follower: bool, since: float, n: int) -> list[float]:
    """`phases_s.total` of the newest `n` records this replica ran as leader (or as a
    follower); /stats lists them newest first."""
    return [
        float(r["phases_s"]["total"])
        for r in records
        if ("follower" in r) == follower
        and (r.get("started_at") or 0.0) >= since
        and isinstance((r.get("phases_s") or {}).get("total"), int | float)
    ][:n]


async def idle_stack(label: str, *, url: str | None, replicas: int, n: int) -> dict[str, Any]:
    env = {} if url is None else {"MAPEK_KNOWLEDGE__URL": url}
    names = [replica_name(i) for i in range(1, replicas + 1)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-ha-stack-") as scratch:
        async with (
            Stack.start(
                Path(scratch) / "stack",
                ports="free",
                orchestrator_interval_s=INTERVAL_S,
                daemon_env=env,
                replicas=replicas,
            ) as stack,
            httpx.AsyncClient(timeout=5.0) as client,
        ):
            ready_s = time.monotonic() - started
            since = time.time()
            deadline = time.monotonic() + n * INTERVAL_S * 2 + 30
            found: dict[str, Any] = {}
            while True:
                limit = min(100, replicas * (n + 10))  # a follower's own records and the leader's
                docs = {name: await stats(client, stack, name, limit) for name in names}
                roles = {name: (doc.get("ha") or {}).get("role") for name, doc in docs.items()}
                leaders = [name for name in names if roles[name] != "follower"]
                leader = leaders[0] if leaders else names[0]
                follower = next((name for name in names if roles[name] == "follower"), None)
                found = {
                    "leader": leader,
                    "leader_totals": totals(
                        docs[leader]["iterations"], follower=False, since=since, n=n
                    ),
                    "follower": follower,
                    "follower_totals": []
                    if follower is None
                    else totals(docs[follower]["iterations"], follower=True, since=since, n=n),
                    "roles": roles,
                }
                enough = len(found["leader_totals"]) >= n and (
                    replicas == 1 or len(found["follower_totals"]) >= n
                )
                if enough or time.monotonic() > deadline:
                    break
                await asyncio.sleep(2.0)  # another process's loop, at its interval
    return {"label": label, "replicas": replicas, "ready_s": ready_s, **found}


def _ms(values: list[float], p: float | None) -> str:
    if not values:
        return "-"
    value = statistics.median(values) if p is None else percentile(values, p)
    return f"{value * 1000:.1f}"


# --- 3. failover time ---------------------------------------------------------------------


def _row(what: str, values: list[float], bound: str) -> list[object]:
    if not values:
        return [what, 0, "-", "-", "-", bound]
    return [
        what,
        len(values),
        _s(statistics.median(values)),
        _s(percentile(values, 95)),
        _s(max(values)),
        bound,
    ]


def failover_section(path: Path) -> str:
    if not path.exists():
        return (
            f"No {path}: run `{FAILOVER_COMMAND}` (it writes `build/ha_failover.json` in the"
            " checkout), then this benchmark again (`--failover FILE` reads another)."
        )
    report = json.loads(path.read_text(encoding="utf-8"))
    summary = report.get("summary", {})
    ttl = summary.get("ttl_s", FAILOVER_TTL_S)  # older reports: the test's settings then
    interval = summary.get("interval_s", FAILOVER_INTERVAL_S)
    bound = f"<= {ttl + interval:g} s (TTL {ttl:g} s + 1 interval)"
    kills = report.get("kills", [])
    pauses = report.get("pauses", [])

    def field(entries: list[dict[str, Any]], key: str) -> list[float]:
        return [float(e[key]) for e in entries if e.get(key) is not None]

    rows = [
        _row("SIGKILL of the leader -> lease taken by another", field(kills, "failover_s"), bound),
        _row(
            "SIGKILL inside an execution -> the new leader's call applied",
            field(kills, "acted_s"),
            "-",
        ),
        _row(
            "SIGSTOP of the leader past its TTL -> lease taken by another",
            field(pauses, "failover_s"),
            bound,
        ),
        _row(
            "PostgreSQL restarted -> a leader again",
            field(report.get("db_restarts", []), "back_s"),
            "-",
        ),
    ]
    rows.append(
        [
            "failovers (kills + pauses), the test's summary",
            len(field(kills + pauses, "failover_s")),
            _s(summary.get("failover_median_s")),
            "-",
            _s(summary.get("failover_max_s")),
            bound,
        ]
    )
    counts = ", ".join(
        f"{key} {summary[key]}"
        for key in (
            "failovers",
            "applied_twice",
            "unaccounted",
            "unfinished",
            "lost_outcomes",
            "executions",
            "effects",
            "stale_refused",
        )
        if key in summary
    )
    out = table(["failover", "count", "median s", "p95 s", "max s", "bound"], rows)
    return (
        f"{out}\n\nFrom `{path}` (`{FAILOVER_COMMAND}`; times from the signal to the first"
        f" poll, every 50 ms, that saw the change): {counts}."
    )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{float(value):.2f}"


# --- main -----------------------------------------------------------------------------------


async def stacks(postgres: PostgresProcess, n: int) -> list[dict[str, Any]]:
    runs: list[tuple[str, Callable[[], str | None], int]] = [
        ("SQLite, 1 node (floor)", lambda: None, 1),
        ("PostgreSQL, 1 replica", lambda: database(postgres, "stack1"), 1),
        ("PostgreSQL, 3 replicas", lambda: database(postgres, "stack3"), 3),
    ]
    return [
        await idle_stack(label, url=make_url(), replicas=replicas, n=n)
        for label, make_url, replicas in runs
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300, help="store write iterations")
    parser.add_argument("--stack-iterations", type=int, default=30)
    parser.add_argument("--failover", type=Path, default=Path("build/ha_failover.json"))
    parser.add_argument("--json", type=Path, help="write the measured rows here")
    args = parser.parse_args()
    quiet_logs()
    started = time.monotonic()
    with start_postgres() as postgres:
        writes = store_writes(postgres, args.iterations)
        idle = asyncio.run(stacks(postgres, args.stack_iterations))

    print("### High availability: store writes per iteration\n")
    floor = writes[0]
    print(
        table(
            ["backend", "iterations", "median ms", "p95 ms", "median / floor"],
            [
                [
                    w["backend"],
                    w["n"],
                    f"{w['median_ms']:.2f}",
                    f"{w['p95_ms']:.2f}",
                    f"{w['median_ms'] / floor['median_ms']:.1f}x",
                ]
                for w in writes
            ],
        )
    )
    print(
        f"\nOne iteration's writes (record_iteration of a {RECORD_BYTES / 1000:g} kB record,"
        " upsert_execution x2, record_outcome, record_guard_decision x3, set_state), each a"
        f" transaction of its own, timed together after {WARMUP} warm-up iterations."
        " PostgreSQL on loopback; fenced: the lease held and `set_fence`, so each write"
        " also checks the lease row. With a byte budget (the default knowledge.max_bytes, as"
        " the daemon opens it) each write is followed by the store's size query.\n"
    )

    print("### High availability: iteration time, idle at a 1 s interval\n")
    base = idle[0]["leader_totals"]
    rows = []
    for run in idle:
        for role in ("leader", "follower"):
            values = run[f"{role}_totals"]
            if run[role] is None or (role == "follower" and run["replicas"] == 1):
                continue
            ratio = (
                f"{statistics.median(values) / statistics.median(base):.1f}x"
                if values and base
                else "-"
            )
            rows.append(
                [
                    run["label"],
                    f"{run[role]} ({role if run['replicas'] > 1 else 'alone'})",
                    len(values),
                    _ms(values, None),
                    _ms(values, 95),
                    ratio,
                    f"{run['ready_s']:.0f}",
                ]
            )
    print(
        table(
            [
                "store",
                "replica",
                "iterations",
                "median ms",
                "p95 ms",
                "median / floor",
                "stack start s",
            ],
            rows,
            left=2,
        )
    )
    print(
        "\n`phases_s.total` of the replica's own decision records from its /stats"
        " (`?limit=`), iterations started after the stack was ready; no fault, so every"
        " iteration is idle (a follower's records say why it did not act).\n"
    )

    print("### High availability: failover time\n")
    print(failover_section(args.failover))
    print(f"\nwall time of the run: {time.monotonic() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"writes": writes, "idle": idle}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
