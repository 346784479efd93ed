"""The SQLite knowledge store, over real files in tmp_path."""

from __future__ import annotations

import functools
import sqlite3
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import builders
from builders import NOW
from mape_k import store as store_module
from mape_k.errors import StoreCorruptError, StoreError, StoreSchemaError
from mape_k.metrics import Metrics
from mape_k.models import (
    ActionType,
    ExecutionStatus,
    GuardDecision,
    GuardVerdict,
    OutcomeType,
    PatternKind,
    PolicyExecution,
)
from mape_k.store import SCHEMA_VERSION, InboxRow, Store, policy_from_record, to_jsonable

DAY = 86_400.0


# A scale-up for overload, with the evidence and results a record carries.
SCALE_UP_BY_2 = builders.policy(
    builders.action(ActionType.SCALE_UP, delta=2),
    id="pol-1",
    cause=builders.cause(
        "overload",
        value=0.97,
        confidence=0.85,
        violations=4,
        patterns=(PatternKind.TEMPORAL_BURST,),
    ),
    created_at=NOW - 1,
    rationale="saturation above 0.9",
)


def make_execution(
    execution_id: str = "exec-1",
    *,
    status: ExecutionStatus = ExecutionStatus.IN_PROGRESS,
    started_at: float = NOW,
    finished_at: float | None = None,
) -> PolicyExecution:
    scaled = builders.step(
        SCALE_UP_BY_2.actions[0],
        status=status,
        idempotency_key=f"{execution_id}:0:scale_up",
        started_at=started_at,
        result={"from_size": 3, "to_size": 5},
    )
    return builders.execution(
        execution_id,
        policy=SCALE_UP_BY_2,
        status=status,
        actions=(scaled,),
        started_at=started_at,
        finished_at=finished_at,
        baseline=0.97,
    )


# An outcome of that scale-up: saturation from 0.97 to 0.5 (threshold 0.9) in 30 s.
make_outcome = functools.partial(
    builders.outcome,
    cause="overload",
    action_type=ActionType.SCALE_UP,
    value_before=0.97,
    value_after=0.5,
    threshold=0.9,
    time_to_stabilize_s=30.0,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "knowledge.sqlite3"


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


# --- opening ---------------------------------------------------------------------------


def test_open_creates_schema_wal_file_and_missing_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "k.sqlite3"
    with Store.open(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.integrity_ok()
    raw = sqlite3.connect(path)
    try:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        raw.close()
    expected = {"meta", "iterations", "executions", "outcomes", "stats"}
    expected |= {"guard_decisions", "control_log", "state"}
    assert expected <= tables
    assert int(version) == SCHEMA_VERSION
    assert mode == "wal"


def test_reopen_keeps_stats_outcomes_and_state(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.record_outcome(make_outcome("a"))
        store.record_outcome(
            make_outcome("b", outcome=OutcomeType.INEFFECTIVE, time_to_stabilize_s=None)
        )
        store.set_state("freeze", {"until": NOW + 60})
    with Store.open(db_path) as store:
        [row] = store.stats()
        assert (row.samples, row.successes, row.ineffective) == (2, 1, 1)
        assert (row.tts_sum, row.tts_count) == (30.0, 1)
        assert {o.execution_id for o in store.recent_outcomes(10)} == {"a", "b"}
        assert store.get_state("freeze") == {"until": NOW + 60}


def test_newer_schema_is_refused_with_a_clear_message_and_the_file_untouched(
    db_path: Path,
) -> None:
    Store.open(db_path).close()
    raw = sqlite3.connect(db_path)
    with raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    raw.close()
    before = snapshot(db_path)

    with pytest.raises(StoreSchemaError) as info:
        Store.open(db_path)

    message = str(info.value)
    assert f"schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}" in message
    assert "written by a newer mape-k" in message
    assert "upgrade mape-k or point knowledge.path elsewhere" in message
    assert snapshot(db_path) == before


def test_garbage_file_is_refused_as_corrupt_and_left_untouched(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database\n" * 200)
    before = snapshot(db_path)

    with pytest.raises(StoreCorruptError, match=str(db_path)):
        Store.open(db_path)

    assert snapshot(db_path) == before
    assert siblings(db_path) == {db_path.name}


def test_sqlite_file_with_damaged_pages_is_refused_as_corrupt_and_left_untouched(
    db_path: Path,
) -> None:
    with Store.open(db_path) as store:
        for i in range(200):
            store.record_iteration(f"it-{i}", started_at=NOW + i, result="idle", record={"i": i})
    raw = sqlite3.connect(db_path)
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    data = bytearray(db_path.read_bytes())
    assert len(data) > 4 * page_size
    data[page_size : 3 * page_size] = b"\xa5" * (2 * page_size)  # pages 2 and 3
    db_path.write_bytes(bytes(data))
    before = snapshot(db_path)

    with pytest.raises(StoreCorruptError, match=str(db_path)):
        Store.open(db_path)

    assert snapshot(db_path) == before


def test_foreign_sqlite_database_is_refused_and_left_untouched(db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    with raw:
        raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    raw.close()
    before = snapshot(db_path)

    with pytest.raises(StoreSchemaError, match="not a mape-k knowledge store"):
        Store.open(db_path)

    assert snapshot(db_path) == before


def test_an_empty_existing_file_is_refused_and_left_as_is(db_path: Path) -> None:
    db_path.touch()  # a knowledge file that lost its contents, not a new store
    with pytest.raises(StoreCorruptError, match=r"empty \(0 bytes\).*remove the file"):
        Store.open(db_path)
    assert db_path.stat().st_size == 0
    assert not db_path.with_name(db_path.name + "-wal").exists()


def test_a_path_with_no_file_is_a_new_store(db_path: Path) -> None:
    assert not db_path.exists()
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
    with Store.open(db_path) as store:  # and it opens again once initialised
        assert store.schema_version == SCHEMA_VERSION


def test_failed_migration_rolls_back_entirely_and_raises_store_error(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store.open(db_path).close()
    broken = "CREATE TABLE half_done (a INTEGER); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, broken))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)

    with pytest.raises(StoreError, match=f"migration to schema {SCHEMA_VERSION + 1} failed"):
        Store.open(db_path)

    raw = sqlite3.connect(db_path)
    try:
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    finally:
        raw.close()
    assert "half_done" not in names
    assert int(version) == SCHEMA_VERSION


def test_closed_store_raises_store_error(db_path: Path) -> None:
    store = Store.open(db_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.stats()


# --- executions ------------------------------------------------------------------------


def test_execution_round_trips_through_its_json_record(db_path: Path) -> None:
    execution = make_execution()
    with Store.open(db_path) as store:
        store.upsert_execution(execution)
        assert store.get_execution("exec-1") == execution
        assert store.get_execution("nope") is None


def test_in_progress_execution_is_found_unfinished_after_a_crash(db_path: Path) -> None:
    crashed = Store.open(db_path)
    try:
        crashed.upsert_execution(make_execution("done", status=ExecutionStatus.PENDING))
        crashed.upsert_execution(
            make_execution("done", status=ExecutionStatus.COMPLETED, finished_at=NOW + 5)
        )
        crashed.upsert_execution(make_execution("running", status=ExecutionStatus.IN_PROGRESS))
        # The process dies here: no update after the action, no close.
        with Store.open(db_path) as restarted:
            unfinished = restarted.unfinished_executions()
            assert [e.id for e in unfinished] == ["running"]
            assert unfinished[0] == make_execution("running")
            assert restarted.get_execution("done").status is ExecutionStatus.COMPLETED
    finally:
        crashed.close()


def test_recent_executions_are_newest_first(db_path: Path) -> None:
    with Store.open(db_path) as store:
        for i in range(3):
            store.upsert_execution(make_execution(f"e{i}", started_at=NOW + i))
        assert [e.id for e in store.recent_executions(2)] == ["e2", "e1"]


# --- outcomes and stats ----------------------------------------------------------------


def test_same_outcome_recorded_twice_counts_once(db_path: Path) -> None:
    with Store.open(db_path) as store:
        assert store.record_outcome(make_outcome("x")) is True
        assert store.record_outcome(make_outcome("x")) is False
        assert store.record_outcome(make_outcome("x", outcome=OutcomeType.DEGRADATION)) is False
        [row] = store.stats()
        assert (row.samples, row.successes, row.degradations) == (1, 1, 0)
        assert len(store.recent_outcomes(10)) == 1


def test_unknown_outcome_is_journaled_but_not_a_sample(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.record_outcome(
            make_outcome("u", outcome=OutcomeType.UNKNOWN, time_to_stabilize_s=12.0)
        )
        [row] = store.stats()
        assert (row.samples, row.unknowns, row.tts_count) == (0, 1, 0)
        assert store.recent_outcomes(1)[0].outcome is OutcomeType.UNKNOWN


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["e1", "e2", "e3", "e4", "e5", "e6"]),
            st.sampled_from(["overload", "high_latency"]),
            st.sampled_from([ActionType.SCALE_UP, ActionType.REBALANCE_LOAD]),
            st.sampled_from(list(OutcomeType)),
        ),
        max_size=25,
    )
)
def test_samples_equal_distinct_execution_ids_whose_outcome_is_known(
    events: list[tuple[str, str, ActionType, OutcomeType]],
) -> None:
    first: dict[str, tuple[str, ActionType, OutcomeType]] = {}
    for execution_id, cause, action, outcome in events:
        first.setdefault(execution_id, (cause, action, outcome))
    expected: dict[tuple[str, ActionType], int] = {}
    for cause, action, outcome in first.values():
        if outcome is not OutcomeType.UNKNOWN:
            expected[(cause, action)] = expected.get((cause, action), 0) + 1

    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "k.sqlite3") as store:
        for execution_id, cause, action, outcome in events:
            store.record_outcome(
                make_outcome(execution_id, cause=cause, action_type=action, outcome=outcome)
            )
        got = {(r.cause, r.action_type): r.samples for r in store.stats() if r.samples}

    assert got == expected
    assert sum(got.values()) == sum(
        1 for _, _, outcome in first.values() if outcome is not OutcomeType.UNKNOWN
    )


# --- retention -------------------------------------------------------------------------


def test_prune_drops_old_rows_but_stats_and_unfinished_executions_survive(db_path: Path) -> None:
    old, recent = NOW - 40 * DAY, NOW - 1 * DAY
    with Store.open(db_path) as store:
        store.record_outcome(make_outcome("old", recorded_at=old))
        store.record_outcome(make_outcome("new", recorded_at=recent))
        store.record_iteration("it-old", started_at=old, result="acted", record={})
        store.record_iteration("it-new", started_at=recent, result="idle", record={})
        store.upsert_execution(
            make_execution(
                "old-done", status=ExecutionStatus.COMPLETED, started_at=old, finished_at=old
            )
        )
        store.upsert_execution(make_execution("old-stuck", started_at=old))
        decision = GuardDecision(guard="cooldown", verdict=GuardVerdict.DELAY, reason="recent")
        store.record_guard_decision(decision, at=old)
        store.record_control(at=old, route="/control/freeze", body={"for_s": 60}, caller="ops")

        deleted = store.prune(now=NOW, retention_days=30, max_rows=1000)

        assert deleted == {
            "iterations": 1,
            "executions": 1,
            "outcomes": 1,
            "guard_decisions": 1,
            "control_log": 1,
        }
        assert [o.execution_id for o in store.recent_outcomes(10)] == ["new"]
        assert [i["id"] for i in store.recent_iterations(10)] == ["it-new"]
        assert [e.id for e in store.unfinished_executions()] == ["old-stuck"]
        assert store.get_execution("old-done") is None
        [row] = store.stats()
        assert row.samples == 2  # what was learned from the pruned outcome is kept


def test_prune_keeps_at_most_max_rows_newest_per_table(db_path: Path) -> None:
    with Store.open(db_path) as store:
        for i in range(7):
            store.record_iteration(f"it-{i}", started_at=NOW + i, result="idle", record={"i": i})
            store.record_outcome(make_outcome(f"o-{i}", recorded_at=NOW + i))

        deleted = store.prune(now=NOW + 10, retention_days=30, max_rows=3)

        assert deleted["iterations"] == 4
        assert deleted["outcomes"] == 4
        assert [i["id"] for i in store.recent_iterations(10)] == ["it-6", "it-5", "it-4"]
        assert [o.execution_id for o in store.recent_outcomes(10)] == ["o-6", "o-5", "o-4"]
        assert store.stats()[0].samples == 7


# --- guard decisions, control log, state -----------------------------------------------


def test_guard_decisions_and_control_log_are_returned_newest_first(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.record_guard_decision(
            GuardDecision(guard="freeze", verdict=GuardVerdict.BLOCK, reason="frozen", until=NOW),
            at=NOW,
        )
        store.record_guard_decision(
            GuardDecision(
                guard="cooldown", verdict=GuardVerdict.DELAY, reason="recent", policy_id="p1"
            ),
            at=NOW + 1,
        )
        store.record_control(at=NOW, route="/control/freeze", body={"for_s": 60}, caller="ops")
        store.record_control(at=NOW + 1, route="/control/unfreeze")

        decisions = store.recent_guard_decisions(10)
        control = store.recent_control(10)

    assert [(d["guard"], d["verdict"], d["policy_id"]) for d in decisions] == [
        ("cooldown", "delay", "p1"),
        ("freeze", "block", None),
    ]
    assert decisions[1]["until"] == NOW
    assert control[0]["route"] == "/control/unfreeze"
    assert control[0]["body"] is None
    assert control[1]["body"] == {"for_s": 60}
    assert control[1]["caller"] == "ops"


def test_state_is_upserted_and_deleted(db_path: Path) -> None:
    with Store.open(db_path) as store:
        assert store.get_state("breakers") is None
        store.set_state("breakers", {"charter": "open"}, at=NOW)
        store.set_state("breakers", {"charter": "closed"}, at=NOW + 1)
        assert store.get_state("breakers") == {"charter": "closed"}
        store.delete_state("breakers")
        assert store.get_state("breakers") is None


def test_iteration_record_is_replaced_on_same_id(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.record_iteration("it", started_at=NOW, result="idle", record={"v": 1})
        store.record_iteration("it", started_at=NOW, result="acted", record={"v": 2})
        assert store.recent_iterations(5) == [
            {"id": "it", "started_at": NOW, "result": "acted", "record": {"v": 2}}
        ]


def test_records_of_frozen_dataclasses_serialise_enums_as_values(db_path: Path) -> None:
    execution = replace(make_execution(), status=ExecutionStatus.ROLLED_BACK)
    with Store.open(db_path) as store:
        store.upsert_execution(execution)
    raw = sqlite3.connect(db_path)
    try:
        status, record = raw.execute("SELECT status, record FROM executions").fetchone()
    finally:
        raw.close()
    assert status == "rolled_back"
    assert '"status":"rolled_back"' in record
    assert '"action_type":"scale_up"' in record


# --- alert inbox -------------------------------------------------------------------------


def test_a_schema_1_file_migrates_to_keep_the_alert_inbox_and_its_data(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as old:
        old.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:1])
        old.setattr(store_module, "SCHEMA_VERSION", 1)
        with Store.open(db_path) as store:
            store.set_state("freeze", {"reason": "kept"})
            with pytest.raises(StoreError, match="no such table: alert_inbox"):
                store.inbox_rows()
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.get_state("freeze") == {"reason": "kept"}
        assert store.inbox_rows() == []


def test_inbox_rows_round_trip_are_upserted_by_key_and_come_oldest_first(db_path: Path) -> None:
    firing = InboxRow("f1", "firing", NOW - 60, None, NOW, {"alertname": "A", "cause": "x"})
    resolved = InboxRow("f2", "resolved", NOW - 120, NOW - 10, NOW - 5)
    with Store.open(db_path) as store:
        store.save_inbox([firing, resolved], [])
        store.save_inbox(
            [replace(firing, seen_at=NOW + 30)], [("f2", "resolved"), ("zz", "firing")]
        )
        assert store.inbox_rows() == [replace(firing, seen_at=NOW + 30)]
        store.save_inbox([resolved, InboxRow("f1", "resolved", NOW - 60, NOW, NOW + 31)], [])
    with Store.open(db_path) as store:
        rows = store.inbox_rows()
    assert [(r.fingerprint, r.status) for r in rows] == [
        ("f2", "resolved"),
        ("f1", "firing"),
        ("f1", "resolved"),
    ]
    assert rows[0] == resolved


@pytest.mark.parametrize("labels", ["[1]", '{"a": 1}', "not json"])
def test_an_unreadable_inbox_row_is_a_store_corrupt_error(db_path: Path, labels: str) -> None:
    with Store.open(db_path) as store:
        store.save_inbox([InboxRow("f1", "firing", NOW, None, NOW, {"a": "b"})], [])
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE alert_inbox SET labels = ?", (labels,))
    with Store.open(db_path) as store, pytest.raises(StoreCorruptError):
        store.inbox_rows()


# --- byte budget, incremental vacuum, write failures -----------------------------------


def on_disk(path: Path) -> int:
    """What the store takes on the file system: the database file and its WAL."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def big_record(i: int, size: int = 2000) -> dict[str, object]:
    return {"i": i, "inputs": {"violations": [{"kind": "k", "pad": "x" * size}]}}


def raw_auto_vacuum(path: Path) -> int:
    raw = sqlite3.connect(path)
    try:
        return int(raw.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        raw.close()


def test_the_file_shrinks_when_old_records_are_pruned(db_path: Path) -> None:
    with Store.open(db_path) as store:
        for i in range(2000):
            store.record_iteration(
                f"it-{i}", started_at=NOW + i, result="idle", record=big_record(i)
            )
        before = on_disk(db_path)
        store.prune(now=NOW + 2000, retention_days=30, max_rows=100)
        after = on_disk(db_path)
        assert [i["id"] for i in store.recent_iterations(1)] == ["it-1999"]
    # 100 records of ~2 kB are left: the pages of the other 1900 went back to the disk.
    assert before > 4_000_000
    assert after < 1_000_000, after
    assert raw_auto_vacuum(db_path) == 2  # INCREMENTAL


def test_a_file_made_before_incremental_vacuum_is_converted_once_and_keeps_its_data(
    db_path: Path,
) -> None:
    raw = sqlite3.connect(db_path, isolation_level=None)
    try:  # what an earlier mape-k made: schema 1, auto_vacuum NONE, some history
        raw.executescript(store_module.MIGRATIONS[0])
        raw.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
        raw.execute("INSERT INTO state (key, value, updated_at) VALUES ('guards', '{\"a\": 1}', 0)")
        raw.execute(
            "INSERT INTO iterations (id, started_at, result, record)"
            " VALUES ('it-0', ?, 'idle', '{}')",
            (NOW,),
        )
    finally:
        raw.close()
    assert raw_auto_vacuum(db_path) == 0

    with structlog.testing.capture_logs() as logs, Store.open(db_path) as store:
        assert store.get_state("guards") == {"a": 1}
        assert [i["id"] for i in store.recent_iterations(5)] == ["it-0"]
    assert raw_auto_vacuum(db_path) == 2
    assert [e["event"] for e in logs].count("store_converted_to_incremental_vacuum") == 1
    with structlog.testing.capture_logs() as logs, Store.open(db_path):
        pass
    assert "store_converted_to_incremental_vacuum" not in [e["event"] for e in logs]


def test_the_byte_budget_holds_over_thousands_of_records_and_keeps_what_is_needed(
    db_path: Path,
) -> None:
    budget = 1_048_576
    metrics = Metrics(CollectorRegistry())
    with Store.open(db_path, max_bytes=budget, metrics=metrics) as store:
        store.upsert_execution(make_execution("stuck", started_at=NOW))  # unfinished: kept
        store.record_outcome(make_outcome("learned", recorded_at=NOW))
        store.set_state("guards", {"history": [1, 2, 3]})
        worst = 0
        for i in range(3000):  # ~6 MB of decision records through a 1 MiB budget
            store.record_iteration(
                f"it-{i}", started_at=NOW + i, result="idle", record=big_record(i)
            )
            if i % 10 == 0:
                store.record_guard_decision(
                    GuardDecision(guard="cooldown", verdict=GuardVerdict.DELAY, reason="r" * 500),
                    at=NOW + i,
                )
            worst = max(worst, on_disk(db_path))
        newest = [i["id"] for i in store.recent_iterations(3)]
        kept = store.recent_iterations(10_000)
        assert [e.id for e in store.unfinished_executions()] == ["stuck"]
        assert store.stats()[0].samples == 1
        assert store.get_state("guards") == {"history": [1, 2, 3]}
        bytes_gauge = metrics.registry.get_sample_value("mapek_knowledge_bytes")
        reported = store.size().total
    assert worst <= budget, f"{worst} bytes on disk with a budget of {budget}"
    assert newest == ["it-2999", "it-2998", "it-2997"]
    assert 10 < len(kept) < 3000  # the oldest went, the budget did not empty the table
    pruned = metrics.registry.get_sample_value(
        "mapek_knowledge_pruned_rows_total", {"table": "iterations", "reason": "bytes"}
    )
    assert pruned == 3000 - len(kept)
    assert bytes_gauge == reported


def test_a_full_disk_is_a_write_problem_until_writes_succeed_again(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.record_iteration("it-0", started_at=NOW, result="idle", record={})
        assert store.write_problem() is None
        conn = store._require_open()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        # SQLite answers SQLITE_FULL past max_page_count exactly as on a full disk.
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with structlog.testing.capture_logs() as logs:
            for i in (1, 2):
                with pytest.raises(StoreError, match="database or disk is full"):
                    store.record_iteration(
                        f"it-{i}", started_at=NOW + i, result="idle", record=big_record(i, 50_000)
                    )
        assert store.write_problem() == (
            "cannot write: record_iteration failed: database or disk is full"
        )
        assert [e["event"] for e in logs].count("store_write_failed") == 1  # once, not per write
        store.set_state("small", 1)  # fits in the pages there are: not proof the disk is fine
        assert store.write_problem() is not None
        conn.execute(f"PRAGMA max_page_count = {pages * 100}")
        store.record_iteration("it-3", started_at=NOW + 3, result="idle", record=big_record(3))
        assert store.write_problem() is None


def test_iterations_page_backwards_by_start_time(db_path: Path) -> None:
    with Store.open(db_path) as store:
        for i in range(7):
            store.record_iteration(f"it-{i}", started_at=NOW + i, result="idle", record={"i": i})
        first = store.recent_iterations(3)
        second = store.recent_iterations(3, before=first[-1]["started_at"])
        last = store.recent_iterations(3, before=second[-1]["started_at"])
    assert [i["id"] for i in first] == ["it-6", "it-5", "it-4"]
    assert [i["id"] for i in second] == ["it-3", "it-2", "it-1"]
    assert [i["id"] for i in last] == ["it-0"]


def test_a_policy_journaled_before_posteriors_loads_without_one() -> None:
    stored = to_jsonable(builders.policy(ActionType.RESTART_SERVICE))
    stored["score"] = {  # as written before: a knowledge weight, no posterior
        "cost": 0.3,
        "benefit": 0.75,
        "knowledge_weight": 0.9,
        "confidence": 0.6,
        "score": 0.105,
    }
    policy = policy_from_record(stored)
    assert policy.score.posterior is None
    assert policy.score.score == 0.105
    now = to_jsonable(builders.policy(ActionType.RESTART_SERVICE))
    now["score"]["posterior"] = {"alpha": 1.5, "beta": 0.5, "samples": 0.0}
    assert policy_from_record(now).score.posterior.mean == 0.75


def test_a_journaled_policy_keeps_its_shadow_mark_and_the_change_it_rolls_back() -> None:
    # A rollback of a recorded change keeps its level inside the change's window: an
    # approval restored after a restart must still say whose rollback it is, or a reload
    # lowers it and revokes the approval.
    stored = to_jsonable(
        replace(builders.policy(ActionType.APPLY_POLICY), rollback_of="chg-1", shadow=True)
    )
    policy = policy_from_record(stored)
    assert (policy.rollback_of, policy.shadow) == ("chg-1", True)
