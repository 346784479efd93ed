"""MAPEKOrchestrator: one iteration is Monitor → Analyze → Plan → Guards → Execute → Knowledge.

`run_once(now)` does one iteration and returns its decision record; `run()` repeats it every
`interval_s` with no drift and never two at once, and `trigger()` wakes it early (leading
edge at once, then at most one more per `trigger_debounce_s`). A phase failure is logged and
counted, the iteration ends with what it has, and nothing mutating runs on missing data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from mape_k.config import Settings
from mape_k.errors import CharterError, MapekError
from mape_k.integrations.charter.base import CharterClient, CommitteeState
from mape_k.loop import actions as action_model
from mape_k.loop import guards as guard_rules
from mape_k.loop.analyze import PatternAnalyzer
from mape_k.loop.execute import Executor
from mape_k.loop.knowledge import Knowledge
from mape_k.loop.monitor import Monitor
from mape_k.loop.plan import Planner
from mape_k.loop.safety import (
    FREEZE_KEY,
    BreakerCharter,
    SafetyState,
    charter_problems,
    config_problems,
    store_problems,
)
from mape_k.metrics import Metrics, StateGauges
from mape_k.models import (
    ActionType,
    AnalysisResult,
    Cause,
    ExecutionStatus,
    GuardDecision,
    GuardVerdict,
    KnobSetting,
    Observation,
    OutcomeType,
    PolicyExecution,
    PolicyOutcome,
    RemediationPolicy,
    Severity,
    ViolationPattern,
    ViolationSource,
)
from mape_k.store import Store

log = structlog.get_logger(__name__)

# One reading of the target's state (or why there is none), and a policy resolved against
# it (or as planned, with why it could not be).
Reading = tuple[CommitteeState | None, str | None]
Plan = tuple[RemediationPolicy, str | None]


@dataclass
class MAPEKState:
    iteration: int = 0
    violations_seen: int = 0
    policies_applied: int = 0
    successful_executions: int = 0
    failed_executions: int = 0
    degraded_iterations: int = 0
    last_cycle_s: float = 0.0
    total_cycle_s: float = 0.0
    phase_total_s: dict[str, float] = field(default_factory=dict)
    last_started_at: float | None = None
    last_result: str | None = None

    def as_dict(self) -> dict[str, Any]:
        n = max(self.iteration, 1)
        return {
            "iteration": self.iteration,
            "violations_seen": self.violations_seen,
            "policies_applied": self.policies_applied,
            "successful_executions": self.successful_executions,
            "failed_executions": self.failed_executions,
            "degraded_iterations": self.degraded_iterations,
            "last_cycle_s": round(self.last_cycle_s, 6),
            "mean_cycle_s": round(self.total_cycle_s / n, 6),
            "mean_phase_s": {k: round(v / n, 6) for k, v in self.phase_total_s.items()},
            "last_started_at": self.last_started_at,
            "last_result": self.last_result,
        }


class _Phases:
    """Times the phases of one iteration into the record and the histogram."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.durations: dict[str, float] = {}
        self._metrics = metrics

    def done(self, phase: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.durations[phase] = round(elapsed, 6)
        if self._metrics is not None:
            self._metrics.iteration_duration.labels(phase=phase).observe(elapsed)


class MAPEKOrchestrator:
    def __init__(
        self,
        *,
        settings: Settings,
        monitor: Monitor,
        analyzer: PatternAnalyzer,
        planner: Planner,
        executor: Executor,
        knowledge: Knowledge,
        store: Store,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self.monitor = monitor
        self.analyzer = analyzer
        self.planner = planner
        self.executor = executor
        executor.hold = self._hold
        self.knowledge = knowledge
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self.state = MAPEKState()
        self.dry_run = settings.executor.dry_run
        self._configured_dry_run = settings.executor.dry_run
        self.freeze: guard_rules.Freeze | None = self.config_freeze(settings)
        self.records: deque[dict[str, Any]] = deque(
            maxlen=settings.knowledge.decisions_kept_in_memory
        )
        self._lock = asyncio.Lock()
        self._reloaded: Settings | None = None  # a reload waiting for the iteration to end
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._triggered = False
        self._last_start_mono = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._busy_since: float | None = None
        # Called with each finished decision record (the demo's live view, tests' sync).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._ids = itertools.count(1)
        self._prom_ok: bool | None = None
        # The guards' memory (history, breakers, back-offs), persisted in the store.
        self.safety = SafetyState(settings.guards, store=store, metrics=metrics)
        self.safety.load()
        self.startup_problem: str | None = None
        self._startup_checked = False
        self._committee_size: int | None = None
        self._charter: CharterClient | None = None
        executor.wrap_charter(self._wrap_charter)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="mapek-loop")
        return self._task

    async def stop(self) -> None:
        """Finish the current iteration (if any) and return; the caller bounds the wait."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    async def cancel(self) -> None:
        """Last resort when `stop()` overran its bound: cancel the loop task."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _hold(self) -> str | None:
        """Why a running policy must not take its next action, if it must not."""
        if self._stopping.is_set():
            return "the daemon is stopping"
        freeze = self.freeze
        if freeze is not None and freeze.active(self._clock()):
            return f"frozen ({freeze.source}): {freeze.reason}"
        return None

    def set_freeze(self, freeze: guard_rules.Freeze | None, *, now: float) -> bool:
        """The one writer of the freeze: it applies at once in memory (the guards and a
        running policy read it), then is persisted, best effort (False if that failed).
        The configuration's own kill switch is not persisted: the config says it."""
        self.freeze = freeze
        try:
            if freeze is None or freeze.source == "config":
                self._store.delete_state(FREEZE_KEY)
            else:
                self._store.set_state(FREEZE_KEY, _freeze(freeze), at=now)
        except MapekError as exc:
            log.error("freeze_save_failed", error=str(exc))
            return False
        return True

    def restore_freeze(self, now: float) -> None:
        """A freeze persisted by an operator or a panic survives a restart; one that
        cannot be read fails closed (kept until an operator lifts it)."""
        try:
            saved = self._store.get_state(FREEZE_KEY)
        except MapekError as exc:
            saved = {"unreadable": str(exc)}
        if saved is None or self.freeze is not None:
            return
        try:
            until = saved["until"]
            freeze = guard_rules.Freeze(
                reason=str(saved["reason"]),
                since=float(saved["since"]),
                until=None if until is None else float(until),
                source=str(saved["source"]),
            )
        except (KeyError, TypeError, ValueError):
            log.error("freeze_unreadable", saved=repr(saved)[:200])
            freeze = guard_rules.Freeze(
                reason="a saved freeze could not be read; lift it with DELETE /api/v1/freeze",
                since=now,
                until=None,
                source="store",
            )
        if freeze.active(now):
            self.freeze = freeze
            log.warning("freeze_restored", reason=freeze.reason, until=freeze.until)

    def active_freeze(self, now: float) -> guard_rules.Freeze | None:
        """The freeze that holds now: an operator's, a panic's or the kill switch, else a
        configured freeze window; None when nothing holds."""
        freeze = self.freeze
        if freeze is not None and freeze.active(now):
            return freeze
        return guard_rules.active_window(self._settings.guards.freeze_windows, now)

    def state_gauges(self, now: float) -> StateGauges:
        """The loop's state for /metrics, read from its owners at scrape time."""
        safety = self.safety
        return StateGauges(
            frozen=self.active_freeze(now) is not None,
            dry_run=self.dry_run,
            pending_approvals=len(self.planner.pending_approvals()),
            pending_verifications=len(self.executor.pending_verifications()),
            oscillating_targets=sum(1 for b in safety.backoffs.values() if now < b.until),
            needs_human=sum(1 for h in safety.needs_human.values() if now < h.until),
            charter_circuit_open=safety.charter.phase(now) != "closed",
        )

    def busy_for(self) -> float:
        """Seconds the current iteration has been running (0 when idle)."""
        if self._busy_since is None:
            return 0.0
        return asyncio.get_running_loop().time() - self._busy_since

    def set_dry_run(self, enabled: bool) -> None:
        self.dry_run = enabled
        self.executor.dry_run = enabled

    def reconfigure(self, settings: Settings) -> None:
        """Apply a reloaded configuration to every part of the loop.

        `settings` is what `config.reload_plan` says can apply: the values that need a
        restart are already kept as they run. The safety switches (`guards.frozen`,
        `executor.dry_run`) apply at once, even to a policy running now. The rest applies
        at once when the loop is idle; an iteration in progress finishes on the
        configuration it started with, and the new one applies as it ends.
        """
        self._apply_switches(settings)
        if self._lock.locked():
            self._reloaded = settings
            return
        self._apply(settings)

    def _apply_switches(self, settings: Settings) -> None:
        # The config owns only its own kill switch: an active operator or panic freeze stays.
        if settings.guards.frozen:
            if self.freeze is None or not self.freeze.active(self._clock()):
                self.freeze = self.config_freeze(settings)
        elif self.freeze is not None and self.freeze.source == "config":
            self.freeze = None
        # Dry run set over the control API stays until the configured value changes.
        if settings.executor.dry_run != self._configured_dry_run:
            self._configured_dry_run = settings.executor.dry_run
            self.set_dry_run(settings.executor.dry_run)

    def _apply(self, settings: Settings) -> None:
        old = self._settings
        self._settings = settings
        self.monitor.reconfigure(settings.monitor)
        self.analyzer.reconfigure(settings.analyzer)
        dropped = self.planner.reconfigure(settings.planner)
        self.executor.reconfigure(settings.executor, actions=settings.planner.actions)
        self.knowledge.reconfigure(settings.knowledge)
        self.safety.config = settings.guards
        if self.records.maxlen != settings.knowledge.decisions_kept_in_memory:
            self.records = deque(self.records, maxlen=settings.knowledge.decisions_kept_in_memory)
        if settings != old:
            self._startup_checked = False  # re-validate the new configuration
        self._forget_approvals(dropped)
        self._wake.set()

    def _forget_approvals(self, dropped: list[str]) -> None:
        """Proposals the reloaded planner dropped: their approval times go too."""
        for policy_id in dropped:
            self.safety.approvals.pop(policy_id, None)
        if dropped:
            log.warning(
                "approvals_dropped",
                policy_ids=dropped,
                reason="the reloaded planner no longer proposes them for approval, or keeps fewer",
            )

    def config_freeze(self, settings: Settings) -> guard_rules.Freeze | None:
        if not settings.guards.frozen:
            return None
        return guard_rules.Freeze(
            reason="guards.frozen is set in the configuration",
            since=self._clock(),
            until=None,
            source="config",
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def trigger(self, reason: str = "alert") -> None:
        """Wake the loop early. Returns at once; bursts collapse into one iteration."""
        log.debug("iteration_triggered", reason=reason)
        self._triggered = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._stopping.is_set():
            # Read each pass: a SIGHUP reload may change them.
            interval = self._settings.orchestrator.interval_s
            debounce = self._settings.orchestrator.trigger_debounce_s
            now = loop.time()
            run_now, wake_at = schedule(
                now=now,
                next_at=next_at,
                triggered=self._triggered,
                last_start=self._last_start_mono,
                debounce_s=debounce,
            )
            if run_now:
                self._triggered = False
                self._last_start_mono = now
                await self._guarded_iteration()
                next_at = advance_grid(next_at, loop.time(), interval)
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _guarded_iteration(self) -> None:
        self._busy_since = asyncio.get_running_loop().time()
        try:
            await self.run_once()
        except TimeoutError:
            timeout = self._settings.orchestrator.iteration_timeout_s
            log.error("iteration_timeout", timeout_s=timeout)
            self._record_failure(f"reading inputs took longer than {timeout:g} s")
        except Exception as exc:
            # A bug in one iteration must not take the loop down; it is logged with its stack.
            log.exception("iteration_crashed")
            self._record_failure(f"crashed: {type(exc).__name__}: {exc}")
        finally:
            self._busy_since = None

    def _record_failure(self, error: str) -> None:
        """A failed iteration is a decision too: counted, and shown in /stats."""
        self.state.last_result = "error"
        self._count_result("error")
        self.records.append(
            {
                "id": f"{self.state.iteration}-failed",
                "started_at": self.state.last_started_at,
                "result": "error",
                "choice": {
                    "policy_id": None,
                    "why": f"iteration failed, nothing executed: {error}",
                },
            }
        )

    # --- one iteration ----------------------------------------------------------------

    async def run_once(self, now: float | None = None) -> dict[str, Any]:
        async with self._lock:
            now = self._clock() if now is None else now
            iteration_id = f"{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            try:
                with structlog.contextvars.bound_contextvars(iteration_id=iteration_id):
                    return await self._iterate(iteration_id, now)
            finally:
                reloaded, self._reloaded = self._reloaded, None
                if reloaded is not None:
                    self._apply(reloaded)

    async def _iterate(self, iteration_id: str, now: float) -> dict[str, Any]:  # noqa: PLR0915
        started = time.perf_counter()
        phases = _Phases(self._metrics)
        self.state.iteration += 1
        self.state.last_started_at = now
        if self._metrics is not None:
            self._metrics.last_iteration.set(now)
        record: dict[str, Any] = {"id": iteration_id, "started_at": now}

        t = time.perf_counter()
        # The iteration timeout bounds reading, never acting: a Charter call is bounded by
        # executor.action_timeout_s and must not be cancelled half-way by the loop itself.
        async with asyncio.timeout(self._settings.orchestrator.iteration_timeout_s):
            observation = await self.monitor.observe(now)
            phases.done("monitor", t)
            record["inputs"] = None  # filled in once the candidates are known (below)
            self._note_prometheus(observation)
            self.state.violations_seen += len(observation.violations)
            self._committee_size = _size(observation, "charter")
            await self._check_startup()

        t = time.perf_counter()
        outcomes = self._verify(observation, now)
        record["panic"] = await self._panic_check(outcomes, observation, now)
        phases.done("verify", t)
        record["verifications"] = [_outcome(o) for o in outcomes]

        t = time.perf_counter()
        analysis = self.analyzer.analyze(observation.violations, now=now)
        phases.done("analyze", t)
        self._count_analysis(observation, analysis)

        t = time.perf_counter()
        policies = self.planner.generate_policies(
            analysis, knowledge=self.knowledge.view(), now=now
        )
        phases.done("plan", t)
        # Large inputs are summarised, never copied: what the candidates stand on in full,
        # then the top of the rest, then counts and a digest of the tail (`omitted`).
        summary = RecordSummary(policies, self._settings.knowledge.record_top_n)
        record["inputs"] = summary.inputs(observation)
        record["patterns"] = summary.patterns(analysis.patterns)
        record["causes"] = summary.causes(analysis.causes)
        record["inhibited"] = summary.inhibited(analysis.inhibited)
        record["omitted"] = summary.omitted
        record["candidates"] = [_candidate(p) for p in policies]

        t = time.perf_counter()
        # One reading of the target's state; every action is resolved against it once, and
        # that resolved plan is what the guards judge and the executor sends.
        reading = await self._read_target(observation, now)
        plans = {p.id: self._resolve(p, reading) for p in policies}
        self._recommend(plans, reading, observation, now)
        if policies and self.safety.charter.phase(now) == "half_open":
            await self._probe_charter()
        chosen, decisions, why = self._choose(policies, observation, now, reading, plans)
        phases.done("guard", t)
        record["guard_decisions"] = [_guard(d) for d in decisions]
        self._record_guards(decisions, now)

        execution: PolicyExecution | None = None
        if chosen is not None:
            t = time.perf_counter()
            execution = await self.executor.execute_policy(
                chosen, baseline=_baseline(chosen, observation)
            )
            phases.done("execute", t)
            if chosen.requires_approval:
                self.planner.use_approval(chosen)
            self._count_execution(execution)
            self._note_execution(execution, now)
        record["choice"] = {"policy_id": chosen.id if chosen else None, "why": why}
        record["execution"] = _execution(execution) if execution else None
        result = _result(observation, chosen, execution, policies, decisions)
        record["result"] = result
        record["pending_approvals"] = [p.id for p in self.planner.pending_approvals()]
        self.safety.prune(now=now)
        self.safety.save(now=now)
        phases.done("total", started)
        record["phases_s"] = phases.durations
        self._finish(record, phases, result)
        for listener in self.listeners:
            listener(record)
        log.info(
            "iteration_completed",
            result=result,
            violations=len(observation.violations),
            patterns=len(analysis.patterns),
            decision=why,
            duration_s=phases.durations["total"],
        )
        return record

    def _verify(self, observation: Observation, now: float) -> list[PolicyOutcome]:
        outcomes = self.executor.verify_due(observation, now=now)
        for outcome in outcomes:
            self.knowledge.record_outcome(outcome)
            self.safety.note_outcome(outcome, now=now)
        return outcomes

    def guard_context(self, observation: Observation, now: float) -> guard_rules.GuardContext:
        safety = self.safety
        return guard_rules.GuardContext(
            now=now,
            dry_run=self.dry_run,
            freeze=self.freeze,
            degraded_reason=observation.degraded_reason,
            settling=self.executor.pending_targets(),
            config=self._settings.guards,
            history=tuple(safety.history),
            recommendations=tuple(safety.recommendations),
            backoffs=dict(safety.backoffs),
            charter=safety.charter,
            needs_human=dict(safety.needs_human),
            startup_problem=self.startup_problem,
            approvals=dict(safety.approvals),
        )

    async def _read_target(self, observation: Observation, now: float) -> Reading:
        """The one reading of the target's state this iteration resolves its actions against:
        the Charter's committee state (its `target_size` is the size: where the last scale
        is heading). No reading, with the reason, on degraded data, an open Charter circuit
        (nothing is called through it), a failed read or a state no controller should act on.
        """
        if observation.degraded:
            return None, f"no reading on degraded data: {observation.degraded_reason}"
        if self._charter is None:
            return None, "no Charter client"
        if self.safety.charter.phase(now) == "open":
            return None, "the Charter circuit is open: its state was not read"
        try:
            async with asyncio.timeout(self._settings.executor.action_timeout_s):
                state = await self._charter.get_committee_state()
        except (MapekError, TimeoutError) as exc:
            problem = f"the Charter's state could not be read: {exc or 'timeout'}"
            log.warning("target_state_unreadable", problem=problem)
            return None, problem
        problems = charter_problems(state)
        if problems:
            problem = f"the Charter's state is not one to act on: {'; '.join(problems)}"
            log.warning("target_state_unreadable", problem=problem)
            return None, problem
        return state, None

    @staticmethod
    def _resolve(policy: RemediationPolicy, reading: Reading) -> Plan:
        """`policy` resolved to absolute desired state against `reading`, or as it came with
        the reason it could not be (the data guard then blocks it, saying why)."""
        state, problem = reading
        if state is None:
            return policy, problem
        try:
            return action_model.resolve(policy, state), None
        except action_model.Unresolvable as exc:
            return policy, str(exc)

    def _choose(
        self,
        policies: list[RemediationPolicy],
        observation: Observation,
        now: float,
        reading: Reading,
        plans: dict[str, Plan],
    ) -> tuple[RemediationPolicy | None, list[GuardDecision], str]:
        """The best policy every guard allows; one policy per iteration, on purpose. Each is
        judged resolved (`plans`, an approved one resolved against the same `reading`), and
        the one chosen is returned resolved: the executor sends exactly that."""
        if not policies:
            return (
                None,
                [],
                why_nothing(
                    observation,
                    self._settings.planner.min_score,
                    top_n=self._settings.knowledge.record_top_n,
                ),
            )
        ctx = self.guard_context(observation, now)
        decisions: list[GuardDecision] = []
        held: list[str] = []
        runnable = [p for p in policies if not p.requires_approval]
        best = self.planner.get_best_policy(policies)
        if best is not None and best not in runnable:
            runnable.insert(0, best)  # an approved risky policy
        for candidate in runnable:
            plan, unresolved = plans.get(candidate.id) or self._resolve(candidate, reading)
            target_ctx = replace(ctx, unresolved=unresolved)
            policy = guard_rules.stabilized(plan, target_ctx)
            verdicts = guard_rules.evaluate(policy, target_ctx)
            decisions.extend(verdicts)
            self._after_guards(policy, verdicts, now)
            if guard_rules.allowed(verdicts):
                why = f"{policy.primary_action.value} on {policy.target}: {policy.rationale}"
                return policy, decisions, why
            held.extend(f"{d.guard}: {d.reason}" for d in guard_rules.holding(verdicts))
        if not runnable:
            waiting = ", ".join(p.id for p in self.planner.pending_approvals())
            return None, decisions, f"waiting for operator approval of {waiting}"
        return None, decisions, "held back by guards: " + "; ".join(dict.fromkeys(held))

    # --- the safety envelope's hooks -----------------------------------------------------

    def _wrap_charter(self, inner: CharterClient) -> CharterClient:
        self._charter = BreakerCharter(inner, on_result=self._charter_result)
        return self._charter

    async def _probe_charter(self) -> None:
        """Half-open: a mutation-free call first. If it fails the circuit opens again and
        no policy is risked; if it works, the next policy is the trial whose mutation
        closes (or reopens) the circuit."""
        if self._charter is None:
            return
        try:
            async with asyncio.timeout(self._settings.executor.action_timeout_s):
                await self._charter.ping()
        except (CharterError, TimeoutError) as exc:
            log.warning("charter_probe_failed", error=str(exc) or "timeout")

    def _charter_result(self, ok: bool, error: str | None, mutation: bool) -> None:
        self.safety.charter_result(ok, now=self._clock(), error=error, mutation=mutation)

    def approve(self, policy_id: str, *, now: float) -> RemediationPolicy | None:
        """An operator approval: the planner's, plus its time for the approval guard."""
        policy = self.planner.approve_policy(policy_id, now=now)
        if policy is not None:
            self.safety.note_approval(policy.id, now=now)
            self.safety.save(now=now)
        return policy

    async def _check_startup(self) -> None:
        """State validation before acting: config, store, Charter. Re-checked while failing."""
        if not self._settings.guards.validate_startup:
            self.startup_problem = None
            return
        if self._startup_checked and self.startup_problem is None:
            return
        problems = config_problems(self._settings) + store_problems(self._store)
        if self._charter is not None:
            try:
                async with asyncio.timeout(self._settings.executor.action_timeout_s):
                    state = await self._charter.get_committee_state()
            except (MapekError, TimeoutError) as exc:
                problems.append(f"Charter state unknown: {exc or 'timeout'}")
            else:
                problems.extend(f"Charter state insane: {p}" for p in charter_problems(state))
        problem = "; ".join(problems) or None
        if problem != self.startup_problem:
            if problem is None:
                log.warning("startup_validation_passed", previous_problem=self.startup_problem)
            else:
                log.error("startup_validation_failed", problem=problem, acting=False)
        elif problem is None and not self._startup_checked:
            log.info("startup_validation_passed")
        self.startup_problem = problem
        self._startup_checked = True

    def _panic_reason(self, outcomes: list[PolicyOutcome], observation: Observation) -> str | None:
        cfg = self._settings.guards.panic
        if not cfg.enabled:
            return None
        if cfg.on_degradation:
            for outcome in outcomes:
                if outcome.outcome is OutcomeType.DEGRADATION:
                    return (
                        f"{outcome.action_type.value} for {outcome.cause} on {outcome.target}"
                        f" made it worse ({outcome.value_before} -> {outcome.value_after})"
                    )
        if cfg.query is not None and not observation.degraded:
            value = observation.value(cfg.query, cfg.component)
            if value is not None and cfg.comparator.holds(value, cfg.threshold):
                return (
                    f"panic condition {cfg.query} {cfg.comparator.value} {cfg.threshold}: {value}"
                )
        return None

    async def _panic_check(
        self, outcomes: list[PolicyOutcome], observation: Observation, now: float
    ) -> dict[str, Any] | None:
        """Panic revert: undo recent policies, newest first, then freeze, and say so loudly."""
        reason = self._panic_reason(outcomes, observation)
        if reason is None:
            return None
        current = self.freeze
        if current is not None and current.active(now):
            # Frozen already: a human (or an earlier panic) holds the controls. Reverting
            # now would be a mutating action during a freeze; say so instead.
            log.warning(
                "panic_revert_skipped", reason=reason, frozen_by=current.source, why=current.reason
            )
            return {"reason": reason, "skipped": f"frozen ({current.source}): {current.reason}"}
        cfg = self._settings.guards.panic
        reverted = (
            []
            if self.dry_run
            else await self.executor.revert_recent(since=now - cfg.lookback_s, reason=reason)
        )
        until = None if cfg.freeze_s is None else now + cfg.freeze_s
        self.set_freeze(
            guard_rules.Freeze(
                reason=f"panic revert: {reason}", since=now, until=until, source="panic"
            ),
            now=now,
        )
        if self._metrics is not None:
            self._metrics.panic_reverts.inc()
        ids = [e.id for e in reverted]
        log.error(
            "panic_revert",
            reason=reason,
            reverted=ids,
            statuses=[e.status.value for e in reverted],
            frozen_until=until,
        )
        decision = GuardDecision(
            guard="panic",
            verdict=GuardVerdict.BLOCK,
            reason=f"panic revert of {len(ids)} execution(s), frozen: {reason}",
            policy_id=None,
            until=until,
        )
        self._record_guards([decision], now)
        return {"reason": reason, "reverted": ids, "frozen_until": until}

    def _recommend(
        self, plans: dict[str, Plan], reading: Reading, observation: Observation, now: float
    ) -> None:
        """Record each target's recommended size this iteration (scale-down stabilization):
        where its best-ranked resolved scale policy leaves it, else the size the reading
        says it is heading for — the same reading and resolution the guards judge."""
        state, _ = reading
        if observation.degraded or state is None:
            return
        scaling = [
            policy
            for policy, _ in plans.values()  # in the planner's ranking
            if policy.primary_action in {ActionType.SCALE_UP, ActionType.SCALE_DOWN}
        ]
        targets = dict.fromkeys(
            [m.component for m in observation.metrics if m.name == "committee_size"]
            + [policy.target for policy in scaling]
        )
        for target in targets:
            recommended = state.target_size
            for policy in scaling:
                if policy.target == target:
                    size = action_model.final_value(policy, "size")
                    recommended = state.target_size if size is None else int(size)
                    break
            self.safety.recommend(target, recommended, now=now)

    def _after_guards(
        self, policy: RemediationPolicy, verdicts: tuple[GuardDecision, ...], now: float
    ) -> None:
        for decision in verdicts:
            if decision.verdict is GuardVerdict.ALLOW:
                continue
            if decision.guard == "oscillation":
                # A predicted flip-flop starts the back-off (an active one is kept as is).
                self.safety.start_backoff(policy.target, decision.reason, now=now)
            if decision.guard == "approval" and policy.id in self.safety.approvals:
                # An expired approval is a rejection: default deny.
                self.planner.reject_policy(policy.id)
                self.safety.approvals.pop(policy.id, None)
                log.warning("approval_expired", policy_id=policy.id, reason=decision.reason)

    def _note_execution(self, execution: PolicyExecution, now: float) -> None:
        changes = guard_rules.executed_changes(execution, at=now)
        self.safety.record_changes(changes, now=now)

    def resume(self, now: float) -> None:
        """After a restart, the envelope knows what the journal says happened: executions
        that finished within the guards' windows are in their history (a crash between an
        action and the guards' save lost them), and completed executions with no outcome
        yet are waited for again (a restart used to forget them, and learning with them).
        Run once at start, after the interrupted executions were reconciled."""
        guards = self._settings.guards
        horizon = max(guards.velocity.window_s, guards.oscillation.window_s)
        known = {change.execution_id for change in self.safety.history}
        noted = 0
        for execution in self._store.executions_finished_since(now - horizon):
            if execution.id not in known:
                self._note_execution(execution, execution.finished_at or now)
                noted += 1
        since = now - self.executor.verification_horizon_s()
        restored = self.executor.restore_verifications(
            self._store.unverified_executions(since=since)
        )
        if noted or restored:
            self.safety.save(now=now)
            log.info("envelope_resumed", history_added=noted, verifications_restored=restored)

    def guard_statistics(self, now: float) -> dict[str, Any]:
        """Each guard's state, for /stats."""
        settings = self._settings.guards
        freeze = self.freeze if self.freeze is not None and self.freeze.active(now) else None
        window = guard_rules.active_window(settings.freeze_windows, now)
        approvals = [
            {
                "policy_id": p.id,
                "approved_at": self.safety.approvals.get(p.id),
                "expires_at": (
                    self.safety.approvals[p.id] + settings.approval_ttl_s
                    if p.id in self.safety.approvals
                    else None
                ),
            }
            for p in self.planner.approved_policies()
        ]
        return {
            "dry_run": self.dry_run,
            "freeze": _freeze(freeze),
            "freeze_window": _freeze(window),
            "freeze_windows": [w.model_dump() for w in settings.freeze_windows],
            "startup": {"ok": self.startup_problem is None, "problem": self.startup_problem},
            "approvals": approvals,
            "approval_ttl_s": settings.approval_ttl_s,
            **self.safety.snapshot(now=now, committee_size=self._committee_size),
        }

    # --- bookkeeping ------------------------------------------------------------------

    def _finish(self, record: dict[str, Any], phases: _Phases, result: str) -> None:
        self.state.last_cycle_s = phases.durations["total"]
        self.state.total_cycle_s += phases.durations["total"]
        for phase, seconds in phases.durations.items():
            self.state.phase_total_s[phase] = self.state.phase_total_s.get(phase, 0.0) + seconds
        self.state.last_result = result
        self.records.append(record)
        self._count_result(result)
        try:
            self._store.record_iteration(
                record["id"], started_at=record["started_at"], result=result, record=record
            )
        except MapekError as exc:
            log.error("decision_record_failed", error=str(exc))

    def _count_result(self, result: str) -> None:
        if result == "degraded":
            self.state.degraded_iterations += 1
        if self._metrics is not None:
            self._metrics.iterations.labels(result=result).inc()

    def _count_analysis(self, observation: Observation, analysis: AnalysisResult) -> None:
        if self._metrics is None:
            return
        self._metrics.active_violations.set(len(observation.violations))
        # Counted per label pair, not per item: 10,000 firing alerts are 6 increments.
        by_labels = Counter((v.source, v.severity) for v in observation.violations)
        for (source, severity), count in by_labels.items():
            self._metrics.violations.labels(source=source.value, severity=severity.value).inc(count)
        for kind, count in Counter(p.kind for p in analysis.patterns).items():
            self._metrics.patterns.labels(kind=kind.value).inc(count)

    def _count_execution(self, execution: PolicyExecution) -> None:
        self.state.policies_applied += 1
        if execution.status is ExecutionStatus.COMPLETED:
            self.state.successful_executions += 1
        else:
            self.state.failed_executions += 1

    def _record_guards(self, decisions: list[GuardDecision], now: float) -> None:
        for decision in decisions:
            if self._metrics is not None:
                self._metrics.guard_decisions.labels(
                    guard=decision.guard, verdict=decision.verdict.value
                ).inc()
            if decision.verdict is not GuardVerdict.ALLOW:
                log.info(
                    "action_held",
                    guard=decision.guard,
                    verdict=decision.verdict.value,
                    reason=decision.reason,
                    policy_id=decision.policy_id,
                )
                try:
                    self._store.record_guard_decision(decision, at=now)
                except MapekError as exc:
                    log.error("guard_record_failed", error=str(exc))

    def _note_prometheus(self, observation: Observation) -> None:
        # The Monitor owns mapek_prometheus_up; readiness needs "usable data" instead.
        self._prom_ok = not observation.degraded

    @property
    def prometheus_ok(self) -> bool | None:
        return self._prom_ok

    def recent_records(
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
            for row in self._store.recent_iterations(limit + 1, before=before)
            if isinstance(row["record"], dict)
        }
        for record in self.records:
            started = record.get("started_at")
            if started is not None and started < cutoff:
                merged[record["id"]] = record
        ordered = sorted(merged.values(), key=lambda r: r.get("started_at") or 0.0, reverse=True)
        return ordered[:limit], len(ordered) > limit

    def get_statistics(self) -> dict[str, Any]:
        return {
            **self.state.as_dict(),
            "dry_run": self.dry_run,
            "frozen": _freeze(self.freeze),
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


def why_nothing(observation: Observation, min_score: float, *, top_n: int = 20) -> str:
    """Why an iteration with no candidate policy did nothing, in words (bounded). Pure."""
    if observation.degraded:
        return f"nothing to do on missing data: {observation.degraded_reason}"
    if observation.violations:
        causes = _some(sorted({v.key for v in observation.violations}), top_n)
        return (
            f"no remediation for {causes}: none configured, or every candidate scored"
            f" below planner.min_score ({min_score:g})"
        )
    if observation.alerts_superseded:
        return (
            f"no violations: firing alert(s) {_some(observation.alerts_superseded, top_n)}"
            " superseded by a fresh reading that finds the target fine (alerts lag their"
            " measurement)"
        )
    return "no violations"


def schedule(
    *, now: float, next_at: float, triggered: bool, last_start: float, debounce_s: float
) -> tuple[bool, float]:
    """(run an iteration now?, else when to wake up). Pure, for the loop and its tests.

    A trigger runs at once unless an iteration started less than `debounce_s` ago; then it
    runs when the debounce ends (leading edge plus one trailing run, never a burst).
    """
    trigger_at = last_start + debounce_s if triggered else float("inf")
    if now >= next_at or now >= trigger_at:
        return True, now
    return False, min(next_at, trigger_at)


def advance_grid(next_at: float, now: float, interval_s: float) -> float:
    """The next slot on the fixed grid after `now`: no drift, missed slots skipped."""
    while next_at <= now:
        next_at += interval_s
    return next_at


# --- record helpers (plain dicts: JSON for the store and /stats) -----------------------


def _result(
    observation: Observation,
    chosen: RemediationPolicy | None,
    execution: PolicyExecution | None,
    policies: list[RemediationPolicy],
    decisions: list[GuardDecision],
) -> str:
    if execution is not None:
        return "acted"
    if observation.degraded:
        return "degraded"
    if decisions:
        return "held"
    if policies and chosen is None:
        return "pending_approval"
    return "idle"


def _size(observation: Observation, target: str) -> int | None:
    value = observation.value("committee_size", target)
    return None if value is None else round(value)


def _baseline(policy: RemediationPolicy, observation: Observation) -> float | None:
    cause = policy.cause
    if cause.query is None:
        return cause.value
    value = observation.value(cause.query, cause.target)
    return cause.value if value is None else value


def _some(items: Sequence[str], limit: int) -> str:
    """'a, b, c' or, past `limit` items, 'a, b and 998 more': a bounded line of text."""
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


def _digest(parts: Iterable[str]) -> str:
    """Order-independent digest of a set of items: equal tails have equal digests."""
    hasher = hashlib.sha256()
    for part in sorted(parts):
        hasher.update(part.encode("utf-8", "replace"))
        hasher.update(b"\n")
    return f"sha256:{hasher.hexdigest()}"


def _top_counts(counts: Counter[str], limit: int) -> dict[str, int]:
    """The `limit` largest counts; the rest summed under "(other)"."""
    top = dict(counts.most_common(limit))
    rest = sum(counts.values()) - sum(top.values())
    if rest:
        top["(other)"] = rest
    return top


_SEVERITY_RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
_ViolationRow = tuple[str, str, Severity, ViolationSource, float | None, float | None]


class RecordSummary:
    """Bounds the lists of one decision record (pure: built from this iteration's values).

    What the candidates stand on (their causes, the violations and patterns of those causes)
    is kept in full; of the rest, the first `top_n` (most urgent first); the tail becomes
    `omitted[<list>]`: how many items, counts by kind, and a digest of the omitted items.
    Identical violations (many alerts of one kind on one component) are kept once with a
    `count`. A record is then O(top_n + candidates' evidence) whatever fires.
    """

    def __init__(self, policies: Sequence[RemediationPolicy], top_n: int) -> None:
        self.top_n = top_n
        self.keys = frozenset(p.cause.key for p in policies)
        self.kinds = frozenset(p.cause.name for p in policies)
        self.targets = frozenset(p.cause.target for p in policies)
        self.omitted: dict[str, dict[str, Any]] = {}

    def _omit(
        self, name: str, *, total: int, shown: int, by: Counter[str], parts: list[str]
    ) -> None:
        if total > shown:
            self.omitted[name] = {
                "total": total,
                "shown": shown,
                "omitted": total - shown,
                "by": _top_counts(by, self.top_n),
                "digest": _digest(parts),
            }

    def inputs(self, observation: Observation) -> dict[str, Any]:
        rows: Counter[_ViolationRow] = Counter(
            (v.kind, v.component, v.severity, v.source, v.value, v.threshold)
            for v in observation.violations
        )
        focus = [row for row in rows if f"{row[0]}/{row[1]}" in self.keys]
        rest = sorted(
            (row for row in rows if f"{row[0]}/{row[1]}" not in self.keys),
            key=lambda row: (_SEVERITY_RANK[row[2]], -rows[row]),
        )
        shown, tail = focus + rest[: self.top_n], rest[self.top_n :]
        by: Counter[str] = Counter()
        for row in tail:
            by[row[0]] += rows[row]
        self._omit(
            "violations",
            total=len(observation.violations),
            shown=sum(rows[row] for row in shown),
            by=by,
            parts=[f"{rows[row]}x{row!r}" for row in tail],
        )
        return {
            "degraded": observation.degraded_reason,
            "queries": [
                {"name": q.name, "ok": q.ok, "samples": q.samples, "error": q.error}
                for q in observation.queries
            ],
            "violations": [_violation(row, rows[row]) for row in shown],
            "alerts_firing": observation.alerts_firing,
            "alerts_superseded": list(observation.alerts_superseded),
        }

    def causes(self, causes: Sequence[Cause]) -> list[dict[str, Any]]:
        focus = [c for c in causes if c.key in self.keys]
        rest = [c for c in causes if c.key not in self.keys]  # most urgent first already
        shown, tail = focus + rest[: self.top_n], rest[self.top_n :]
        self._omit(
            "causes",
            total=len(causes),
            shown=len(shown),
            by=Counter(c.name for c in tail),
            parts=[repr(_cause(c)) for c in tail],
        )
        return [_cause(c) for c in shown]

    def _about_focus(self, p: ViolationPattern) -> bool:
        kinds = {p.cause, *p.related}
        return not kinds.isdisjoint(self.kinds) and not self.targets.isdisjoint(p.components)

    def patterns(self, patterns: Sequence[ViolationPattern]) -> list[dict[str, Any]]:
        focus = [p for p in patterns if self._about_focus(p)]
        rest = sorted(
            (p for p in patterns if not self._about_focus(p)),
            key=lambda p: (-p.confidence, -p.count),
        )
        shown, tail = focus + rest[: self.top_n], rest[self.top_n :]
        self._omit(
            "patterns",
            total=len(patterns),
            shown=len(shown),
            by=Counter(p.kind.value for p in tail),
            parts=[f"{p.kind.value}/{p.cause}/{','.join(p.components)}/{p.count}" for p in tail],
        )
        return [self._pattern(p) for p in shown]

    def _pattern(self, p: ViolationPattern) -> dict[str, Any]:
        data = _pattern(p)
        if len(p.components) > self.top_n:
            ours = [c for c in p.components if c in self.targets]
            others = [c for c in p.components if c not in self.targets]
            data["components"] = ours + others[: self.top_n]
            data["components_total"] = len(p.components)
        return data

    def inhibited(self, inhibited: Sequence[str]) -> list[str]:
        shown, tail = list(inhibited[: self.top_n]), list(inhibited[self.top_n :])
        self._omit(
            "inhibited",
            total=len(inhibited),
            shown=len(shown),
            by=Counter(entry.split("/", 1)[0] for entry in tail),
            parts=tail,
        )
        return shown


def _violation(row: _ViolationRow, count: int) -> dict[str, Any]:
    kind, component, severity, source, value, threshold = row
    data: dict[str, Any] = {
        "kind": kind,
        "component": component,
        "severity": severity.value,
        "source": source.value,
        "value": value,
        "threshold": threshold,
    }
    if count > 1:
        data["count"] = count
    return data


def _pattern(p: ViolationPattern) -> dict[str, Any]:
    return {
        "kind": p.kind.value,
        "cause": p.cause,
        "components": list(p.components),
        "count": p.count,
        "confidence": round(p.confidence, 3),
        "description": p.description,
    }


def _cause(c: Cause) -> dict[str, Any]:
    return {
        "name": c.name,
        "target": c.target,
        "severity": c.severity.value,
        "confidence": round(c.confidence, 3),
        "violations": c.violations,
        "patterns": [k.value for k in c.patterns],
    }


def _candidate(p: RemediationPolicy) -> dict[str, Any]:
    return {
        "policy_id": p.id,
        "cause": p.cause.key,
        "actions": [{"type": a.action_type.value, "parameters": a.parameters} for a in p.actions],
        "cost": round(p.score.cost, 3),
        "benefit": round(p.score.benefit, 3),
        "knowledge_weight": round(p.score.knowledge_weight, 3),
        "confidence": round(p.score.confidence, 3),
        "score": round(p.score.score, 3),
        "requires_approval": p.requires_approval,
    }


def _guard(d: GuardDecision) -> dict[str, Any]:
    return {
        "guard": d.guard,
        "verdict": d.verdict.value,
        "reason": d.reason,
        "policy_id": d.policy_id,
        "until": d.until,
    }


def _execution(e: PolicyExecution) -> dict[str, Any]:
    return {
        "id": e.id,
        "status": e.status.value,
        "error": e.error,
        "actions": [
            {
                "type": a.action.action_type.value,
                "sets": _sets(a.action.sets),
                "status": a.status.value,
                "idempotency_key": a.idempotency_key,
                "error": a.error,
            }
            for a in e.actions
        ],
    }


def _sets(sets: tuple[KnobSetting, ...] | None) -> list[dict[str, Any]] | None:
    """What a resolved action set (None: it was not resolved)."""
    if sets is None:
        return None
    return [{"knob": s.knob, "before": s.before, "after": s.after} for s in sets]


def _outcome(o: PolicyOutcome) -> dict[str, Any]:
    return {
        "execution_id": o.execution_id,
        "cause": o.cause,
        "action_type": o.action_type.value,
        "outcome": o.outcome.value,
        "value_before": o.value_before,
        "value_after": o.value_after,
        "time_to_stabilize_s": o.time_to_stabilize_s,
    }


def _freeze(freeze: guard_rules.Freeze | None) -> dict[str, Any] | None:
    if freeze is None:
        return None
    return {
        "reason": freeze.reason,
        "since": freeze.since,
        "until": freeze.until,
        "source": freeze.source,
    }
