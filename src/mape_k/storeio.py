"""The daemon's one way to the knowledge store: `AsyncStore`, awaitable, over either backend.

Two backends implement `StoreBackend` with the same synchronous methods and semantics:
`store.Store` (one SQLite file, the embedded default) and `pgstore.PostgresStore`
(`knowledge.url: postgresql://…`, shared by replicas). Their tests are one contract.

The daemon never calls a backend from the event loop when the backend can stall it:
PostgreSQL is a network peer (a paused server, a partition, a lock wait), so its calls run
on one worker thread, one at a time, in the order they were made — the order the journal
needs (the "before" entry of an action is written before the action, the "after" entry
after it). SQLite is a local file whose calls take a fraction of a millisecond (figures in
docs/benchmarks.md); a thread hop would cost more than the call, so its calls run inline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import structlog

from mape_k.errors import MapekError
from mape_k.models import GuardDecision, PolicyExecution, PolicyOutcome
from mape_k.store import Fence, InboxRow, LeaseState, PairStats, StoreSize

log = structlog.get_logger(__name__)

T = TypeVar("T")


class StoreBackend(Protocol):
    """What both backends provide (synchronous; each call is one short transaction)."""

    @property
    def location(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def max_bytes(self) -> int | None: ...
    @property
    def fence(self) -> Fence | None: ...
    def set_fence(self, fence: Fence | None) -> None: ...
    def close(self) -> None: ...
    def integrity_ok(self) -> bool: ...
    def write_problem(self) -> str | None: ...
    def record_iteration(
        self, iteration_id: str, *, started_at: float, result: str, record: Mapping[str, Any]
    ) -> None: ...
    def recent_iterations(
        self, limit: int, *, before: float | None = None
    ) -> list[dict[str, Any]]: ...
    def iteration(self, iteration_id: str) -> dict[str, Any] | None: ...
    def upsert_execution(self, execution: PolicyExecution) -> None: ...
    def get_execution(self, execution_id: str) -> PolicyExecution | None: ...
    def recent_executions(self, limit: int) -> list[PolicyExecution]: ...
    def target_executions(self, target: str, limit: int) -> list[PolicyExecution]: ...
    def unfinished_executions(self) -> list[PolicyExecution]: ...
    def unverified_executions(self, *, since: float) -> list[PolicyExecution]: ...
    def executions_finished_since(self, since: float) -> list[PolicyExecution]: ...
    def record_outcome(self, outcome: PolicyOutcome) -> bool: ...
    def recent_outcomes(self, limit: int) -> list[PolicyOutcome]: ...
    def outcome(self, execution_id: str) -> PolicyOutcome | None: ...
    def target_outcomes_since(self, target: str, since: float) -> list[PolicyOutcome]: ...
    def stats(self) -> list[PairStats]: ...
    def target_stats(self) -> list[tuple[str, PairStats]]: ...
    def record_guard_decision(self, decision: GuardDecision, *, at: float) -> None: ...
    def recent_guard_decisions(self, limit: int) -> list[dict[str, Any]]: ...
    def record_control(
        self, *, at: float, route: str, body: Any = None, caller: str | None = None
    ) -> None: ...
    def recent_control(self, limit: int) -> list[dict[str, Any]]: ...
    def get_state(self, key: str) -> Any | None: ...
    def set_state(self, key: str, value: Any, *, at: float | None = None) -> None: ...
    def delete_state(self, key: str) -> None: ...
    def save_inbox(self, upserts: list[InboxRow], deletes: list[tuple[str, str]]) -> None: ...
    def inbox_rows(self) -> list[InboxRow]: ...
    def prune(self, *, now: float, retention_days: float, max_rows: int) -> dict[str, int]: ...
    def size(self) -> StoreSize: ...


class AsyncStore:
    """The backend's methods, awaitable; inline for SQLite, on one worker thread otherwise.

    Cheap, lock-free reads of the backend's own memory (`location`, `schema_version`,
    `write_problem`, `fence`) stay synchronous.
    """

    def __init__(self, backend: StoreBackend, *, threaded: bool) -> None:
        self.backend = backend
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mapek-store")
            if threaded
            else None
        )

    @property
    def threaded(self) -> bool:
        return self._pool is not None

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if self._pool is None:
            return fn(*args, **kwargs)
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Wait for the calls in flight, then close the backend (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
        self.backend.close()

    # --- synchronous: the backend's own memory, no I/O ---------------------------------

    @property
    def location(self) -> str:
        return self.backend.location

    @property
    def schema_version(self) -> int:
        return self.backend.schema_version

    @property
    def fence(self) -> Fence | None:
        return self.backend.fence

    def set_fence(self, fence: Fence | None) -> None:
        self.backend.set_fence(fence)

    def write_problem(self) -> str | None:
        return self.backend.write_problem()

    # --- the journal and the knowledge ----------------------------------------------

    async def integrity_ok(self) -> bool:
        return await self._call(self.backend.integrity_ok)

    async def record_iteration(
        self, iteration_id: str, *, started_at: float, result: str, record: Mapping[str, Any]
    ) -> None:
        await self._call(
            self.backend.record_iteration,
            iteration_id,
            started_at=started_at,
            result=result,
            record=record,
        )

    async def recent_iterations(
        self, limit: int, *, before: float | None = None
    ) -> list[dict[str, Any]]:
        return await self._call(self.backend.recent_iterations, limit, before=before)

    async def iteration(self, iteration_id: str) -> dict[str, Any] | None:
        return await self._call(self.backend.iteration, iteration_id)

    async def upsert_execution(self, execution: PolicyExecution) -> None:
        await self._call(self.backend.upsert_execution, execution)

    async def get_execution(self, execution_id: str) -> PolicyExecution | None:
        return await self._call(self.backend.get_execution, execution_id)

    async def recent_executions(self, limit: int) -> list[PolicyExecution]:
        return await self._call(self.backend.recent_executions, limit)

    async def target_executions(self, target: str, limit: int) -> list[PolicyExecution]:
        return await self._call(self.backend.target_executions, target, limit)

    async def unfinished_executions(self) -> list[PolicyExecution]:
        return await self._call(self.backend.unfinished_executions)

    async def unverified_executions(self, *, since: float) -> list[PolicyExecution]:
        return await self._call(self.backend.unverified_executions, since=since)

    async def executions_finished_since(self, since: float) -> list[PolicyExecution]:
        return await self._call(self.backend.executions_finished_since, since)

    async def record_outcome(self, outcome: PolicyOutcome) -> bool:
        return await self._call(self.backend.record_outcome, outcome)

    async def recent_outcomes(self, limit: int) -> list[PolicyOutcome]:
        return await self._call(self.backend.recent_outcomes, limit)

    async def outcome(self, execution_id: str) -> PolicyOutcome | None:
        return await self._call(self.backend.outcome, execution_id)

    async def target_outcomes_since(self, target: str, since: float) -> list[PolicyOutcome]:
        return await self._call(self.backend.target_outcomes_since, target, since)

    async def stats(self) -> list[PairStats]:
        return await self._call(self.backend.stats)

    async def target_stats(self) -> list[tuple[str, PairStats]]:
        return await self._call(self.backend.target_stats)

    async def record_guard_decision(self, decision: GuardDecision, *, at: float) -> None:
        await self._call(self.backend.record_guard_decision, decision, at=at)

    async def recent_guard_decisions(self, limit: int) -> list[dict[str, Any]]:
        return await self._call(self.backend.recent_guard_decisions, limit)

    async def record_control(
        self, *, at: float, route: str, body: Any = None, caller: str | None = None
    ) -> None:
        await self._call(self.backend.record_control, at=at, route=route, body=body, caller=caller)

    async def recent_control(self, limit: int) -> list[dict[str, Any]]:
        return await self._call(self.backend.recent_control, limit)

    async def get_state(self, key: str) -> Any | None:
        return await self._call(self.backend.get_state, key)

    async def set_state(self, key: str, value: Any, *, at: float | None = None) -> None:
        await self._call(self.backend.set_state, key, value, at=at)

    async def delete_state(self, key: str) -> None:
        await self._call(self.backend.delete_state, key)

    async def save_inbox(self, upserts: list[InboxRow], deletes: list[tuple[str, str]]) -> None:
        await self._call(self.backend.save_inbox, upserts, deletes)

    async def inbox_rows(self) -> list[InboxRow]:
        return await self._call(self.backend.inbox_rows)

    async def prune(self, *, now: float, retention_days: float, max_rows: int) -> dict[str, int]:
        return await self._call(
            self.backend.prune, now=now, retention_days=retention_days, max_rows=max_rows
        )

    async def size(self) -> StoreSize:
        return await self._call(self.backend.size)


class LeaseBackend(StoreBackend, Protocol):
    """A backend replicas can share (PostgreSQL): the leader lease, by the database's clock."""

    def lease_acquire(self, holder: str, ttl_s: float) -> LeaseState: ...
    def lease_read(self) -> LeaseState | None: ...
    def lease_release(self, holder: str, epoch: int) -> bool: ...


class SharedStore(AsyncStore):
    """An AsyncStore over a backend replicas share, with its lease (always threaded)."""

    def __init__(self, backend: LeaseBackend) -> None:
        super().__init__(backend, threaded=True)
        self._leases = backend

    async def lease_acquire(self, holder: str, ttl_s: float) -> LeaseState:
        return await self._call(self._leases.lease_acquire, holder, ttl_s)

    async def lease_read(self) -> LeaseState | None:
        return await self._call(self._leases.lease_read)

    async def lease_release(self, holder: str, epoch: int) -> bool:
        return await self._call(self._leases.lease_release, holder, epoch)


# What restoring a saved state that is not what it should be raises (a missing key, a
# wrong type, a bad value, a number out of range): a bad state, logged, never a crash.
BAD_STATE = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


async def read_state(
    store: AsyncStore, key: str, *, strict: bool, event: str
) -> dict[str, Any] | None:
    """The JSON object an earlier run (or the previous leader) saved under `key`. A failed
    read is logged as `event` and raises when `strict` (a takeover: the shared store is the
    truth). Nothing saved, or not an object: None, or {} when `strict` (an empty state)."""
    try:
        saved = await store.get_state(key)
    except MapekError as exc:
        log.error(event, error=str(exc))
        if strict:
            raise
        return None
    if isinstance(saved, dict):
        return saved
    return {} if strict else None
