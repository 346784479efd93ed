"""The knowledge store on a real PostgreSQL (pg_support's throwaway cluster): the same
contract as the SQLite store, migrations under concurrency, the leader lease, fenced
writes, and failing closed / recovering when the database stops or stalls."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from pg_support import PostgresProcess, start_postgres
from prom_support import free_port
from prometheus_client import CollectorRegistry

import builders
from builders import NOW
from mape_k.errors import StaleEpochError, StoreError, StoreSchemaError
from mape_k.metrics import Metrics
from mape_k.models import (
    ActionType,
    ExecutionStatus,
    GuardDecision,
    GuardVerdict,
    OutcomeType,
    PolicyExecution,
)
from mape_k.pgstore import PostgresStore
from mape_k.store import SCHEMA_VERSION, Fence, InboxRow, Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DAY = 86_400.0
SECRET = "s3cr3t-Pa55word"
AnyStore = Store | PostgresStore

SCALE_UP = builders.policy(
    builders.action(ActionType.SCALE_UP, delta=2),
    id="pol-1",
    cause=builders.cause("overload", value=0.97, confidence=0.85, violations=4),
    created_at=NOW - 1,
    rationale="saturation above 0.9",
)


def make_execution(
    execution_id: str,
    *,
    status: ExecutionStatus = ExecutionStatus.IN_PROGRESS,
    started_at: float = NOW,
    finished_at: float | None = None,
    target: str | None = None,
    dry_run: bool = False,
) -> PolicyExecution:
    policy = SCALE_UP if target is None else builders.policy(*SCALE_UP.actions, target=target)
    scaled = builders.step(
        policy.actions[0],
        status=status,
        idempotency_key=f"{execution_id}:0:scale_up",
        started_at=started_at,
        result={"from_size": 3, "to_size": 5},
    )
    return builders.execution(
        execution_id,
        policy=policy,
        status=status,
        actions=(scaled,),
        started_at=started_at,
        finished_at=finished_at,
        baseline=0.97,
        dry_run=dry_run,
    )


make_outcome = functools.partial(
    builders.outcome,
    cause="overload",
    action_type=ActionType.SCALE_UP,
    value_before=0.97,
    value_after=0.5,
    threshold=0.9,
    time_to_stabilize_s=30.0,
)


def big_record(i: int, size: int = 3000) -> dict[str, object]:
    """A record that does not compress (PostgreSQL's TOAST would squeeze repeated text)."""
    pad = "".join(hashlib.sha256(f"{i}:{n}".encode()).hexdigest() for n in range(size // 64))
    return {"i": i, "inputs": {"violations": [{"kind": "k", "pad": pad}]}}


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresProcess]:
    with start_postgres() as handle:
        yield handle


_databases = itertools.count()


@pytest.fixture
def pg_url(postgres: PostgresProcess) -> str:
    """A fresh, empty database of the module's cluster (tests stay independent)."""
    name = f"t{next(_databases)}"
    postgres.psql(f"CREATE DATABASE {name}", database="postgres")
    return postgres.dsn.rsplit("/", 1)[0] + f"/{name}"


def secret_url(url: str) -> str:
    """`url` with a password (the cluster trusts loopback: it is ignored, never shown)."""
    return url.replace("mapek@", f"mapek:{SECRET}@")


OpenStore = Callable[..., AnyStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens the backend under test (keywords: max_bytes, metrics); closed at the end."""
    opened: list[AnyStore] = []

    def opener(**kwargs: Any) -> AnyStore:
        if request.param == "sqlite":
            store: AnyStore = Store.open(tmp_path / "knowledge.sqlite3", **kwargs)
        else:
            store = PostgresStore.open(request.getfixturevalue("pg_url"), **kwargs)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def pg_open(url: str, **kwargs: Any) -> PostgresStore:
    kwargs.setdefault("statement_timeout_s", 10.0)
    return PostgresStore.open(url, **kwargs)


def wait_until(predicate: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Poll `predicate` (bounded): the condition is another party's progress."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def wait_expired(store: PostgresStore) -> None:
    """Until the lease has expired by the database's clock."""

    def expired() -> bool:
        lease = store.lease_read()
        return lease is None or lease.expires_at <= lease.now

    wait_until(expired)


# --- the contract, on both backends ------------------------------------------------------


def test_executions_round_trip_and_are_found_by_status_and_time(open_store: OpenStore) -> None:
    store = open_store()
    stuck = make_execution("stuck", started_at=NOW - 100)
    done = make_execution(
        "done", status=ExecutionStatus.COMPLETED, started_at=NOW - 50, finished_at=NOW - 40
    )
    checked = make_execution(
        "checked", status=ExecutionStatus.COMPLETED, started_at=NOW - 30, finished_at=NOW - 20
    )
    rehearsal = make_execution(
        "dry",
        status=ExecutionStatus.COMPLETED,
        started_at=NOW - 10,
        finished_at=NOW - 5,
        dry_run=True,
    )
    other = make_execution("other", started_at=NOW, target="db-2")
    for run in (make_execution("done", started_at=NOW - 50), done, stuck, checked, rehearsal):
        store.upsert_execution(run)
    store.upsert_execution(other)
    store.record_outcome(make_outcome("checked", recorded_at=NOW - 10))

    assert store.get_execution("done") == done  # the upsert replaced the pending one
    assert store.get_execution("missing") is None
    assert [e.id for e in store.recent_executions(3)] == ["other", "dry", "checked"]
    assert [e.id for e in store.target_executions("db-2", 10)] == ["other"]
    assert [e.id for e in store.unfinished_executions()] == ["stuck", "other"]
    assert [e.id for e in store.unverified_executions(since=NOW - 60)] == ["done"]
    assert store.unverified_executions(since=NOW - 30) == []
    assert [e.id for e in store.executions_finished_since(NOW - 60)] == ["done", "checked"]
    assert store.recent_executions(10)[1] == rehearsal


def test_outcomes_are_idempotent_and_folded_into_stats(open_store: OpenStore) -> None:
    store = open_store()
    assert store.record_outcome(make_outcome("a", recorded_at=NOW)) is True
    assert store.record_outcome(make_outcome("a", recorded_at=NOW + 5)) is False
    store.record_outcome(
        make_outcome("b", outcome=OutcomeType.INEFFECTIVE, time_to_stabilize_s=None, recorded_at=1)
    )
    store.record_outcome(make_outcome("c", outcome=OutcomeType.UNKNOWN, recorded_at=NOW + 1))
    store.record_outcome(make_outcome("d", target="db-2", recorded_at=NOW + 2))

    [row] = store.stats()
    assert (row.samples, row.successes, row.ineffective, row.unknowns) == (3, 2, 1, 1)
    assert (row.tts_sum, row.tts_count) == (60.0, 2)
    per_target = dict(store.target_stats())
    assert set(per_target) == {builders.TARGET, "db-2"}
    mine = per_target[builders.TARGET]
    assert (mine.samples, mine.successes, mine.ineffective, mine.unknowns) == (2, 1, 1, 1)
    assert (mine.tts_sum, mine.tts_count) == (30.0, 1)
    assert per_target["db-2"].samples == 1
    assert [o.execution_id for o in store.recent_outcomes(10)] == ["d", "c", "a", "b"]
    assert store.outcome("a") == make_outcome("a", recorded_at=NOW)
    assert store.outcome("zz") is None
    assert [o.execution_id for o in store.target_outcomes_since(builders.TARGET, NOW)] == [
        "a",
        "c",
    ]


def test_state_inbox_guard_decisions_and_control_log(open_store: OpenStore) -> None:
    store = open_store()
    assert store.get_state("breakers") is None
    store.set_state("breakers", {"charter": "open"}, at=NOW)
    store.set_state("breakers", {"charter": "closed"}, at=NOW + 1)
    assert store.get_state("breakers") == {"charter": "closed"}
    store.delete_state("breakers")
    assert store.get_state("breakers") is None

    firing = InboxRow("f1", "firing", NOW - 60, None, NOW, {"alertname": "A", "cause": "x"})
    resolved = InboxRow("f2", "resolved", NOW - 120, NOW - 10, NOW - 5)
    store.save_inbox([firing, resolved], [])
    moved = InboxRow("f1", "firing", NOW - 60, None, NOW + 30, {"alertname": "A", "cause": "x"})
    store.save_inbox([moved], [("f2", "resolved"), ("zz", "firing")])
    assert store.inbox_rows() == [moved]
    store.save_inbox([resolved, InboxRow("f1", "resolved", NOW - 60, NOW, NOW + 31)], [])
    assert [(r.fingerprint, r.status) for r in store.inbox_rows()] == [
        ("f2", "resolved"),
        ("f1", "firing"),
        ("f1", "resolved"),
    ]

    store.record_guard_decision(
        GuardDecision(guard="freeze", verdict=GuardVerdict.BLOCK, reason="frozen", until=NOW),
        at=NOW,
    )
    store.record_guard_decision(
        GuardDecision(guard="cooldown", verdict=GuardVerdict.DELAY, reason="r", policy_id="p1"),
        at=NOW + 1,
    )
    store.record_control(at=NOW, route="/control/freeze", body={"for_s": 60}, caller="ops")
    store.record_control(at=NOW + 1, route="/control/unfreeze")
    assert store.recent_guard_decisions(10) == [
        {
            "id": 2,
            "at": NOW + 1,
            "guard": "cooldown",
            "verdict": "delay",
            "reason": "r",
            "policy_id": "p1",
            "until": None,
            "epoch": None,
        },
        {
            "id": 1,
            "at": NOW,
            "guard": "freeze",
            "verdict": "block",
            "reason": "frozen",
            "policy_id": None,
            "until": NOW,
            "epoch": None,
        },
    ]
    assert store.recent_control(10) == [
        {"id": 2, "at": NOW + 1, "route": "/control/unfreeze", "body": None, "caller": None},
        {"id": 1, "at": NOW, "route": "/control/freeze", "body": {"for_s": 60}, "caller": "ops"},
    ]


def test_iterations_are_replaced_by_id_and_page_backwards(open_store: OpenStore) -> None:
    store = open_store()
    store.record_iteration("it-0", started_at=NOW, result="idle", record={"v": 0})
    store.record_iteration("it-0", started_at=NOW, result="acted", record={"v": 1})
    for i in range(1, 7):
        store.record_iteration(f"it-{i}", started_at=NOW + i, result="idle", record={"i": i})
    store.record_iteration("tie", started_at=NOW + 6, result="idle", record={})
    first = store.recent_iterations(3)
    second = store.recent_iterations(3, before=first[-1]["started_at"])
    last = store.recent_iterations(3, before=second[-1]["started_at"])
    assert [i["id"] for i in first] == ["tie", "it-6", "it-5"]  # a tie: the later write first
    assert [i["id"] for i in second] == ["it-4", "it-3", "it-2"]
    assert [i["id"] for i in last] == ["it-1", "it-0"]
    assert last[-1] == {"id": "it-0", "started_at": NOW, "result": "acted", "record": {"v": 1}}
    assert store.iteration("it-0") == {"v": 1}
    assert store.iteration("nope") is None


def test_prune_by_age_and_rows_keeps_stats_and_unfinished_executions(
    open_store: OpenStore,
) -> None:
    store = open_store()
    old, recent = NOW - 40 * DAY, NOW - 1 * DAY
    store.record_outcome(make_outcome("old", recorded_at=old))
    store.record_iteration("it-old", started_at=old, result="acted", record={})
    store.upsert_execution(
        make_execution(
            "old-done", status=ExecutionStatus.COMPLETED, started_at=old, finished_at=old
        )
    )
    store.upsert_execution(make_execution("old-stuck", started_at=old))
    store.record_guard_decision(
        GuardDecision(guard="cooldown", verdict=GuardVerdict.DELAY, reason="recent"), at=old
    )
    store.record_control(at=old, route="/control/freeze", body={"for_s": 60}, caller="ops")
    for i in range(5):
        store.record_outcome(make_outcome(f"new-{i}", recorded_at=recent + i))
        store.record_iteration(f"it-{i}", started_at=recent + i, result="idle", record={})

    deleted = store.prune(now=NOW, retention_days=30, max_rows=3)

    assert deleted == {
        "iterations": 1 + 2,
        "executions": 1,
        "outcomes": 1 + 2,
        "guard_decisions": 1,
        "control_log": 1,
    }
    assert [o.execution_id for o in store.recent_outcomes(10)] == ["new-4", "new-3", "new-2"]
    assert [i["id"] for i in store.recent_iterations(10)] == ["it-4", "it-3", "it-2"]
    assert [e.id for e in store.unfinished_executions()] == ["old-stuck"]
    assert store.get_execution("old-done") is None
    assert store.stats()[0].samples == 6  # what was learned from pruned outcomes is kept
    assert store.prune(now=NOW, retention_days=30, max_rows=3) == dict.fromkeys(deleted, 0)


def test_the_byte_budget_keeps_the_newest_rows_stats_and_unfinished_executions(
    open_store: OpenStore,
) -> None:
    budget = 1_048_576
    metrics = Metrics(CollectorRegistry())
    store = open_store(max_bytes=budget, metrics=metrics)
    store.upsert_execution(make_execution("stuck", started_at=NOW))
    store.record_outcome(make_outcome("learned", recorded_at=NOW))
    store.set_state("guards", {"history": [1, 2, 3]})
    written = 700  # ~2 MB of records through a 1 MiB budget
    for i in range(written):
        store.record_iteration(f"it-{i}", started_at=NOW + i, result="idle", record=big_record(i))
    kept = store.recent_iterations(10_000)
    assert [i["id"] for i in kept[:3]] == ["it-699", "it-698", "it-697"]
    assert 10 < len(kept) < written
    assert [e.id for e in store.unfinished_executions()] == ["stuck"]
    assert store.stats()[0].samples == 1
    assert store.get_state("guards") == {"history": [1, 2, 3]}
    pruned = metrics.registry.get_sample_value(
        "mapek_knowledge_pruned_rows_total", {"table": "iterations", "reason": "bytes"}
    )
    assert pruned == written - len(kept)
    assert metrics.registry.get_sample_value("mapek_knowledge_bytes") == store.size().total
    assert store.max_bytes == budget
    assert store.write_problem() is None
    assert store.integrity_ok()


# --- PostgreSQL only: opening ------------------------------------------------------------


def test_three_replicas_opening_at_once_migrate_exactly_once(pg_url: str) -> None:
    barrier = threading.Barrier(3)
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def replica() -> None:
        barrier.wait(timeout=10)
        try:
            opened.append(pg_open(pg_url))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with structlog.testing.capture_logs() as logs:
        threads = [threading.Thread(target=replica) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    try:
        assert errors == []
        assert [s.schema_version for s in opened] == [SCHEMA_VERSION] * 3
        migrated = [
            (e["from_version"], e["to_version"]) for e in logs if e["event"] == "store_migrated"
        ]
        assert sorted(migrated) == [(i, i + 1) for i in range(SCHEMA_VERSION)]
        assert all(s.integrity_ok() for s in opened)
    finally:
        for store in opened:
            store.close()


def test_a_newer_schema_is_refused_naming_knowledge_url(
    postgres: PostgresProcess, pg_url: str
) -> None:
    with pg_open(pg_url) as store:
        store.set_state("kept", 1)
    database = pg_url.rsplit("/", 1)[1]
    postgres.psql("UPDATE meta SET value = '99' WHERE key = 'schema_version'", database=database)
    with pytest.raises(StoreSchemaError, match=r"newer mape-k \(schema 99 > 3\).*knowledge\.url"):
        pg_open(pg_url)
    assert postgres.psql("SELECT value FROM state WHERE key = 'kept'", database=database) == "1"


def test_a_database_with_tables_named_like_ours_but_no_meta_is_refused(
    postgres: PostgresProcess, pg_url: str
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    postgres.psql("CREATE TABLE iterations (x int); CREATE TABLE other (y int)", database=database)
    with pytest.raises(
        StoreSchemaError,
        match=r"named like a mape-k knowledge store \(iterations\).*not a mape-k store",
    ):
        pg_open(pg_url)
    tables = postgres.psql(
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
        " WHERE schemaname = 'public'",
        database=database,
    )
    assert tables == "iterations,other"  # nothing created, nothing touched


def test_a_password_never_shows_in_location_errors_or_logs(
    postgres: PostgresProcess, pg_url: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        with pg_open(secret_url(pg_url)) as store:
            assert (
                store.location
                == f"postgresql://mapek@127.0.0.1:{postgres.port}/" + (pg_url.rsplit("/", 1)[1])
            )
            store.set_state("k", 1)
        nowhere = secret_url(f"postgresql://mapek@127.0.0.1:{free_port()}/mapek")
        with pytest.raises(StoreError) as refused:
            PostgresStore.open(nowhere, connect_timeout_s=1)
    assert "cannot reach postgresql://mapek@127.0.0.1:" in str(refused.value)
    assert SECRET not in str(refused.value)
    assert "\n" not in str(refused.value)
    assert SECRET not in repr(logs)
    assert any(e["event"] == "store_unreachable" for e in logs)


def test_the_tables_stop_growing_under_the_byte_budget(pg_url: str) -> None:
    budget = 524_288
    with pg_open(pg_url, max_bytes=budget) as store:
        sizes = []
        for i in range(1200):
            store.record_iteration(
                f"it-{i}", started_at=NOW + i, result="idle", record=big_record(i)
            )
            if i % 400 == 399:
                sizes.append(store.size().total)
        kept = len(store.recent_iterations(10_000))
    # ~3.6 MB written; the rows hold at most the budget, the tables settle at their
    # high-water mark (PostgreSQL reuses the space of deleted rows, never returns it).
    assert 100 < kept < 1200
    assert sizes[-1] <= sizes[0] + budget // 10, sizes
    assert sizes[-1] < 3 * budget, sizes


def test_the_urls_own_options_are_kept_a_search_path_puts_the_store_in_a_schema(
    postgres: PostgresProcess, pg_url: str
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    postgres.psql("CREATE SCHEMA knowledge", database=database)
    url = f"{pg_url}?options=-csearch_path%3Dknowledge&application_name=mapek-test"
    with pg_open(url, statement_timeout_s=2.5) as store:
        store.set_state("k", 1)
        assert store.integrity_ok()
        assert store.location == pg_url  # no query string
        settings = store._read(
            "SELECT current_setting('statement_timeout') AS st,"
            " current_setting('lock_timeout') AS lt,"
            " current_setting('application_name') AS app,"
            " current_setting('transaction_isolation') AS iso",
            (),
        )
    assert settings == [
        {"st": "2500ms", "lt": "2500ms", "app": "mapek-test", "iso": "read committed"}
    ]
    assert postgres.psql("SELECT value FROM knowledge.state", database=database) == "1"
    assert (
        postgres.psql(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database=database
        )
        == "0"
    )


def test_a_terminated_session_fails_one_call_and_the_next_reconnects(
    postgres: PostgresProcess, pg_url: str
) -> None:
    def terminate() -> None:
        postgres.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'mape-k'"
        )

    with pg_open(pg_url) as store:
        store.set_state("k", 1)
        terminate()
        with pytest.raises(StoreError, match=rf"^{store.location}: get_state: ") as failed:
            store.get_state("k")
        assert "\n" not in str(failed.value)
        assert store.write_problem() is None  # a read failed, not a write
        assert store.get_state("k") == 1  # a new connection
        terminate()
        with pytest.raises(StoreError, match=rf"^{store.location}: set_state: "):
            store.set_state("k", 2)
        assert (store.write_problem() or "").startswith("cannot write: set_state failed: ")
        store.set_state("k", 3)
        assert store.get_state("k") == 3
        assert store.write_problem() is None


# --- the lease ---------------------------------------------------------------------------


def test_the_lease_is_acquired_renewed_taken_over_after_expiry_and_re_taken(pg_url: str) -> None:
    with pg_open(pg_url) as store:
        assert store.lease_read() is None
        first = store.lease_acquire("a", 0.3)
        assert (first.holder, first.epoch, first.held_by("a")) == ("a", 1, True)
        assert first.acquired_at == first.renewed_at == first.now
        assert first.expires_at == pytest.approx(first.now + 0.3)
        renewed = store.lease_acquire("a", 0.3)
        assert (renewed.holder, renewed.epoch, renewed.acquired_at) == ("a", 1, first.acquired_at)
        assert renewed.expires_at > first.expires_at
        refused = store.lease_acquire("b", 0.3)  # a holds it, unexpired: nothing changes
        assert (refused.holder, refused.epoch, refused.held_by("b")) == ("a", 1, False)
        assert refused.expires_at == renewed.expires_at
        wait_expired(store)
        taken = store.lease_acquire("b", 0.3)
        assert (taken.holder, taken.epoch, taken.held_by("b")) == ("b", 2, True)
        assert store.lease_acquire("a", 0.3).holder == "b"
        wait_expired(store)
        again = store.lease_acquire("b", 0.3)  # its own lease, expired: a new epoch
        assert (again.holder, again.epoch) == ("b", 3)
        assert again.acquired_at > taken.acquired_at
        read = store.lease_read()
        assert read is not None
        assert (read.holder, read.epoch) == ("b", 3)
        assert read.now >= again.now


def test_release_hands_the_lease_over_at_once(pg_url: str) -> None:
    with pg_open(pg_url) as store:
        held = store.lease_acquire("a", 60)
        assert store.lease_release("a", held.epoch + 1) is False
        assert store.lease_release("b", held.epoch) is False
        assert store.lease_acquire("b", 60).holder == "a"
        assert store.lease_release("a", held.epoch) is True
        assert store.lease_release("a", held.epoch) is False  # already handed over
        taken = store.lease_acquire("b", 60)
        assert (taken.holder, taken.epoch) == ("b", held.epoch + 1)


def test_holders_racing_get_one_leader_per_round_and_distinct_epochs(pg_url: str) -> None:
    holders = [f"r{i}" for i in range(4)]
    stores = [pg_open(pg_url) for _ in holders]
    try:
        leaders: list[tuple[str, int]] = []
        for _round in range(3):
            barrier = threading.Barrier(len(holders))
            results: dict[str, Any] = {}

            def race(
                store: PostgresStore,
                holder: str,
                barrier: threading.Barrier = barrier,
                results: dict[str, Any] = results,
            ) -> None:
                barrier.wait(timeout=10)
                results[holder] = store.lease_acquire(holder, 60)

            threads = [
                threading.Thread(target=race, args=(s, h))
                for s, h in zip(stores, holders, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            winners = [h for h, lease in results.items() if lease.held_by(h)]
            assert len(results) == len(holders)
            assert len(winners) == 1
            assert {(lease.holder, lease.epoch) for lease in results.values()} == {
                (winners[0], results[winners[0]].epoch)
            }
            leaders.append((winners[0], results[winners[0]].epoch))
            assert stores[0].lease_release(*leaders[-1])
        assert [epoch for _, epoch in leaders] == [1, 2, 3]
    finally:
        for store in stores:
            store.close()


# --- fencing -----------------------------------------------------------------------------


def fenced_writes(store: PostgresStore) -> dict[str, Callable[[], object]]:
    decision = GuardDecision(guard="freeze", verdict=GuardVerdict.BLOCK, reason="late")
    return {
        "record_iteration": lambda: store.record_iteration(
            "late", started_at=NOW, result="idle", record={}
        ),
        "upsert_execution": lambda: store.upsert_execution(make_execution("late")),
        "record_outcome": lambda: store.record_outcome(make_outcome("late")),
        "record_guard_decision": lambda: store.record_guard_decision(decision, at=NOW),
        "set_state": lambda: store.set_state("late", 1),
        "delete_state": lambda: store.delete_state("kept"),
    }


def test_fenced_writes_commit_with_the_current_epoch_and_are_refused_after_a_takeover(
    postgres: PostgresProcess, pg_url: str
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with pg_open(pg_url) as old, pg_open(pg_url) as new:
        old.set_state("kept", "unfenced")  # no fence: no check, epoch NULL
        lease = old.lease_acquire("a", 0.5)
        old.set_fence(Fence("a", lease.epoch))
        old.record_iteration("it-1", started_at=NOW, result="idle", record={})
        old.record_outcome(make_outcome("o-1"))
        assert postgres.psql("SELECT epoch FROM iterations", database=database) == "1"
        assert postgres.psql("SELECT epoch FROM outcomes", database=database) == "1"

        wait_expired(new)
        with pytest.raises(StaleEpochError):  # lapsed, nobody took over: refused all the same
            old.record_iteration("lapsed", started_at=NOW, result="idle", record={})
        taken = new.lease_acquire("b", 60)
        assert (taken.holder, taken.epoch) == ("b", 2)
        for what, write in fenced_writes(old).items():
            with pytest.raises(StaleEpochError, match=r"holder 'a' epoch 1") as refused:
                write()
            assert what in str(refused.value)
        assert old.write_problem() is None  # the database is fine: this replica is no leader
        assert [i["id"] for i in new.recent_iterations(10)] == ["it-1"]
        assert new.get_execution("late") is None
        assert new.outcome("late") is None
        assert new.recent_guard_decisions(10) == []
        assert new.get_state("late") is None
        assert new.get_state("kept") == "unfenced"
        # The shared inbox and the audit trail are never fenced.
        old.save_inbox([InboxRow("f1", "firing", NOW, None, NOW)], [])
        old.record_control(at=NOW, route="/control/freeze")
        assert len(new.inbox_rows()) == 1
        assert len(new.recent_control(10)) == 1

        new.set_fence(Fence("b", taken.epoch))
        new.record_iteration("it-2", started_at=NOW + 1, result="idle", record={})
        assert (
            postgres.psql("SELECT epoch FROM iterations WHERE id = 'it-2'", database=database)
            == "2"
        )


def test_a_takeover_waits_for_the_fenced_write_that_holds_the_lease(pg_url: str) -> None:
    with pg_open(pg_url) as old, pg_open(pg_url) as new, pg_open(pg_url) as watcher:
        old.set_state("k", "before")
        lease = old.lease_acquire("a", 1.0)
        old.set_fence(Fence("a", lease.epoch))
        order: list[str] = []
        errors: list[BaseException] = []
        # Another session holds the state row: the fenced write passes its lease check
        # (FOR SHARE) and then waits on the row, its transaction open.
        blocker = psycopg.connect(pg_url, autocommit=False)
        try:
            blocker.execute("SELECT * FROM state WHERE key = 'k' FOR UPDATE")

            def fenced() -> None:
                try:
                    old.set_state("k", "fenced")
                    order.append("fenced write committed")
                except BaseException as exc:  # asserted below
                    errors.append(exc)

            def takeover() -> None:
                try:
                    taken = new.lease_acquire("b", 60)
                    order.append(f"takeover by {taken.holder} epoch {taken.epoch}")
                except BaseException as exc:  # asserted below
                    errors.append(exc)

            def waiting() -> int:
                rows = blocker.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mape-k'"
                    " AND wait_event_type = 'Lock'"
                ).fetchone()
                blocker.execute("SELECT 1")  # keep the blocking transaction open
                return int(rows[0]) if rows else 0

            writer = threading.Thread(target=fenced)
            writer.start()
            wait_until(lambda: waiting() == 1)  # the fenced write is past its check
            wait_expired(watcher)  # the lease lapses while the write is in flight
            contender = threading.Thread(target=takeover)
            contender.start()
            wait_until(lambda: waiting() == 2)  # the takeover waits on the lease row
            assert order == []
            blocker.rollback()  # the fenced write goes on, commits; then the takeover
            writer.join(timeout=15)
            contender.join(timeout=15)
        finally:
            blocker.close()
        assert errors == []
        assert order == ["fenced write committed", "takeover by b epoch 2"]
        assert new.get_state("k") == "fenced"
        with pytest.raises(StaleEpochError):
            old.set_state("k", "too late")
        assert new.get_state("k") == "fenced"


def test_a_replica_paused_inside_a_fenced_write_does_not_hold_the_lease(pg_url: str) -> None:
    """A leader frozen (SIGSTOP, a VM pause) between its fence check and its commit keeps
    its transaction open, and with it the FOR SHARE lock on the lease row: the server ends
    such an idle transaction after the statement timeout, so a contender takes over."""
    with (
        pg_open(pg_url, statement_timeout_s=1.0) as old,
        pg_open(pg_url, statement_timeout_s=1.0) as new,
        pg_open(pg_url) as watcher,
    ):
        old.set_state("k", "before")
        lease = old.lease_acquire("a", 0.3)
        old.set_fence(Fence("a", lease.epoch))
        inside, thawed = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def paused_write() -> None:
            try:
                with old._tx("set_state", write=True, fenced=True) as cur:
                    inside.set()  # past the fence check, the transaction open
                    thawed.wait(30)  # frozen: no statement, no commit
                    old._exec(cur, "UPDATE state SET value = '\"late\"' WHERE key = 'k'", ())
            except BaseException as exc:  # asserted below
                errors.append(exc)

        writer = threading.Thread(target=paused_write)
        writer.start()
        try:
            assert inside.wait(10)
            wait_expired(watcher)
            deadline = time.monotonic() + 8.0  # well before the frozen writer thaws
            taken = None
            while taken is None or not taken.held_by("b"):
                assert time.monotonic() < deadline, "the paused writer still holds the lease"
                with contextlib.suppress(StoreError):  # a lock wait that timed out: again
                    taken = new.lease_acquire("b", 60)
            assert taken.epoch == lease.epoch + 1
        finally:
            thawed.set()
            writer.join(timeout=15)
        assert len(errors) == 1, errors
        assert isinstance(errors[0], StoreError), errors
        assert new.get_state("k") == "before"
        with pytest.raises(StaleEpochError):  # the thawed replica reconnects, fenced out
            old.set_state("k", "too late")


# --- failing closed and recovering -------------------------------------------------------


def test_a_stopped_database_fails_calls_fast_and_the_store_recovers_after_a_restart(
    postgres: PostgresProcess, pg_url: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        store = PostgresStore.open(secret_url(pg_url), connect_timeout_s=1, statement_timeout_s=1)
        try:
            store.record_iteration("it-0", started_at=NOW, result="idle", record={})
            postgres.stop()
            try:
                started = time.monotonic()
                with pytest.raises(StoreError, match="record_iteration") as lost:
                    store.record_iteration("it-1", started_at=NOW + 1, result="idle", record={})
                assert time.monotonic() - started < 5
                problem = store.write_problem()
                assert problem is not None
                assert problem.startswith("cannot write: record_iteration failed")
                started = time.monotonic()
                with pytest.raises(StoreError, match="cannot reach postgresql://") as unreachable:
                    store.recent_iterations(5)
                assert time.monotonic() - started < 5
                problem = store.write_problem()
                assert problem is not None
                assert problem.startswith(f"cannot reach {store.location}: ")
                assert not store.integrity_ok()
            finally:
                postgres.start()
            assert [i["id"] for i in store.recent_iterations(5)] == ["it-0"]  # no reopen
            store.record_iteration("it-2", started_at=NOW + 2, result="idle", record={})
            assert store.write_problem() is None
            assert store.integrity_ok()
        finally:
            store.close()
    for text in (str(lost.value), str(unreachable.value), repr(logs)):
        assert SECRET not in text


def test_a_stalled_database_fails_calls_within_the_timeouts_and_the_store_recovers(
    postgres: PostgresProcess, pg_url: str
) -> None:
    with pg_open(pg_url, connect_timeout_s=1, statement_timeout_s=1) as store:
        store.set_state("k", 0)
        postgres.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="set_state: no answer in 2 s"):
                store.set_state("k", 1)
            assert time.monotonic() - started < 4
            started = time.monotonic()
            with pytest.raises(StoreError, match="cannot reach"):
                store.get_state("k")  # a new connection: bounded by the connect timeout
            assert time.monotonic() - started < 5
            assert store.write_problem() is not None
        finally:
            postgres.resume()
        assert store.get_state("k") == 0
        store.set_state("k", 2)
        assert store.get_state("k") == 2
        assert store.write_problem() is None
