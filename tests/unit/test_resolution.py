"""One resolved plan: every action is resolved once to absolute state, against one reading of
the target; the guards judge exactly that, the executor sends it literally, the journal
records it. Through the real loop (mock Charter, a real SQLite file) and the pure model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import builders
from mape_k.app import build
from mape_k.config import DEFAULT_ACTIONS, ExecutorConfig, load_settings
from mape_k.errors import ConfigError, ExecutionError
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop import actions
from mape_k.loop import guards as g
from mape_k.loop.execute import Executor
from mape_k.models import (
    ActionType,
    CandidateScore,
    Cause,
    ExecutionStatus,
    KnobSetting,
    RemediationAction,
    RemediationPolicy,
    Severity,
)


async def no_journal(_execution: object) -> None:
    """The executor's journal where a test does not read it."""


def settings_for(tmp_path: Path, **cli: object):
    overrides = {"knowledge.path": str(tmp_path / "k.sqlite3"), "charter.mode": "mock", **cli}
    return load_settings(None, {}, overrides)[0]


def overload_with(*actions_: dict[str, object]) -> dict[str, object]:
    """planner.remediations with one candidate for overload."""
    return {"planner.remediations": {"overload": [list(actions_)]}}


def scales_sent(world: MockCharterWorld) -> list[int]:
    return [
        int(entry.arguments["size"])
        for entry in world.committee.actions
        if entry.operation == "scale_committee" and entry.idempotency_key != "operator"
    ]


async def pending_scale_to_five(world: MockCharterWorld) -> None:
    """An operator's scale 3 -> 5 that takes an hour: 3 members present, heading for 5."""
    world.committee.scale_delay_s = 3600
    await world.client.scale_committee(5, idempotency_key="operator")
    state = world.committee.state()
    assert (state.size, state.target_size) == (3, 5)


# --- the defect: the size judged was not the size applied ------------------------------------


async def test_a_scale_up_while_a_scale_is_pending_is_judged_sent_and_recorded_as_one_size(
    tmp_path, clock
):
    settings = settings_for(tmp_path, **overload_with({"type": "scale_up", "parameters": {}}))
    world = MockCharterWorld.create(clock=clock, seed=3, fault="load_spike")
    await pending_scale_to_five(world)
    async with build(settings, world=world, clock=clock) as parts:
        orch = parts.orchestrator
        clock.advance(10)
        record = await orch.run_once()
        recommended = orch.envelope.recommendations[-1]
        history = [c for c in orch.envelope.history if c.knob == "size"]
        [journaled] = await parts.store.executions_finished_since(0)
    assert record["result"] == "acted", record["choice"]
    # From the one reading: heading for 5, one more is 6 (the observed 3 members are not it).
    assert recommended.size == 6  # what the stabilization guard judges
    assert scales_sent(world) == [6]  # what the Charter was sent
    assert journaled.policy.actions[0].sets == (KnobSetting("size", 5, 6),)  # what is recorded
    assert record["execution"]["actions"][0]["sets"] == [{"knob": "size", "before": 5, "after": 6}]
    assert [(c.before, c.after, c.size_delta) for c in history] == [(5, 6, 1)]
    assert world.committee.state().target_size == 6


async def test_the_velocity_bound_judges_the_change_from_the_size_the_committee_is_heading_for(
    tmp_path, clock
):
    # 5 -> 6 is one member; judged from the 3 present it looked like 3 and was held.
    settings = settings_for(
        tmp_path,
        **overload_with({"type": "scale_up", "parameters": {"to_size": 6}}),
        **{"guards.velocity.max_size_change": 2},
    )
    world = MockCharterWorld.create(clock=clock, seed=3, fault="load_spike")
    await pending_scale_to_five(world)
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(10)
        record = await parts.orchestrator.run_once()
    held = [d for d in record["guard_decisions"] if d["verdict"] != "allow"]
    assert record["result"] == "acted", held
    assert scales_sent(world) == [6]


async def test_without_a_reading_of_the_target_nothing_is_resolved_or_sent_and_it_says_why(
    tmp_path, clock
):
    settings = settings_for(tmp_path, **{"guards.validate_startup": False})
    world = MockCharterWorld.create(clock=clock, seed=3, fault="load_spike")
    async with build(settings, world=world, clock=clock) as parts:
        world.client.fail_next("get_committee_state")
        clock.advance(10)
        record = await parts.orchestrator.run_once()
        recommendations = list(parts.orchestrator.envelope.recommendations)
    data = [d for d in record["guard_decisions"] if d["guard"] == "data"]
    assert record["result"] == "held"
    assert data
    assert {d["verdict"] for d in data} == {"block"}
    assert all("could not be read" in d["reason"] for d in data), data
    assert world.committee.actions == []
    assert recommendations == []  # nothing recorded from a reading that was not taken


async def test_a_throttle_by_a_fraction_of_the_load_is_sent_as_the_limit_the_guards_judged(
    tmp_path, clock
):
    settings = settings_for(
        tmp_path,
        **overload_with(
            {"type": "throttle_requests", "parameters": {"fraction": 0.5}, "benefit": 1.0}
        ),
    )
    world = MockCharterWorld.create(clock=clock, seed=3, fault="load_spike")
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(10)
        record = await parts.orchestrator.run_once()
        [journaled] = await parts.store.executions_finished_since(0)
    [setting] = journaled.policy.actions[0].sets or ()
    sent = [e.arguments for e in world.committee.actions if e.operation == "set_throttle"]
    assert record["result"] == "acted"
    assert setting.knob == "throttle"
    assert setting.before is None
    assert sent == [{"limit_ops_per_sec": setting.after}]
    assert setting.after == pytest.approx(world.committee.state().throttle_limit)


# --- the defaults in one place, the executor sends nothing it was not given -------------------


def cause() -> Cause:
    return Cause(
        name="overload", target="charter", severity=Severity.CRITICAL, confidence=0.8, violations=1
    )


def planned(kind: ActionType, **parameters: object) -> RemediationPolicy:
    score = CandidateScore(cost=0.2, benefit=0.8, confidence=0.8, score=0.4)
    return RemediationPolicy(
        id="p1",
        cause=cause(),
        actions=(RemediationAction(action_type=kind, target="charter", parameters=parameters),),
        score=score,
        requires_approval=False,
        created_at=0.0,
    )


def executor(world: MockCharterWorld, clock) -> Executor:
    return Executor(
        charter=world.client,
        config=ExecutorConfig(),
        actions=DEFAULT_ACTIONS,
        journal=no_journal,
        clock=clock,
    )


async def test_an_omitted_parameter_takes_the_one_default_for_guards_and_executor_alike(
    clock, monkeypatch
):
    world = MockCharterWorld.create(clock=clock, seed=1)
    kind = ActionType.THROTTLE_REQUESTS
    monkeypatch.setitem(
        actions.EFFECTS, kind, replace(actions.EFFECTS[kind], defaults={"fraction": 0.25})
    )
    state = world.committee.state()
    plan = actions.resolve(planned(kind), state)
    [judged] = g.planned_changes(plan, now=clock())
    result = await executor(world, clock).execute_policy(plan)
    [sent] = [e.arguments for e in world.committee.actions if e.operation == "set_throttle"]
    assert result.status is ExecutionStatus.COMPLETED
    assert judged.after == pytest.approx(state.offered_load * 0.25)
    assert sent == {"limit_ops_per_sec": judged.after}


async def test_the_executor_refuses_a_policy_that_was_not_resolved_and_sends_nothing(clock):
    world = MockCharterWorld.create(clock=clock, seed=1)
    for kind in (ActionType.SCALE_UP, ActionType.BYPASS_VALIDATION, ActionType.APPLY_POLICY):
        with pytest.raises(ExecutionError, match="not resolved"):
            await executor(world, clock).execute_policy(planned(kind))
    assert world.committee.actions == []


def test_a_second_action_starts_where_the_first_left_the_knob(clock):
    world = MockCharterWorld.create(clock=clock, seed=1)  # 3 members
    two = replace(
        planned(ActionType.SCALE_UP, delta=2),
        actions=(
            RemediationAction(ActionType.SCALE_UP, "charter", {"delta": 2}),
            RemediationAction(ActionType.SCALE_DOWN, "charter", {}),
        ),
    )
    plan = actions.resolve(two, world.committee.state())
    assert [a.sets for a in plan.actions] == [
        (KnobSetting("size", 3, 5),),
        (KnobSetting("size", 5, 4),),
    ]
    assert actions.final_value(plan, "size") == 4


def test_a_scale_that_would_go_the_other_way_is_not_resolved(clock):
    world = MockCharterWorld.create(clock=clock, seed=1)  # heading for 3
    with pytest.raises(actions.Unresolvable, match="other way"):
        actions.resolve(planned(ActionType.SCALE_UP, to_size=2), world.committee.state())
    with pytest.raises(actions.Unresolvable, match="other way"):
        actions.resolve(planned(ActionType.SCALE_DOWN, to_size=4), world.committee.state())


def test_a_scale_to_a_target_value_is_proportional_like_the_hpa(clock):
    world = MockCharterWorld.create(clock=clock, seed=1)
    state = replace(world.committee.state(), target_size=3)
    hot = builders.cause("overload", value=1.2)  # saturation 1.2 on 3 members
    scale = builders.policy(builders.action(ActionType.SCALE_UP, target_value=0.75), cause=hot)
    [setting] = actions.resolve(scale, state).actions[0].sets
    assert (setting.before, setting.after) == (3, 5)  # ceil(3 * 1.2 / 0.75) = ceil(4.8)
    barely = replace(scale, cause=builders.cause("overload", value=0.76))
    [setting] = actions.resolve(barely, state).actions[0].sets
    assert setting.after == 4  # a scale-up adds at least one member
    unread = replace(scale, cause=builders.cause("overload", value=None))
    with pytest.raises(actions.Unresolvable, match="signal was not read"):
        actions.resolve(unread, state)


def test_a_throttle_by_a_fraction_of_no_load_is_not_resolved(clock):
    world = MockCharterWorld.create(clock=clock, seed=1)
    idle = replace(world.committee.state(), offered_load=0.0)
    with pytest.raises(actions.Unresolvable, match="no load is offered"):
        actions.resolve(planned(ActionType.THROTTLE_REQUESTS), idle)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"type": "scale_up", "parameters": {"detla": 2}}, "scale_up does not take detla"),
        ({"type": "scale_up", "parameters": {"delta": 0}}, "scale_up.delta must be"),
        (
            {"type": "scale_down", "parameters": {"delta": 1, "to_size": 2}},
            "takes one of delta, to_size, target_value, not delta and to_size",
        ),
        ({"type": "scale_up", "parameters": {"target_value": 0}}, "target_value must be"),
        (
            {"type": "throttle_requests", "parameters": {"limit_ops_per_sec": None}},
            "limit_ops_per_sec must be a number > 0",
        ),
        ({"type": "throttle_requests", "parameters": {"fraction": 1.5}}, "fraction must be"),
        ({"type": "bypass_validation", "parameters": {"active": "yes"}}, "active must be"),
        ({"type": "update_configuration", "parameters": {}}, "settings must be"),
        ({"type": "restart_service", "parameters": {"force": True}}, "takes scope)"),
        (
            {"type": "restart_service", "parameters": {"scope": "crashed"}},
            "restart_service.scope must be one of all, rolling, unhealthy, got 'crashed'",
        ),
        ({"type": "restart_service", "parameters": {"scope": True}}, "restart_service.scope"),
        ({"type": "rebalance_load", "parameters": {"scope": "all"}}, "takes no parameters"),
    ],
)
def test_a_parameter_the_model_does_not_know_is_a_config_error_naming_it(tmp_path, action, message):
    with pytest.raises(ConfigError) as caught:
        settings_for(tmp_path, **overload_with(action))
    text = str(caught.value)
    assert "planner.remediations.overload" in text
    assert message in text
    assert "\n" not in text
