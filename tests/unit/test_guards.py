"""The safety envelope: one focused test per guard, pure functions with `now` passed in,
plus the stateful parts (breakers, back-off, panic revert, start-up validation) on a fake
clock. No sleeping anywhere."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from aiohttp.test_utils import TestServer

from builders import NOW, action, execution, outcome, outcome_of, policy, step
from builders import settings as settings_for
from mape_k.app import Daemon, build
from mape_k.config import DEFAULT_ACTIONS, ExecutorConfig, GuardsConfig
from mape_k.errors import CharterRequestError, CharterTimeout, CharterUnavailable
from mape_k.integrations.charter.base import CommitteeState
from mape_k.integrations.charter.http import HttpCharterClient
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop import guards as g
from mape_k.loop.actions import MEMBERS, knobs, resolve
from mape_k.loop.envelope import BreakerCharter, SafetyEnvelope, charter_problems
from mape_k.loop.execute import Executor
from mape_k.models import (
    ActionType,
    ExecutionStatus,
    GuardVerdict,
    KnobSetting,
    OutcomeType,
    RemediationPolicy,
)
from mape_k.sim.committee import Committee
from mape_k.sim.service import build_app as build_sim_app
from mape_k.store import Store
from mape_k.storeio import AsyncStore


async def no_journal(_execution: object) -> None:
    """The executor's journal where a test does not read it."""


def reading(size: int = 3, **fields: object) -> CommitteeState:
    """A Charter state to resolve policies against: `size` members, heading for `size`."""
    values: dict[str, object] = {
        "size": size,
        "healthy_members": size,
        "target_size": size,
        "offered_load": 100.0,
        "throughput_ops_per_sec": 100.0,
        "failure_rate": 0.0,
        "p99_latency_s": 0.1,
        "queue_depth": 0.0,
        "throttle_limit": None,
        "emergency_override": False,
        "validation_bypass": False,
        "active_policy": "baseline-v1",
        "config": {},
        **fields,
    }
    return CommitteeState(**values)  # type: ignore[arg-type]


def at(size: int, p: RemediationPolicy) -> RemediationPolicy:
    """`p` resolved against a committee of `size` members (what the guards judge)."""
    return resolve(p, reading(size))


UP = at(3, policy(action(ActionType.SCALE_UP, delta=1)))
DOWN = at(3, policy(action(ActionType.SCALE_DOWN, delta=1)))
RESTART = at(3, policy(ActionType.RESTART_SERVICE))


def change(
    at: float,
    kind: ActionType,
    *,
    knob: str | None = None,
    direction: int = 0,
    before: object = None,
    after: object = None,
    size_delta: int = 0,
    target: str = "charter",
) -> g.Change:
    return g.Change(
        at=at,
        target=target,
        action_type=kind,
        execution_id=f"e{at}",
        knob=knob,
        direction=direction,
        before=before,
        after=after,
        size_delta=size_delta,
    )


def scaled(at: float, delta: int) -> g.Change:
    kind = ActionType.SCALE_UP if delta > 0 else ActionType.SCALE_DOWN
    return change(at, kind, knob="size", direction=1 if delta > 0 else -1, size_delta=abs(delta))


def ctx(**kw: object) -> g.GuardContext:
    return g.GuardContext(now=kw.pop("now", NOW), **kw)  # type: ignore[arg-type]


def verdict(guard: g.Guard, p: RemediationPolicy, **kw: object) -> GuardVerdict:
    return guard(p, ctx(**kw)).verdict


# --- data, startup, dry-run, settle -------------------------------------------------------


def test_data_guard_blocks_on_a_degraded_observation():
    assert verdict(g.data_guard, UP, degraded_reason="prometheus down") is GuardVerdict.BLOCK
    assert verdict(g.data_guard, UP) is GuardVerdict.ALLOW


def test_data_guard_blocks_a_policy_not_resolved_against_a_reading_and_says_why():
    planned = policy(action(ActionType.SCALE_UP, delta=1))  # as planned: no absolute size yet
    held = g.data_guard(planned, ctx(unresolved="the Charter's state could not be read: 503"))
    assert held.verdict is GuardVerdict.BLOCK
    assert "could not be read: 503" in held.reason


def test_startup_guard_blocks_while_start_up_validation_failed():
    decision = g.startup_guard(UP, ctx(startup_problem="committee_size 0 < 1"))
    assert decision.verdict is GuardVerdict.BLOCK
    assert "committee_size 0 < 1" in decision.reason
    assert verdict(g.startup_guard, UP) is GuardVerdict.ALLOW


def test_dry_run_is_a_guard_mode():
    decision = g.dry_run_guard(UP, ctx(dry_run=True))
    assert decision.verdict is GuardVerdict.BLOCK
    assert "would execute scale_up" in decision.reason


SIZE_SETTLING = g.Settling("e1", frozenset({"size"}), (ActionType.SCALE_UP,))
RESTART_SETTLING = g.Settling("e2", None, (ActionType.RESTART_SERVICE,))
THROTTLE = at(3, policy(action(ActionType.THROTTLE_REQUESTS, fraction=0.8)))


def test_settle_guard_delays_a_target_whose_last_action_is_unmeasured():
    settling = {"charter": (SIZE_SETTLING,)}
    assert verdict(g.settle_guard, UP, settling=settling) is GuardVerdict.DELAY
    assert verdict(g.settle_guard, UP, settling={"other": (SIZE_SETTLING,)}) is GuardVerdict.ALLOW


def test_only_the_knob_that_moved_is_settling_and_the_reason_names_knob_and_execution():
    settling = {"charter": (SIZE_SETTLING,)}
    held = g.settle_guard(DOWN, ctx(settling=settling))
    assert held.verdict is GuardVerdict.DELAY
    assert "e1 (scale_up: size)" in held.reason
    assert "it moved size, which this policy moves too" in held.reason
    # A throttle moves another knob: it runs while the scale-up settles, and says so.
    allowed = g.settle_guard(THROTTLE, ctx(settling=settling))
    assert allowed.verdict is GuardVerdict.ALLOW
    assert "other knobs only: e1 (scale_up: size)" in allowed.reason


def test_an_action_without_a_knob_conflicts_with_everything_on_its_target():
    # A restart (or rebalance) settling: the whole target is settling, every knob waits.
    restarting = {"charter": (RESTART_SETTLING,)}
    for p in (UP, THROTTLE, RESTART):
        held = g.settle_guard(p, ctx(settling=restarting))
        assert held.verdict is GuardVerdict.DELAY
        assert "e2 (restart_service: the whole target): it acts on the whole target" in held.reason
    # ...and a restart waits for whatever knob is settling.
    held = g.settle_guard(RESTART, ctx(settling={"charter": (SIZE_SETTLING,)}))
    assert held.verdict is GuardVerdict.DELAY
    assert "it moved size, and this policy acts on the whole target" in held.reason


def test_a_restart_of_the_unhealthy_members_alone_leaves_the_size_free():
    # two_faults: a crashed member restarted (scope unhealthy) and a load spike at once; the
    # healthy members keep serving, so the scale-up the spike needs does not wait for it.
    partial = at(3, policy(action(ActionType.RESTART_SERVICE, scope="unhealthy")))
    assert knobs(partial.actions) == frozenset({MEMBERS})
    assert knobs(RESTART.actions) is None  # a full restart: the whole target
    restarting = {
        "charter": (g.Settling("e2", knobs(partial.actions), (ActionType.RESTART_SERVICE,)),)
    }
    assert verdict(g.settle_guard, UP, settling=restarting) is GuardVerdict.ALLOW
    again = g.settle_guard(partial, ctx(settling=restarting))
    assert again.verdict is GuardVerdict.DELAY  # the same members: it waits for its verdict
    assert "it moved members, which this policy moves too" in again.reason


def test_a_second_remedy_for_the_same_cause_waits_for_the_first_whatever_it_moves():
    # A scale-up for this cause is settling: a throttle for the same cause (another knob)
    # waits for its verdict; for another cause it runs.
    same = g.Settling("e1", frozenset({"size"}), (ActionType.SCALE_UP,), cause=THROTTLE.cause.name)
    held = g.settle_guard(THROTTLE, ctx(settling={"charter": (same,)}))
    assert held.verdict is GuardVerdict.DELAY
    assert f"it remedies {THROTTLE.cause.name} too, and its verdict comes first" in held.reason
    other = g.Settling("e1", frozenset({"size"}), (ActionType.SCALE_UP,), cause="queue_backlog")
    assert verdict(g.settle_guard, THROTTLE, settling={"charter": (other,)}) is GuardVerdict.ALLOW


def test_the_settle_guard_checks_every_execution_settling_on_the_target():
    throttling = g.Settling("e3", frozenset({"throttle"}), (ActionType.THROTTLE_REQUESTS,))
    settling = {"charter": (SIZE_SETTLING, throttling)}
    held = g.settle_guard(THROTTLE, ctx(settling=settling))
    assert held.verdict is GuardVerdict.DELAY
    assert "e3 (throttle_requests: throttle)" in held.reason
    bypass = at(3, policy(action(ActionType.BYPASS_VALIDATION)))
    assert verdict(g.settle_guard, bypass, settling=settling) is GuardVerdict.ALLOW


# --- freeze ------------------------------------------------------------------------------


def test_an_operator_freeze_blocks_until_it_ends_and_says_until_when():
    freeze = g.Freeze(reason="deploy", since=NOW, until=NOW + 600, source="operator alice")
    held = g.freeze_guard(UP, ctx(freeze=freeze, now=NOW + 599))
    assert held.verdict is GuardVerdict.BLOCK
    assert held.until == NOW + 600
    assert "until 2023-11-14T22:23:20Z" in held.reason
    assert verdict(g.freeze_guard, UP, freeze=freeze, now=NOW + 600) is GuardVerdict.ALLOW


def test_the_kill_switch_blocks_every_mutating_action_with_no_end():
    kill = g.Freeze(reason="kill switch", since=NOW, until=None, source="config")
    for p in (UP, DOWN, RESTART):
        decision = g.freeze_guard(p, ctx(freeze=kill, now=NOW + 10 * 86_400))
        assert decision.verdict is GuardVerdict.BLOCK
        assert "until lifted" in decision.reason


def test_a_freeze_window_from_config_blocks_inside_it_only_on_its_days():
    cfg = GuardsConfig.model_validate(
        {"freeze_windows": [{"start": "22:00", "end": "02:00", "days": ["tue"], "reason": "batch"}]}
    )
    tuesday_2213 = NOW
    wednesday_0130 = NOW + 3 * 3600 + 17 * 60  # still Tuesday's window (crosses midnight)
    wednesday_2213 = NOW + 86_400
    held = g.freeze_guard(UP, ctx(config=cfg, now=tuesday_2213))
    assert held.verdict is GuardVerdict.BLOCK
    assert "(window)" in held.reason
    assert "batch" in held.reason
    end = dt.datetime(2023, 11, 15, 2, 0, tzinfo=dt.UTC).timestamp()
    assert held.until == end
    assert verdict(g.freeze_guard, UP, config=cfg, now=wednesday_0130) is GuardVerdict.BLOCK
    assert verdict(g.freeze_guard, UP, config=cfg, now=end) is GuardVerdict.ALLOW
    assert verdict(g.freeze_guard, UP, config=cfg, now=wednesday_2213) is GuardVerdict.ALLOW


def test_a_freeze_window_must_be_hh_mm():
    with pytest.raises(ValueError, match="HH:MM"):
        GuardsConfig.model_validate({"freeze_windows": [{"start": "25:00", "end": "02:00"}]})


# --- cooldown, velocity, stabilization ---------------------------------------------------


def test_cooldown_per_target_and_action_type_is_longer_after_a_large_delta():
    cfg = GuardsConfig()  # base 120 s, x3 at >= 3 members
    small = (scaled(NOW, 1),)
    assert verdict(g.cooldown_guard, UP, history=small, now=NOW + 119) is GuardVerdict.DELAY
    assert verdict(g.cooldown_guard, UP, history=small, now=NOW + 120) is GuardVerdict.ALLOW
    assert verdict(g.cooldown_guard, RESTART, history=small, now=NOW + 1) is GuardVerdict.ALLOW
    other = policy(action(ActionType.SCALE_UP, delta=1), target="other")
    assert verdict(g.cooldown_guard, other, history=small, now=NOW + 1) is GuardVerdict.ALLOW
    large = (scaled(NOW, 3),)
    held = g.cooldown_guard(UP, ctx(history=large, now=NOW + 300, config=cfg))
    assert held.verdict is GuardVerdict.DELAY
    assert held.until == NOW + 360
    assert verdict(g.cooldown_guard, UP, history=large, now=NOW + 360) is GuardVerdict.ALLOW


def test_velocity_bounds_the_size_change_per_hour():
    cfg = GuardsConfig.model_validate({"velocity": {"max_size_change": 4}})
    history = (scaled(NOW, 2), scaled(NOW + 600, 1))
    two = at(6, policy(action(ActionType.SCALE_UP, delta=2)))
    held = g.velocity_guard(two, ctx(config=cfg, history=history, now=NOW + 900))
    assert held.verdict is GuardVerdict.DELAY
    assert "passes" not in held.reason
    assert "limit 4" in held.reason
    assert held.until == NOW + 3600  # when the oldest change leaves the window
    one = at(6, policy(action(ActionType.SCALE_UP, delta=1)))
    kw = {"config": cfg, "history": history}
    assert verdict(g.velocity_guard, one, now=NOW + 900, **kw) is GuardVerdict.ALLOW
    assert verdict(g.velocity_guard, two, now=NOW + 3600, **kw) is GuardVerdict.ALLOW
    assert verdict(g.velocity_guard, RESTART, now=NOW + 900, **kw) is GuardVerdict.ALLOW


def test_velocity_bounds_the_number_of_actions_per_hour():
    cfg = GuardsConfig.model_validate({"velocity": {"max_actions": 3}})
    history = tuple(change(NOW + i * 60, ActionType.RESTART_SERVICE) for i in range(3))
    held = g.velocity_guard(RESTART, ctx(config=cfg, history=history, now=NOW + 200))
    assert held.verdict is GuardVerdict.DELAY
    assert "blast radius: 3 actions" in held.reason
    assert verdict(g.velocity_guard, RESTART, config=cfg, history=history[1:], now=NOW + 200) is (
        GuardVerdict.ALLOW
    )


def test_scale_down_only_to_the_highest_recommendation_of_the_window():
    recs = (
        g.Recommendation(at=NOW, target="charter", size=6),
        g.Recommendation(at=NOW + 60, target="charter", size=5),
        g.Recommendation(at=NOW + 120, target="charter", size=4),
    )
    # at 6 members, a scale-down to 5 is held while a 6 was recommended in the last 300 s
    down = at(6, policy(action(ActionType.SCALE_DOWN, delta=1)))
    held = g.stabilization_guard(down, ctx(recommendations=recs, now=NOW + 200))
    assert held.verdict is GuardVerdict.DELAY
    assert "highest size recommended in the last 300 s is 6" in held.reason
    # once the 6 is older than the window, the highest is 5: the scale-down may run
    kw = {"recommendations": recs}
    assert verdict(g.stabilization_guard, down, now=NOW + 301, **kw) is GuardVerdict.ALLOW
    up = at(6, policy(action(ActionType.SCALE_UP, delta=1)))
    assert verdict(g.stabilization_guard, up, now=NOW + 200, **kw) is GuardVerdict.ALLOW


def test_a_deeper_scale_down_is_clamped_to_the_highest_recommendation_not_held():
    recs = (
        g.Recommendation(at=NOW, target="charter", size=5),
        g.Recommendation(at=NOW + 60, target="charter", size=3),
    )
    planned = policy(action(ActionType.SCALE_DOWN, delta=3))
    deep = at(6, planned)  # 6 -> 3
    context = ctx(recommendations=recs, now=NOW + 100)
    clamped = g.stabilized(deep, context)
    assert clamped.actions[0].sets == (KnobSetting("size", 6, 5),)  # what is sent: 5
    assert clamped.actions[0].parameters == planned.actions[0].parameters  # as configured
    assert clamped.id != deep.id  # other size, other idempotency keys
    assert "stabilized: down to 5, not 3" in clamped.rationale
    assert g.stabilization_guard(clamped, context).verdict is GuardVerdict.ALLOW
    # nothing to clamp when the floor is not below the current size: the guard holds it
    from_five = at(5, planned)  # 5 -> 2
    assert g.stabilized(from_five, context) is from_five
    assert g.stabilization_guard(from_five, context).verdict is GuardVerdict.DELAY


def test_a_scale_up_past_the_velocity_budget_goes_as_far_as_the_budget_not_nowhere():
    cfg = GuardsConfig.model_validate({"velocity": {"max_size_change": 6}})
    context = ctx(config=cfg, history=(scaled(NOW, 2),), now=NOW + 140)  # 3 -> 5 spent 2
    wide = at(5, policy(action(ActionType.SCALE_UP, delta=5)))  # 5 -> 10: 2 + 5 > 6
    assert g.velocity_guard(wide, context).verdict is GuardVerdict.DELAY  # as it comes
    fitted = g.fitted(wide, context)
    assert fitted.actions[0].sets == (KnobSetting("size", 5, 9),)  # the 4 left of 6
    assert fitted.id != wide.id  # other size, other idempotency keys
    assert "velocity: up to 9, not 10 (4 of 6 members left)" in fitted.rationale
    assert g.velocity_guard(fitted, context).verdict is GuardVerdict.ALLOW
    # within the budget, or with none left, it is judged as it is
    small = at(5, policy(action(ActionType.SCALE_UP, delta=3)))
    assert g.fitted(small, context) is small
    spent = ctx(config=cfg, history=(scaled(NOW, 6),), now=NOW + 140)
    assert g.fitted(wide, spent) is wide
    assert g.velocity_guard(wide, spent).verdict is GuardVerdict.DELAY
    # an approved one runs as approved (its id is the approval's) or the guard holds it
    approved = replace(wide, requires_approval=True)
    assert g.fitted(approved, context) is approved
    # so does a policy whose other action sets the size too (its sum is what counts)
    two = at(5, policy(action(ActionType.SCALE_UP, delta=1), action(ActionType.SCALE_UP, delta=5)))
    assert g.fitted(two, context) is two
    # and one the action budget holds anyway
    busy = GuardsConfig.model_validate({"velocity": {"max_size_change": 6, "max_actions": 1}})
    assert g.fitted(wide, ctx(config=busy, history=(scaled(NOW, 2),), now=NOW + 140)) is wide


# --- oscillation -------------------------------------------------------------------------


def test_oscillation_up_down_then_up_again_is_blocked():
    history = (scaled(NOW, 1), scaled(NOW + 300, -1))
    held = g.oscillation_guard(UP, ctx(history=history, now=NOW + 600))
    assert held.verdict is GuardVerdict.BLOCK
    assert "scale_up -> scale_down -> scale_up" in held.reason
    # the same sequence spread over more than the window is not an oscillation
    assert verdict(g.oscillation_guard, UP, history=history, now=NOW + 1801) is GuardVerdict.ALLOW
    # going on in the same direction is not either
    assert verdict(g.oscillation_guard, DOWN, history=history, now=NOW + 600) is GuardVerdict.ALLOW


def test_oscillation_of_a_throttle_and_of_a_config_flip_flop_is_seen_from_what_was_executed():
    def executed(at: float, kind: ActionType, previous: dict, current: dict) -> list[g.Change]:
        done = step(
            kind, idempotency_key=f"k{at}", result={"previous": previous, "current": current}
        )
        return g.executed_changes(
            execution(f"e{at}", policy=UP, actions=(done,), started_at=at), at=at
        )

    throttle = ActionType.THROTTLE_REQUESTS
    history = [
        *executed(NOW, throttle, {"throttle_limit": None}, {"throttle_limit": 200.0}),
        *executed(NOW + 60, throttle, {"throttle_limit": 200.0}, {"throttle_limit": None}),
        *executed(NOW + 120, throttle, {"throttle_limit": None}, {"throttle_limit": 150.0}),
    ]
    flip = g.oscillation(history, None, window_s=1800, now=NOW + 120)
    assert flip is not None
    assert [c.knob for c in flip] == ["throttle"] * 3

    config = ActionType.UPDATE_CONFIGURATION
    history = [
        *executed(NOW, config, {"settings": {"batch_size": 16}}, {"settings": {"batch_size": 32}}),
        *executed(
            NOW + 60, config, {"settings": {"batch_size": 32}}, {"settings": {"batch_size": 16}}
        ),
    ]
    now_16 = reading(config={"batch_size": 16})
    again = resolve(policy(action(config, settings={"batch_size": 32})), now_16)
    held = g.oscillation_guard(again, ctx(history=tuple(history), now=NOW + 120))
    assert held.verdict is GuardVerdict.BLOCK
    assert "config:batch_size" in held.reason
    other = resolve(policy(action(config, settings={"batch_size": 64})), now_16)
    assert verdict(g.oscillation_guard, other, history=tuple(history), now=NOW + 120) is (
        GuardVerdict.ALLOW
    )


def test_an_oscillating_target_is_blocked_with_exponential_back_off():
    safety = SafetyEnvelope(GuardsConfig())  # back-off 600 s, doubling
    first = safety.start_backoff("charter", "size flip-flop", now=NOW)
    assert (first.level, first.until) == (1, NOW + 600)
    held = g.oscillation_guard(RESTART, ctx(backoffs=safety.backoffs, now=NOW + 599))
    assert held.verdict is GuardVerdict.BLOCK
    assert held.until == NOW + 600
    assert safety.start_backoff("charter", "again", now=NOW + 10) is first  # still active
    second = safety.start_backoff("charter", "again", now=NOW + 700)
    assert (second.level, second.until) == (2, NOW + 700 + 1200)
    assert safety.oscillations == 2


# --- breakers ----------------------------------------------------------------------------


def test_the_charter_circuit_opens_after_n_failures_then_lets_one_probe_through():
    safety = SafetyEnvelope(GuardsConfig())  # 3 failures, open 60 s
    for i in range(2):
        safety.charter_result(False, now=NOW + i, error="503")
    assert verdict(g.charter_breaker_guard, UP, charter=safety.charter) is GuardVerdict.ALLOW
    safety.charter_result(False, now=NOW + 2, error="503")
    held = g.charter_breaker_guard(UP, ctx(charter=safety.charter, now=NOW + 61))
    assert held.verdict is GuardVerdict.BLOCK
    assert held.until == NOW + 62
    probe = g.charter_breaker_guard(UP, ctx(charter=safety.charter, now=NOW + 62))
    assert probe.verdict is GuardVerdict.ALLOW
    assert "half-open" in probe.reason
    safety.charter_result(False, now=NOW + 62, error="still 503")  # the probe failed: reopen
    assert safety.charter.phase(NOW + 100) == "open"
    assert safety.charter.until == NOW + 122
    safety.charter_result(True, now=NOW + 122)  # a probe that works closes it
    assert safety.charter == g.Circuit()


async def test_charter_call_failures_feed_the_circuit_through_the_wrapper(clock):
    world = MockCharterWorld.create(clock=clock, seed=1)
    safety = SafetyEnvelope(GuardsConfig())
    wrapped = BreakerCharter(
        world.client,
        on_result=lambda ok, err, mutation: safety.charter_result(
            ok, now=clock(), error=err, mutation=mutation
        ),
    )
    world.client.fail_next("scale_committee", times=3)
    for _ in range(3):
        with pytest.raises(CharterUnavailable):
            await wrapped.scale_committee(4, idempotency_key="k")
    assert safety.charter.phase(clock()) == "open"
    assert "injected failure" in (safety.charter.last_error or "")


def test_k_remediations_that_did_not_fix_a_target_need_a_human():
    safety = SafetyEnvelope(GuardsConfig())  # 3 within 3600 s, held until cleared

    safety.note_outcome(outcome(outcome=OutcomeType.INEFFECTIVE), now=NOW)
    safety.note_outcome(outcome(outcome=OutcomeType.SUCCESS), now=NOW + 10)  # resets the count
    for i in range(2):
        assert safety.note_outcome(outcome(outcome=OutcomeType.PARTIAL), now=NOW + 20 + i) is None
    hold = safety.note_outcome(outcome(outcome=OutcomeType.DEGRADATION), now=NOW + 30)
    assert hold is not None
    assert "3 remediations" in hold.reason
    held = g.target_breaker_guard(UP, ctx(needs_human=safety.needs_human, now=NOW + 40))
    assert held.verdict is GuardVerdict.BLOCK
    assert "needs a human" in held.reason
    kw = {"needs_human": safety.needs_human}
    assert verdict(g.target_breaker_guard, UP, now=NOW + 86_400, **kw) is GuardVerdict.BLOCK
    # A configured hold_s is an upper bound: then it expires.
    timed = SafetyEnvelope(GuardsConfig(target_breaker={"hold_s": 3600}))
    for i in range(3):
        timed.note_outcome(outcome(outcome=OutcomeType.INEFFECTIVE), now=NOW + i)
    kw = {"needs_human": timed.needs_human}
    assert verdict(g.target_breaker_guard, UP, now=NOW + 2 + 3600, **kw) is GuardVerdict.ALLOW


# --- approvals ---------------------------------------------------------------------------


def test_an_approval_expires_and_then_is_a_rejection():
    risky = policy(ActionType.BYPASS_VALIDATION, requires_approval=True)
    approvals = {risky.id: NOW}
    assert verdict(g.approval_guard, risky) is GuardVerdict.BLOCK  # not approved: deny
    ok = g.approval_guard(risky, ctx(approvals=approvals, now=NOW + 3599))
    assert ok.verdict is GuardVerdict.ALLOW
    expired = g.approval_guard(risky, ctx(approvals=approvals, now=NOW + 3600))
    assert expired.verdict is GuardVerdict.BLOCK
    assert "default deny" in expired.reason
    assert verdict(g.approval_guard, UP) is GuardVerdict.ALLOW


# --- state validation, persistence -------------------------------------------------------


def test_an_insane_charter_state_is_named():
    state = CommitteeState(
        size=0,
        healthy_members=2,
        target_size=0,
        offered_load=10,
        throughput_ops_per_sec=10,
        failure_rate=1.5,
        p99_latency_s=0.1,
        queue_depth=0,
        throttle_limit=None,
        emergency_override=False,
        validation_bypass=False,
        active_policy=None,
    )
    problems = charter_problems(state)
    assert "committee_size 0 < 1" in problems
    assert any("healthy_members 2" in p for p in problems)
    assert any("failure_rate" in p for p in problems)


async def test_the_guards_memory_survives_a_restart(tmp_path: Path):
    with Store.open(tmp_path / "k.sqlite3") as opened:
        store = AsyncStore(opened, threaded=False)
        safety = SafetyEnvelope(GuardsConfig(), store=store)
        safety.record_changes([scaled(NOW, 2)], now=NOW)
        safety.start_backoff("charter", "flip", now=NOW)
        safety.charter_result(False, now=NOW, error="503")
        safety.approve(policy(id="pol-1", requires_approval=True), now=NOW, keep=5)
        await safety.save(now=NOW)
        again = SafetyEnvelope(GuardsConfig(), store=store)
        await again.load()
    assert again.history == safety.history
    assert again.backoffs == safety.backoffs
    assert again.charter == safety.charter
    assert again.approvals == safety.approvals  # with the approved policy, ready to run
    assert again.approval_times() == {"pol-1": NOW}


# --- through the loop: start-up, panic, breaker, kill switch, approvals -----------------------


def held_by(record: dict) -> set[str]:
    return {d["guard"] for d in record["guard_decisions"] if d["verdict"] != "allow"}


async def test_an_invalid_start_state_runs_but_does_not_act_and_says_why(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    world.client.fail_next("get_committee_state")  # the start-up check cannot read the Charter
    async with build(settings, world=world, clock=clock) as parts:
        daemon = Daemon(parts, clock=clock)
        clock.advance(10)
        first = await parts.orchestrator.run_once()
        ready, checks = await daemon.readiness()
        stats = await daemon.statistics()
        clock.advance(10)
        second = await parts.orchestrator.run_once()  # re-checked: now it passes
    assert first["result"] == "held"
    assert "startup" in held_by(first)
    assert not ready
    assert "Charter state unknown" in checks["startup"]
    assert stats["guards"]["startup"]["ok"] is False
    assert second["result"] == "acted"


async def test_a_config_problem_found_at_start_blocks_every_action(tmp_path, clock):
    settings = settings_for(tmp_path, **{"guards.panic.query": "no_such_query"})
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(10)
        record = await parts.orchestrator.run_once()
    assert "startup" in held_by(record)
    assert world.committee.actions == []


async def test_panic_condition_reverts_recent_policies_and_freezes(tmp_path, clock):
    settings = settings_for(
        tmp_path,
        **{"guards.panic.query": "unhealthy_members", "guards.panic.threshold": 0},
    )
    world = MockCharterWorld.create(clock=clock, seed=3, fault="load_spike")
    with structlog.testing.capture_logs() as logs:
        async with build(settings, world=world, clock=clock) as parts:
            records = []
            for _ in range(3):
                clock.advance(10)
                records.append(await parts.orchestrator.run_once())
            assert any(r["result"] == "acted" for r in records)
            grown = world.committee.state().target_size
            assert grown > 3
            world.committee.inject("member_crash", 0.5, 0, clock())
            clock.advance(10)
            panic = await parts.orchestrator.run_once()
            clock.advance(10)
            after = await parts.orchestrator.run_once()
            reverts = parts.metrics.registry.get_sample_value("mapek_panic_reverts_total")
            freeze = parts.orchestrator.envelope.freeze
    assert panic["panic"] is not None
    assert panic["panic"]["reverted"]
    assert world.committee.state().target_size == 3  # back to the last known-good size
    assert freeze is not None
    assert freeze.source == "panic"
    assert freeze.until == clock.now - 10 + 300  # a first panic freezes briefly
    assert "freeze" in held_by(after)
    assert reverts == 1
    assert [e["log_level"] for e in logs if e["event"] == "panic_revert"] == ["error"]


async def test_a_degradation_verdict_triggers_the_panic_revert(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, fault="load_spike")
    async with build(settings, world=world, clock=clock) as parts:
        orch = parts.orchestrator
        clock.advance(10)
        record = await orch.run_once()
        assert record["result"] == "acted"
        acted = orch.executor.get_execution_history()[0]
        real_verify = orch.executor.verify_due

        def degraded(observation, *, now):
            real_verify(observation, now=now)
            return [
                outcome_of(
                    acted,
                    outcome=OutcomeType.DEGRADATION,
                    recorded_at=now,
                    value_before=1.0,
                    value_after=1.5,
                )
            ]

        orch.executor.verify_due = degraded
        clock.advance(10)
        panic = await orch.run_once()
    assert panic["panic"]["reverted"] == [acted.id]
    assert world.committee.state().target_size == 3
    assert orch.envelope.freeze is not None
    assert orch.envelope.freeze.source == "panic"


async def test_while_the_charter_circuit_is_open_nothing_is_attempted(tmp_path, clock):
    settings = settings_for(
        tmp_path, **{"guards.charter_breaker.failures": 2, "guards.cooldown.enabled": False}
    )
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        daemon = Daemon(parts, clock=clock)
        world.client.fail_next("restart_committee", times=2)
        clock.advance(10)
        first = await parts.orchestrator.run_once()  # restart fails
        clock.advance(5)
        second = await parts.orchestrator.run_once()  # fails again: the circuit opens
        clock.advance(5)
        third = await parts.orchestrator.run_once()
        ready, checks = await daemon.readiness()
        clock.advance(60)
        probe = await parts.orchestrator.run_once()  # half-open: one probe, it works
    assert first["execution"]["status"] == second["execution"]["status"] == "failed"
    assert third["execution"] is None
    assert "charter_breaker" in held_by(third)
    assert not ready
    assert checks["charter_circuit"].startswith("open until")
    assert probe["result"] == "acted"
    assert probe["execution"]["status"] == "completed"
    assert parts.orchestrator.envelope.charter.state == "closed"


async def test_the_kill_switch_is_shown_in_readiness_and_stats(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        daemon = Daemon(parts, clock=clock)
        await daemon.freeze("incident 42", None, caller="alice")
        clock.advance(10)
        record = await parts.orchestrator.run_once()
        ready, checks = await daemon.readiness()
        stats = await daemon.statistics()
    assert record["execution"] is None
    assert "freeze" in held_by(record)
    assert not ready
    assert "incident 42" in checks["frozen"]
    assert "until lifted" in checks["frozen"]
    assert stats["guards"]["freeze"]["reason"] == "incident 42"
    assert stats["guards"]["freeze"]["until"] is None
    assert world.committee.actions == []


async def test_stats_show_each_guards_state(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        daemon = Daemon(parts, clock=clock)
        clock.advance(10)
        await parts.orchestrator.run_once()
        guards = (await daemon.statistics())["guards"]
    assert guards["cooldowns"][0]["action_type"] == "restart_service"
    assert guards["velocity"]["actions"] == 1
    assert guards["velocity"]["max_actions"] == 12
    assert guards["charter_circuit"]["phase"] == "closed"
    assert set(guards) >= {
        "freeze",
        "freeze_windows",
        "oscillating_targets",
        "needs_human",
        "approvals",
        "stabilization",
        "startup",
        "dry_run",
    }


# --- idempotency against the simulator service ----------------------------------------------


async def _no_sleep(_seconds: float) -> None:
    return None


async def test_the_same_policy_100_times_has_one_effect_on_the_simulator(clock):
    committee = Committee(5, "calm", start=clock())
    server = TestServer(build_sim_app(seed=5, regime="calm", clock=clock, committee=committee))
    await server.start_server()
    client = HttpCharterClient(url=str(server.make_url("")), sleep=_no_sleep)
    await client.connect()
    try:
        p = resolve(policy(action(ActionType.SCALE_UP, delta=2)), committee.state())
        for _ in range(100):  # a fresh executor each time: only the Charter can deduplicate
            executor = Executor(
                charter=client,
                config=ExecutorConfig(),
                actions=DEFAULT_ACTIONS,
                journal=no_journal,
                clock=clock,
            )
            await executor.execute_policy(p)
    finally:
        await client.disconnect()
        await server.close()
    scales = [a for a in committee.actions if a.operation == "scale_committee"]
    assert len(scales) == 100
    assert [a.replayed for a in scales].count(False) == 1
    assert committee.state().target_size == 5


async def test_a_panic_during_an_operator_freeze_reverts_nothing_and_keeps_the_freeze(
    tmp_path, clock
):
    settings = settings_for(
        tmp_path,
        **{"guards.panic.query": "unhealthy_members", "guards.panic.threshold": 0},
    )
    world = MockCharterWorld.create(clock=clock, seed=3, fault="load_spike")
    async with build(settings, world=world, clock=clock) as parts:
        for _ in range(3):
            clock.advance(10)
            await parts.orchestrator.run_once()
        grown = world.committee.state().target_size
        operator = g.Freeze(reason="maintenance", since=clock(), until=None, source="operator")
        parts.orchestrator.envelope.freeze = operator
        world.committee.inject("member_crash", 0.5, 0, clock())
        clock.advance(10)
        record = await parts.orchestrator.run_once()
    assert record["panic"]["skipped"].startswith("frozen (operator)")
    assert world.committee.state().target_size == grown  # nothing mutated during the freeze
    assert parts.orchestrator.envelope.freeze is operator


async def test_lifting_the_config_kill_switch_keeps_an_operator_freeze(tmp_path, clock):
    settings = settings_for(tmp_path, **{"guards.frozen": True})
    async with build(settings, clock=clock) as parts:
        operator = g.Freeze(reason="incident", since=clock(), until=None, source="operator")
        parts.orchestrator.envelope.freeze = operator
        lifted = settings.model_copy(
            update={"guards": settings.guards.model_copy(update={"frozen": False})}
        )
        parts.orchestrator.reconfigure(lifted)
        assert parts.orchestrator.envelope.freeze is operator


@pytest.mark.parametrize(
    "saved",
    [{"backoffs": []}, {"history": [{"nope": 1}]}, {"charter": "open"}, ["not", "a", "dict"]],
)
async def test_an_unreadable_saved_guard_state_starts_fresh_without_a_traceback(tmp_path, saved):
    with Store.open(tmp_path / "k.sqlite3") as store:
        store.set_state("safety", saved)
        state = SafetyEnvelope(GuardsConfig(), store=AsyncStore(store, threaded=False))
        await state.load()
    assert state.history == []
    assert state.backoffs == {}


def test_a_rolled_back_action_counts_as_an_action_but_moves_no_knob():
    moved = {"previous": {"size": 3}, "current": {"size": 4}}
    steps = (
        step(ActionType.SCALE_UP, status=ExecutionStatus.ROLLED_BACK, result=moved),
        step(ActionType.REBALANCE_LOAD, status=ExecutionStatus.FAILED, result=moved),
    )
    undone = execution(policy=UP, status=ExecutionStatus.ROLLED_BACK, actions=steps)
    changes = g.executed_changes(undone, at=NOW)
    assert [(c.action_type, c.knob, c.size_delta) for c in changes] == [
        (ActionType.SCALE_UP, None, 0),
        (ActionType.REBALANCE_LOAD, None, 0),
    ]


def breaker_over(world, safety, clock) -> BreakerCharter:
    return BreakerCharter(
        world.client,
        on_result=lambda ok, err, mutation: safety.charter_result(
            ok, now=clock(), error=err, mutation=mutation
        ),
    )


async def test_failed_writes_open_the_circuit_though_reads_between_them_succeed(clock):
    """A Charter whose reads answer and whose writes fail: each policy reads state first."""
    world = MockCharterWorld.create(clock=clock, seed=1)
    safety = SafetyEnvelope(GuardsConfig())  # opens after 3 failures
    charter = breaker_over(world, safety, clock)
    world.client.fail_next("set_throttle", times=3)
    for _ in range(3):
        await charter.get_committee_state()  # works: must not reset the count
        with pytest.raises(CharterUnavailable):
            await charter.set_throttle(50.0, idempotency_key="k")
    assert safety.charter.phase(clock()) == "open"
    assert safety.charter.failures == 3


async def test_a_refused_request_is_neither_a_failure_nor_a_success(clock):
    world = MockCharterWorld.create(clock=clock, seed=1)
    safety = SafetyEnvelope(GuardsConfig())
    charter = breaker_over(world, safety, clock)
    world.client.fail_next("scale_committee")  # one real failure first
    with pytest.raises(CharterUnavailable):
        await charter.scale_committee(4, idempotency_key="a")
    with pytest.raises(CharterRequestError):
        await charter.scale_committee(10_000, idempotency_key="b")  # out of range: 4xx
    assert safety.charter.failures == 1
    await charter.scale_committee(4, idempotency_key="c")  # a write that works closes it
    assert safety.charter == g.Circuit()


async def test_timeouts_count_by_type_not_by_text(clock):
    world = MockCharterWorld.create(clock=clock, seed=1)
    safety = SafetyEnvelope(GuardsConfig())
    charter = breaker_over(world, safety, clock)
    world.client.fail_next("restart_committee", CharterTimeout("no answer", operation="r"))
    with pytest.raises(CharterTimeout):
        await charter.restart_committee(idempotency_key="k")
    assert safety.charter.failures == 1
    assert (safety.charter.last_error or "").startswith("timeout")

    class Hanging:
        async def rebalance_load(self, *, idempotency_key: str):
            await asyncio.Event().wait()

    hanging = BreakerCharter(Hanging(), on_result=charter._on_result)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):  # the executor's per-action bound
            await hanging.rebalance_load(idempotency_key="k2")
    assert safety.charter.failures == 2
