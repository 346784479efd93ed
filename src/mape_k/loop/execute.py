"""Execute: run a policy's actions through their actuators, transactionally, then verify.

The policy arrives resolved (loop/actions.py): each action carries the absolute state it
sets, which the guards judged; the executor sends exactly that, reads nothing first and
recomputes nothing, and the journal records it with the actuator's answer. A built-in
action goes to the Charter (actuators/charter.py), a user-defined one to its own actuator
(actuators/user.py: exec, http, alertmanager); both are the one `Actuator` interface.
Actions run in order, each under a timeout, each journaled before and after it runs.
When one fails, the completed ones are undone in reverse order (ROLLED_BACK). Every
mutating call carries an idempotency key derived from the policy id, so re-running the
same policy (or a rollback after a crash) has one effect. Verification is pure: a later
iteration's Observation is compared with the value that triggered the policy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import structlog

from mape_k.actuators.base import Actuator, idempotency_key
from mape_k.actuators.charter import CharterActuator
from mape_k.actuators.user import UserActuator
from mape_k.config import ActionSpec, ExecutorConfig
from mape_k.errors import ActuatorError, CharterError, ExecutionError, MapekError
from mape_k.integrations.charter.base import ActionResult, CharterClient
from mape_k.loop import actions as effects
from mape_k.loop.actions import INVERSE
from mape_k.loop.analyze import READ_FROM
from mape_k.loop.baseline import is_return
from mape_k.loop.guards import Settling
from mape_k.metrics import Metrics
from mape_k.models import (
    ActionExecution,
    ActionName,
    ExecutionStatus,
    Observation,
    OutcomeType,
    PolicyExecution,
    PolicyOutcome,
    RemediationAction,
    RemediationPolicy,
    is_builtin,
)

__all__ = ["Executor", "PendingVerification", "classify", "idempotency_key"]

log = structlog.get_logger(__name__)

# Each action type's inverse is in the action-effect model (actions.INVERSE; None: the
# action cannot be undone, e.g. a restart). Rollback does not call the inverse type
# blindly: it restores what the Charter reported as the previous value
# (ActionResult.previous), which is the exact inverse.

Journal = Callable[[PolicyExecution], Awaitable[None]]
# What an action or its undo may raise: ours, the per-action timeout, a Charter answer
# whose shape does not hold what an inverse needs (e.g. `previous` without `size`), and an
# action that was not resolved (actions.Unresolvable, a ValueError).
ACTION_ERRORS = (MapekError, TimeoutError, KeyError, TypeError, ValueError)
HISTORY_KEPT = 1000  # executions remembered in memory (replay of a policy id, revert)


@dataclass(frozen=True, slots=True)
class PendingVerification:
    execution: PolicyExecution
    due_at: float  # first moment the effect may be measured (settle time passed)
    deadline: float  # after this, classify with what we have (or UNKNOWN)
    last_value: float | None = None
    # Other executions on the same target that acted while this one waited for its outcome
    # (or were waiting themselves when it ran): its outcome is confounded by them.
    confounded_by: tuple[str, ...] = ()
    # What the settle guard holds while it waits: derived once from the execution, not on
    # every guard pass (the guards read it for every pending execution, every iteration).
    settling: Settling = field(init=False, compare=False)

    def __post_init__(self) -> None:
        policy = self.execution.policy
        settling = Settling(
            execution_id=self.execution.id,
            knobs=effects.knobs(policy.actions),
            actions=tuple(a.action_type for a in policy.actions),
            cause=policy.cause.name,
        )
        object.__setattr__(self, "settling", settling)

    @property
    def target(self) -> str:
        return self.execution.policy.target


class Executor:
    def __init__(
        self,
        *,
        charter: CharterClient | None,
        config: ExecutorConfig,
        actions: Mapping[ActionName, ActionSpec],
        journal: Journal,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        hold: Callable[[], str | None] = lambda: None,
        user: UserActuator | None = None,
    ) -> None:
        self._charter = None if charter is None else CharterActuator(charter)
        # User-defined actions, run from the current specs (a reload applies at once).
        self._user = user if user is not None else UserActuator(lambda: self._actions)
        self._config = config
        self._actions = actions
        self._journal = journal
        self._metrics = metrics
        self._clock = clock
        # Asked before every action after the first (the safety envelope's `hold`): a
        # reason to stop (a freeze or dry-run that came while the policy runs, a shutdown)
        # ends the policy like a failed action.
        self._hold = hold
        self._history: dict[str, PolicyExecution] = {}
        self._unjournaled: dict[str, PolicyExecution] = {}  # "after" entries a store refused
        self._pending: dict[str, PendingVerification] = {}
        self._verdicts: dict[str, OutcomeType] = {}  # execution id -> its outcome (bounded)

    def reconfigure(
        self, config: ExecutorConfig, *, actions: Mapping[ActionName, ActionSpec]
    ) -> None:
        """A reloaded configuration (`dry_run` is the safety envelope's switch)."""
        self._config = config
        self._actions = actions

    # --- execution --------------------------------------------------------------------

    def settle_s(self, policy: RemediationPolicy) -> float:
        return effects.settle_s(policy.actions, self._actions)

    def verification_horizon_s(self) -> float:
        """How long after it finished an execution may still be waiting for its outcome."""
        settle = self._config.verify_delay_s
        longest = max(s.settle_s for s in self._actions.values()) if settle is None else settle
        return longest + self._config.verify_deadline_s

    async def execute_policy(
        self,
        policy: RemediationPolicy,
        *,
        baseline: float | None = None,
        baseline_trend: float | None = None,
        baseline_load: float | None = None,
        baseline_utilisation: float | None = None,
    ) -> PolicyExecution:
        """Run `policy` once. A policy id already executed returns its first result.

        `policy` must be resolved (actions.resolve): what is sent is what was judged.
        """
        if not effects.is_resolved(policy):
            raise ExecutionError(
                f"policy {policy.id} was not resolved to absolute state: nothing is sent"
                " that the guards did not judge"
            )
        previous = self._history.get(policy.id)
        if previous is not None:
            log.info("execution_replayed", policy_id=policy.id, status=previous.status.value)
            return previous
        started = self._clock()
        execution = PolicyExecution(
            id=policy.id,
            policy=policy,
            status=ExecutionStatus.IN_PROGRESS,
            actions=tuple(
                ActionExecution(
                    action=action,
                    status=ExecutionStatus.PENDING,
                    idempotency_key=idempotency_key(policy.id, index, action),
                )
                for index, action in enumerate(policy.actions)
            ),
            started_at=started,
            baseline=baseline,
            baseline_trend=baseline_trend,
            baseline_load=baseline_load,
            baseline_utilisation=baseline_utilisation,
        )
        try:
            await self._journal(execution)
        except MapekError as exc:
            # Nothing is done that is not recorded first: no journal, no action.
            not_started = replace(
                execution,
                status=ExecutionStatus.FAILED,
                finished_at=self._clock(),
                error=f"not started, the journal is unavailable: {exc}",
            )
            log.error("execution_not_started", policy_id=policy.id, error=str(exc))
            self._remember(not_started)
            return not_started
        done: list[ActionExecution] = []
        for step in execution.actions:
            running = replace(step, status=ExecutionStatus.IN_PROGRESS, started_at=self._clock())
            execution = _with_action(execution, len(done), running)
            try:
                reason = self._hold() if done else None
                if reason is not None:
                    raise ExecutionError(f"stopped before this action: {reason}")
                # Recorded before it runs, or it does not run: a crash must find it journaled.
                await self._journal(execution)
                budget = self._budget(running.action)
                async with asyncio.timeout(budget):
                    result = await self._apply(running.action, running.idempotency_key, policy)
            except ACTION_ERRORS as exc:
                error = _describe(exc, self._budget(running.action))
                failed = replace(
                    running, status=ExecutionStatus.FAILED, finished_at=self._clock(), error=error
                )
                execution = _with_action(execution, len(done), failed)
                self._count(failed)
                log.warning(
                    "action_failed",
                    policy_id=policy.id,
                    action_type=failed.action.action_type,
                    error=error,
                )
                execution = await self._roll_back(execution, done, error)
                if done:  # something was applied (and perhaps undone) on the target
                    self._confound(execution.id, execution.policy.target)
                break
            completed = replace(
                running,
                status=ExecutionStatus.COMPLETED,
                finished_at=self._clock(),
                result={"previous": result.previous, "current": result.current},
            )
            execution = _with_action(execution, len(done), completed)
            await self._journal_after(execution)
            self._count(completed)
            done.append(completed)
        else:
            execution = replace(
                execution, status=ExecutionStatus.COMPLETED, finished_at=self._clock()
            )
            self._await_verification(execution)
        await self._journal_after(execution)
        self._remember(execution)
        log.info(
            "policy_executed",
            policy_id=policy.id,
            status=execution.status.value,
            actions=[a.action.action_type for a in execution.actions],
            error=execution.error,
        )
        return execution

    async def _roll_back(
        self, execution: PolicyExecution, done: list[ActionExecution], error: str
    ) -> PolicyExecution:
        """Undo the completed actions in reverse order; the policy ends ROLLED_BACK or FAILED."""
        complete = True
        for step in reversed(done):
            index = execution.actions.index(step)
            try:
                async with asyncio.timeout(self._budget(step.action)):
                    undone = await self._undo(step, execution.policy)
            except ACTION_ERRORS as exc:
                complete = False
                log.error(
                    "rollback_failed",
                    policy_id=execution.id,
                    action_type=step.action.action_type,
                    error=_describe(exc, self._budget(step.action)),
                )
                continue
            if undone:
                execution = _with_action(
                    execution, index, replace(step, status=ExecutionStatus.ROLLED_BACK)
                )
                await self._journal_after(execution)
        status = ExecutionStatus.ROLLED_BACK if done and complete else ExecutionStatus.FAILED
        suffix = "" if complete else "; rollback incomplete"
        return replace(execution, status=status, finished_at=self._clock(), error=error + suffix)

    async def reconcile(self, execution: PolicyExecution) -> PolicyExecution:
        """Settle an execution a crash interrupted, from what the Charter says happened.

        An action journaled IN_PROGRESS may or may not have reached the Charter before the
        crash; `find_action` with its idempotency key says, and applies nothing. Arrived:
        it is completed, with the Charter's answer. Never arrived: nothing to undo, and it
        is not sent now (it stays PENDING). If every action of the policy took effect, the
        execution is COMPLETED and verified later like any other; otherwise what took
        effect is undone in reverse order, so nothing stays half-applied. A lookup that
        fails (the Charter down) leaves that action FAILED: it may have arrived.
        """
        steps = list(execution.actions)
        arrived: list[str] = []
        for index, step in enumerate(steps):
            if step.status is ExecutionStatus.IN_PROGRESS:
                steps[index] = await self._settle_interrupted(execution.id, step)
                if steps[index].status is ExecutionStatus.COMPLETED:
                    arrived.append(step.action.action_type)
        execution = replace(execution, actions=tuple(steps))
        if all(step.status is ExecutionStatus.COMPLETED for step in steps):
            reconciled = replace(
                execution, status=ExecutionStatus.COMPLETED, finished_at=self._clock()
            )
            self._await_verification(reconciled)
        else:
            done = [step for step in steps if step.status is ExecutionStatus.COMPLETED]
            reconciled = await self._roll_back(execution, done, "interrupted by a restart")
        await self._journal_after(reconciled)
        self._remember(reconciled)
        log.warning(
            "execution_reconciled",
            execution_id=execution.id,
            status=reconciled.status.value,
            interrupted_action_arrived=arrived,
        )
        return reconciled

    async def _settle_interrupted(
        self, execution_id: str, step: ActionExecution
    ) -> ActionExecution:
        try:
            async with asyncio.timeout(self._config.action_timeout_s):
                found = await self._actuator(step.action).find(step.idempotency_key)
        except ACTION_ERRORS as exc:
            error = _describe(exc, self._config.action_timeout_s)
            log.error("reconcile_lookup_failed", execution_id=execution_id, error=error)
            return replace(
                step,
                status=ExecutionStatus.FAILED,
                error=f"interrupted; whether it took effect is unknown ({error})",
            )
        if found is None:
            return replace(
                step,
                status=ExecutionStatus.PENDING,
                started_at=None,
                error="interrupted before it reached the Charter: not applied",
            )
        return replace(
            step,
            status=ExecutionStatus.COMPLETED,
            finished_at=self._clock(),
            result={"previous": found.previous, "current": found.current},
        )

    def forget_verifications(self) -> None:
        """Replicas: another leader verified what this one was waiting for (or will), and
        reconciled what it could not journal; the journal says what is still pending (and
        unfinished) when this one leads again."""
        self._pending.clear()
        self._unjournaled.clear()

    def restore_verifications(self, executions: Iterable[PolicyExecution]) -> int:
        """After a restart: wait again for the outcome of completed executions that have
        none yet (from the journal), with the due time and deadline they had."""
        restored = 0
        for execution in executions:
            if execution.status is ExecutionStatus.COMPLETED and execution.id not in self._pending:
                self._await_verification(execution)
                self._remember(execution)
                restored += 1
        return restored

    def _await_verification(self, execution: PolicyExecution) -> None:
        settle = self._config.verify_delay_s
        due = execution.finished_at or execution.started_at
        due += self.settle_s(execution.policy) if settle is None else settle
        target = execution.policy.target
        # Executions on this target still waiting for their outcome: their effect may land
        # in this one's window, and this one lands in theirs.
        waiting = tuple(i for i, p in self._pending.items() if p.target == target)
        self._confound(execution.id, target)
        self._pending[execution.id] = PendingVerification(
            execution=execution,
            due_at=due,
            deadline=due + self._config.verify_deadline_s,
            confounded_by=waiting,
        )

    def _confound(self, execution_id: str, target: str) -> None:
        """`execution_id` acted on `target`: every other verification pending there is
        confounded by it (its outcome may be that action's, not its own)."""
        for other, pending in list(self._pending.items()):
            if other == execution_id or pending.target != target:
                continue
            if execution_id not in pending.confounded_by:
                confounded = (*pending.confounded_by, execution_id)
                self._pending[other] = replace(pending, confounded_by=confounded)

    async def revert_recent(
        self, *, since: float, reason: str, only: frozenset[str] | None = None
    ) -> list[PolicyExecution]:
        """Panic revert: undo the reversible completed actions of executions finished at or
        after `since` (of `only` those, when given), newest first, each journaled; returns
        the executions reverted. An execution verified to have helped (SUCCESS, PARTIAL) is
        never undone: what worked stays."""
        helped = {OutcomeType.SUCCESS, OutcomeType.PARTIAL}
        recent = sorted(
            (
                e
                for e in self._history.values()
                if e.status is ExecutionStatus.COMPLETED
                and (e.finished_at or 0.0) >= since
                and (only is None or e.id in only)
                and self._verdicts.get(e.id) not in helped
            ),
            key=lambda e: e.finished_at or e.started_at,
            reverse=True,
        )
        reverted: list[PolicyExecution] = []
        for execution in recent:
            done = [
                a
                for a in execution.actions
                if a.status is ExecutionStatus.COMPLETED and self._reversible(a.action.action_type)
            ]
            if not done:
                continue
            undone = await self._roll_back(execution, done, f"panic revert: {reason}")
            await self._journal_after(undone)
            self._remember(undone)
            self._pending.pop(undone.id, None)
            reverted.append(undone)
            log.warning("execution_reverted", execution_id=undone.id, status=undone.status.value)
        return reverted

    async def _journal_after(self, execution: PolicyExecution) -> None:
        """Record what already happened; a store failure here must not undo the bookkeeping
        in memory (cooldowns, verification), or the next iteration would act again. What
        could not be written is kept and written by `flush_journal()` (the latest state of
        each execution), so the journal does not say "in progress" of what ended."""
        try:
            await self._journal(execution)
        except MapekError as exc:
            self._unjournaled[execution.id] = execution
            log.error("journal_failed", execution_id=execution.id, error=str(exc))
        else:
            self._unjournaled.pop(execution.id, None)

    async def flush_journal(self) -> None:
        """Write what an outage kept from the journal (see `_journal_after`)."""
        for execution in list(self._unjournaled.values()):
            await self._journal_after(execution)
            if execution.id in self._unjournaled:
                return  # still failing: the rest waits too

    def _count(self, step: ActionExecution) -> None:
        if self._metrics is not None:
            self._metrics.actions.labels(
                action_type=step.action.action_type, status=step.status.value
            ).inc()

    def _actuator(self, action: RemediationAction) -> Actuator:
        if is_builtin(action.action_type):
            if self._charter is None:
                raise ExecutionError(
                    f"{action.action_type} is a Charter action and there is no Charter"
                    " (charter.mode: none)"
                )
            return self._charter
        return self._user

    def _reversible(self, name: str) -> bool:
        if is_builtin(name):
            return INVERSE.get(name) is not None
        return self._user.reversible(name)

    def _budget(self, action: RemediationAction) -> float:
        """How long one action may take: its actuator's own bound, else action_timeout_s."""
        try:
            budget = self._actuator(action).budget_s(action)
        except MapekError:
            budget = None
        return self._config.action_timeout_s if budget is None else budget

    async def _apply(
        self, action: RemediationAction, key: str, policy: RemediationPolicy
    ) -> ActionResult:
        """Send the absolute state `action` was resolved to, literally: no read, no default."""
        return await self._actuator(action).apply(action, policy, key)

    async def _undo(self, step: ActionExecution, policy: RemediationPolicy) -> bool:
        """Restore what `step` changed; False when the action cannot be undone."""
        return await self._actuator(step.action).undo(step, policy)

    def execution(self, execution_id: str) -> PolicyExecution | None:
        """A recent execution by id (memory keeps the last HISTORY_KEPT)."""
        return self._history.get(execution_id)

    async def escalate(self, policy: RemediationPolicy) -> ActionResult | None:
        """Run a notification (the escalation action of a held target) once: not a
        remediation, so no journal entry, no verification and no rollback; None when it
        failed (logged). `policy` must be prepared (its templates checked)."""
        [action] = policy.actions
        key = idempotency_key(policy.id, 0, action)
        try:
            async with asyncio.timeout(self._budget(action)):
                result = await self._user.apply(action, policy, key)
        except ACTION_ERRORS as exc:
            log.error(
                "escalation_failed",
                target=policy.target,
                action_type=action.action_type,
                error=_describe(exc, self._budget(action)),
            )
            return None
        log.warning("escalated", target=policy.target, action_type=action.action_type)
        return result

    async def release(self, outcomes: Iterable[PolicyOutcome]) -> None:
        """After verification: release what an execution held while it settled (the
        silences its alertmanager actions created are expired). Failures are logged."""
        for outcome in outcomes:
            execution = self._history.get(outcome.execution_id)
            if execution is None:
                continue
            for step in execution.actions:
                if step.status is not ExecutionStatus.COMPLETED:
                    continue
                if is_builtin(step.action.action_type):
                    continue
                try:
                    async with asyncio.timeout(self._budget(step.action)):
                        released = await self._user.release(step)
                except ACTION_ERRORS as exc:
                    log.error(
                        "release_failed",
                        execution_id=execution.id,
                        action_type=step.action.action_type,
                        error=_describe(exc, self._budget(step.action)),
                    )
                    continue
                if released:
                    log.info(
                        "released_after_verification",
                        execution_id=execution.id,
                        action_type=step.action.action_type,
                        outcome=outcome.outcome.value,
                    )

    # --- verification -----------------------------------------------------------------

    def pending_verifications(self) -> list[PendingVerification]:
        return list(self._pending.values())

    def pending_targets(self) -> dict[str, tuple[Settling, ...]]:
        """Target -> its executions whose effect is not yet measured, oldest first, with
        the knobs each moved (the settle guard holds only those knobs)."""
        settling: dict[str, tuple[Settling, ...]] = {}
        for pending in self._pending.values():
            settling[pending.target] = (*settling.get(pending.target, ()), pending.settling)
        return settling

    def verify_due(self, observation: Observation, *, now: float) -> list[PolicyOutcome]:
        """Classify every pending execution whose settle time has passed, where possible."""
        outcomes: list[PolicyOutcome] = []
        for exec_id, pending in list(self._pending.items()):
            if now < pending.due_at:
                continue
            outcome, value = self.verify_execution(pending, observation, now=now)
            if outcome is None:
                self._pending[exec_id] = replace(pending, last_value=value)
                continue
            del self._pending[exec_id]
            outcomes.append(outcome)
            self._verdicts[exec_id] = outcome.outcome
            while len(self._verdicts) > HISTORY_KEPT:
                del self._verdicts[next(iter(self._verdicts))]
        return outcomes

    def verify_execution(
        self, pending: PendingVerification, observation: Observation, *, now: float
    ) -> tuple[PolicyOutcome | None, float | None]:
        """The outcome once it is clear (or the deadline passed), else (None, last value)."""
        execution = pending.execution
        cause = execution.policy.cause
        final = now >= pending.deadline
        fresh = None
        if not observation.degraded and cause.query is not None:
            fresh = observation.value(cause.query, cause.target)
        value = fresh if fresh is not None else pending.last_value
        # A cause read from other violations (latency read as load) is not cleared while
        # they still violate: the reading's own rule may never have fired.
        kinds = {cause.name, *filter(None, cause.annotations.get(READ_FROM, "").split(","))}
        still = any(v.kind in kinds and v.component == cause.target for v in observation.violations)
        # A rule-backed cause is judged on a reading of this pass only: a target whose series
        # vanished is not "cleared" (that would teach Knowledge a success that never was).
        if observation.degraded or (cause.query is not None and fresh is None):
            if not final:
                return None, value
            return self._outcome(pending, OutcomeType.UNKNOWN, value, now, "no data"), value
        if is_return(cause.name) or not still:
            # A return to baseline is judged by what came back, not by its own violation;
            # an action on a prediction (loop/predict.py) by the violation not coming.
            cleared = "predicted violation did not come" if cause.predicted else "violation cleared"
            outcome = (
                self._returned(pending, observation, value, now)
                if is_return(cause.name)
                else self._outcome(pending, OutcomeType.SUCCESS, value, now, cleared)
            )
            return outcome, value
        load_change = self._load_change(execution, observation)
        normalised = load_change is not None and cause.query in self._config.load_normalised
        kind = classify(
            before=execution.baseline,
            after=value,
            threshold=cause.threshold,
            partial=self._config.partial_improvement,
            degradation=self._config.degradation,
            significance=self._config.significance,
            expected_change=self._drift(execution, now),
            load_ratio=1 / load_change if normalised and load_change else None,
        )
        note = ""
        # Worse, but not attributable to this action (a DEGRADATION reverts and freezes: it
        # must be right): another action on the target ran in its window, or the offered
        # load rose beyond executor.load_tolerance under a signal not compared at equal
        # load (latency, errors: not proportional to it). It did not help either, as far
        # as can be told: INEFFECTIVE.
        if kind is OutcomeType.DEGRADATION and pending.confounded_by:
            kind, note = OutcomeType.INEFFECTIVE, " (worse, not attributed to it)"
        elif (
            kind is OutcomeType.DEGRADATION
            and not normalised
            and load_change is not None
            and self._load_explains(execution, value, observation, load_change)
        ):
            rise = f"{100 * (load_change - 1):.0f} %"
            kind, note = OutcomeType.INEFFECTIVE, f" (worse, with the offered load up {rise})"
        if kind is OutcomeType.DEGRADATION or final:
            return self._outcome(pending, kind, value, now, "still violating" + note), value
        margin = pending.due_at + self._config.ineffective_margin_s
        if kind is OutcomeType.INEFFECTIVE and now >= margin:
            # Not improved by the settle time plus a margin: failed, now, not at the deadline.
            detail = "still violating, not improved after settling" + note
            return self._outcome(pending, kind, value, now, detail), value
        return None, value

    def _returned(
        self,
        pending: PendingVerification,
        observation: Observation,
        value: float | None,
        now: float,
    ) -> PolicyOutcome:
        """A return to baseline fixes nothing: it held if no violation is back on its target
        once it settled (SUCCESS); one that brought a violation back failed (INEFFECTIVE)."""
        target = pending.target
        back = sorted({v.kind for v in observation.violations if v.component == target})
        if back:
            detail = f"{', '.join(back)} back after the return"
            return self._outcome(pending, OutcomeType.INEFFECTIVE, value, now, detail)
        return self._outcome(pending, OutcomeType.SUCCESS, value, now, "no violation after it")

    def _drift(self, execution: PolicyExecution, now: float) -> float:
        """Where the signal's trend before the action would have taken it by `now`."""
        trend = execution.baseline_trend
        if trend is None:
            return 0.0
        return trend * max(0.0, now - (execution.finished_at or execution.started_at))

    def _load_change(self, execution: PolicyExecution, observation: Observation) -> float | None:
        """The offered load on the cause's target now / when the action ran (None: unread)."""
        query = self._config.load_query
        then = execution.baseline_load
        if query is None or then is None or then <= 0:
            return None
        now_load = observation.value(query, execution.policy.cause.target)
        if now_load is None or now_load <= 0:
            return None
        return now_load / then

    def _load_explains(
        self,
        execution: PolicyExecution,
        value: float | None,
        observation: Observation,
        load_change: float,
    ) -> bool:
        """Whether the offered load, risen beyond executor.load_tolerance, accounts for a
        signal not compared at equal load getting worse: by its excess growing at most as
        the cube of the rise, or, for a queue's signal on unchanged capacity, as a queue
        filling up does."""
        config = self._config
        if load_change <= 1 + config.load_tolerance:
            return False
        cause = execution.policy.cause
        if _cubed_load_explains(execution.baseline, value, cause.threshold, load_change):
            return True
        query = config.utilisation_query
        return cause.query in config.queue_signals and _queue_explains(
            execution.baseline,
            value,
            cause.threshold,
            then=execution.baseline_utilisation,
            now=None if query is None else observation.value(query, cause.target),
            load_change=load_change,
            tolerance=config.load_tolerance,
        )

    def _outcome(
        self,
        pending: PendingVerification,
        kind: OutcomeType,
        value: float | None,
        now: float,
        detail: str,
    ) -> PolicyOutcome:
        execution = pending.execution
        finished = execution.finished_at or execution.started_at
        if pending.confounded_by:
            detail += f"; confounded by {self._describe_others(pending.confounded_by)}"
        return PolicyOutcome(
            execution_id=execution.id,
            policy_id=execution.policy.id,
            cause=execution.policy.cause.name,
            action_type=execution.policy.primary_action,
            target=execution.policy.target,
            outcome=kind,
            recorded_at=now,
            value_before=execution.baseline,
            value_after=value,
            threshold=execution.policy.cause.threshold,
            time_to_stabilize_s=(now - finished) if kind is OutcomeType.SUCCESS else None,
            detail=detail,
        )

    def _describe_others(self, ids: Iterable[str]) -> str:
        """`pol-b (throttle_requests), ...`: the other executions, with what they did."""
        described = []
        for other in ids:
            known = self._history.get(other)
            steps = "+".join(a.action.action_type for a in known.actions) if known else "?"
            described.append(f"{other} ({steps})")
        return ", ".join(described)

    def _remember(self, execution: PolicyExecution) -> None:
        """Bounded: the store keeps the journal; memory keeps the recent ones (replays)."""
        self._history.pop(execution.id, None)
        self._history[execution.id] = execution
        while len(self._history) > HISTORY_KEPT:
            del self._history[next(iter(self._history))]

    def get_execution_history(self) -> list[PolicyExecution]:
        return list(self._history.values())


# A load rise excuses a worsening of the excess over the threshold up to this power of the
# rise: a queue's latency grows faster than its load (load_spike-volatile seed 36: excess x3.1
# under load x1.48), but errors from 0.06 to 1.0 under 25 % more load are the action's.
LOAD_EXCUSE_POWER = 3


def _cubed_load_explains(
    before: float | None, after: float | None, threshold: float | None, load_change: float
) -> bool:
    """Whether the offered load rising by `load_change` could account for the excess over
    `threshold` growing from `before`'s to `after`'s (on the bad side `before` was on)."""
    if before is None or after is None or threshold is None or before == threshold:
        return False
    bad = 1.0 if before > threshold else -1.0
    return (after - threshold) * bad <= (before - threshold) * bad * load_change**LOAD_EXCUSE_POWER


# The highest utilisation the queue factor is taken at: over capacity a queue grows
# without bound, and a bound keeps the excuse finite.
MAX_QUEUE_UTILISATION = 0.99


def _queue_explains(
    before: float | None,
    after: float | None,
    threshold: float | None,
    *,
    then: float | None,
    now: float | None,
    load_change: float,
    tolerance: float,
) -> bool:
    """Whether a queue filling up on the same capacity could account for a queue signal
    (higher is worse) rising from `before` to `after`: a queue's wait grows as
    1/(1 - utilisation), from `then` to `now`. Only when the capacity did not move — the
    utilisation rose as the load did, within `tolerance`: an action that took members out
    (a scale-down, a restart, a config change) filled the queue itself. load_spike-volatile
    seed 4: p99 0.63 -> 1.27 s as the saturation rose 0.79 -> 0.96 under 30 % more load."""
    if before is None or after is None or threshold is None or then is None or now is None:
        return False
    if not before > threshold or before <= 0 or then <= 0 or load_change <= 0:
        return False
    capacity_then_per_now = now / then / load_change
    if not 1 / (1 + tolerance) <= capacity_then_per_now <= 1 + tolerance:
        return False
    grown = (1 - min(then, MAX_QUEUE_UTILISATION)) / (1 - min(now, MAX_QUEUE_UTILISATION))
    return after / before <= grown


def classify(
    *,
    before: float | None,
    after: float | None,
    threshold: float | None,
    partial: float,
    degradation: float,
    significance: float = 0.0,
    expected_change: float = 0.0,
    load_ratio: float | None = None,
) -> OutcomeType:
    """A still-violating value's outcome, attributed. Pure.

    Without the action the signal would have gone on as it was going: `before` plus
    `expected_change` (its trend before the action over the time since, given by the
    caller). A load-proportional signal is compared at equal load: `after` times
    `load_ratio` (load then / load now). The bad side is the side `before` was on; the
    change is measured against the excess over the threshold then, and must also pass a
    significance floor in absolute units (`significance` times the threshold, or the
    excess if larger): a tiny excess doubling is noise, not a verdict. A value now on the
    good side is at least PARTIAL (something else keeps the violation alive), never
    DEGRADATION.

    The trend excuses, it never credits: a worsening is DEGRADATION only beyond where the
    signal was heading, but PARTIAL needs an improvement on the value before. A fault's
    onset is a step, and its slope extrapolated says "it would have doubled": an action
    that changed nothing would be credited with the plateau (every PARTIAL the scenario
    suite recorded was "no effect" by counterfactual replay).
    """
    if before is None or after is None or threshold is None or before == threshold:
        return OutcomeType.INEFFECTIVE
    bad = 1.0 if before > threshold else -1.0
    gap_before = (before - threshold) * bad
    if (after - threshold) * bad <= 0:
        return OutcomeType.PARTIAL
    # The trend only excuses: a signal worsening before the action is judged against where
    # it was heading (at most the excess doubling: a steep trend does not excuse all); one
    # that was improving is judged against its value then, never blamed on a noisy slope
    # (a DEGRADATION reverts and freezes: it must be right).
    drift = max(0.0, min(gap_before, expected_change * bad))
    adjusted = after if load_ratio is None or load_ratio <= 0 else after * load_ratio
    gap_after = (adjusted - threshold) * bad
    floor = significance * max(abs(threshold), gap_before)
    if gap_before - gap_after >= max(partial * gap_before, floor):
        return OutcomeType.PARTIAL
    if gap_after - (gap_before + drift) >= max(degradation * gap_before, floor):
        return OutcomeType.DEGRADATION
    return OutcomeType.INEFFECTIVE


def _with_action(execution: PolicyExecution, index: int, step: ActionExecution) -> PolicyExecution:
    actions = list(execution.actions)
    actions[index] = step
    return replace(execution, actions=tuple(actions), error=execution.error)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, CharterError | ActuatorError):
        return str(exc)
    return str(exc) or type(exc).__name__
