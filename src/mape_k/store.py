"""The knowledge store: one SQLite file (WAL) holding the journal and what was learned.

Schema + ordered migrations, journal of iterations / executions / outcomes / guard
decisions / control calls, aggregated per-(cause, action) statistics, key/value daemon
state, and retention: by age and row count (`prune`, hourly) and by bytes (a budget
checked after every write; the oldest history goes first, and incremental vacuum gives
the freed pages back to the file system). It never overwrites or deletes an existing file
it cannot read. No policy logic here: Knowledge decides what the numbers mean.

`JournalStore` is what both backends share: every journal and knowledge query, written
once in the SQL that SQLite and PostgreSQL both speak, and every row <-> value conversion.
`Store` adds the SQLite file (open, migrations, integrity, size, vacuum, the byte budget);
`pgstore.PostgresStore` the same on PostgreSQL, with the leader lease and fenced writes.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import structlog

from mape_k.errors import StoreCorruptError, StoreError, StoreSchemaError
from mape_k.metrics import Metrics
from mape_k.models import (
    ActionExecution,
    ActionName,
    CandidateScore,
    Cause,
    ExecutionStatus,
    GuardDecision,
    KnobSetting,
    OutcomeType,
    PatternKind,
    PolicyExecution,
    PolicyOutcome,
    Posterior,
    RemediationAction,
    RemediationPolicy,
    Severity,
    ViolationSource,
    action_name,
)

log = structlog.get_logger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 5000

# Append-only: migration i (0-based) takes the file from schema i to schema i + 1.
# Never edit a released entry; add a new one. Each runs in its own transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE iterations (
        id TEXT PRIMARY KEY,
        started_at REAL NOT NULL,
        result TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX iterations_started_at ON iterations (started_at);
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        policy_id TEXT NOT NULL,
        cause TEXT NOT NULL,
        target TEXT NOT NULL,
        action_type TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        dry_run INTEGER NOT NULL DEFAULT 0,
        record TEXT NOT NULL
    );
    CREATE INDEX executions_status ON executions (status);
    CREATE INDEX executions_started_at ON executions (started_at);
    CREATE TABLE outcomes (
        execution_id TEXT PRIMARY KEY,
        policy_id TEXT NOT NULL,
        cause TEXT NOT NULL,
        action_type TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        value_before REAL,
        value_after REAL,
        threshold REAL,
        time_to_stabilize_s REAL,
        recorded_at REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX outcomes_recorded_at ON outcomes (recorded_at);
    CREATE TABLE stats (
        cause TEXT NOT NULL,
        action_type TEXT NOT NULL,
        samples INTEGER NOT NULL DEFAULT 0,
        successes INTEGER NOT NULL DEFAULT 0,
        partials INTEGER NOT NULL DEFAULT 0,
        ineffective INTEGER NOT NULL DEFAULT 0,
        degradations INTEGER NOT NULL DEFAULT 0,
        unknowns INTEGER NOT NULL DEFAULT 0,
        tts_sum REAL NOT NULL DEFAULT 0,
        tts_count INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (cause, action_type)
    );
    CREATE TABLE guard_decisions (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        guard TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT NOT NULL,
        policy_id TEXT,
        until REAL
    );
    CREATE INDEX guard_decisions_at ON guard_decisions (at);
    CREATE TABLE control_log (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        route TEXT NOT NULL,
        body TEXT,
        caller TEXT
    );
    CREATE INDEX control_log_at ON control_log (at);
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
    """,
    # 2: the alert inbox survives a restart (firing alerts and the resolves it remembers).
    """
    CREATE TABLE alert_inbox (
        fingerprint TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
        starts_at REAL NOT NULL,
        ends_at REAL,
        seen_at REAL NOT NULL,
        labels TEXT,
        PRIMARY KEY (fingerprint, status)
    );
    """,
    # 3: high availability. The leader's epoch on every journal entry it writes (NULL: a
    # single node), and the leader lease replicas contend for (used on PostgreSQL only;
    # the same schema on both backends).
    """
    ALTER TABLE iterations ADD COLUMN epoch INTEGER;
    ALTER TABLE executions ADD COLUMN epoch INTEGER;
    ALTER TABLE outcomes ADD COLUMN epoch INTEGER;
    ALTER TABLE guard_decisions ADD COLUMN epoch INTEGER;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        acquired_at REAL NOT NULL,
        renewed_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_UNFINISHED = (ExecutionStatus.PENDING.value, ExecutionStatus.IN_PROGRESS.value)

# (table, time expression, extra condition) for retention; constants, never user input.
# Under the byte budget the tables are emptied in this order (oldest rows first): the
# decision records are nearly all of the bytes; the operators' audit trail goes last.
# `stats`, `state`, `meta` and unfinished executions are never deleted.
_RETAINED: tuple[tuple[str, str, str], ...] = (
    ("iterations", "started_at", "TRUE"),
    ("guard_decisions", "at", "TRUE"),
    ("outcomes", "recorded_at", "TRUE"),
    ("executions", "COALESCE(finished_at, started_at)", "status NOT IN ('pending', 'in_progress')"),
    ("control_log", "at", "TRUE"),
)
# The tie-break column of a retained table where it is not `rowid` (PostgreSQL: `seq`).
_TIE_BREAK: Mapping[str, str] = {"guard_decisions": "id", "control_log": "id"}
# A decision record is the largest regular write, every iteration: once one is written
# again, earlier failures of rarer, smaller writes (a control call) are over too.
_CLEARS_ALL_FAILURES = frozenset({"record_iteration"})
# The byte budget keeps this many newest rows of each table whatever it costs.
BUDGET_KEEP_NEWEST = 10
# Pruned down to this share of the budget, so the next prune is not one write away.
BUDGET_LOW_WATER = 0.9
_WAL_LIMIT_MAX = 4 * 1024 * 1024
_WAL_LIMIT_MIN = 64 * 1024


@dataclass(frozen=True, slots=True)
class PairStats:
    """The aggregated counters of one (cause, action type) pair, as stored."""

    cause: str
    action_type: ActionName
    samples: int  # outcomes other than UNKNOWN
    successes: int
    partials: int
    ineffective: int
    degradations: int
    unknowns: int  # recorded, but not samples
    tts_sum: float
    tts_count: int


@dataclass(frozen=True, slots=True)
class InboxRow:
    """One remembered alert of the inbox, as stored (see AlertInbox for the meaning).

    `status` "firing": an alert firing now; `ends_at` its endsAt (None when unset),
    `seen_at` its latest delivery, `labels` what its violation is made of.
    `status` "resolved": the latest resolve of the fingerprint; `starts_at` its startsAt,
    `ends_at` the end it set, `seen_at` its receipt, `labels` None.
    """

    fingerprint: str
    status: str
    starts_at: float
    ends_at: float | None
    seen_at: float
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Fence:
    """The leader's claim written with every fenced write: the lease `holder` and its
    `epoch`. On PostgreSQL a fenced write commits only while the lease row says exactly
    this and has not expired by the database's clock (else StaleEpochError)."""

    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class LeaseState:
    """One lease row as the database holds it after an acquire, renew or read. Times are
    the database's clock (seconds since the epoch); `now` is that clock at the read."""

    name: str
    holder: str
    epoch: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    now: float

    def held_by(self, holder: str) -> bool:
        return self.holder == holder and self.expires_at > self.now


@dataclass(frozen=True, slots=True)
class StoreSize:
    """Bytes of the knowledge store: the database (its pages) plus the WAL file."""

    database: int  # page_count x page_size: what the main file holds once checkpointed
    free: int  # pages on the freelist (reusable, returned by incremental vacuum), in bytes
    wal: int

    @property
    def total(self) -> int:
        return self.database + self.wal

    @property
    def live(self) -> int:
        return self.database - self.free


_PLAIN: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def _key(key: Any) -> str:
    return key if type(key) is str else key.value if isinstance(key, Enum) else str(key)


def to_jsonable(value: Any) -> Any:
    """Dataclasses → dicts, enums → their values, tuples → lists (recursively)."""
    if type(value) in _PLAIN:  # exact types first: most values are leaves
        return value
    if isinstance(value, Mapping):
        return {_key(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in fields(value)}
    return value


def _dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)


# --- decoding records back into models ---------------------------------------------------


def _cause_from(data: Mapping[str, Any]) -> Cause:
    return Cause(
        name=data["name"],
        target=data["target"],
        severity=Severity(data["severity"]),
        confidence=float(data["confidence"]),
        violations=int(data["violations"]),
        patterns=tuple(PatternKind(p) for p in data.get("patterns", ())),
        query=data.get("query"),
        value=data.get("value"),
        threshold=data.get("threshold"),
        source=ViolationSource(data.get("source", ViolationSource.RULE.value)),
        labels=dict(data.get("labels", {})),
        annotations=dict(data.get("annotations", {})),
    )


def _action_from(data: Mapping[str, Any]) -> RemediationAction:
    sets = data.get("sets")  # absent in journals written before actions were resolved
    return RemediationAction(
        action_type=action_name(data["action_type"]),
        target=data["target"],
        parameters=dict(data.get("parameters", {})),
        sets=None if sets is None else tuple(KnobSetting(**s) for s in sets),
    )


def _score_from(data: Mapping[str, Any]) -> CandidateScore:
    """A stored score; one written before posteriors (with a knowledge_weight) loads
    without a posterior."""
    belief = data.get("posterior")
    return CandidateScore(
        cost=float(data["cost"]),
        benefit=float(data["benefit"]),
        confidence=float(data["confidence"]),
        score=float(data["score"]),
        posterior=None
        if belief is None
        else Posterior(
            alpha=float(belief["alpha"]),
            beta=float(belief["beta"]),
            samples=float(belief.get("samples", 0.0)),
        ),
        exploration=float(data.get("exploration", 0.0)),
    )


def policy_from_record(data: Mapping[str, Any]) -> RemediationPolicy:
    return RemediationPolicy(
        id=data["id"],
        cause=_cause_from(data["cause"]),
        actions=tuple(_action_from(a) for a in data["actions"]),
        score=_score_from(data["score"]),
        requires_approval=bool(data["requires_approval"]),
        created_at=float(data["created_at"]),
        rationale=data.get("rationale", ""),
        shadow=bool(data.get("shadow", False)),
        rollback_of=data.get("rollback_of"),
    )


def _action_execution_from(data: Mapping[str, Any]) -> ActionExecution:
    return ActionExecution(
        action=_action_from(data["action"]),
        status=ExecutionStatus(data["status"]),
        idempotency_key=data["idempotency_key"],
        started_at=data.get("started_at"),
        finished_at=data.get("finished_at"),
        result=dict(data.get("result", {})),
        error=data.get("error"),
    )


def execution_from_record(data: Mapping[str, Any]) -> PolicyExecution:
    """Rebuild a PolicyExecution from the JSON record `upsert_execution` wrote."""
    return PolicyExecution(
        id=data["id"],
        policy=policy_from_record(data["policy"]),
        status=ExecutionStatus(data["status"]),
        actions=tuple(_action_execution_from(a) for a in data["actions"]),
        started_at=float(data["started_at"]),
        finished_at=data.get("finished_at"),
        error=data.get("error"),
        dry_run=bool(data.get("dry_run", False)),
        baseline=data.get("baseline"),
        baseline_trend=data.get("baseline_trend"),
        baseline_load=data.get("baseline_load"),
        baseline_utilisation=data.get("baseline_utilisation"),
    )


def _pair_stats(row: Mapping[str, Any] | sqlite3.Row) -> PairStats:
    """A (cause, action) counters row of the stats table or of a per-target aggregate."""
    return PairStats(
        cause=row["cause"],
        action_type=action_name(row["action_type"]),
        samples=row["samples"],
        successes=row["successes"],
        partials=row["partials"],
        ineffective=row["ineffective"],
        degradations=row["degradations"],
        unknowns=row["unknowns"],
        tts_sum=row["tts_sum"],
        tts_count=row["tts_count"],
    )


def _outcome_from(row: Mapping[str, Any] | sqlite3.Row) -> PolicyOutcome:
    return PolicyOutcome(
        execution_id=row["execution_id"],
        policy_id=row["policy_id"],
        cause=row["cause"],
        action_type=action_name(row["action_type"]),
        target=row["target"],
        outcome=OutcomeType(row["outcome"]),
        recorded_at=row["recorded_at"],
        value_before=row["value_before"],
        value_after=row["value_after"],
        threshold=row["threshold"],
        time_to_stabilize_s=row["time_to_stabilize_s"],
        detail=row["detail"],
    )


def _is_corruption(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "file is encrypted" in text


def _wrap(path: Path, what: str, exc: sqlite3.Error) -> StoreError:
    if _is_corruption(exc):
        return StoreCorruptError(f"{path}: {what}: database is corrupt ({exc})")
    return StoreError(f"{path}: {what}: {exc}")


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite ever touches it.

    A 0-byte file is refused too: SQLite would initialise it silently, but an existing
    knowledge file that is empty lost its contents (truncated, a failed copy), and starting
    over on it would hide that. Only a path with no file is a new store.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read knowledge file {path}: {exc.strerror}") from exc
    if not head:
        raise StoreCorruptError(
            f"{path} is empty (0 bytes), not a knowledge store; refusing to initialise it"
            " (remove the file to start a new store)"
        )
    if head != SQLITE_HEADER:
        raise StoreCorruptError(
            f"{path} is not a SQLite database; refusing to open it (the file was left as is)"
        )


class JournalWriter(Protocol):
    """The statements of one write transaction of either backend."""

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement; return its row count."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class JournalStore(ABC):
    """The journal and what was learned, written once for both backends (`Store` on SQLite,
    `pgstore.PostgresStore` on PostgreSQL): every query and every row <-> value conversion.

    The SQL is SQLite's and PostgreSQL's common dialect, written with `?` placeholders and
    `rowid` as the tie-break column; the PostgreSQL backend rewrites both (`%s`, `seq`).
    A backend provides the reads (`_read`), the write transactions (`_write`: `fenced`
    writes are conditional on the leader lease where there is one), the bytes (`size`,
    `_reclaim`, and `_after_write` with the byte budget's `shrink`) and its lifecycle.
    """

    _fence: Fence | None
    _max_bytes: int | None
    _metrics: Metrics | None
    _schema_version: int
    _write_failures: dict[str, tuple[float, str]]

    # --- backend hooks ---------------------------------------------------------------

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store is, for logs, /readyz and every error message."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent)."""

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any]) -> Sequence[Any]:
        """One read; rows that index by column name."""

    @abstractmethod
    def _write(
        self, what: str, *, fenced: bool = False, budget: bool = True
    ) -> AbstractContextManager[JournalWriter]:
        """One write transaction named `what` (in errors and `write_problem`); with
        `budget`, the byte budget is kept after its commit."""

    @abstractmethod
    def _log_context(self) -> dict[str, str]:
        """Where the store is, as log fields."""

    @abstractmethod
    def size(self) -> StoreSize: ...

    @abstractmethod
    def _after_write(self) -> None:
        """Keep the byte budget after a write."""

    @abstractmethod
    def _reclaim(self, tables: Sequence[str]) -> None:
        """Make the space of the rows `prune` deleted from `tables` usable again."""

    # --- common plumbing -------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._schema_version

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    @property
    def fence(self) -> Fence | None:
        return self._fence

    def set_fence(self, fence: Fence | None) -> None:
        """Write `fence.epoch` with every journal entry from now on (None: a single node,
        nothing checked, epoch NULL). On PostgreSQL every fenced write is also conditional
        on `fence` holding the lease (see PostgresStore); one SQLite file has one writer,
        so nothing is checked there."""
        self._fence = fence

    @property
    def _epoch(self) -> int | None:
        return None if self._fence is None else self._fence.epoch

    def write_problem(self) -> str | None:
        """Why the store cannot write now (a kind of write failed and has not succeeded
        since), or None. `/readyz` shows it: a full disk is not `knowledge: ok`."""
        failures = dict(self._write_failures)
        if not failures:
            return None
        what, (_at, error) = max(failures.items(), key=lambda item: item[1][0])
        others = f" (and {len(failures) - 1} other kinds of write)" if len(failures) > 1 else ""
        return f"cannot write: {what} failed: {error}{others}"

    def _write_succeeded(self, what: str) -> None:
        """A write of kind `what` committed: its failures are over (every kind's, after a
        decision record)."""
        if what in _CLEARS_ALL_FAILURES:
            self._write_failures.clear()
        else:
            self._write_failures.pop(what, None)
        self._note_writable()

    def _write_failed(self, what: str, error: str, *, logged: str | None = None) -> None:
        """Remember why a write of kind `what` failed, until one succeeds (`write_problem`);
        log the first failure (`logged`: what the log says, by default `error`)."""
        first = what not in self._write_failures
        self._write_failures[what] = (time.time(), error)
        self._note_writable()
        if first:
            log.error(
                "store_write_failed",
                **self._log_context(),
                write=what,
                error=error if logged is None else logged,
            )

    def _note_writable(self) -> None:
        if self._metrics is not None:
            self._metrics.knowledge_writable.set(0 if self._write_failures else 1)

    def _loads(self, text: str | None) -> Any:
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise StoreCorruptError(f"{self.location}: a stored record is not JSON") from exc

    # --- iterations ------------------------------------------------------------------

    def record_iteration(
        self, iteration_id: str, *, started_at: float, result: str, record: Mapping[str, Any]
    ) -> None:
        """Store (or replace) the decision record of one iteration."""
        with self._write("record_iteration", fenced=True) as tx:
            tx.execute(
                "INSERT INTO iterations (id, started_at, result, record, epoch)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at,"
                " result = excluded.result, record = excluded.record, epoch = excluded.epoch",
                (iteration_id, started_at, result, _dumps(record), self._epoch),
            )

    def recent_iterations(self, limit: int, *, before: float | None = None) -> list[dict[str, Any]]:
        """Newest first: {"id", "started_at", "result", "record"}; with `before`, only the
        iterations that started before that time (the next page of /stats)."""
        where, params = (
            ("", (limit,)) if before is None else ("WHERE started_at < ?", (before, limit))
        )
        rows = self._read(
            f"SELECT id, started_at, result, record FROM iterations {where}"  # noqa: S608
            " ORDER BY started_at DESC, rowid DESC LIMIT ?",
            params,
        )
        return [
            {
                "id": row["id"],
                "started_at": row["started_at"],
                "result": row["result"],
                "record": self._loads(row["record"]),
            }
            for row in rows
        ]

    def iteration(self, iteration_id: str) -> dict[str, Any] | None:
        """One journaled decision record, or None."""
        rows = self._read("SELECT record FROM iterations WHERE id = ?", (iteration_id,))
        record = self._loads(rows[0]["record"]) if rows else None
        return record if isinstance(record, dict) else None

    # --- executions ------------------------------------------------------------------

    def upsert_execution(self, execution: PolicyExecution) -> None:
        """Write before acting (pending / in_progress) and again after: a crash leaves a trace."""
        policy = execution.policy
        with self._write("upsert_execution", fenced=True) as tx:
            tx.execute(
                "INSERT INTO executions (id, policy_id, cause, target, action_type, status,"
                " started_at, finished_at, dry_run, record, epoch)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET policy_id = excluded.policy_id,"
                " cause = excluded.cause, target = excluded.target,"
                " action_type = excluded.action_type, status = excluded.status,"
                " started_at = excluded.started_at, finished_at = excluded.finished_at,"
                " dry_run = excluded.dry_run, record = excluded.record, epoch = excluded.epoch",
                (
                    execution.id,
                    policy.id,
                    policy.cause.name,
                    policy.target,
                    policy.primary_action,
                    execution.status.value,
                    execution.started_at,
                    execution.finished_at,
                    int(execution.dry_run),
                    _dumps(execution),
                    self._epoch,
                ),
            )

    def _executions(self, where: str, params: Sequence[Any]) -> list[PolicyExecution]:
        rows = self._read(f"SELECT record FROM executions {where}", params)  # noqa: S608 - constant clauses
        out: list[PolicyExecution] = []
        for row in rows:
            try:
                out.append(execution_from_record(self._loads(row["record"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreCorruptError(f"{self.location}: unreadable execution record") from exc
        return out

    def get_execution(self, execution_id: str) -> PolicyExecution | None:
        found = self._executions("WHERE id = ?", (execution_id,))
        return found[0] if found else None

    def recent_executions(self, limit: int) -> list[PolicyExecution]:
        """Newest first."""
        return self._executions("ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,))

    def target_executions(self, target: str, limit: int) -> list[PolicyExecution]:
        """A target's executions, newest first (the console's charts)."""
        return self._executions(
            "WHERE target = ? ORDER BY started_at DESC, rowid DESC LIMIT ?", (target, limit)
        )

    def unfinished_executions(self) -> list[PolicyExecution]:
        """Executions still pending / in progress (after a crash: to reconcile), oldest first."""
        return self._executions(
            "WHERE status IN (?, ?) ORDER BY started_at, rowid", tuple(_UNFINISHED)
        )

    def unverified_executions(self, *, since: float) -> list[PolicyExecution]:
        """Completed (not dry-run) executions finished at or after `since` with no outcome
        recorded yet: the verifications a restart must wait for again. Oldest first."""
        return self._executions(
            "WHERE status = ? AND dry_run = 0 AND finished_at >= ?"
            " AND id NOT IN (SELECT execution_id FROM outcomes) ORDER BY finished_at, rowid",
            (ExecutionStatus.COMPLETED.value, since),
        )

    def executions_finished_since(self, since: float) -> list[PolicyExecution]:
        """Executions (not dry-run) that finished at or after `since`, oldest first."""
        return self._executions(
            "WHERE dry_run = 0 AND finished_at >= ? ORDER BY finished_at, rowid", (since,)
        )

    # --- outcomes and statistics -----------------------------------------------------

    def record_outcome(self, outcome: PolicyOutcome) -> bool:
        """Insert the outcome and fold it into `stats`, atomically; False if already recorded."""
        kind = outcome.outcome
        counted = kind is not OutcomeType.UNKNOWN
        tts = outcome.time_to_stabilize_s if counted else None
        with self._write("record_outcome", fenced=True) as tx:
            inserted = (
                tx.execute(
                    "INSERT INTO outcomes (execution_id, policy_id, cause, action_type,"
                    " target, outcome, value_before, value_after, threshold, time_to_stabilize_s,"
                    " recorded_at, detail, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (execution_id) DO NOTHING",
                    (
                        outcome.execution_id,
                        outcome.policy_id,
                        outcome.cause,
                        outcome.action_type,
                        outcome.target,
                        kind.value,
                        outcome.value_before,
                        outcome.value_after,
                        outcome.threshold,
                        outcome.time_to_stabilize_s,
                        outcome.recorded_at,
                        outcome.detail,
                        self._epoch,
                    ),
                )
                == 1
            )
            if inserted:
                tx.execute(
                    "INSERT INTO stats AS s (cause, action_type, samples, successes, partials,"
                    " ineffective, degradations, unknowns, tts_sum, tts_count)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (cause, action_type) DO UPDATE SET"
                    " samples = s.samples + excluded.samples,"
                    " successes = s.successes + excluded.successes,"
                    " partials = s.partials + excluded.partials,"
                    " ineffective = s.ineffective + excluded.ineffective,"
                    " degradations = s.degradations + excluded.degradations,"
                    " unknowns = s.unknowns + excluded.unknowns,"
                    " tts_sum = s.tts_sum + excluded.tts_sum,"
                    " tts_count = s.tts_count + excluded.tts_count",
                    (
                        outcome.cause,
                        outcome.action_type,
                        int(counted),
                        int(kind is OutcomeType.SUCCESS),
                        int(kind is OutcomeType.PARTIAL),
                        int(kind is OutcomeType.INEFFECTIVE),
                        int(kind is OutcomeType.DEGRADATION),
                        int(not counted),
                        tts or 0.0,
                        int(tts is not None),
                    ),
                )
        return inserted

    def _outcomes(self, sql: str, params: Sequence[Any]) -> list[PolicyOutcome]:
        rows = self._read(sql, params)
        try:
            return [_outcome_from(row) for row in rows]
        except ValueError as exc:
            raise StoreCorruptError(f"{self.location}: unreadable outcome row") from exc

    def recent_outcomes(self, limit: int) -> list[PolicyOutcome]:
        """Newest first."""
        return self._outcomes(
            "SELECT * FROM outcomes ORDER BY recorded_at DESC, rowid DESC LIMIT ?", (limit,)
        )

    def outcome(self, execution_id: str) -> PolicyOutcome | None:
        """The verified outcome of one execution, or None (not verified yet, or pruned)."""
        found = self._outcomes("SELECT * FROM outcomes WHERE execution_id = ?", (execution_id,))
        return found[0] if found else None

    def target_outcomes_since(self, target: str, since: float) -> list[PolicyOutcome]:
        """The outcomes of `target` recorded at or after `since`, oldest first."""
        return self._outcomes(
            "SELECT * FROM outcomes WHERE target = ? AND recorded_at >= ?"
            " ORDER BY recorded_at, rowid",
            (target, since),
        )

    def stats(self) -> list[PairStats]:
        """Every (cause, action type) pair with at least one recorded outcome."""
        rows = self._read("SELECT * FROM stats ORDER BY cause, action_type", ())
        try:
            return [_pair_stats(row) for row in rows]
        except ValueError as exc:
            raise StoreCorruptError(f"{self.location}: unknown action type in stats") from exc

    def target_stats(self) -> list[tuple[str, PairStats]]:
        """(target, its counters) per (cause, target, action type), from the outcomes kept
        (retention bounds them: a target's posterior is its recent record)."""
        rows = self._read(
            "SELECT cause, target, action_type,"
            " count(*) FILTER (WHERE outcome <> 'unknown') AS samples,"
            " count(*) FILTER (WHERE outcome = 'success') AS successes,"
            " count(*) FILTER (WHERE outcome = 'partial') AS partials,"
            " count(*) FILTER (WHERE outcome = 'ineffective') AS ineffective,"
            " count(*) FILTER (WHERE outcome = 'degradation') AS degradations,"
            " count(*) FILTER (WHERE outcome = 'unknown') AS unknowns,"
            " COALESCE(SUM(time_to_stabilize_s) FILTER (WHERE outcome <> 'unknown'), 0)"
            " AS tts_sum,"
            " count(time_to_stabilize_s) FILTER (WHERE outcome <> 'unknown') AS tts_count"
            " FROM outcomes GROUP BY cause, target, action_type"
            " ORDER BY cause, target, action_type",
            (),
        )
        return [(row["target"], _pair_stats(row)) for row in rows]

    # --- guard decisions, control log, state -----------------------------------------

    def record_guard_decision(self, decision: GuardDecision, *, at: float) -> None:
        with self._write("record_guard_decision", fenced=True) as tx:
            tx.execute(
                "INSERT INTO guard_decisions (at, guard, verdict, reason, policy_id, until, epoch)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    at,
                    decision.guard,
                    decision.verdict.value,
                    decision.reason,
                    decision.policy_id,
                    decision.until,
                    self._epoch,
                ),
            )

    def recent_guard_decisions(self, limit: int) -> list[dict[str, Any]]:
        """Newest first: {"id", "at", "guard", "verdict", "reason", "policy_id", "until",
        "epoch"}."""
        rows = self._read(
            "SELECT id, at, guard, verdict, reason, policy_id, until, epoch"
            " FROM guard_decisions ORDER BY at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [dict(row) for row in rows]

    def record_control(
        self, *, at: float, route: str, body: Any = None, caller: str | None = None
    ) -> None:
        """Journal one operator call of the control API (body stored as JSON); never
        fenced: any replica keeps the audit trail."""
        with self._write("record_control") as tx:
            tx.execute(
                "INSERT INTO control_log (at, route, body, caller) VALUES (?, ?, ?, ?)",
                (at, route, None if body is None else _dumps(body), caller),
            )

    def recent_control(self, limit: int) -> list[dict[str, Any]]:
        """Newest first: {"id", "at", "route", "body" (decoded), "caller"}."""
        rows = self._read(
            "SELECT id, at, route, body, caller FROM control_log ORDER BY at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [{**dict(row), "body": self._loads(row["body"])} for row in rows]

    def get_state(self, key: str) -> Any | None:
        rows = self._read("SELECT value FROM state WHERE key = ?", (key,))
        return self._loads(rows[0]["value"]) if rows else None

    def set_state(self, key: str, value: Any, *, at: float | None = None) -> None:
        """Persist one JSON value of daemon state (freeze, breakers...) under `key`."""
        updated_at = time.time() if at is None else at
        with self._write("set_state", fenced=True) as tx:
            tx.execute(
                "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, _dumps(value), updated_at),
            )

    def delete_state(self, key: str) -> None:
        with self._write("delete_state", fenced=True) as tx:
            tx.execute("DELETE FROM state WHERE key = ?", (key,))

    # --- alert inbox -----------------------------------------------------------------

    def save_inbox(self, upserts: list[InboxRow], deletes: list[tuple[str, str]]) -> None:
        """Write what the alert inbox changed, in one transaction: rows by (fingerprint,
        status). Never fenced: every replica receives alerts."""
        with self._write("save_inbox") as tx:
            tx.executemany("DELETE FROM alert_inbox WHERE fingerprint = ? AND status = ?", deletes)
            tx.executemany(
                "INSERT INTO alert_inbox (fingerprint, status, starts_at, ends_at, seen_at, labels)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint, status) DO UPDATE SET"
                " starts_at = excluded.starts_at, ends_at = excluded.ends_at,"
                " seen_at = excluded.seen_at, labels = excluded.labels",
                [
                    (
                        row.fingerprint,
                        row.status,
                        row.starts_at,
                        row.ends_at,
                        row.seen_at,
                        None if row.labels is None else _dumps(row.labels),
                    )
                    for row in upserts
                ],
            )

    def inbox_rows(self) -> list[InboxRow]:
        """Every remembered inbox row, oldest delivery first."""
        rows = self._read(
            "SELECT fingerprint, status, starts_at, ends_at, seen_at, labels FROM alert_inbox"
            " ORDER BY seen_at, rowid",
            (),
        )
        out: list[InboxRow] = []
        for row in rows:
            labels = self._loads(row["labels"])
            if labels is not None and not (
                isinstance(labels, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
            ):
                raise StoreCorruptError(f"{self.location}: unreadable alert inbox row")
            out.append(
                InboxRow(
                    fingerprint=row["fingerprint"],
                    status=row["status"],
                    starts_at=row["starts_at"],
                    ends_at=row["ends_at"],
                    seen_at=row["seen_at"],
                    labels=labels,
                )
            )
        return out

    # --- retention -------------------------------------------------------------------

    def prune(self, *, now: float, retention_days: float, max_rows: int) -> dict[str, int]:
        """Drop journal rows older than retention and beyond max_rows newest, per table.

        `stats` and `state` are never pruned (what was learned survives); unfinished
        executions are kept whatever their age. The backend then reclaims the space (SQLite
        gives the freed pages back to the file system; PostgreSQL reuses them).
        """
        cutoff = now - retention_days * 86_400.0
        deleted: dict[str, int] = {}
        with self._write("prune", budget=False) as tx:
            for table, at, keep in _RETAINED:
                seq = _TIE_BREAK.get(table, "rowid")
                # Table and column names come from constants, never from input.
                old = tx.execute(
                    f"DELETE FROM {table} WHERE {keep} AND {at} < ?",  # noqa: S608
                    (cutoff,),
                )
                excess = tx.execute(
                    f"DELETE FROM {table} WHERE {keep} AND {seq} NOT IN"  # noqa: S608
                    f" (SELECT {seq} FROM {table} WHERE {keep}"
                    f" ORDER BY {at} DESC, {seq} DESC LIMIT ?)",
                    (max_rows,),
                )
                deleted[table] = old + excess
        self._reclaim([table for table, n in deleted.items() if n])
        self._pruned("retention", deleted)
        self._after_write()
        return deleted

    def _prunable(self, table: str, keep: str) -> int:
        """The rows of `table` the byte budget may delete (all but the newest kept)."""
        rows = self._read(
            f"SELECT count(*) AS n FROM {table} WHERE {keep}",  # noqa: S608 - constant clauses
            (),
        )
        return max(0, int(rows[0]["n"]) - BUDGET_KEEP_NEWEST)

    @staticmethod
    def _batch(prunable: int, live: int, target: int) -> int:
        """Rows to delete in one step of a shrink: in proportion to the excess, at least a
        twentieth (a few passes)."""
        share = (live - target) / max(live, 1)
        return min(prunable, max(1, math.ceil(prunable * share), math.ceil(prunable / 20)))

    def _pruned(self, reason: str, deleted: Mapping[str, int]) -> None:
        if not any(deleted.values()):
            return
        log.info("store_pruned", **self._log_context(), reason=reason, **deleted)
        if self._metrics is not None:
            for table, rows in deleted.items():
                self._metrics.knowledge_pruned_rows.labels(table=table, reason=reason).inc(rows)


class _SqliteWriter:
    """A JournalWriter over the connection of an open SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class Store(JournalStore):
    """Synchronous access to the knowledge file; each call is one short transaction."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        *,
        max_bytes: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Use `Store.open(path)`: it validates and migrates the file."""
        self._conn: sqlite3.Connection | None = connection
        self._path = path
        self._lock = threading.Lock()
        self._schema_version = 0
        self._max_bytes = max_bytes
        self._metrics = metrics
        # The WAL's share of the budget: truncated to this after each checkpoint.
        self._wal_limit = (
            _WAL_LIMIT_MAX
            if max_bytes is None
            else max(_WAL_LIMIT_MIN, min(_WAL_LIMIT_MAX, max_bytes // 16))
        )
        # The last failure of each kind of write, until that write succeeds again.
        self._write_failures: dict[str, tuple[float, str]] = {}
        self._incremental = False  # auto_vacuum = INCREMENTAL: pruned pages can be returned
        # Shrink above this; raised after a shrink that could not reach the budget (what
        # is left is never pruned), so that every write does not try again.
        self._shrink_above = max_bytes
        self._fence: Fence | None = None

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, *, max_bytes: int | None = None, metrics: Metrics | None = None
    ) -> Store:
        """Open (or create) the store at `path`; raise StoreCorruptError / StoreSchemaError.

        With `max_bytes`, every write is followed by a cheap size check, and the oldest
        history is pruned when the file (with its WAL) would exceed it (`shrink`).
        """
        path = Path(path)
        _check_header(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create directory {path.parent}: {exc.strerror}") from exc
        try:
            conn = sqlite3.connect(
                path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN / COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock (callers may use to_thread)
            )
        except sqlite3.Error as exc:
            raise _wrap(path, "cannot open", exc) from exc
        conn.row_factory = sqlite3.Row
        store = cls(conn, path, max_bytes=max_bytes, metrics=metrics)
        try:
            store._prepare()
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self) -> None:
        conn = self._require_open()
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise _wrap(self._path, "cannot configure", exc) from exc
        # Read-only checks first: a file we refuse must not be written to at all.
        self._quick_check_or_raise()
        version = self._read_version()
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"{self._path}: written by a newer mape-k (schema {version} > {SCHEMA_VERSION});"
                " refusing to open — upgrade mape-k or point knowledge.path elsewhere"
            )
        try:
            if version == 0:
                # Before the first table exists this needs no VACUUM (a no-op otherwise).
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {self._wal_limit}")
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA wal_autocheckpoint = {max(16, self._wal_limit // page_size)}")
        except sqlite3.Error as exc:
            raise _wrap(self._path, "cannot configure", exc) from exc
        if str(mode).lower() != "wal":
            log.warning("store_wal_unavailable", path=str(self._path), journal_mode=mode)
        self._migrate(version)
        self._note_writable()
        try:
            self._incremental = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2
        except sqlite3.Error as exc:
            raise _wrap(self._path, "cannot read auto_vacuum", exc) from exc
        self._after_write()  # an old, big file is pruned first: its VACUUM is then smaller
        if not self._incremental:
            self._convert_to_incremental_vacuum()
        log.info("store_opened", path=str(self._path), schema_version=self._schema_version)

    def _convert_to_incremental_vacuum(self) -> None:
        """Make the file give pruned pages back: a file made before this needs one VACUUM.

        The file says which mode it is in (`PRAGMA auto_vacuum`: 2 is INCREMENTAL), so this
        needs no schema version (and an older mape-k still opens the file). A VACUUM that
        fails (it needs free space about the size of the file) is logged and retried at the
        next start: the daemon works the same, only the file does not shrink.
        """
        conn = self._require_open()
        before = self.size().total
        started = time.perf_counter()
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.error(
                "store_vacuum_failed",
                path=str(self._path),
                error=str(exc),
                bytes=before,
                hint="the file keeps its size until a start finds free space about its size",
            )
            return
        self._incremental = True
        log.info(
            "store_converted_to_incremental_vacuum",
            path=str(self._path),
            bytes_before=before,
            bytes_after=self.size().total,
            duration_s=round(time.perf_counter() - started, 3),
        )

    def _quick_check_or_raise(self) -> None:
        conn = self._require_open()
        try:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(
                f"{self._path}: not a readable SQLite database ({exc}); refusing to open it"
            ) from exc
        if rows != ["ok"]:
            raise StoreCorruptError(
                f"{self._path}: integrity check failed ({'; '.join(map(str, rows[:3]))});"
                " refusing to open it"
            )

    def _read_version(self) -> int:
        conn = self._require_open()
        try:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            }
            if "meta" not in tables:
                if tables:
                    raise StoreSchemaError(
                        f"{self._path} is a SQLite database but not a mape-k knowledge store"
                        f" (tables: {', '.join(sorted(tables))}); refusing to open"
                        " — point knowledge.path elsewhere"
                    )
                return 0
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise _wrap(self._path, "cannot read schema version", exc) from exc
        try:
            return int(row[0])
        except (TypeError, ValueError):
            pass
        raise StoreSchemaError(
            f"{self._path}: no readable schema_version in meta; refusing to open"
        )

    def _migrate(self, current: int) -> None:
        conn = self._require_open()
        for index in range(current, SCHEMA_VERSION):
            target = index + 1
            script = (
                "BEGIN IMMEDIATE;\n"
                f"{MIGRATIONS[index]}\n"
                "INSERT INTO meta (key, value) VALUES ('schema_version', "
                f"'{target}') ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n"
                "COMMIT;"
            )
            try:
                conn.executescript(script)
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise _wrap(self._path, f"migration to schema {target} failed", exc) from exc
            log.info("store_migrated", path=str(self._path), from_version=index, to_version=target)
        self._schema_version = SCHEMA_VERSION

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        """Where the store is, for logs and /readyz (the file's path)."""
        return str(self._path)

    def integrity_ok(self) -> bool:
        """True when `PRAGMA quick_check` answers ok."""
        try:
            rows = self._read("PRAGMA quick_check", ())
        except StoreError:
            return False
        return [row[0] for row in rows] == ["ok"]

    # --- plumbing --------------------------------------------------------------------

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self._path}: store is closed")
        return self._conn

    @contextmanager
    def _write(
        self,
        what: str,
        *,
        fenced: bool = False,  # noqa: ARG002 - one file has one writer: nothing to check
        budget: bool = True,
    ) -> Iterator[JournalWriter]:
        with self._lock:
            conn = self._require_open()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield _SqliteWriter(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                self._write_failed(what, str(exc))
                raise _wrap(self._path, what, exc) from exc
            except BaseException:
                self._rollback(conn)
                raise
            self._write_succeeded(what)
        if budget:
            self._after_write()

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("store_rollback_failed")

    def _read(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        with self._lock:
            conn = self._require_open()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _wrap(self._path, "read failed", exc) from exc

    def _log_context(self) -> dict[str, str]:
        return {"path": str(self._path)}

    # --- retention -------------------------------------------------------------------

    def _reclaim(self, tables: Sequence[str]) -> None:
        if tables:
            self._vacuum()

    def size(self) -> StoreSize:
        """The store's bytes now: cheap (two pragmas and a stat), done after every write."""
        with self._lock:
            conn = self._require_open()
            try:
                page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            except sqlite3.Error as exc:
                raise _wrap(self._path, "cannot read the size", exc) from exc
        try:
            wal = self._path.with_name(self._path.name + "-wal").stat().st_size
        except OSError:
            wal = 0
        return StoreSize(database=pages * page_size, free=free * page_size, wal=wal)

    def _after_write(self) -> None:
        """Keep the byte budget: shrink when the file and its WAL outgrow it."""
        if self._max_bytes is None and self._metrics is None:
            return
        try:
            size = self.size()
            if self._shrink_above is not None and self._usage(size) > self._shrink_above:
                self.shrink()
                size = self.size()
        except StoreError:
            # The write itself succeeded. A failed delete or vacuum was logged once
            # (store_write_failed) and shows in /readyz; the next write tries again.
            return
        if self._metrics is not None:
            self._metrics.knowledge_bytes.set(size.total)

    def _usage(self, size: StoreSize) -> int:
        """The bytes the budget holds: the file and its WAL; without incremental vacuum
        (its VACUUM failed) the file cannot shrink, so only the pages in use count."""
        return size.total if self._incremental else size.live + size.wal

    def _database_budget(self) -> int:
        """What the database may hold: max_bytes minus room for the WAL (two limits: the
        checkpointed WAL, and the transaction that is written into it)."""
        assert self._max_bytes is not None
        return max(0, self._max_bytes - 2 * self._wal_limit)

    def shrink(self) -> dict[str, int]:
        """Delete the oldest history until the store is back under its byte budget.

        Tables go in the order of _RETAINED (decision records first), each oldest rows
        first and in batches, down to BUDGET_LOW_WATER of the budget; the newest
        BUDGET_KEEP_NEWEST rows of each table, `stats`, `state` and unfinished executions
        always stay. Then incremental vacuum returns the freed pages to the file system and
        the WAL is truncated. Returns the rows deleted per table.
        """
        if self._max_bytes is None:
            return {}
        target = int(self._database_budget() * BUDGET_LOW_WATER)
        before = self.size()
        deleted = {table: 0 for table, _, _ in _RETAINED}
        for table, at, keep in _RETAINED:
            while (live := self.size().live) > target:
                count = self._prunable(table, keep)
                if count == 0:
                    break
                batch = self._batch(count, live, target)
                with self._write("shrink", budget=False) as tx:
                    # Table and column names come from the constant _RETAINED, never input.
                    tx.execute(
                        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"  # noqa: S608
                        f" WHERE {keep} ORDER BY {at}, rowid LIMIT ?)",
                        (batch,),
                    )
                deleted[table] += batch
        self._vacuum()
        after = self.size()
        deleted = {table: n for table, n in deleted.items() if n}
        self._pruned("bytes", deleted)
        usage = self._usage(after)
        self._shrink_above = max(self._max_bytes, usage + self._max_bytes // 10)
        if usage > self._max_bytes:
            log.warning(
                "store_over_budget",
                path=str(self._path),
                bytes=usage,
                max_bytes=self._max_bytes,
                why="what is left is never pruned: statistics, state, unfinished executions"
                f" and the newest {BUDGET_KEEP_NEWEST} rows of each journal table",
            )
        else:
            log.info(
                "store_shrunk",
                path=str(self._path),
                bytes_before=before.total,
                bytes_after=after.total,
                max_bytes=self._max_bytes,
            )
        return deleted

    def _vacuum(self) -> None:
        """Give the freelist back to the file system, in steps the WAL limit bounds."""
        if not self._incremental:
            return
        with self._lock:
            conn = self._require_open()
            try:
                page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                step = max(16, self._wal_limit // page_size)
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                while free > 0:
                    # executescript steps the pragma to the end (execute() frees one page).
                    conn.executescript(f"PRAGMA incremental_vacuum({step});")
                    left = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                    if left >= free:
                        break
                    free = left
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                self._write_failed("vacuum", str(exc))
                raise _wrap(self._path, "incremental vacuum failed", exc) from exc
            self._write_succeeded("vacuum")
