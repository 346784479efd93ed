"""One iteration of the loop: Monitor → Verify → Analyze → Plan → Guards → Execute.

`IterationPipeline.run(iteration_id, now)` does one iteration and returns its typed
`DecisionRecord`. It reads the target's state once; every candidate is resolved against
that reading once (loop/actions.py), the guards judge exactly that resolved plan against
the safety envelope, and the executor sends exactly what was judged. A phase failure is
logged and counted, the iteration ends with what it has, and nothing mutating runs on
missing data. Scheduling is the scheduler's (loop/scheduler.py), the record's
serialisation the record's (loop/record.py), the state that may stop an action the
envelope's (loop/envelope.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from mape_k.actuators.user import prepare as prepare_user_actions
from mape_k.config import Settings
from mape_k.errors import CharterError, MapekError
from mape_k.integrations.charter.base import CharterClient, CommitteeState
from mape_k.loop import actions as action_model
from mape_k.loop import baseline as returns_model
from mape_k.loop import guards as guard_rules
from mape_k.loop.analyze import PatternAnalyzer, Signals
from mape_k.loop.analyze import signals as analysis_signals
from mape_k.loop.autonomy import Autonomy, LevelChange, WouldDo
from mape_k.loop.changes import Change, ChangeLog, rollback_changes
from mape_k.loop.envelope import (
    SafetyEnvelope,
    charter_problems,
    config_problems,
    store_problems,
)
from mape_k.loop.escalation import NeedsHumanAlerts
from mape_k.loop.execute import Executor
from mape_k.loop.knowledge import Knowledge
from mape_k.loop.monitor import Monitor
from mape_k.loop.plan import KnowledgeView, Planner, TargetKnowledgeView
from mape_k.loop.predict import Predictor, least_squares, plan_causes
from mape_k.loop.record import DecisionContext, DecisionRecord, classify, why_nothing
from mape_k.metrics import Metrics
from mape_k.models import (
    ActionType,
    AnalysisResult,
    CandidateScore,
    Cause,
    ExecutionStatus,
    GuardDecision,
    GuardVerdict,
    Observation,
    OutcomeType,
    PolicyExecution,
    PolicyOutcome,
    RemediationAction,
    RemediationPolicy,
    Severity,
    Violation,
)
from mape_k.storeio import AsyncStore

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


class IterationPipeline:
    """The phases of one iteration, over the loop's parts (passed in, never assigned)."""

    def __init__(
        self,
        *,
        settings: Settings,
        envelope: SafetyEnvelope,
        charter: CharterClient | None,
        monitor: Monitor,
        analyzer: PatternAnalyzer,
        planner: Planner,
        executor: Executor,
        knowledge: Knowledge,
        store: AsyncStore,
        metrics: Metrics | None = None,
        alerts: NeedsHumanAlerts | None = None,
        autonomy: Autonomy | None = None,
        predictor: Predictor | None = None,
        changes: ChangeLog | None = None,
    ) -> None:
        self.settings = settings
        self.autonomy = autonomy  # levels and the shadow ledger (loop/autonomy.py)
        self._would_dos: list[WouldDo | str] = []  # this iteration's (a str: already open)
        self._scored: list[WouldDo] = []  # the would-dos scored in this iteration
        self._in_record: list[LevelChange] = []  # this iteration's record's level changes
        # Early warning (loop/predict.py): predicted violations and their track record.
        self.predictor = predictor or Predictor(metrics=metrics)
        self.changes = changes  # recorded deploys and config changes (loop/changes.py)
        self.envelope = envelope
        self.alerts = alerts  # MapekNeedsHuman while a target is held (loop/escalation.py)
        self._charter = charter
        self.monitor = monitor
        self.analyzer = analyzer
        self.planner = planner
        self.executor = executor
        self.knowledge = knowledge
        self._store = store
        self._metrics = metrics
        self.state = MAPEKState()
        self.startup_problem: str | None = None
        self._startup_checked = False
        self.committee_size: int | None = None
        # Targets the target breaker held since the escalation last ran, with their cause.
        self._held: list[tuple[guard_rules.Hold, Cause | None]] = []
        self.prometheus_ok: bool | None = None  # usable data in the last reading
        self.readings = Readings()
        # The return signal's readings, the watch passes' too: a return is sized for them.
        self.peaks = returns_model.Peaks()
        # Return to baseline: since when usable readings were taken, and each target's last
        # usable reading with a violation on it (in memory: after a restart the window of
        # planner.return_to_baseline starts again).
        self._watching_since: float | None = None
        self._last_violation: dict[str, float] = {}

    @property
    def metrics(self) -> Metrics | None:
        return self._metrics

    def reconfigure(self, settings: Settings) -> None:
        if settings != self.settings:
            self._startup_checked = False  # re-validate the new configuration
        self.settings = settings
        if self.autonomy is not None:
            self.autonomy.reconfigure(settings)
        if self.changes is not None:
            self.changes.reconfigure(settings.changes, settings.planner.actions)

    def journaled(self) -> None:
        """This iteration's record is in the journal: its level changes are not pending."""
        if self.autonomy is not None and self._in_record:
            self.autonomy.recorded(self._in_record)
        self._in_record = []

    def failed(self, error: str) -> DecisionRecord:
        """A failed iteration is a decision too: counted, and shown in /stats."""
        self.state.last_result = "error"
        self._count_result("error")
        return DecisionRecord.failed(self.state.iteration, self.state.last_started_at, error)

    async def run(self, iteration_id: str, now: float) -> DecisionRecord:
        started = time.perf_counter()
        phases = _Phases(self._metrics)
        self.state.iteration += 1
        self.state.last_started_at = now
        if self._metrics is not None:
            self._metrics.last_iteration.set(now)
        # A follower (replicas: another holds the lease) decides and executes nothing: it
        # verifies nothing (the leader does), raises nothing, journals nothing of its own.
        record = DecisionRecord(
            id=iteration_id, started_at=now, follower=self.envelope.not_leading()
        )
        leads = record.follower is None

        t = time.perf_counter()
        # The iteration timeout bounds reading, never acting: a Charter call is bounded by
        # executor.action_timeout_s and must not be cancelled half-way by the loop itself.
        async with asyncio.timeout(self.settings.orchestrator.iteration_timeout_s):
            observation = await self.monitor.observe(now)
            phases.done("monitor", t)
            record.observation = observation
            self._remember(observation, now)
            self.state.violations_seen += len(observation.violations)
            self.committee_size = _size(observation, "charter")
            await self._check_startup()
            record.predicted = await self.predictor.predict(
                observation, self.settings.monitor, now=now
            )

        t = time.perf_counter()
        if leads:
            await self._verify_phase(record, observation, now)
        phases.done("verify", t)

        t = time.perf_counter()
        # With the load signal and its trend, violating or not: a symptom of load is named
        # as load (analyzer.load_reading).
        analysis = record.analysis = self.analyzer.analyze(
            observation.violations, now=now, signals=self._signals(observation)
        )
        phases.done("analyze", t)
        self._count_analysis(observation, analysis)

        t = time.perf_counter()
        if self.autonomy is not None:  # the change windows in force for this plan
            self.autonomy.note_windows(now, leading=leads)
        policies = self._plan(analysis, record.predicted, now)
        phases.done("plan", t)

        t = time.perf_counter()
        record.context = context = await self._context(observation, now)
        policies, chosen, decisions, why = await self._judge(
            policies, observation, now, record.follower, context.read
        )
        record.candidates = policies
        record.chosen, record.guard_decisions, record.why = chosen, decisions, why
        phases.done("guard", t)

        if chosen is not None:
            t = time.perf_counter()
            record.execution = await self._act(chosen, observation, now)
            phases.done("execute", t)
        await self._ledgers(record, leads, now)
        record.result = classify(
            observation, chosen, record.execution, policies, decisions, shadow=bool(record.shadow)
        )
        record.pending_approvals = [p.id for p in self.planner.pending_approvals()]
        if leads:
            await self._settle_holds(now)
        phases.done("total", started)
        record.phases_s = phases.durations
        self._finish(phases, record.result)
        log.info(
            "iteration_completed",
            result=record.result,
            violations=len(observation.violations),
            patterns=len(analysis.patterns),
            decision=why,
            duration_s=phases.durations["total"],
        )
        return record

    async def _act(
        self, chosen: RemediationPolicy, observation: Observation, now: float
    ) -> PolicyExecution:
        execution = await self._execute(chosen, observation)
        if chosen.requires_approval:
            self.envelope.revoke(chosen.id)  # one approval, one execution
        self._count_execution(execution)
        self._note_execution(execution, now)
        return execution

    async def _ledgers(self, record: DecisionRecord, leads: bool, now: float) -> None:
        """The iteration's would-dos and changes of level into its record; the ledgers saved
        (the leader's): autonomy's and the predictions' track record, if this changed them."""
        record.shadow = [w.as_dict() if isinstance(w, WouldDo) else w for w in self._would_dos]
        record.shadow_scored = [w.score_dict() for w in self._scored]
        if leads and self.autonomy is not None:
            self._in_record = self.autonomy.unrecorded()
            record.autonomy_changes = [c.as_dict() for c in self._in_record]
            await self.autonomy.save(now)
        if leads:
            await self.predictor.save(now)

    async def _judge(
        self,
        policies: list[RemediationPolicy],
        observation: Observation,
        now: float,
        follower: str | None,
        reading: Reading,
    ) -> tuple[list[RemediationPolicy], RemediationPolicy | None, list[GuardDecision], str]:
        """One reading of the target's state; the returns to baseline due against it are
        planned after the faults' policies (a fix ranks first); every action is resolved
        against it once (a return set to where its proposal takes the knob), and that
        resolved plan is what the guards judge and the executor sends. Returns the
        candidates with the returns, the one chosen, the guards' decisions and why."""
        self._would_dos, self._scored = [], []
        if follower is None:
            self._follow_shadow(observation, reading, now)
        returns = self._returns(observation, reading, now)
        policies = policies + self._plan_returns(returns, now)
        plans: dict[str, Plan] = {}
        for p in policies:
            plan, problem = self._resolve(p, reading)
            plans[p.id] = (returns_model.fit(plan, returns), problem)
        self._recommend(plans, reading, observation, now, returns.fits)
        if policies and self.envelope.charter.phase(now) == "half_open":
            await self._probe_charter()
        for expired in self.envelope.expire_approvals(now):
            self.planner.remember_rejection(expired)  # an expired approval is a rejection
        chosen, decisions, why = self._choose(policies, observation, now, reading, plans)
        if chosen is None and returns.held:
            why += "; return to baseline: " + "; ".join(returns.held)
        if follower is None:
            await self._record_guards(decisions, now)
        elif not policies:
            why += f"; {follower}"
        return policies, chosen, decisions, why

    def _plan(
        self, analysis: AnalysisResult, predicted: Sequence[Violation], now: float
    ) -> list[RemediationPolicy]:
        """The causes' policies, then the predicted violations' (one read of the knowledge)."""
        knowledge, target_knowledge = self.knowledge.view(), self.knowledge.target_view()
        return self.planner.generate_policies(
            analysis,
            knowledge=knowledge,
            now=now,
            target_knowledge=target_knowledge,
            changes=self._recent_changes(analysis, now),
        ) + plan_predicted(
            self.planner,
            predicted,
            self.settings,
            analysis=analysis,
            knowledge=knowledge,
            target_knowledge=target_knowledge,
            now=now,
        )

    def _recent_changes(
        self, analysis: AnalysisResult, now: float
    ) -> dict[tuple[str, str], Change]:
        """(cause, target) -> the recent change on the target, for the causes a change may
        have brought (changes.rollback_causes): the planner ranks its rollback first."""
        if self.changes is None:
            return {}
        return rollback_changes(
            self.changes,
            analysis.causes,
            rollback_causes=self.settings.changes.rollback_causes,
            now=now,
        )

    def _signals(self, observation: Observation) -> Signals:
        """The analysis's signals with their trends (and the return to baseline's signal,
        which the record keeps for `mape-k replay`)."""
        return analysis_signals(
            observation.metrics,
            self.analyzer.signal_names | {returns_model.SIGNAL},
            self.readings.trend,
        )

    async def _context(self, observation: Observation, now: float) -> DecisionContext:
        """The one reading of the target this iteration (`_read_target`) and what else the
        record keeps for `mape-k replay` beyond the observation."""
        state, problem = await self._read_target(observation, now)
        freeze = self.envelope.freeze
        return DecisionContext(
            signals=self._signals(observation),
            reading=state,
            reading_problem=problem,
            dry_run=self.envelope.dry_run,
            freeze=freeze if freeze is not None and freeze.active(now) else None,
            startup_problem=self.startup_problem,
        )

    def _returns(
        self, observation: Observation, reading: Reading, now: float
    ) -> returns_model.Returns:
        """The returns to baseline due against this reading (loop/baseline.py)."""
        if self._watching_since is None:
            return returns_model.Returns()
        return returns_model.propose(
            state=reading[0],
            observation=observation,
            history=tuple(self.envelope.history),
            last_violation=self._last_violation,
            watching_since=self._watching_since,
            settling={
                target: ", ".join(entry.execution_id for entry in entries)
                for target, entries in self.executor.pending_targets().items()
            },
            config=self.settings.planner.return_to_baseline,
            velocity=self.settings.guards.velocity,
            now=now,
            fix_loads=self._fix_loads(),
            peaks=self.peaks,
        )

    def _fix_loads(self) -> dict[str, float]:
        """Execution id -> the offered load when it ran, for the executions that fixed a
        load-proportional signal (kept with their changes in the envelope's history)."""
        return {c.execution_id: c.load for c in self.envelope.history if c.load is not None}

    def _plan_returns(self, returns: returns_model.Returns, now: float) -> list[RemediationPolicy]:
        """The due returns planned like any cause (planner.remediations), after the faults'
        policies: a fix always ranks first."""
        if not returns.proposals:
            return []
        analysis = AnalysisResult(
            at=now,
            violations=0,
            patterns=(),
            causes=tuple(p.cause for p in returns.proposals),
        )
        return self.planner.generate_policies(
            analysis,
            knowledge=self.knowledge.view(),
            now=now,
            target_knowledge=self.knowledge.target_view(),
        )

    async def _execute(
        self, chosen: RemediationPolicy, observation: Observation
    ) -> PolicyExecution:
        """Run the chosen policy with what its verification is judged against: the signal
        then, its trend before, and the offered load and the utilisation then."""
        cause = chosen.cause
        config = self.settings.executor

        def then(query: str | None) -> float | None:
            return None if query is None else observation.value(query, cause.target)

        trend = None if cause.query is None else self.readings.trend(cause.query, cause.target)
        return await self.executor.execute_policy(
            chosen,
            baseline=_baseline(chosen, observation),
            baseline_trend=trend,
            baseline_load=then(config.load_query),
            baseline_utilisation=then(config.utilisation_query),
        )

    def _export_posteriors(self) -> None:
        if self._metrics is None:
            return
        seen: set[tuple[str, str]] = set()
        for row in self.planner.posteriors(self.knowledge.view()):
            labels = (row.cause, row.actions[0])
            if labels in seen:  # the first candidate of an action for a cause is its row
                continue
            seen.add(labels)
            mean = row.posterior.mean
            self._metrics.posterior_mean.labels(*labels).set(mean)
            self._metrics.posterior_upper.labels(*labels).set(mean + row.exploration)

    def _remember(self, observation: Observation, now: float) -> None:
        """A usable reading feeds the trends and releases the holds of quiet targets."""
        self.prometheus_ok = not observation.degraded
        if observation.degraded:
            return
        self.readings.add(observation, window_s=self.settings.executor.trend_window_s)
        self.peaks.add(observation)
        violating = {v.component for v in observation.violations}
        self.envelope.note_quiet(violating, now=now)
        if self._watching_since is None:
            self._watching_since = now
        self._last_violation.update(dict.fromkeys(violating, now))

    async def _verify_phase(
        self, record: DecisionRecord, observation: Observation, now: float
    ) -> None:
        """What the executions due for measurement did: verified and learned, what they
        held released, escalations and a panic revert where called for (the leader's).
        First, what a store outage kept from the journal is written."""
        await self.executor.flush_journal()
        await self.knowledge.flush()
        record.verifications = await self._verify(observation, now)
        await self.executor.release(record.verifications)
        await self._escalate(now)
        record.panic = await self._panic_check(record.verifications, observation, now)

    async def _verify(self, observation: Observation, now: float) -> list[PolicyOutcome]:
        outcomes = self.executor.verify_due(observation, now=now)
        for outcome in outcomes:
            await self.knowledge.record_outcome(outcome)
            if self.autonomy is not None:
                self.autonomy.note_outcome(outcome, now)
            if returns_model.is_return(outcome.cause):
                continue  # a return's failure widens its own window, never holds the target
            hold = self.envelope.note_outcome(outcome, now=now)
            if hold is not None:
                execution = self.executor.execution(outcome.execution_id)
                self._held.append((hold, execution.policy.cause if execution else None))
        self._export_posteriors()
        if self.autonomy is not None and self.settings.autonomy.promotion.enabled:
            self.autonomy.promote(self._belief(), now)
        return outcomes

    def _belief(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(cause, action) -> the planner's posterior mean and the outcomes behind it (the
        first candidate of an action for a cause is its row)."""
        return {
            (row.cause, row.actions[0]): (row.posterior.mean, row.posterior.samples)
            for row in reversed(self.planner.posteriors(self.knowledge.view()))
        }

    async def _escalate(self, now: float) -> None:
        """Run `guards.target_breaker.escalate` once for each target held for a human since
        the last iteration (a notification: the guards do not judge it, it is not learned)."""
        held, self._held = self._held, []
        name = self.settings.guards.target_breaker.escalate
        if name is None:
            return
        for hold, cause in held:
            if self.envelope.dry_run:  # dry-run: decided and logged, nothing called
                log.warning("escalation_skipped", target=hold.target, why="dry-run")
                continue
            base = cause or Cause(
                name="needs_human",
                target=hold.target,
                severity=Severity.CRITICAL,
                confidence=1.0,
                violations=0,
            )
            policy = RemediationPolicy(
                id=f"escalation-{hold.target}-{int(now)}",
                cause=base,
                actions=(RemediationAction(action_type=name, target=hold.target),),
                score=CandidateScore(cost=0.0, benefit=0.0, confidence=1.0, score=0.0),
                requires_approval=False,
                created_at=now,
                rationale=f"escalation: {hold.reason}",
            )
            try:
                prepared = prepare_user_actions(policy, self.settings.planner.actions)
            except action_model.Unresolvable as exc:
                log.error("escalation_refused", target=hold.target, reason=str(exc))
                continue
            await self.executor.escalate(prepared)

    async def _settle_holds(self, now: float) -> None:
        """The envelope forgets expired holds and is saved; then Alertmanager is told which
        targets are held now (MapekNeedsHuman fires, is re-sent, or resolves): after every
        hold change of the iteration, and after the save (a failed delivery must not cost
        the guards' memory)."""
        self.envelope.prune(now=now)
        await self.envelope.save(now=now)
        if self.alerts is not None:
            await self.alerts.sync(self.envelope, self.settings, now=now)

    def guard_context(self, observation: Observation, now: float) -> guard_rules.GuardContext:
        safety = self.envelope
        return guard_rules.GuardContext(
            now=now,
            dry_run=safety.dry_run,
            freeze=safety.freeze,
            degraded_reason=observation.degraded_reason,
            settling=self.executor.pending_targets(),
            config=self.settings.guards,
            history=tuple(safety.history),
            recommendations=tuple(safety.recommendations),
            backoffs=dict(safety.backoffs),
            charter=safety.charter,
            needs_human=dict(safety.needs_human),
            startup_problem=self.startup_problem,
            approvals=safety.approval_times(),
            not_leading=safety.not_leading(),
            maintenance=self.settings.maintenance,
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
        if self.envelope.charter.phase(now) == "open":
            return None, "the Charter circuit is open: its state was not read"
        try:
            async with asyncio.timeout(self.settings.executor.action_timeout_s):
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

    def _resolve(self, policy: RemediationPolicy, reading: Reading) -> Plan:
        """`policy` resolved to absolute desired state against `reading`, or as it came with
        the reason it could not be (the data guard then blocks it, saying why). Its
        user-defined actions are prepared first (templates rendered and checked: a hostile
        label refuses the action here, with the reason); they need no reading."""
        state, problem = reading
        try:
            prepared = prepare_user_actions(policy, self.settings.planner.actions)
        except action_model.Unresolvable as exc:
            return policy, str(exc)
        if state is None and action_model.needs_reading(prepared):
            return policy, problem
        try:
            return action_model.resolve(prepared, state), None
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
                    self.settings.planner.min_score,
                    top_n=self.settings.knowledge.record_top_n,
                ),
            )
        ctx = self.guard_context(observation, now)
        decisions: list[GuardDecision] = []
        held: list[str] = []
        runnable = [p for p in policies if not p.requires_approval]
        best = self._approved_first(policies)
        if best is not None:
            runnable.insert(0, best)
        for candidate in runnable:
            plan, unresolved = plans.get(candidate.id) or self._resolve(candidate, reading)
            target_ctx = replace(ctx, unresolved=unresolved)
            policy = guard_rules.fitted(plan, target_ctx)
            verdicts = guard_rules.evaluate(policy, target_ctx)
            decisions.extend(verdicts)
            self._after_guards(policy, verdicts, now)
            if guard_rules.allowed(verdicts) and policy.shadow:
                held.append(self._shadow(policy, observation, now))
                continue  # nothing is called: a policy below it may still run
            if guard_rules.allowed(verdicts):
                why = f"{policy.primary_action} on {policy.target}: {policy.rationale}"
                return policy, decisions, why
            held.extend(f"{d.guard}: {d.reason}" for d in guard_rules.holding(verdicts))
        if self._would_dos and not [d for d in held if not d.startswith("shadow")]:
            return None, decisions, "; ".join(dict.fromkeys(held))
        if not runnable:
            waiting = ", ".join(p.id for p in self.planner.pending_approvals())
            return None, decisions, f"waiting for operator approval of {waiting}"
        return None, decisions, "held back by guards: " + "; ".join(dict.fromkeys(held))

    def _shadow(self, policy: RemediationPolicy, observation: Observation, now: float) -> str:
        """A policy at shadow that every guard allows: a would-do (one open per cause key;
        a follower records none), and what the record says of it."""
        names = "+".join(a.action_type for a in policy.actions)
        said = f"shadow: would do {names} on {policy.target}"
        open_ = None if self.autonomy is None else self.autonomy.open_for(policy.cause.key)
        if self.autonomy is None or self.envelope.not_leading() is not None:
            self._would_dos.append(said)
            return said
        if open_ is not None:
            said += f" (as {open_.id}, scored at {open_.due_at:.0f})"
            self._would_dos.append(said)
            return said
        self._would_dos.append(
            self.autonomy.would_do(
                policy,
                now=now,
                settle_s=self.executor.settle_s(policy),
                value=_baseline(policy, observation),
            )
        )
        return f"{said}: {policy.rationale}"

    def _follow_shadow(self, observation: Observation, reading: Reading, now: float) -> None:
        """The open would-dos watched in this reading (the leader's), and scored when due."""
        if self.autonomy is None or not self.autonomy.open:
            return
        state = reading[0]

        def changed(wd: WouldDo) -> str | None:
            for change in self.envelope.history:
                if change.target == wd.target and change.at >= wd.at:  # this iteration's too
                    return f"{change.action_type} ({change.execution_id})"
            recorded = [] if self.changes is None else self.changes.since(wd.target, wd.at)
            if recorded:
                return f"change {recorded[-1].id} ({recorded[-1].describe(now)})"
            return None if state is None else _moved(wd, state)

        self._scored = self.autonomy.follow(observation, now, changed)

    def _approved_first(self, policies: list[RemediationPolicy]) -> RemediationPolicy | None:
        """The approved risky policy (the id the operator saw) when it ranks above every
        policy that needs no approval; None otherwise."""
        for policy in policies:
            if not policy.requires_approval:
                return None
            approved = self.envelope.approved_for(policy)
            if approved is not None:
                return approved
        return None

    async def _probe_charter(self) -> None:
        """Half-open: a mutation-free call first. If it fails the circuit opens again and
        no policy is risked; if it works, the next policy is the trial whose mutation
        closes (or reopens) the circuit."""
        if self._charter is None:
            return
        try:
            async with asyncio.timeout(self.settings.executor.action_timeout_s):
                await self._charter.ping()
        except (CharterError, TimeoutError) as exc:
            log.warning("charter_probe_failed", error=str(exc) or "timeout")

    async def _check_startup(self) -> None:
        """State validation before acting: config, store, Charter. Re-checked while failing."""
        if not self.settings.guards.validate_startup:
            self.startup_problem = None
            return
        if self._startup_checked and self.startup_problem is None:
            return
        problems = config_problems(self.settings) + await store_problems(self._store)
        if self._charter is not None:
            try:
                async with asyncio.timeout(self.settings.executor.action_timeout_s):
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

    def _panic_reason(
        self, outcomes: list[PolicyOutcome], observation: Observation
    ) -> tuple[str, frozenset[str] | None] | None:
        """Why to panic, and which executions to revert (None: every recent one)."""
        cfg = self.settings.guards.panic
        if not cfg.enabled:
            return None
        if cfg.on_degradation:
            # Only the executions verification attributed the harm to: not the others.
            harmful = [o for o in outcomes if o.outcome is OutcomeType.DEGRADATION]
            if harmful:
                outcome = harmful[0]
                reason = (
                    f"{outcome.action_type} for {outcome.cause} on {outcome.target}"
                    f" made it worse ({outcome.value_before} -> {outcome.value_after})"
                )
                return reason, frozenset(o.execution_id for o in harmful)
        if cfg.query is not None and not observation.degraded:
            value = observation.value(cfg.query, cfg.component)
            if value is not None and cfg.comparator.holds(value, cfg.threshold):
                reason = (
                    f"panic condition {cfg.query} {cfg.comparator.value} {cfg.threshold}: {value}"
                )
                return reason, None
        return None

    async def _panic_check(
        self, outcomes: list[PolicyOutcome], observation: Observation, now: float
    ) -> dict[str, Any] | None:
        """Panic revert: undo recent policies, newest first, then freeze, and say so loudly."""
        panic = self._panic_reason(outcomes, observation)
        if panic is None:
            return None
        reason, only = panic
        current = self.envelope.freeze
        if current is not None and current.active(now):
            # Frozen already: a human (or an earlier panic) holds the controls. Reverting
            # now would be a mutating action during a freeze; say so instead.
            log.warning(
                "panic_revert_skipped", reason=reason, frozen_by=current.source, why=current.reason
            )
            return {"reason": reason, "skipped": f"frozen ({current.source}): {current.reason}"}
        cfg = self.settings.guards.panic
        reverted = (
            []
            if self.envelope.dry_run
            else await self.executor.revert_recent(
                since=now - cfg.lookback_s, reason=reason, only=only
            )
        )
        freeze_s = self.envelope.panic_freeze_s(cfg, now=now)
        until = None if freeze_s is None else now + freeze_s
        await self.envelope.set_freeze(
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
        await self._record_guards([decision], now)
        return {"reason": reason, "reverted": ids, "frozen_until": until}

    def _recommend(
        self,
        plans: dict[str, Plan],
        reading: Reading,
        observation: Observation,
        now: float,
        fits: Mapping[str, int],
    ) -> None:
        """Record each target's recommended size this iteration (scale-down stabilization):
        where its best-ranked resolved scale policy leaves it, else — on a target the daemon
        scaled and may return — the size its load needs (`fits`, as the HPA recommends its
        desired size at every sync), else the size the reading says it is heading for: the
        same reading and resolution the guards judge."""
        state, _ = reading
        if observation.degraded or state is None:
            return
        for target, size in size_recommendations(plans.values(), state, observation, fits).items():
            self.envelope.recommend(target, size, now=now)

    def _after_guards(
        self, policy: RemediationPolicy, verdicts: tuple[GuardDecision, ...], now: float
    ) -> None:
        for decision in verdicts:
            if decision.verdict is GuardVerdict.ALLOW:
                continue
            if decision.guard == "oscillation" and not returns_model.is_return(policy.cause.name):
                # A predicted flip-flop starts the back-off (an active one is kept as is); a
                # return the guard holds just waits (it blocks no fix on the target).
                self.envelope.start_backoff(policy.target, decision.reason, now=now)

    def _note_execution(self, execution: PolicyExecution, now: float) -> None:
        changes = guard_rules.executed_changes(
            execution, at=now, load_normalised=self.settings.executor.load_normalised
        )
        self.envelope.record_changes(changes, now=now)
        self.predictor.note_execution(execution, now=now)  # acted on a prediction
        hold = self.envelope.note_failed_execution(execution, now=now)
        if hold is not None:
            self._held.append((hold, execution.policy.cause))

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

    async def _record_guards(self, decisions: list[GuardDecision], now: float) -> None:
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
                    await self._store.record_guard_decision(decision, at=now)
                except MapekError as exc:
                    log.error("guard_record_failed", error=str(exc))

    def _finish(self, phases: _Phases, result: str) -> None:
        self.state.last_cycle_s = phases.durations["total"]
        self.state.total_cycle_s += phases.durations["total"]
        for phase, seconds in phases.durations.items():
            self.state.phase_total_s[phase] = self.state.phase_total_s.get(phase, 0.0) + seconds
        self.state.last_result = result
        self._count_result(result)


class Readings:
    """The recent readings of each (query, target), for the trend before an action."""

    MAX_POINTS = 64

    def __init__(self) -> None:
        self._points: dict[tuple[str, str], deque[tuple[float, float]]] = {}

    def add(self, observation: Observation, *, window_s: float) -> None:
        seen: set[tuple[str, str]] = set()
        for metric in observation.metrics:
            key = (metric.name, metric.component)
            seen.add(key)
            points = self._points.setdefault(key, deque(maxlen=self.MAX_POINTS))
            if points and metric.timestamp <= points[-1][0]:
                continue
            points.append((metric.timestamp, metric.value))
            while points and points[0][0] < metric.timestamp - window_s:
                points.popleft()
        for key in [k for k in self._points if k not in seen]:
            del self._points[key]  # a series that vanished: its old trend says nothing now

    def trend(self, query: str, target: str) -> float | None:
        """Least-squares change per second over the window; None with fewer than 3 points."""
        points = self._points.get((query, target))
        if points is None or len(points) < 3:
            return None
        fitted = least_squares(list(points))
        return None if fitted is None else fitted[2]


def _size(observation: Observation, target: str) -> int | None:
    value = observation.value("committee_size", target)
    return None if value is None else round(value)


def plan_predicted(
    planner: Planner,
    predicted: Sequence[Violation],
    settings: Settings,
    *,
    analysis: AnalysisResult | None,
    knowledge: KnowledgeView,
    target_knowledge: TargetKnowledgeView,
    now: float,
) -> list[RemediationPolicy]:
    """Policies for the predicted violations the rules let it act on (`plan_causes`: the
    rule says `predict.act`, no real cause with the key), after the real causes' (a fix
    ranks first), each of only low-cost candidates (`predict.max_cost`). The daemon's
    planning of a prediction, and `mape-k replay`'s of a recorded one."""
    real = [] if analysis is None else [c.key for c in analysis.causes]
    policies: list[RemediationPolicy] = []
    for cause, max_cost in plan_causes(
        predicted,
        settings.monitor.rules,
        real=real,
        base_confidence=settings.analyzer.base_confidence,
    ):
        policies += planner.generate_policies(
            AnalysisResult(at=now, violations=0, patterns=(), causes=(cause,)),
            knowledge=knowledge,
            now=now,
            target_knowledge=target_knowledge,
            max_cost=max_cost,
        )
    return policies


def size_recommendations(
    plans: Iterable[tuple[RemediationPolicy, str | None]],
    state: CommitteeState,
    observation: Observation,
    fits: Mapping[str, int],
    also: Iterable[str] = (),
) -> dict[str, int]:
    """Target -> its recommended size this iteration (scale-down stabilization): where its
    best-ranked resolved scale policy (`plans` in the planner's ranking) leaves it, else the
    size its load needs (`fits`), else the size the reading is heading for. The targets:
    those whose size is read, those `also` named, those a scale policy is for. Pure."""
    scaling = [
        policy
        for policy, _ in plans
        if policy.primary_action in {ActionType.SCALE_UP, ActionType.SCALE_DOWN}
    ]
    targets = dict.fromkeys(
        [m.component for m in observation.metrics if m.name == "committee_size"]
        + list(also)
        + [policy.target for policy in scaling]
    )
    sizes: dict[str, int] = {}
    for target in targets:
        recommended = fits.get(target, state.target_size)
        for policy in scaling:
            if policy.target == target:
                size = action_model.final_value(policy, "size")
                recommended = state.target_size if size is None else int(size)
                break
        sizes[target] = recommended
    return sizes


def _moved(wd: WouldDo, state: CommitteeState) -> str | None:
    """A knob of the would-do's plan that someone else moved since (its reading then)."""
    for step in wd.plan:
        for setting in step["sets"]:
            knob = setting["knob"]
            if knob not in action_model.KNOBS and not knob.startswith(action_model.CONFIG_PREFIX):
                continue  # a user-defined knob: the Charter does not report it
            value = action_model.read(state, knob)
            if value != setting["before"]:
                return f"{knob} {setting['before']} -> {value} (not by mape-k)"
    return None


def _baseline(policy: RemediationPolicy, observation: Observation) -> float | None:
    cause = policy.cause
    if cause.query is None:
        return cause.value
    value = observation.value(cause.query, cause.target)
    return cause.value if value is None else value
