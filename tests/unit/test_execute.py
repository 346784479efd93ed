"""Executor: ordered actions, timeouts, reverse-order rollback, idempotency, verification."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import builders
from builders import action, execution, metric, policy, violation
from mape_k.causes import CAUSE
from mape_k.config import DEFAULT_ACTIONS, ExecutorConfig
from mape_k.errors import CharterRequestError, StoreError
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop.actions import resolve
from mape_k.loop.analyze import READ_FROM
from mape_k.loop.execute import Executor, PendingVerification, _queue_explains, classify
from mape_k.models import (
    ActionType,
    ExecutionStatus,
    Observation,
    OutcomeType,
    PolicyExecution,
    RemediationPolicy,
)


@pytest.fixture
def world(clock):
    return MockCharterWorld.create(clock=clock, seed=1, regime="calm")


@pytest.fixture
def journal():
    return []


async def no_journal(_execution: PolicyExecution) -> None:
    return None


def resolved(world, p: RemediationPolicy) -> RemediationPolicy:
    """`p` resolved against the committee's state now, as the loop does before the guards."""
    return resolve(p, world.committee.state())


def make_executor(world, journal, clock, *, hold=lambda: None, **config) -> Executor:
    """`journal`: a plain callable (list.append, or one that raises), awaited by the executor."""

    async def journaled(execution: PolicyExecution) -> None:
        journal(execution)

    return Executor(
        charter=world.client,
        config=ExecutorConfig(**config),
        actions=DEFAULT_ACTIONS,
        journal=journaled,
        clock=clock,
        hold=hold,
    )


async def test_actions_run_in_order_and_complete(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    result = await executor.execute_policy(
        resolved(
            world, policy(action(ActionType.SCALE_UP, delta=2), action(ActionType.REBALANCE_LOAD))
        )
    )
    assert result.status is ExecutionStatus.COMPLETED
    assert [a.status for a in result.actions] == [ExecutionStatus.COMPLETED] * 2
    operations = [entry.operation for entry in world.committee.actions]
    assert operations == ["scale_committee", "rebalance_load"]
    assert world.committee.state().target_size == 5


async def test_a_restart_sends_its_scope_and_only_a_full_one_is_an_outage(world, journal, clock):
    world.committee.inject("member_crash", 0.5, 0, clock())
    executor = make_executor(world, journal.append, clock)
    narrow = policy(action(ActionType.RESTART_SERVICE, scope="unhealthy"), id="narrow")
    result = await executor.execute_policy(resolved(world, narrow))
    assert result.status is ExecutionStatus.COMPLETED
    assert result.actions[0].result["current"]["restarted_members"] == 1
    assert world.committee.state().healthy_members == 2  # no outage while it restarts
    clock.advance(5)
    turns = policy(action(ActionType.RESTART_SERVICE, scope="rolling"), id="turns")
    rolling = await executor.execute_policy(resolved(world, turns))
    assert rolling.status is ExecutionStatus.COMPLETED
    assert world.committee.state().healthy_members == 2  # one at a time
    clock.advance(10)
    full = await executor.execute_policy(resolved(world, policy(ActionType.RESTART_SERVICE)))
    assert full.status is ExecutionStatus.COMPLETED
    assert world.committee.state().healthy_members == 0  # the default: every member at once
    assert [e.arguments for e in world.committee.actions] == [
        {"scope": "unhealthy"},
        {"scope": "rolling"},
        {"scope": "all"},
    ]


async def test_every_action_is_journaled_before_and_after_it_runs(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    await executor.execute_policy(resolved(world, policy(action(ActionType.RESTART_SERVICE))))
    statuses = [(e.status, e.actions[0].status) for e in journal]
    assert statuses[0] == (ExecutionStatus.IN_PROGRESS, ExecutionStatus.PENDING)
    assert (ExecutionStatus.IN_PROGRESS, ExecutionStatus.IN_PROGRESS) in statuses
    assert statuses[-1] == (ExecutionStatus.COMPLETED, ExecutionStatus.COMPLETED)


async def test_a_failing_action_rolls_back_the_completed_ones_in_reverse(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    world.client.fail_next(
        "set_validation_bypass", CharterRequestError("refused", operation="bypass", status=409)
    )
    result = await executor.execute_policy(
        resolved(
            world,
            policy(
                action(ActionType.SCALE_UP, delta=1),
                action(ActionType.THROTTLE_REQUESTS, limit_ops_per_sec=50.0),
                action(ActionType.BYPASS_VALIDATION),
            ),
        )
    )
    assert result.status is ExecutionStatus.ROLLED_BACK
    assert [a.status for a in result.actions] == [
        ExecutionStatus.ROLLED_BACK,
        ExecutionStatus.ROLLED_BACK,
        ExecutionStatus.FAILED,
    ]
    log = [(e.operation, e.arguments) for e in world.committee.actions]
    # Forward: scale, throttle. Then undo in reverse: throttle back to none, scale back to 3.
    assert [op for op, _ in log] == [
        "scale_committee",
        "set_throttle",
        "set_throttle",
        "scale_committee",
    ]
    state = world.committee.state()
    assert state.throttle_limit is None
    assert state.target_size == 3


async def test_an_action_that_hangs_times_out_and_rolls_back(world, journal, clock):
    executor = make_executor(world, journal.append, clock, action_timeout_s=0.01)
    never = asyncio.Event()

    async def hang(*_args, **_kwargs):
        await never.wait()

    world.client.rebalance_load = hang  # type: ignore[method-assign]
    result = await executor.execute_policy(
        resolved(
            world, policy(action(ActionType.SCALE_UP, delta=1), action(ActionType.REBALANCE_LOAD))
        )
    )
    assert result.status is ExecutionStatus.ROLLED_BACK
    assert result.actions[1].error == "timed out after 0.01 s"
    assert world.committee.state().target_size == 3


async def test_the_same_policy_twice_has_one_effect(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    p = resolved(world, policy(action(ActionType.SCALE_UP, delta=1)))
    first = await executor.execute_policy(p)
    for _ in range(99):
        again = await executor.execute_policy(p)
        assert again == first
    assert [e.operation for e in world.committee.actions] == ["scale_committee"]


async def test_a_fresh_executor_replaying_a_policy_is_deduplicated_by_the_charter(
    world, journal, clock
):
    p = resolved(world, policy(action(ActionType.SCALE_UP, delta=1)))
    await make_executor(world, journal.append, clock).execute_policy(p)
    await make_executor(world, journal.append, clock).execute_policy(p)
    assert world.committee.state().target_size == 4


async def test_an_interrupted_execution_whose_actions_all_took_effect_is_completed_and_verified(
    world, journal, clock
):
    executor = make_executor(world, journal.append, clock)
    done = await executor.execute_policy(
        resolved(world, policy(action(ActionType.SCALE_UP, delta=2), id="crash"))
    )
    interrupted = builders.interrupted(done, id="crash-2")
    fresh = make_executor(world, journal.append, clock)
    result = await fresh.reconcile(interrupted)
    assert result.status is ExecutionStatus.COMPLETED
    assert world.committee.state().target_size == 5  # kept: it is what the policy decided
    assert [p.execution.id for p in fresh.pending_verifications()] == ["crash-2"]


async def test_an_in_progress_action_that_reached_the_charter_is_completed_not_resent(
    world, journal, clock
):
    executor = make_executor(world, journal.append, clock)
    first = await executor.execute_policy(
        resolved(
            world, policy(action(ActionType.THROTTLE_REQUESTS, limit_ops_per_sec=500.0), id="cut")
        )
    )
    assert world.committee.throttle_limit == 500.0
    # The crash came after the Charter applied the call, before its result was journaled.
    interrupted = builders.interrupted(
        first,
        id="cut",
        actions=(replace(first.actions[0], status=ExecutionStatus.IN_PROGRESS, result={}),),
    )
    result = await make_executor(world, journal.append, clock).reconcile(interrupted)
    assert result.status is ExecutionStatus.COMPLETED
    assert result.actions[0].result == first.actions[0].result  # the Charter's own answer
    assert world.committee.throttle_limit == 500.0
    throttles = [a for a in world.committee.actions if a.operation == "set_throttle"]
    assert [a.replayed for a in throttles] == [False]  # asked, never re-sent nor undone


async def test_an_in_progress_action_that_never_arrived_is_not_sent_and_the_rest_is_undone(
    world, journal, clock
):
    two = resolved(
        world,
        policy(
            action(ActionType.THROTTLE_REQUESTS, limit_ops_per_sec=500.0),
            action(ActionType.SCALE_UP, delta=2),
            id="half",
        ),
    )
    first = await make_executor(world, journal.append, clock).execute_policy(two)
    undone_scale = await world.client.scale_committee(3, idempotency_key="manual")  # as before
    assert undone_scale.current["size"] == 3
    interrupted = builders.interrupted(
        first,
        id="half-2",
        actions=(
            first.actions[0],
            replace(
                first.actions[1],
                status=ExecutionStatus.IN_PROGRESS,
                idempotency_key="half-2:1:scale_up",  # never reached the Charter
                result={},
            ),
        ),
    )
    result = await make_executor(world, journal.append, clock).reconcile(interrupted)
    assert result.status is ExecutionStatus.ROLLED_BACK
    assert result.actions[1].status is ExecutionStatus.PENDING  # not applied, not sent
    assert world.committee.throttle_limit is None  # the part that took effect was undone
    assert world.committee.state().target_size == 3
    scales = [
        a.idempotency_key for a in world.committee.actions if a.operation == "scale_committee"
    ]
    assert "half-2:1:scale_up" not in scales


async def test_a_failed_lookup_leaves_the_action_failed_as_possibly_applied(world, journal, clock):
    done = await make_executor(world, journal.append, clock).execute_policy(
        resolved(world, policy(action(ActionType.RESTART_SERVICE), id="r"))
    )
    interrupted = builders.interrupted(
        done, id="r3", actions=(replace(done.actions[0], status=ExecutionStatus.IN_PROGRESS),)
    )
    world.client.fail_next("find_action")
    result = await make_executor(world, journal.append, clock).reconcile(interrupted)
    assert result.status is ExecutionStatus.FAILED
    assert "unknown" in (result.actions[0].error or "")


async def test_reconcile_does_not_resend_an_in_progress_action_without_an_inverse(
    world, journal, clock
):
    done = await make_executor(world, journal.append, clock).execute_policy(
        resolved(world, policy(action(ActionType.RESTART_SERVICE), id="r"))
    )
    interrupted = builders.interrupted(
        done,
        id="r2",
        actions=(
            replace(done.actions[0], status=ExecutionStatus.IN_PROGRESS, idempotency_key="r2:0:x"),
        ),
    )
    result = await make_executor(world, journal.append, clock).reconcile(interrupted)
    assert result.status is ExecutionStatus.FAILED
    assert [a.operation for a in world.committee.actions] == ["restart_committee"]


def observation(
    value: float | None, *, violating: bool, degraded: str | None = None
) -> Observation:
    """What the Monitor reads of failure_rate (nothing if `value` is None), violating or not."""
    return builders.observation(
        at=0,
        metrics=() if value is None else (metric("failure_rate", value, timestamp=0.0),),
        violations=(
            (violation(timestamp=0, value=value, threshold=0.05, query="failure_rate"),)
            if violating
            else ()
        ),
        degraded_reason=degraded,
    )


def pending(deadline: float = 100.0) -> PendingVerification:
    restarted = execution(policy=policy(), started_at=0.0, finished_at=1.0, baseline=0.4)
    return PendingVerification(execution=restarted, due_at=10.0, deadline=deadline)


@pytest.mark.parametrize(
    ("obs", "now", "expected"),
    [
        (observation(0.01, violating=False), 20.0, OutcomeType.SUCCESS),
        (observation(0.9, violating=True), 20.0, OutcomeType.DEGRADATION),
        (observation(0.39, violating=True), 20.0, None),  # not yet: still time to work
        # not improved by the settle time (10) plus the margin (15): failed now, not at 100
        (observation(0.39, violating=True), 25.0, OutcomeType.INEFFECTIVE),
        (observation(0.15, violating=True), 25.0, None),  # improving: given until the deadline
        (observation(0.39, violating=True), 100.0, OutcomeType.INEFFECTIVE),
        (observation(0.15, violating=True), 100.0, OutcomeType.PARTIAL),
        (observation(None, violating=False, degraded="prometheus down"), 20.0, None),
        (
            observation(None, violating=False, degraded="prometheus down"),
            100.0,
            OutcomeType.UNKNOWN,
        ),
    ],
)
def test_verification_classifies_against_the_triggering_value(
    world, journal, clock, obs, now, expected
):
    executor = make_executor(world, journal.append, clock)
    outcome, _ = executor.verify_execution(pending(), obs, now=now)
    assert (outcome.outcome if outcome else None) is expected


def test_success_records_time_to_stabilize(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    outcome, _ = executor.verify_execution(pending(), observation(0.0, violating=False), now=31.0)
    assert outcome is not None
    assert outcome.time_to_stabilize_s == 30.0


def test_classify_measures_distance_to_threshold():
    assert (
        classify(before=0.4, after=0.2, threshold=0.05, partial=0.3, degradation=0.2)
        is OutcomeType.PARTIAL
    )
    assert (
        classify(before=0.4, after=0.5, threshold=0.05, partial=0.3, degradation=0.2)
        is OutcomeType.DEGRADATION
    )
    assert (
        classify(before=None, after=0.5, threshold=0.05, partial=0.3, degradation=0.2)
        is OutcomeType.INEFFECTIVE
    )


def test_classify_judges_against_where_the_trend_was_going():
    # 0.4 -> 0.7 over a threshold of 0.05 is a degradation on its face...
    assert (
        classify(before=0.4, after=0.7, threshold=0.05, partial=0.3, degradation=0.5)
        is OutcomeType.DEGRADATION
    )
    # ...not when the signal was climbing that fast already: the action did not cause it.
    assert (
        classify(
            before=0.4,
            after=0.7,
            threshold=0.05,
            partial=0.3,
            degradation=0.5,
            expected_change=0.3,
        )
        is OutcomeType.INEFFECTIVE
    )
    # A signal that was improving is not blamed on its slope: judged against its value then.
    assert (
        classify(
            before=0.4,
            after=0.4,
            threshold=0.05,
            partial=0.3,
            degradation=0.5,
            expected_change=-0.3,
        )
        is OutcomeType.INEFFECTIVE
    )
    # A trend cannot excuse more than the excess doubling.
    assert (
        classify(
            before=0.4,
            after=1.5,
            threshold=0.05,
            partial=0.3,
            degradation=0.5,
            expected_change=5.0,
        )
        is OutcomeType.DEGRADATION
    )


def test_classify_never_credits_an_action_with_a_trend_that_stopped():
    # no_good_action: the policy error rate stepped 0 -> 0.155 at the fault's onset, so its
    # slope before the scale-up says "doubling"; after it, the same 0.155 (a plateau, not
    # the scale-up's doing: no effect by counterfactual). Not PARTIAL, on the old reading.
    plateau = {"before": 0.155, "after": 0.155, "threshold": 0.05, "partial": 0.3}
    assert (
        classify(**plateau, degradation=0.5, significance=0.1, expected_change=0.155)
        is OutcomeType.INEFFECTIVE
    )
    # a real improvement on the value before is still PARTIAL, whatever the trend was
    assert (
        classify(**plateau | {"after": 0.09}, degradation=0.5, expected_change=0.155)
        is OutcomeType.PARTIAL
    )


def test_classify_compares_a_load_proportional_signal_at_equal_load():
    # A scale-up for saturation 0.913 (threshold 0.9) read 1.011 while the load rose 30 %:
    # per unit of load it went down. Without the load, a tiny excess growing is DEGRADATION.
    raw = {"before": 0.913, "after": 1.011, "threshold": 0.9, "partial": 0.3, "degradation": 0.5}
    assert classify(**raw) is OutcomeType.DEGRADATION
    assert classify(**raw, load_ratio=1 / 1.3) is not OutcomeType.DEGRADATION


def test_classify_has_a_significance_floor_in_absolute_units():
    # An excess of 0.002 tripling is 0.004 of failure rate: noise, not harm.
    tiny = {"before": 0.052, "after": 0.056, "threshold": 0.05, "partial": 0.3, "degradation": 0.5}
    assert classify(**tiny) is OutcomeType.DEGRADATION  # the old, relative-only verdict
    assert classify(**tiny, significance=0.1) is OutcomeType.INEFFECTIVE


def test_verification_normalises_saturation_by_the_offered_load(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    cause = builders.cause("overload", value=0.913)
    scaled = execution(
        policy=policy(action(ActionType.SCALE_UP), cause=cause),
        started_at=0.0,
        finished_at=1.0,
        baseline=0.913,
        baseline_load=100.0,
    )
    waiting = PendingVerification(execution=scaled, due_at=10.0, deadline=100.0)
    busier = builders.observation(
        at=0,
        metrics=(
            metric("saturation", 1.011, timestamp=0.0),
            metric("offered_load", 130.0, timestamp=0.0),
        ),
        violations=(violation("overload", timestamp=0, value=1.011, query="saturation"),),
    )
    outcome, _ = executor.verify_execution(waiting, busier, now=20.0)
    assert outcome is None or outcome.outcome is not OutcomeType.DEGRADATION
    alone = replace(scaled, baseline_load=None)  # no load then: judged on the signal alone
    outcome, _ = executor.verify_execution(replace(waiting, execution=alone), busier, now=20.0)
    assert outcome is not None
    assert outcome.outcome is OutcomeType.DEGRADATION


def test_a_worse_latency_under_a_load_that_rose_is_not_the_actions_harm(world, journal, clock):
    # load_spike-volatile seed 36: a rebalance for latency 1.12 s; the load spike then took
    # the offered load 238 -> 352 and latency to 2.4 s. No effect by counterfactual, but
    # judged DEGRADATION it froze the loop for 300 s through the overload.
    executor = make_executor(world, journal.append, clock)
    cause = builders.cause("high_latency", value=1.12)
    rebalanced = execution(
        policy=policy(action(ActionType.REBALANCE_LOAD), cause=cause),
        started_at=0.0,
        finished_at=1.0,
        baseline=1.12,
        baseline_load=238.0,
    )
    waiting = PendingVerification(execution=rebalanced, due_at=10.0, deadline=100.0)

    def worse(load: float) -> Observation:
        return builders.observation(
            at=0,
            metrics=(
                metric("p99_latency_s", 2.4, timestamp=0.0),
                metric("offered_load", load, timestamp=0.0),
            ),
            violations=(violation("high_latency", timestamp=0, value=2.4, query="p99_latency_s"),),
        )

    outcome, _ = executor.verify_execution(waiting, worse(352.0), now=20.0)
    assert outcome is None  # not DEGRADATION at once; INEFFECTIVE once settled + margin
    outcome, _ = executor.verify_execution(waiting, worse(352.0), now=30.0)
    assert outcome is not None
    assert outcome.outcome is OutcomeType.INEFFECTIVE
    assert "offered load up 48 %" in outcome.detail
    # the same worsening at the same load is the action's: DEGRADATION
    outcome, _ = executor.verify_execution(waiting, worse(240.0), now=20.0)
    assert outcome is not None
    assert outcome.outcome is OutcomeType.DEGRADATION


def test_a_load_rise_does_not_excuse_a_worsening_it_cannot_explain(world, journal, clock):
    # errors 0.06 -> 1.0 with 25 % more load: far beyond what the load could do (the
    # excess x95 against at most 1.25 ** 3): the action's harm, DEGRADATION.
    executor = make_executor(world, journal.append, clock)
    cause = builders.cause("high_failure_rate", value=0.06)
    restarted = execution(
        policy=policy(action(ActionType.RESTART_SERVICE), cause=cause),
        started_at=0.0,
        finished_at=1.0,
        baseline=0.06,
        baseline_load=200.0,
    )
    waiting = PendingVerification(execution=restarted, due_at=10.0, deadline=100.0)
    broken = builders.observation(
        at=0,
        metrics=(
            metric("failure_rate", 1.0, timestamp=0.0),
            metric("offered_load", 250.0, timestamp=0.0),
        ),
        violations=(violation("high_failure_rate", timestamp=0, value=1.0, query="failure_rate"),),
    )
    outcome, _ = executor.verify_execution(waiting, broken, now=20.0)
    assert outcome is not None
    assert outcome.outcome is OutcomeType.DEGRADATION


def test_a_worse_latency_a_filling_queue_explains_is_not_the_actions_harm(world, journal, clock):
    # load_spike-volatile seed 4 (with the watch): a rebalance for latency 0.63 s at
    # saturation 0.79; 20 s later 30 % more load had taken the saturation to 0.96 and p99 to
    # 1.27 s. The excess over 0.5 s grew x6, more than 1.3 ** 3 allows; a queue's wait at
    # utilisation 0.79 -> 0.96 grows x5. No effect by counterfactual: INEFFECTIVE, not a
    # panic freeze.
    executor = make_executor(world, journal.append, clock)

    def run(kind: str, before: float, utilisation: float) -> PendingVerification:
        done = execution(
            policy=policy(action(ActionType.REBALANCE_LOAD), cause=builders.cause(kind)),
            started_at=0.0,
            finished_at=1.0,
            baseline=before,
            baseline_load=378.0,
            baseline_utilisation=utilisation,
        )
        return PendingVerification(execution=done, due_at=10.0, deadline=100.0)

    def worse(kind: str, value: float, saturation: float) -> Observation:
        query = CAUSE[kind].signal
        return builders.observation(
            at=0,
            metrics=(
                metric(query, value, timestamp=0.0),
                metric("offered_load", 490.0, timestamp=0.0),  # x1.30
                metric("saturation", saturation, timestamp=0.0),
            ),
            violations=(violation(kind, timestamp=0, value=value, query=query),),
        )

    def judged(pending: PendingVerification, observation: Observation) -> OutcomeType:
        outcome, _ = executor.verify_execution(pending, observation, now=30.0)
        assert outcome is not None
        return outcome.outcome

    latency = run("high_latency", 0.63, 0.79)
    outcome, _ = executor.verify_execution(latency, worse("high_latency", 1.27, 0.96), now=30.0)
    assert outcome is not None
    assert outcome.outcome is OutcomeType.INEFFECTIVE
    assert "offered load up 30 %" in outcome.detail
    # far from capacity a queue cannot double the wait (0.4 -> 0.52: x1.25 at most)
    low = run("high_latency", 0.63, 0.4)
    assert judged(low, worse("high_latency", 1.27, 0.52)) is OutcomeType.DEGRADATION
    # the utilisation rose far more than the load: capacity went (the action's, say a
    # restart or a scale-down), so the queue is its doing
    assert judged(latency, worse("high_latency", 1.27, 1.5)) is OutcomeType.DEGRADATION
    # errors are not a queue's wait: 0.06 -> 1.0 is the action's, even near capacity
    errors = run("high_failure_rate", 0.06, 0.79)
    assert judged(errors, worse("high_failure_rate", 1.0, 0.99)) is OutcomeType.DEGRADATION


def test_a_queue_excuses_only_a_rise_on_the_bad_side_and_on_the_same_capacity():
    same = {"then": 0.79, "now": 0.96, "load_change": 1.3, "tolerance": 0.2}
    assert _queue_explains(0.63, 1.27, 0.5, **same)
    assert not _queue_explains(0.63, 4.0, 0.5, **same)  # x6.3 > x5.25
    # a lower-is-worse signal under its threshold is never a queue filling
    assert not _queue_explains(0.3, 0.1, 0.5, **same)
    # over capacity the factor is taken at 0.99: large, not unbounded
    over = {**same, "now": 1.0, "then": 0.8, "load_change": 1.25}
    assert _queue_explains(0.63, 12.0, 0.5, **over)
    assert not _queue_explains(0.63, 50.0, 0.5, **over)
    # unread utilisation then or now: no excuse
    assert not _queue_explains(0.63, 1.27, 0.5, **{**same, "then": None})


async def test_a_panic_revert_never_undoes_what_verification_said_helped(world, journal, clock):
    executor = make_executor(world, journal.append, clock, verify_delay_s=0)
    helped = await executor.execute_policy(
        resolved(world, policy(action(ActionType.SCALE_UP, delta=2), id="helped"))
    )
    cleared = observation(0.01, violating=False)
    [outcome] = executor.verify_due(cleared, now=clock() + 1)
    assert outcome.outcome is OutcomeType.SUCCESS
    other = await executor.execute_policy(
        resolved(world, policy(action(ActionType.THROTTLE_REQUESTS), id="other"))
    )
    unrelated = await executor.execute_policy(
        resolved(world, policy(action(ActionType.SCALE_DOWN), id="unrelated"))
    )
    reverted = await executor.revert_recent(
        since=0.0, reason="test", only=frozenset({other.id, helped.id})
    )
    assert [e.id for e in reverted] == [other.id]  # not the success, not the one not named
    assert world.committee.state().throttle_limit is None
    assert unrelated.status is ExecutionStatus.COMPLETED


async def test_rollback_restores_bypass_override_and_policy(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    world.client.fail_next("rebalance_load")
    result = await executor.execute_policy(
        resolved(
            world,
            policy(
                action(ActionType.BYPASS_VALIDATION),
                action(ActionType.ACTIVATE_EMERGENCY_OVERRIDE),
                action(ActionType.APPLY_POLICY, policy_id="strict-v2"),
                action(ActionType.REBALANCE_LOAD),
            ),
        )
    )
    assert result.status is ExecutionStatus.ROLLED_BACK
    state = world.committee.state()
    assert (state.validation_bypass, state.emergency_override) == (False, False)
    assert state.active_policy == "baseline-v1"


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (0.65, 0.11, OutcomeType.PARTIAL),  # crossed to the good side: never a degradation
        (0.65, 0.9, OutcomeType.DEGRADATION),
        (0.08, 0.0, OutcomeType.DEGRADATION),  # a "<" rule: further below is worse
        (0.02, 0.2, OutcomeType.PARTIAL),
    ],
)
def test_classify_knows_which_side_of_the_threshold_is_bad(before, after, expected):
    got = classify(
        before=before,
        after=after,
        threshold=0.5 if before > 0.1 else 0.1,
        partial=0.3,
        degradation=0.5,
    )
    assert got is expected


async def test_the_in_memory_history_is_bounded(world, journal, clock, monkeypatch):
    monkeypatch.setattr("mape_k.loop.execute.HISTORY_KEPT", 3)
    executor = make_executor(world, journal.append, clock)
    for n in range(5):
        await executor.execute_policy(
            resolved(world, policy(action(ActionType.REBALANCE_LOAD), id=f"p{n}"))
        )
    assert [e.id for e in executor.get_execution_history()] == ["p2", "p3", "p4"]


async def test_no_action_runs_when_the_journal_cannot_record_it(world, clock):

    def broken(_execution):
        raise StoreError("disk full")

    executor = make_executor(world, broken, clock)
    result = await executor.execute_policy(
        resolved(world, policy(action(ActionType.RESTART_SERVICE)))
    )
    assert result.status is ExecutionStatus.FAILED
    assert "journal" in (result.error or "")
    assert world.committee.actions == []


async def test_a_journal_failure_after_an_action_keeps_the_execution_and_its_verification(
    world, clock
):

    writes = []

    def flaky(execution):
        writes.append(execution)
        if execution.actions[0].status is ExecutionStatus.COMPLETED:
            raise StoreError("disk full")

    executor = make_executor(world, flaky, clock)
    result = await executor.execute_policy(
        resolved(world, policy(action(ActionType.RESTART_SERVICE)))
    )
    assert result.status is ExecutionStatus.COMPLETED
    assert [p.execution.id for p in executor.pending_verifications()] == [result.id]
    assert len(world.committee.actions) == 1


async def test_a_charter_answer_without_what_the_undo_needs_fails_the_rollback_cleanly(
    world, journal, clock
):
    executor = make_executor(world, journal.append, clock)
    real_scale = world.client.scale_committee

    async def no_previous(size, *, idempotency_key):
        answer = await real_scale(size, idempotency_key=idempotency_key)
        return replace(answer, previous={})

    world.client.scale_committee = no_previous  # type: ignore[method-assign]
    world.client.fail_next("rebalance_load")
    result = await executor.execute_policy(
        resolved(
            world, policy(action(ActionType.SCALE_UP, delta=1), action(ActionType.REBALANCE_LOAD))
        )
    )
    assert result.status is ExecutionStatus.FAILED
    assert "rollback incomplete" in (result.error or "")


def test_a_vanished_series_is_not_a_success(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    earlier = replace(pending(), last_value=0.38)
    outcome, _ = executor.verify_execution(earlier, observation(None, violating=False), now=20.0)
    assert outcome is None  # not yet: wait for a reading
    final, _ = executor.verify_execution(earlier, observation(None, violating=False), now=100.0)
    assert final is not None
    assert final.outcome is OutcomeType.UNKNOWN


async def test_a_freeze_arriving_mid_policy_stops_the_next_action_and_rolls_back(
    world, journal, clock
):
    executor = make_executor(
        world,
        journal.append,
        clock,
        hold=lambda: "frozen (operator): incident" if world.committee.actions else None,
    )
    result = await executor.execute_policy(
        resolved(
            world,
            policy(
                action(ActionType.THROTTLE_REQUESTS, limit_ops_per_sec=50.0),
                action(ActionType.SCALE_UP),
            ),
        )
    )
    assert result.status is ExecutionStatus.ROLLED_BACK
    assert "frozen (operator): incident" in (result.actions[1].error or "")
    assert [e.operation for e in world.committee.actions] == ["set_throttle", "set_throttle"]
    assert world.committee.state().throttle_limit is None


def test_a_return_to_baseline_holds_unless_a_violation_comes_back(world, journal, clock):
    executor = make_executor(world, journal.append, clock)
    cause = replace(builders.cause("overload", value=0.3), name="excess_capacity")
    returned = execution(
        policy=policy(action(ActionType.SCALE_DOWN), cause=cause),
        started_at=0.0,
        finished_at=1.0,
        baseline=0.3,
    )
    waiting = PendingVerification(execution=returned, due_at=10.0, deadline=100.0)
    calm = builders.observation(at=0, metrics=(metric("saturation", 0.55, timestamp=0.0),))
    outcome, _ = executor.verify_execution(waiting, calm, now=20.0)
    assert outcome is not None
    assert (outcome.outcome, outcome.detail) == (OutcomeType.SUCCESS, "no violation after it")
    back = builders.observation(
        at=0,
        metrics=(metric("saturation", 0.95, timestamp=0.0),),
        violations=(violation("overload", timestamp=0, value=0.95, query="saturation"),),
    )
    outcome, _ = executor.verify_execution(waiting, back, now=20.0)
    assert outcome is not None
    assert outcome.outcome is OutcomeType.INEFFECTIVE
    assert outcome.detail == "overload back after the return"


async def test_each_execution_waiting_for_its_outcome_says_which_knobs_it_moved(
    world, journal, clock
):
    executor = make_executor(world, journal.append, clock)
    await executor.execute_policy(resolved(world, policy(action(ActionType.SCALE_UP), id="up")))
    await executor.execute_policy(
        resolved(world, policy(action(ActionType.THROTTLE_REQUESTS), id="shed"))
    )
    await executor.execute_policy(resolved(world, policy(ActionType.RESTART_SERVICE, id="rs")))
    settling = executor.pending_targets()["charter"]
    assert [(s.execution_id, s.knobs) for s in settling] == [
        ("up", frozenset({"size"})),
        ("shed", frozenset({"throttle"})),
        ("rs", None),  # a restart moves no knob: the whole target
    ]


async def test_an_outcome_confounded_by_another_action_is_noted_and_never_a_degradation(
    world, journal, clock
):
    executor = make_executor(world, journal.append, clock, verify_delay_s=0, ineffective_margin_s=0)
    first = await executor.execute_policy(
        resolved(world, policy(action(ActionType.SCALE_UP), id="up")), baseline=0.4
    )
    worse = observation(0.9, violating=True)  # 0.4 -> 0.9 over 0.05: worse on its face
    [alone] = [
        executor.verify_execution(p, worse, now=clock() + 1)[0]
        for p in executor.pending_verifications()
    ]
    assert alone is not None
    assert alone.outcome is OutcomeType.DEGRADATION  # nothing else ran: attributed
    second = await executor.execute_policy(
        resolved(world, policy(action(ActionType.THROTTLE_REQUESTS), id="shed")), baseline=0.4
    )
    outcomes = {o.execution_id: o for o in executor.verify_due(worse, now=clock() + 1)}
    assert set(outcomes) == {first.id, second.id}
    for run, other in ((first, "shed (throttle_requests)"), (second, "up (scale_up)")):
        verdict = outcomes[run.id]
        assert verdict.outcome is OutcomeType.INEFFECTIVE, run.id
        assert "worse, not attributed to it" in verdict.detail
        assert f"confounded by {other}" in verdict.detail


async def test_a_policy_on_another_target_does_not_confound_and_a_cleared_one_says_so(
    world, journal, clock
):
    executor = make_executor(world, journal.append, clock, verify_delay_s=0)
    await executor.execute_policy(
        resolved(world, policy(action(ActionType.SCALE_UP), id="up")), baseline=0.4
    )
    [waiting] = executor.pending_verifications()
    assert waiting.confounded_by == ()
    await executor.execute_policy(
        resolved(world, policy(action(ActionType.THROTTLE_REQUESTS), id="shed")), baseline=0.4
    )
    [cleared] = [
        o
        for o in executor.verify_due(observation(0.01, violating=False), now=clock() + 1)
        if o.execution_id == "up"
    ]
    assert cleared.outcome is OutcomeType.SUCCESS
    assert cleared.detail == "violation cleared; confounded by shed (throttle_requests)"


def test_a_cause_read_from_latency_is_not_cleared_while_the_latency_still_violates():
    # Latency read as load: the overload cause stands for a high_latency violation, and
    # its own rule (saturation over 0.9) may never fire. Cleared means both gone.
    read = replace(
        builders.cause("overload", query="saturation", threshold=0.8, value=0.85),
        annotations={READ_FROM: "high_latency"},
    )
    restarted = execution(policy=policy(cause=read), started_at=0.0, finished_at=1.0, baseline=0.85)
    waiting = PendingVerification(execution=restarted, due_at=10.0, deadline=100.0)
    executor = Executor(
        charter=None, config=ExecutorConfig(), actions=DEFAULT_ACTIONS, journal=no_journal
    )
    saturation = (metric("saturation", 0.84, timestamp=0.0),)
    latency = violation("high_latency", timestamp=0, value=2.0, threshold=1.0, query="p99")
    slow = builders.observation(at=0, metrics=saturation, violations=(latency,))
    outcome, _ = executor.verify_execution(waiting, slow, now=200.0)
    assert outcome is not None
    assert outcome.outcome is not OutcomeType.SUCCESS
    calm = builders.observation(at=0, metrics=saturation)
    outcome, _ = executor.verify_execution(waiting, calm, now=200.0)
    assert outcome is not None
    assert outcome.outcome is OutcomeType.SUCCESS
