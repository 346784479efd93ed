"""MAPEKOrchestrator: the loop assembled — a scheduler, an iteration pipeline, an envelope.

It owns what binds them: one iteration at a time (`run_once`, under a lock), the decision
records of this process (journaled to the store, kept for /stats, handed to listeners),
a reloaded configuration (applied between iterations), the operator's controls (approve,
reject, freeze, dry-run) and resuming after a restart. Each part is in a module named for
it: loop/scheduler.py (when), loop/iteration.py (what one iteration does),
loop/record.py (the decision record), loop/envelope.py (what may stop an action).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from mape_k.config import Settings
from mape_k.errors import MapekError
from mape_k.loop import guards as guard_rules
from mape_k.loop.envelope import freeze_dict
from mape_k.loop.iteration import IterationPipeline, MAPEKState
from mape_k.loop.leadership import Leadership
from mape_k.loop.monitor import newly_violated
from mape_k.loop.record import DecisionRecord
from mape_k.loop.scheduler import Scheduler, next_watch
from mape_k.metrics import StateGauges
from mape_k.models import Observation, RemediationPolicy, Violation
from mape_k.storeio import AsyncStore

log = structlog.get_logger(__name__)


class MAPEKOrchestrator:
    def __init__(
        self,
        *,
        settings: Settings,
        pipeline: IterationPipeline,
        store: AsyncStore,
        clock: Callable[[], float] = time.time,
        leadership: Leadership | None = None,
    ) -> None:
        self._settings = settings
        self.pipeline = pipeline
        self.envelope = pipeline.envelope
        self.planner = pipeline.planner
        self.executor = pipeline.executor
        self._store = store
        self._clock = clock
        self.leadership = leadership
        self.scheduler = Scheduler(
            self._guarded_iteration, settings.orchestrator, watch=self._guarded_watch
        )
        self._metrics = pipeline.metrics
        self.watch_stats: dict[str, Any] = {"passes": 0, "triggered": 0, "last_trigger": None}
        # What the watch already triggered on since the observation it compared with: an
        # iteration that fails before reading (a takeover that cannot) is not re-triggered
        # every pass for the same violation.
        self._watched: tuple[Observation | None, set[tuple[str, str]]] = (None, set())
        self.records: deque[dict[str, Any]] = deque(
            maxlen=settings.knowledge.decisions_kept_in_memory
        )
        # Called with each finished decision record (the demo's live view, tests' sync).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._lock = asyncio.Lock()
        self._reloaded: Settings | None = None  # a reload waiting for the iteration to end
        self._ids = itertools.count(1)

    # --- lifecycle: the scheduler's ----------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self.envelope.stopping = False
        return self.scheduler.start()

    async def stop(self) -> None:
        """Finish the current iteration (if any) and return; the caller bounds the wait.
        A policy running now takes no further action (the envelope's hold says why)."""
        self.envelope.stopping = True
        await self.scheduler.stop()

    async def cancel(self) -> None:
        await self.scheduler.cancel()

    @property
    def running(self) -> bool:
        return self.scheduler.running

    def trigger(self, reason: str = "alert") -> None:
        self.scheduler.trigger(reason)

    def busy_for(self) -> float:
        return self.scheduler.busy_for()

    @property
    def state(self) -> MAPEKState:
        return self.pipeline.state

    @property
    def startup_problem(self) -> str | None:
        return self.pipeline.startup_problem

    @property
    def prometheus_ok(self) -> bool | None:
        return self.pipeline.prometheus_ok

    # --- one iteration -------------------------------------------------------------------

    async def _guarded_iteration(self) -> None:
        try:
            await self.run_once()
        except TimeoutError:
            timeout = self._settings.orchestrator.iteration_timeout_s
            log.error("iteration_timeout", timeout_s=timeout)
            await self._keep(self.pipeline.failed(f"reading inputs took longer than {timeout:g} s"))
        except Exception as exc:
            # A bug in one iteration must not take the loop down; it is logged with its stack.
            log.exception("iteration_crashed")
            await self._keep(self.pipeline.failed(f"crashed: {type(exc).__name__}: {exc}"))

    async def _guarded_watch(self) -> None:
        try:
            await self.watch()
        except Exception:
            log.exception("watch_crashed")  # the next iteration reads everything anyway

    async def watch(self, now: float | None = None) -> list[Violation]:
        """Between iterations: read the rule queries and start an iteration now when one
        shows a violation the last iteration did not see (a rising edge; one that goes on
        is the grid's). Returns those violations (none: nothing triggered). A follower does
        not watch: it does not act."""
        if self.leadership is not None and not self.leadership.leading():
            return []
        now = self._clock() if now is None else now
        watched = await self.pipeline.monitor.watch(now)
        self.pipeline.peaks.add(watched)
        seen = watched.violations
        last = self.pipeline.monitor.last_observation
        against, triggered = self._watched
        if against is not last:
            triggered = set()
        new = [
            v
            for v in newly_violated(seen, last.violations if last is not None else ())
            if (v.kind, v.component) not in triggered
        ]
        self._watched = (last, triggered | {(v.kind, v.component) for v in new})
        self.watch_stats["passes"] += 1
        if self._metrics is not None:
            self._metrics.watch_passes.labels(result="triggered" if new else "quiet").inc()
        if not new:
            return []
        named = [f"{v.kind}/{v.component} {v.value:g} (threshold {v.threshold:g})" for v in new]
        self.watch_stats["triggered"] += 1
        self.watch_stats["last_trigger"] = {"at": now, "violations": named}
        log.info("watch_triggered", violations=named)
        self.trigger("watch")
        return new

    async def run_once(self, now: float | None = None) -> dict[str, Any]:
        """One iteration now; its decision record, serialised, journaled and kept."""
        async with self._lock:
            now = self._clock() if now is None else now
            iteration_id = f"{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            if self.leadership is not None and self.leadership.takeover_due():
                epoch = self.leadership.epoch()
                await self.take_over(now)  # raises (the iteration fails) until it can
                self.leadership.took_over(epoch)
            try:
                with structlog.contextvars.bound_contextvars(iteration_id=iteration_id):
                    record = await self._keep(await self.pipeline.run(iteration_id, now))
            finally:
                reloaded, self._reloaded = self._reloaded, None
                if reloaded is not None:
                    self._apply(reloaded)
        for listener in self.listeners:
            listener(record)
        return record

    async def _keep(self, decision: DecisionRecord) -> dict[str, Any]:
        """The record serialised (once), kept for /stats and journaled (a failed iteration
        is kept in memory only: the store may be why it failed)."""
        record = decision.as_dict(top_n=self._settings.knowledge.record_top_n)
        self.records.append(record)
        if decision.result == "error" or decision.started_at is None or decision.follower:
            return record  # a follower's records are its own: the journal is the leader's
        try:
            await self._store.record_iteration(
                decision.id, started_at=decision.started_at, result=decision.result, record=record
            )
        except MapekError as exc:
            log.error("decision_record_failed", error=str(exc))
        else:
            self.pipeline.journaled()
        return record

    # --- configuration ---------------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> None:
        """Apply a reloaded configuration to every part of the loop.

        `settings` is what `config.reload_plan` says can apply: the values that need a
        restart are already kept as they run. The safety switches (`guards.frozen`,
        `executor.dry_run`) apply at once, even to a policy running now. The rest applies
        at once when the loop is idle; an iteration in progress finishes on the
        configuration it started with, and the new one applies as it ends.
        """
        self.envelope.reconfigure(settings.guards, dry_run=settings.executor.dry_run)
        if self._lock.locked():
            self._reloaded = settings
            return
        self._apply(settings)

    def _apply(self, settings: Settings) -> None:
        self._settings = settings
        pipeline = self.pipeline
        pipeline.monitor.reconfigure(settings.monitor)
        pipeline.analyzer.reconfigure(settings.analyzer)
        dropped = self.planner.reconfigure(settings.planner)
        self.executor.reconfigure(settings.executor, actions=settings.planner.actions)
        pipeline.knowledge.reconfigure(settings.knowledge)
        self.envelope.config = settings.guards
        pipeline.reconfigure(settings)
        self.scheduler.config = settings.orchestrator
        if self.records.maxlen != settings.knowledge.decisions_kept_in_memory:
            self.records = deque(self.records, maxlen=settings.knowledge.decisions_kept_in_memory)
        for approval in list(self.envelope.approvals.values()):
            if not self.planner.still_gated(approval.policy):
                self.envelope.revoke(approval.policy.id)
                dropped.append(approval.policy.id)
        if dropped:
            log.warning(
                "approvals_dropped",
                policy_ids=dropped,
                reason="the reloaded planner no longer proposes them for approval, or keeps fewer",
            )
        self.scheduler.wake()

    # --- the operator's controls ---------------------------------------------------------

    async def approve(self, policy_id: str, *, now: float) -> RemediationPolicy | None:
        """An operator approval: the pending proposal becomes the envelope's approval."""
        policy = self.planner.take_pending(policy_id, now=now)
        if policy is not None:
            self.envelope.approve(
                policy, now=now, keep=self._settings.planner.max_pending_approvals
            )
            await self.envelope.save(now=now)
        return policy

    async def reject(self, policy_id: str, *, now: float) -> RemediationPolicy | None:
        """An operator's no, to a pending proposal or an approval not yet used."""
        policy = self.planner.reject_policy(policy_id)
        if policy is None:
            policy = self.envelope.revoke(policy_id)
            if policy is not None:
                self.planner.remember_rejection(policy)
                await self.envelope.save(now=now)
        return policy

    async def clear_hold(self, target: str, *, now: float) -> bool:
        """An operator clears a target's "needs a human" hold; False when none holds."""
        cleared = self.envelope.clear_needs_human(target)
        if cleared:
            await self.envelope.save(now=now)
        return bool(cleared)

    # --- after a restart, or a takeover ----------------------------------------------------

    async def reconcile(self, now: float, *, strict: bool = False) -> int:
        """Settle executions a crash left in progress from what the Charter says happened,
        then resume the envelope from the journal; returns how many were unfinished.
        `strict` (a takeover): any failure raises, so the takeover is tried again."""
        unfinished = await self._store.unfinished_executions()
        for execution in unfinished:
            try:
                await self.executor.reconcile(execution)
            except MapekError as exc:
                log.error("reconcile_failed", execution_id=execution.id, error=str(exc))
                if strict:
                    raise
        try:
            await self.resume(now)
        except MapekError as exc:
            log.error("resume_failed", error=str(exc))
            if strict:
                raise
        return len(unfinished)

    async def take_over(self, now: float) -> None:
        """Replicas: this one just became leader. What the shared store holds is the truth
        (the previous leader wrote it): the guards' memory, the freeze, the approvals and
        holds, the MapekNeedsHuman alerts, the prediction record, the knowledge; then the
        executions it left unfinished are reconciled and its pending verifications waited
        for here."""
        envelope, knowledge = self.envelope, self.pipeline.knowledge
        assert self.leadership is not None
        if self.leadership.resumes_own_epoch():
            # Nobody led since this replica's last epoch (an outage it outlived): what it
            # kept from the journal is still the truth; written first, under the new epoch.
            await self.executor.flush_journal()
            await knowledge.flush()
        else:
            # Another leader verified and reconciled what this replica was waiting for.
            knowledge.forget_unrecorded()
            self.executor.forget_verifications()
        envelope.freeze = envelope.config_freeze(envelope.config)
        await envelope.load(strict=True)
        await envelope.restore_freeze(now)
        if self.pipeline.alerts is not None:
            await self.pipeline.alerts.load(strict=True)
        if self.pipeline.autonomy is not None:
            await self.pipeline.autonomy.load(strict=True)
        if self.pipeline.changes is not None:
            await self.pipeline.changes.load(strict=True)
        await self.pipeline.predictor.load(strict=True)
        await knowledge.update_patterns()
        unfinished = await self.reconcile(now, strict=True)
        log.warning(
            "leader_took_over",
            epoch=self.leadership.epoch() if self.leadership else None,
            unfinished_reconciled=unfinished,
            verifications_pending=len(self.executor.pending_targets()),
        )

    async def resume(self, now: float) -> None:
        """After a restart, the envelope knows what the journal says happened: executions
        that finished within the guards' windows are in their history (a crash between an
        action and the guards' save lost them), and completed executions with no outcome
        yet are waited for again (a restart used to forget them, and learning with them).
        Run once at start, after the interrupted executions were reconciled."""
        guards = self._settings.guards
        horizon = max(guards.velocity.window_s, guards.oscillation.window_s)
        known = {change.execution_id for change in self.envelope.history}
        noted = 0
        for execution in await self._store.executions_finished_since(now - horizon):
            if execution.id not in known:
                changes = guard_rules.executed_changes(
                    execution,
                    at=execution.finished_at or now,
                    load_normalised=self._settings.executor.load_normalised,
                )
                self.envelope.record_changes(changes, now=now)
                noted += 1
        since = now - self.executor.verification_horizon_s()
        restored = self.executor.restore_verifications(
            await self._store.unverified_executions(since=since)
        )
        if noted or restored:
            await self.envelope.save(now=now)
            log.info("envelope_resumed", history_added=noted, verifications_restored=restored)

    # --- what it is doing: /stats, /metrics ------------------------------------------------

    def state_gauges(self, now: float) -> StateGauges:
        """The loop's state for /metrics, read from its owners at scrape time."""
        envelope = self.envelope
        return StateGauges(
            frozen=envelope.active_freeze(now) is not None,
            dry_run=envelope.dry_run,
            pending_approvals=len(self.planner.pending_approvals()),
            pending_verifications=len(self.executor.pending_verifications()),
            oscillating_targets=sum(1 for b in envelope.backoffs.values() if now < b.until),
            needs_human=sum(1 for h in envelope.needs_human.values() if h.active(now)),
            charter_circuit_open=envelope.charter.phase(now) != "closed",
        )

    def guard_statistics(self, now: float) -> dict[str, Any]:
        """Each guard's state, for /stats (with the holds, their MapekNeedsHuman alerts)."""
        snapshot = self.envelope.snapshot(
            now=now,
            committee_size=self.pipeline.committee_size,
            startup_problem=self.startup_problem,
        )
        alerts = self.pipeline.alerts
        if alerts is not None:
            snapshot["needs_human_alerts"] = alerts.snapshot(self._settings)
        return snapshot

    async def recent_records(
        self, *, limit: int, before: float | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Decision records newest first, at most `limit`, only those started before
        `before` when given; and whether older ones exist (the next page of /stats).

        This process's records (failed iterations, records the store could not write) are
        merged with the journal's (earlier runs): /stats shows the newest decisions even on a
        full disk.
        """
        cutoff = float("inf") if before is None else before
        merged = {
            row["id"]: row["record"]
            for row in await self._store.recent_iterations(limit + 1, before=before)
            if isinstance(row["record"], dict)
        }
        for record in self.records:
            started = record.get("started_at")
            if started is not None and started < cutoff:
                merged[record["id"]] = record
        ordered = sorted(merged.values(), key=lambda r: r.get("started_at") or 0.0, reverse=True)
        return ordered[:limit], len(ordered) > limit

    async def find_record(self, record_id: str) -> dict[str, Any] | None:
        """One decision record by id: this process's, else the journal's."""
        mine = next((r for r in reversed(self.records) if r.get("id") == record_id), None)
        return mine if mine is not None else await self._store.iteration(record_id)

    def get_statistics(self) -> dict[str, Any]:
        return {
            **self.state.as_dict(),
            "dry_run": self.envelope.dry_run,
            "frozen": freeze_dict(self.envelope.freeze),
            "watch": {
                "interval_s": self._settings.orchestrator.watch_interval_s,
                "on": next_watch(0.0, self._settings.orchestrator) != float("inf"),
            }
            | self.watch_stats,
            "pending_verifications": [
                {
                    "execution_id": p.execution.id,
                    "target": p.target,
                    "cause": p.execution.policy.cause.name,
                    "due_at": p.due_at,
                    "deadline": p.deadline,
                }
                for p in self.executor.pending_verifications()
            ],
        }
