"""Return to baseline (loop/baseline.py): the baseline from the guards' history, the
stabilisation window and its back-off, the hysteresis, and the policy set where it returns."""

from __future__ import annotations

from dataclasses import replace

import pytest

import builders
from mape_k.config import GuardsConfig, PlannerConfig, ReturnToBaselineConfig, VelocityConfig
from mape_k.integrations.charter.base import CommitteeState
from mape_k.loop import actions, baseline
from mape_k.loop.envelope import SafetyEnvelope
from mape_k.loop.guards import Change, GuardContext, oscillation, velocity_guard
from mape_k.models import (
    ActionType,
    GuardVerdict,
    KnobSetting,
    Metric,
    Observation,
    RemediationAction,
    RemediationPolicy,
    Severity,
    Violation,
    ViolationSource,
)

T0 = 1_700_000_000.0
CFG = ReturnToBaselineConfig()


def state(*, size: int = 7, throttle: float | None = None, load: float = 300.0) -> CommitteeState:
    return CommitteeState(
        size=size,
        healthy_members=size,
        target_size=size,
        offered_load=load,
        throughput_ops_per_sec=load,
        failure_rate=0.0,
        p99_latency_s=0.1,
        queue_depth=0.0,
        throttle_limit=throttle,
        emergency_override=False,
        validation_bypass=False,
        active_policy="p1",
    )


def observed(saturation: float, *, at: float, violating: bool = False) -> Observation:
    violations = (
        (
            Violation(
                kind="overload",
                component="charter",
                severity=Severity.CRITICAL,
                source=ViolationSource.RULE,
                timestamp=at,
                value=0.95,
                threshold=0.9,
                query="saturation",
            ),
        )
        if violating
        else ()
    )
    return Observation(
        at=at,
        metrics=(Metric("saturation", "charter", saturation, at),),
        violations=violations,
        queries=(),
    )


def change(
    at: float, knob: str, before: object, after: object, *, returning: bool = False, eid: str = ""
) -> Change:
    kind = {"size": ActionType.SCALE_UP, "throttle": ActionType.THROTTLE_REQUESTS}[knob]
    if knob == "size" and isinstance(before, int) and isinstance(after, int) and after < before:
        kind = ActionType.SCALE_DOWN
    direction = 0
    if knob == "size" and isinstance(before, int) and isinstance(after, int):
        direction = 1 if after > before else -1
    elif knob == "throttle":
        direction = -1 if after is None else 1
    size_delta = abs(after - before) if isinstance(before, int) and isinstance(after, int) else 0
    return Change(
        at=at,
        target="charter",
        action_type=kind,
        execution_id=eid or f"e{at:.0f}",
        knob=knob,
        direction=direction,
        before=before,
        after=after,
        size_delta=size_delta,
        returning=returning,
    )


def propose(
    history: list[Change],
    *,
    now: float,
    saturation: float = 0.2,
    st: CommitteeState | None = None,
    last_violation: float | None = None,
    settling: dict[str, str] | None = None,
    obs: Observation | None = None,
    peaks: baseline.Peaks | None = None,
) -> baseline.Returns:
    return baseline.propose(
        state=st or state(),
        observation=obs or observed(saturation, at=now),
        history=tuple(history),
        last_violation={} if last_violation is None else {"charter": last_violation},
        watching_since=T0,
        settling=settling or {},
        config=CFG,
        velocity=VelocityConfig(),
        now=now,
        peaks=peaks,
    )


# --- the baseline, from the history -------------------------------------------------------


def test_the_baseline_is_where_the_knob_was_before_the_daemons_first_change():
    history = [change(T0 + 100, "size", 3, 5), change(T0 + 200, "size", 5, 7)]
    (excursion,) = baseline.excursions(history).values()
    assert (excursion.knob, excursion.baseline, excursion.current) == ("size", 3, 7)
    assert excursion.since == T0 + 100
    # back where it was: closed
    back = [*history, change(T0 + 900, "size", 7, 3, returning=True)]
    assert baseline.excursions(back) == {}


def test_a_knob_moved_by_someone_else_starts_a_new_excursion_from_there():
    history = [change(T0 + 100, "size", 3, 5), change(T0 + 800, "size", 10, 12)]
    (excursion,) = baseline.excursions(history).values()
    assert (excursion.baseline, excursion.current) == (10, 12)


def test_a_return_whose_opening_was_forgotten_opens_nothing():
    assert baseline.excursions([change(T0, "size", 7, 6, returning=True)]) == {}


def test_every_change_of_an_open_excursion_is_what_pruning_must_keep():
    # 3 -> 5, then 5 -> 7 an hour later: keeping only the opening would leave the
    # excursion at 5 while the knob reads 7 ("moved by someone else": never returned).
    history = [change(T0 + 100, "size", 3, 5), change(T0 + 3700, "size", 5, 7)]
    assert baseline.openings(history) == set(history)
    (excursion,) = baseline.excursions(baseline.openings(history)).values()
    assert (excursion.baseline, excursion.current) == (3, 7)
    closed = [*history, change(T0 + 9000, "size", 7, 3, returning=True)]
    assert baseline.openings(closed) == set()


# --- when ---------------------------------------------------------------------------------


def test_a_cleared_cause_returns_after_the_window_to_what_the_load_needs():
    history = [change(T0 + 100, "size", 3, 7)]
    held = propose(history, now=T0 + 400, last_violation=T0 + 200)
    assert held.proposals == ()
    assert "waits: no violation for 200 s of 300 s" in held.held[0]
    returns = propose(history, now=T0 + 530, last_violation=T0 + 200)
    (proposal,) = returns.proposals
    assert proposal.cause.name == "excess_capacity"
    assert proposal.cause.target == "charter"
    assert (proposal.knob, proposal.value, proposal.baseline) == ("size", 3, 3)
    # saturation 0.2 at 7: ceil(7 * 0.2 / 0.75) = 2, never below the baseline 3
    assert returns.fits == {"charter": 3}


def test_no_return_while_violating_or_settling():
    history = [change(T0 + 100, "size", 3, 7)]
    st = state()
    violating = propose(
        history, now=T0 + 900, st=st, obs=observed(0.95, at=T0 + 900, violating=True)
    )
    assert violating == baseline.Returns()
    settling = propose(history, now=T0 + 900, settling={"charter": "pol-1"})
    assert settling.proposals == ()
    assert "pol-1 is settling" in settling.held[0]


def test_a_restart_after_a_return_is_not_a_reversal():
    history = [
        change(T0 + 100, "size", 3, 7, eid="up"),
        change(T0 + 600, "size", 7, 3, eid="down", returning=True),
        replace(change(T0 + 700, "size", 3, 3, eid="rs"), knob=None, before=None, after=None),
    ]
    assert baseline.premature(history, "charter", within_s=CFG.reversal_s) == 0
    again = [*history, change(T0 + 800, "size", 3, 7, eid="up2")]
    assert baseline.premature(again, "charter", within_s=CFG.reversal_s) == 1


def test_a_premature_return_doubles_the_window_so_flapping_load_gets_none():
    # up, return (premature: the cause came back within reversal_s), up again
    history = [
        change(T0 + 100, "size", 3, 7),
        change(T0 + 500, "size", 7, 3, returning=True),
        change(T0 + 700, "size", 3, 7),
    ]
    assert baseline.premature(history, "charter", within_s=CFG.reversal_s) == 1
    assert baseline.window_s(history, "charter", CFG) == 600
    held = propose(history, now=T0 + 1100, last_violation=T0 + 750)
    assert held.proposals == ()
    assert "of 600 s (window doubled after a premature return)" in held.held[0]
    assert propose(history, now=T0 + 1400, last_violation=T0 + 750).proposals
    # a return in steps counts once, and the window stops growing at max_window_s
    steps = [
        change(T0 + 100, "size", 3, 7),
        change(T0 + 500, "size", 7, 5, returning=True),
        change(T0 + 620, "size", 5, 3, returning=True),
        change(T0 + 700, "size", 3, 7),
    ]
    assert baseline.premature(steps, "charter", within_s=CFG.reversal_s) == 1
    many = [change(T0 + i * 100, "size", 3, 4, returning=i % 2 == 1) for i in range(20)]
    assert baseline.window_s(many, "charter", CFG) == CFG.max_window_s


def test_a_return_the_velocity_guard_could_not_follow_with_a_fix_waits():
    history = [
        change(T0 + i, "throttle", None if i == 0 else 100.0 + i, 101.0 + i) for i in range(11)
    ]
    history.append(change(T0 + 100, "size", 3, 7))
    returns = propose(history, now=T0 + 900, st=state(throttle=111.0))
    assert returns.proposals == ()
    assert any("velocity" in why for why in returns.held)


# --- how far: hysteresis ------------------------------------------------------------------


def test_no_scale_down_when_the_projected_saturation_would_be_too_high():
    history = [change(T0 + 100, "size", 3, 5)]
    # 0.7 at 5 members: the load needs ceil(5 * 0.7 / 0.75) = 5
    returns = propose(history, now=T0 + 900, saturation=0.7, st=state(size=5))
    assert returns.proposals == ()
    assert "stays: the load needs 5 members" in returns.held[0]
    # 0.5 at 5: 4 members would read 0.625, the baseline 3 would read 0.83: to 4, not 3
    (proposal,) = propose(history, now=T0 + 900, saturation=0.5, st=state(size=5)).proposals
    assert proposal.value == 4


def test_a_return_is_sized_for_the_peak_of_its_window_not_for_one_reading():
    # the spike regime: 10 s at 1.6x every 60 s, which the 30 s grid never reads at 5
    # members (0.36) and the watch passes do (0.58): not back to 3, where every spike
    # overloads (0.96), but to 4 (0.72)
    history = [change(T0 + 100, "size", 3, 5)]
    peaks = baseline.Peaks()
    for at, value in ((T0 + 50, 0.95), (T0 + 650, 0.58), (T0 + 880, 0.36)):
        peaks.add(observed(value, at=at))
    sized = propose(history, now=T0 + 900, saturation=0.36, st=state(size=5), peaks=peaks)
    (proposal,) = sized.proposals
    assert proposal.value == 4
    assert sized.fits == {"charter": 3}  # the stabilization's recommendation: this reading's
    # a peak before the knob moved (0.95, at 3 members) or out of the window says nothing
    assert peaks.highest("charter", after=T0 + 100) == 0.58
    (late,) = propose(
        history, now=T0 + 1000, saturation=0.36, st=state(size=5), peaks=peaks
    ).proposals
    assert late.value == 3  # the 0.58 at 650 is out of the 300 s window
    assert peaks.highest("other", after=T0) == float("-inf")


def test_the_throttle_is_lifted_only_when_the_shed_load_fits():
    history = [change(T0 + 100, "throttle", None, 500.0)]
    # offered 1000, admitted 500 at saturation 0.5: admitting all would read 1.0
    busy = propose(history, now=T0 + 900, saturation=0.5, st=state(throttle=500.0, load=1000))
    assert busy.proposals == ()
    assert "would take saturation to 1.00" in busy.held[0]
    # the load fell under the limit: nothing is shed, lifting it changes nothing
    (proposal,) = propose(
        history, now=T0 + 900, saturation=0.4, st=state(throttle=500.0, load=400)
    ).proposals
    assert (proposal.cause.name, proposal.knob, proposal.value) == (
        "throttle_unneeded",
        "throttle",
        None,
    )


def test_the_throttle_goes_first_and_a_knob_moved_outside_stays():
    history = [change(T0 + 100, "size", 3, 7), change(T0 + 110, "throttle", None, 500.0)]
    returns = propose(history, now=T0 + 900, st=state(throttle=500.0, load=300))
    assert [p.knob for p in returns.proposals] == ["throttle"]
    assert any("the throttle is lifted first" in why for why in returns.held)
    moved = propose(history, now=T0 + 900, st=state(size=9, throttle=500.0, load=300))
    assert any("set to 9 outside the daemon" in why for why in moved.held)


def test_disabled_or_degraded_proposes_nothing():
    history = [change(T0 + 100, "size", 3, 7)]
    off = baseline.propose(
        state=state(),
        observation=observed(0.2, at=T0 + 900),
        history=tuple(history),
        last_violation={},
        watching_since=T0,
        settling={},
        config=ReturnToBaselineConfig(enabled=False),
        velocity=VelocityConfig(),
        now=T0 + 900,
    )
    assert off == baseline.Returns()
    assert propose(history, now=T0 + 900, st=None).proposals  # st=None: the default state
    degraded = replace(observed(0.2, at=T0 + 900), degraded_reason="stale")
    nothing = propose(history, now=T0 + 900, obs=degraded)
    assert nothing == baseline.Returns()


# --- the policy, resolved and set where the return goes -------------------------------------


def _policy(proposal: baseline.Proposal, action: RemediationAction) -> RemediationPolicy:
    return builders.policy(action, id="pol-r", cause=proposal.cause, rationale="r")


def test_a_resolved_return_is_set_to_its_proposal_never_below_the_baseline():
    history = [change(T0 + 100, "size", 3, 7)]
    returns = propose(history, now=T0 + 900, saturation=0.1)
    (proposal,) = returns.proposals
    action = RemediationAction(ActionType.SCALE_DOWN, "charter", parameters={"target_value": 0.75})
    resolved = actions.resolve(_policy(proposal, action), state())
    assert actions.final_value(resolved, "size") == 1  # ceil(7 * 0.1 / 0.75)
    fitted = baseline.fit(resolved, returns)
    assert actions.final_value(fitted, "size") == 3
    assert fitted.id == "pol-r-b3"
    assert "returns size to 3" in fitted.rationale
    # any other policy is left as it is
    other = replace(resolved, cause=replace(proposal.cause, name="overload"))
    assert baseline.fit(other, returns) is other


def test_throttle_requests_lift_resolves_to_no_limit_and_the_return_to_the_baseline():
    assert actions.parameter_problem(ActionType.THROTTLE_REQUESTS, {"lift": True}) is None
    assert "lift must be true" in (
        actions.parameter_problem(ActionType.THROTTLE_REQUESTS, {"lift": False}) or ""
    )
    assert "not fraction and lift" in (
        actions.parameter_problem(ActionType.THROTTLE_REQUESTS, {"fraction": 0.5, "lift": True})
        or ""
    )
    history = [change(T0 + 100, "throttle", 800.0, 500.0)]  # an operator's 800 before
    returns = propose(history, now=T0 + 900, saturation=0.3, st=state(throttle=500.0, load=300))
    (proposal,) = returns.proposals
    action = RemediationAction(ActionType.THROTTLE_REQUESTS, "charter", parameters={"lift": True})
    resolved = actions.resolve(_policy(proposal, action), state(throttle=500.0))
    assert resolved.actions[0].sets == (KnobSetting("throttle", 500.0, None),)
    fitted = baseline.fit(resolved, returns)
    assert fitted.actions[0].sets == (KnobSetting("throttle", 500.0, 800.0),)


# --- the guards -----------------------------------------------------------------------------


def test_a_return_is_no_flip_flop_and_gives_back_the_size_budget():
    up = change(T0 + 100, "size", 3, 7)
    ret = change(T0 + 500, "size", 7, 3, returning=True)
    again = change(T0 + 700, "size", 3, 7)
    assert oscillation([up, ret], again, window_s=1800, now=T0 + 700) is None
    plain = replace(ret, returning=False)
    assert oscillation([up, plain], again, window_s=1800, now=T0 + 700) is not None
    policy = builders.policy(
        RemediationAction(ActionType.SCALE_UP, "charter", sets=(KnobSetting("size", 3, 7),)),
        id="pol-up",
        cause=baseline._cause("overload", "charter", 0.95),
    )
    allowed = velocity_guard(policy, GuardContext(now=T0 + 700, history=(up, ret)))
    assert allowed.verdict is GuardVerdict.ALLOW
    held = velocity_guard(policy, GuardContext(now=T0 + 700, history=(up, plain)))
    assert held.verdict is GuardVerdict.DELAY


@pytest.mark.parametrize("name", ["excess_capacity", "throttle_unneeded"])
def test_the_return_causes_have_default_candidates(name):
    assert baseline.is_return(name)
    assert PlannerConfig().remediations[name]
    assert not baseline.is_return("overload")


def test_the_envelope_keeps_the_changes_that_took_the_knob_away_while_it_is_away():
    envelope = SafetyEnvelope(GuardsConfig())
    opening = change(T0, "size", 3, 5)
    later = change(T0 + 10, "size", 5, 7)
    envelope.history = [opening, later]
    envelope.prune(now=T0 + 10 * 3600)
    assert envelope.history == [opening, later]  # from 3, now at 7
    excursion = baseline.excursions(envelope.history)[("charter", "size")]
    assert (excursion.baseline, excursion.current) == (3, 7)
    envelope.history = [opening, change(T0 + 20, "size", 5, 3, returning=True)]
    envelope.prune(now=T0 + 10 * 3600)
    assert envelope.history == []  # back: nothing to keep


def test_capacity_added_for_load_returns_only_once_the_load_has_fallen():
    history = [change(T0 + 100, "size", 3, 5, eid="up")]
    args = {
        "state": state(size=5, load=330.0),
        "observation": observed(0.4, at=T0 + 900),
        "history": tuple(history),
        "last_violation": {},
        "watching_since": T0,
        "settling": {},
        "config": CFG,
        "velocity": VelocityConfig(),
        "now": T0 + 900,
    }
    # a ramp: the load is still where it was when the size was raised
    ramp = baseline.propose(**args, fix_loads={"up": 320.0})
    assert ramp.proposals == ()
    assert "has not fallen below 0.9 of its level at the fix (320)" in ramp.held[0]
    # a spike that ended: the load is back under 0.9 of it
    assert baseline.propose(**args, fix_loads={"up": 500.0}).proposals
    assert baseline.propose(**args).proposals  # no load known for the fix: not held for it


def test_stats_count_the_velocity_budget_as_the_guard_does():
    # 3 -> 7 then back to 3: the guard has the whole size budget again; /stats says so.
    envelope = SafetyEnvelope(GuardsConfig())
    envelope.history = [
        change(T0 + 100, "size", 3, 7, eid="up"),
        change(T0 + 600, "size", 7, 3, eid="down", returning=True),
    ]
    shown = envelope.snapshot(now=T0 + 700)["velocity"]
    assert (shown["actions"], shown["size_change"]) == (2, 0)
