"""The committee model: calm is quiet, each fault trips its rule, its remediation clears it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mape_k.causes import CAUSES
from mape_k.errors import CharterNotFound, CharterRequestError
from mape_k.integrations.charter.base import SIGNALS
from mape_k.sim.committee import Committee, InvalidArgument

START = 1_000.0

# (signal, threshold) of each cause (the one table; test_causes checks the shipped rules)
RULES = {c.name: (c.signal, c.threshold) for c in CAUSES}


def breached(committee: Committee) -> set[str]:
    signals = committee.signals()
    return {kind for kind, (name, limit) in RULES.items() if signals[name] > limit}


def run(committee: Committee, start: float, end: float, step: float = 0.5) -> list[set[str]]:
    seen = []
    t = start
    while t <= end:
        committee.advance(t)
        seen.append(breached(committee))
        t += step
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3, 7, 42])
def test_calm_regime_without_faults_stays_under_every_threshold(seed: int) -> None:
    committee = Committee(seed, "calm", start=START)
    worst: dict[str, float] = {}
    for t in range(int(START), int(START) + 900):
        committee.advance(float(t))
        for name, value in committee.signals().items():
            worst[name] = max(worst.get(name, 0.0), value)
    assert worst["failure_rate"] < 0.01
    assert worst["policy_error_rate"] == 0
    assert worst["saturation"] < 0.8
    assert worst["p99_latency_s"] < 0.25
    assert worst["queue_depth"] < 20
    assert worst["unhealthy_members"] == 0
    assert committee.violations() == []


def test_signals_are_exactly_the_shared_names() -> None:
    assert tuple(Committee(1, "calm", start=START).signals()) == SIGNALS


def test_same_seed_and_calls_give_the_same_run_and_another_seed_differs() -> None:
    def trace(seed: int) -> list[dict[str, float]]:
        committee = Committee(seed, "volatile", start=START)
        out = []
        for t in range(1, 120):
            committee.advance(START + t * 0.7)
            if t == 50:
                committee.inject("load_spike", 0.6, 20, START + t * 0.7)
            out.append(committee.signals())
        return out

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)


def test_advance_in_one_jump_equals_advance_in_many_small_ones() -> None:
    one = Committee(3, "volatile", start=START)
    many = Committee(3, "volatile", start=START)
    one.advance(START + 30)
    for i in range(1, 301):
        many.advance(START + i * 0.1)
    assert one.signals() == pytest.approx(many.signals())


def test_a_huge_clock_jump_is_skipped_not_simulated_step_by_step() -> None:
    committee = Committee(1, "calm", start=START)
    committee.advance(START + 10 * 365 * 86400)
    assert committee.now == pytest.approx(START + 10 * 365 * 86400, abs=0.11)


def test_spike_regime_overloads_periodically() -> None:
    committee = Committee(1, "spike", start=START)
    seen = run(committee, START, START + 120)
    assert any("overload" in s for s in seen)
    assert any(not s for s in seen)


def test_volatile_regime_moves_the_offered_load_much_more_than_calm() -> None:
    def spread(regime: str) -> float:
        committee = Committee(9, regime, start=START)
        loads = []
        for t in range(600):
            committee.advance(START + t)
            loads.append(committee.signals()["offered_load"])
        return max(loads) - min(loads)

    assert spread("volatile") > 3 * spread("calm")


Fix = Callable[[Committee, float], object]

FAULTS: list[tuple[str, str, Fix]] = [
    ("error_burst", "high_failure_rate", lambda c, now: c.restart(now=now)),
    ("member_crash", "members_unhealthy", lambda c, now: c.restart(now=now)),
    ("member_crash", "members_unhealthy", lambda c, now: c.restart(now=now, scope="unhealthy")),
    ("load_spike", "overload", lambda c, now: c.scale(8, now=now)),
    ("load_spike", "overload", lambda c, now: c.set_throttle(200.0, now=now)),
    ("latency_degradation", "high_latency", lambda c, now: c.rebalance(now=now)),
    ("bad_policy", "policy_regression", lambda c, now: c.apply_policy("last_known_good", now=now)),
]


@pytest.mark.parametrize(("kind", "rule", "fix"), FAULTS, ids=[f"{k}-{r}" for k, r, _ in FAULTS])
@pytest.mark.parametrize("magnitude", [0.5, 1.0])
def test_each_fault_trips_its_rule_within_3s_and_its_remediation_clears_all_within_10s(
    kind: str, rule: str, fix: Fix, magnitude: float
) -> None:
    committee = Committee(7, "calm", start=START)
    committee.advance(START + 60)
    assert breached(committee) == set()
    committee.inject(kind, magnitude, 0, START + 60)
    seen = run(committee, START + 60.5, START + 63)
    assert any(rule in s for s in seen), f"{rule} never tripped: {committee.signals()}"
    # the fault persists until remediated
    committee.advance(START + 90)
    assert rule in breached(committee)
    fix(committee, START + 90)
    committee.advance(START + 100)
    assert breached(committee) == set(), committee.signals()
    assert run(committee, START + 100, START + 160) == [set()] * 121


def test_a_fault_with_a_duration_ends_by_itself() -> None:
    committee = Committee(7, "calm", start=START)
    committee.inject("error_burst", 0.8, 5, START)
    committee.advance(START + 4)
    assert [f.kind for f in committee.active_faults] == ["error_burst"]
    committee.advance(START + 15)
    assert committee.active_faults == []
    assert breached(committee) == set()


def test_a_timed_bad_policy_is_rolled_back_when_it_ends() -> None:
    committee = Committee(7, "calm", start=START)
    committee.inject("bad_policy", 0.5, 5, START)
    assert committee.state().active_policy == "bad-v4"
    committee.advance(START + 6)
    assert committee.state().active_policy == "baseline-v1"


def test_clear_faults_ends_every_fault_and_brings_crashed_members_back() -> None:
    committee = Committee(7, "calm", start=START)
    committee.inject("member_crash", 1.0, 0, START)
    committee.inject("bad_policy", 1.0, 0, START)
    committee.advance(START + 1)
    assert committee.state().healthy_members == 1
    assert len(committee.clear_faults()) == 2
    committee.advance(START + 10)
    assert committee.active_faults == []
    assert committee.state().healthy_members == 3
    assert committee.state().active_policy == "baseline-v1"
    assert breached(committee) == set()


@pytest.mark.parametrize(
    ("kind", "magnitude", "duration", "field"),
    [
        ("meteor", 0.5, 0, "kind"),
        ("error_burst", 0.0, 0, "magnitude"),
        ("error_burst", 1.5, 0, "magnitude"),
        ("error_burst", 0.5, -1, "duration_s"),
    ],
)
def test_inject_refuses_bad_arguments_naming_the_field(
    kind: str, magnitude: float, duration: float, field: str
) -> None:
    committee = Committee(7, "calm", start=START)
    with pytest.raises(InvalidArgument) as info:
        committee.inject(kind, magnitude, duration, START)
    assert info.value.field == field
    assert info.value.status == 400
    assert committee.active_faults == []


def test_scale_takes_effect_after_the_delay_and_reports_the_previous_size() -> None:
    committee = Committee(7, "calm", start=START, scale_delay_s=5)
    result = committee.scale(5, key="k1", now=START)
    assert result.previous == {"size": 3}
    assert result.current == {"size": 5, "effective_at": START + 5}
    committee.advance(START + 4.8)
    assert (committee.state().size, committee.state().target_size) == (3, 5)
    committee.advance(START + 5.1)
    assert (committee.state().size, committee.state().healthy_members) == (5, 5)
    assert committee.counters.scale_operations == 1


def test_scaling_down_removes_crashed_members_first() -> None:
    committee = Committee(7, "calm", start=START)
    committee.inject("member_crash", 0.5, 0, START)
    committee.scale(2, now=START)
    committee.advance(START + 6)
    assert (committee.state().size, committee.state().healthy_members) == (2, 2)
    assert committee.active_faults == []


@pytest.mark.parametrize("size", [0, -1, 51])
def test_invalid_size_is_a_request_error_with_no_effect(size: int) -> None:
    committee = Committee(7, "calm", start=START)
    with pytest.raises(CharterRequestError):
        committee.scale(size, key="bad", now=START)
    assert committee.state().target_size == 3
    assert committee.actions[-1].error is not None


def test_restart_makes_members_unavailable_then_all_come_back_healthy() -> None:
    committee = Committee(7, "calm", start=START, restart_s=3)
    committee.inject("error_burst", 0.7, 0, START)
    committee.inject("member_crash", 0.5, 0, START)
    committee.advance(START + 5)
    result = committee.restart(now=START + 5)
    assert result.current == {"available_at": pytest.approx(START + 8)}
    committee.advance(START + 6)
    assert committee.state().healthy_members == 0
    assert committee.active_faults == []
    committee.advance(START + 8.1)
    assert committee.state().healthy_members == 3
    assert committee.counters.restarts == 1


def test_an_unhealthy_only_restart_brings_the_crashed_member_back_without_an_outage() -> None:
    committee = Committee(7, "calm", start=START, restart_s=3)
    committee.inject("member_crash", 0.5, 0, START)
    committee.advance(START + 5)
    assert committee.state().healthy_members == 2
    result = committee.restart(key="u1", now=START + 5, scope="unhealthy")
    assert result.current == {
        "scope": "unhealthy",
        "restarted_members": 1,
        "available_at": pytest.approx(START + 8),
    }
    assert committee.active_faults == []
    during = []
    for step in range(1, 30):
        committee.advance(START + 5 + step * 0.1)
        during.append(committee.state())
    assert min(s.healthy_members for s in during) == 2  # the healthy two never went down
    assert min(s.throughput_ops_per_sec for s in during) > 100
    assert max(s.failure_rate for s in during) < 0.01
    committee.advance(START + 8.1)
    assert committee.state().healthy_members == 3
    assert committee.counters.restarts == 1
    assert committee.actions[-1].arguments == {"scope": "unhealthy"}


def test_a_rolling_restart_takes_one_member_at_a_time_and_clears_a_burst_as_it_goes() -> None:
    committee = Committee(7, "calm", start=START, restart_s=3)
    committee.inject("error_burst", 1.0, 0, START)
    committee.inject("member_crash", 0.5, 0, START)
    committee.advance(START + 5)
    burst = committee.state().failure_rate
    result = committee.restart(key="r1", now=START + 5, scope="rolling")
    assert result.current == {
        "scope": "rolling",
        "restarted_members": 3,
        "available_at": pytest.approx(START + 14),  # 3 members x 3 s
    }
    assert [f.kind for f in committee.active_faults] == ["error_burst"]  # the crash: at once
    during = []
    for step in range(1, 90):
        committee.advance(START + 5 + step * 0.1)
        during.append(committee.state())
    assert min(s.healthy_members for s in during) == 2  # never more than one down
    assert max(s.healthy_members for s in during) == 2
    assert during[-1].failure_rate < burst  # the restarted members are clean
    committee.advance(START + 14.1)
    assert committee.state().healthy_members == 3
    assert committee.active_faults == []  # gone when the last member is back
    assert committee.counters.restarts == 1
    assert committee.actions[-1].arguments == {"scope": "rolling"}


def test_an_unhealthy_only_restart_leaves_an_error_burst_and_the_queue() -> None:
    committee = Committee(7, "calm", start=START)
    committee.inject("error_burst", 0.7, 0, START)
    committee.inject("member_crash", 1.0, 0, START)  # two of three crash: a queue builds
    committee.advance(START + 20)
    queue = committee.state().queue_depth
    assert queue > 0
    committee.restart(now=START + 20, scope="unhealthy")
    assert [f.kind for f in committee.active_faults] == ["error_burst"]
    assert committee.state().queue_depth == queue


def test_an_unhealthy_only_restart_with_every_member_healthy_changes_nothing() -> None:
    committee = Committee(7, "calm", start=START)
    twin = Committee(7, "calm", start=START)
    committee.advance(START + 10)
    result = committee.restart(key="u0", now=START + 10, scope="unhealthy")
    assert result.current == {
        "scope": "unhealthy",
        "restarted_members": 0,
        "available_at": pytest.approx(START + 10),
    }
    assert committee.counters.restarts == 0
    committee.advance(START + 20)
    twin.advance(START + 20)
    assert committee.state() == twin.state()
    assert committee.signals() == twin.signals()


def test_a_replayed_unhealthy_only_restart_does_not_restart_again() -> None:
    committee = Committee(7, "calm", start=START, restart_s=3)
    committee.inject("member_crash", 0.5, 0, START)
    first = committee.restart(key="u", now=START + 5, scope="unhealthy")
    committee.inject("member_crash", 0.5, 0, START + 10)
    again = committee.restart(key="u", now=START + 10, scope="unhealthy")
    assert again.replayed
    assert again.current == first.current
    assert committee.counters.restarts == 1
    assert committee.state().healthy_members == 2  # the second crash was not restarted


def test_an_unknown_restart_scope_is_refused_naming_the_field() -> None:
    committee = Committee(7, "calm", start=START)
    committee.inject("member_crash", 0.5, 0, START)
    with pytest.raises(InvalidArgument) as info:
        committee.restart(key="bad", now=START + 1, scope="crashed")
    assert info.value.field == "scope"
    assert info.value.status == 400
    assert committee.counters.restarts == 0
    assert committee.actions[-1].error is not None
    assert committee.state().healthy_members == 2


def test_throttle_cuts_admitted_load_and_throughput_and_can_be_lifted() -> None:
    committee = Committee(7, "calm", start=START)
    committee.advance(START + 10)
    before = committee.signals()["throughput_ops_per_sec"]
    result = committee.set_throttle(100.0, now=START + 10)
    assert result.previous == {"throttle_limit": None}
    committee.advance(START + 20)
    assert committee.signals()["throughput_ops_per_sec"] == pytest.approx(100.0, rel=0.05)
    assert before > 150
    lifted = committee.set_throttle(None, now=START + 20)
    assert lifted.previous == {"throttle_limit": 100.0}
    committee.advance(START + 30)
    assert committee.signals()["throughput_ops_per_sec"] > 150


@pytest.mark.parametrize("limit", [0.0, -5.0])
def test_throttle_limit_must_be_positive(limit: float) -> None:
    with pytest.raises(InvalidArgument):
        Committee(7, "calm", start=START).set_throttle(limit, now=START)


@pytest.mark.parametrize("switch", ["set_emergency_override", "set_validation_bypass"])
def test_override_and_bypass_trade_failure_risk_for_capacity(switch: str) -> None:
    committee = Committee(7, "calm", start=START)
    committee.advance(START + 10)
    before = committee.signals()
    result = getattr(committee, switch)(True, now=START + 10)
    assert next(iter(result.previous.values())) is False
    committee.advance(START + 20)
    after = committee.signals()
    assert after["saturation"] < before["saturation"] * 0.85
    assert after["failure_rate"] > before["failure_rate"] + 0.005
    assert after["failure_rate"] < 0.05


def test_bad_policy_is_rolled_back_to_the_previous_one() -> None:
    committee = Committee(7, "calm", start=START)
    committee.inject("bad_policy", 0.5, 0, START)
    result = committee.rollback_policy("bad-v4", key="rb", now=START + 1)
    assert result.previous == {"active_policy": "bad-v4"}
    assert result.current == {"active_policy": "baseline-v1"}
    committee.advance(START + 2)
    assert committee.active_faults == []


def test_last_known_good_is_the_known_good_policy_active_most_recently() -> None:
    committee = Committee(7, "calm", start=START)
    committee.apply_policy("strict-v2", now=START)
    committee.apply_policy("experimental-v3", now=START)
    result = committee.apply_policy("last_known_good", now=START)
    assert result.previous == {"active_policy": "experimental-v3"}
    assert result.current == {"active_policy": "strict-v2"}


def test_rolling_back_a_policy_that_is_not_active_is_refused() -> None:
    committee = Committee(7, "calm", start=START)
    with pytest.raises(CharterRequestError) as info:
        committee.rollback_policy("strict-v2", now=START)
    assert info.value.status == 409


def test_rolling_back_with_no_earlier_policy_is_refused() -> None:
    with pytest.raises(CharterRequestError) as info:
        Committee(7, "calm", start=START).rollback_policy("baseline-v1", now=START)
    assert info.value.status == 409


@pytest.mark.parametrize("operation", ["apply_policy", "rollback_policy"])
def test_unknown_policy_is_not_found(operation: str) -> None:
    with pytest.raises(CharterNotFound):
        getattr(Committee(7, "calm", start=START), operation)("nope", now=START)


def test_validate_reports_known_good_as_valid_and_others_with_reasons() -> None:
    committee = Committee(7, "calm", start=START)
    assert committee.validate_policy("baseline-v1").valid
    bad = committee.validate_policy("experimental-v3")
    assert not bad.valid
    assert bad.errors


def test_the_same_idempotency_key_has_one_effect_and_returns_the_first_result() -> None:
    committee = Committee(7, "calm", start=START)
    first = committee.scale(4, key="same", now=START)
    again = committee.scale(6, key="same", now=START + 1)
    assert again.replayed
    assert (again.previous, again.current) == (first.previous, first.current)
    assert committee.state().target_size == 4
    assert committee.counters.scale_operations == 1
    assert [a.replayed for a in committee.actions] == [False, True]


def test_calls_without_a_key_are_not_deduplicated() -> None:
    committee = Committee(7, "calm", start=START)
    committee.restart(now=START)
    committee.restart(now=START)
    assert committee.counters.restarts == 2


def test_the_idempotency_table_forgets_the_least_recently_used_key() -> None:
    committee = Committee(7, "calm", start=START, max_idempotency_keys=2)
    committee.restart(key="a", now=START)
    committee.restart(key="b", now=START)
    committee.restart(key="a", now=START)  # touches a
    committee.restart(key="c", now=START)  # evicts b
    assert committee.restart(key="a", now=START).replayed
    assert not committee.restart(key="b", now=START).replayed
    assert committee.counters.restarts == 4


def test_update_configuration_returns_previous_values_and_refuses_unknown_settings() -> None:
    committee = Committee(7, "calm", start=START)
    result = committee.update_configuration({"max_queue": 200}, now=START)
    assert result.previous == {"settings": {"max_queue": 500}}
    assert committee.state().config["max_queue"] == 200
    with pytest.raises(InvalidArgument) as info:
        committee.update_configuration({"warp_drive": True}, now=START)
    assert info.value.field == "settings.warp_drive"
    with pytest.raises(InvalidArgument):
        committee.update_configuration({"cache_enabled": "yes"}, now=START)
    with pytest.raises(InvalidArgument):
        committee.update_configuration({"max_queue": 2.5}, now=START)


def test_violations_are_recorded_once_per_rising_edge() -> None:
    committee = Committee(7, "calm", start=START)
    committee.inject("error_burst", 0.8, 10, START)
    committee.advance(START + 9)
    kinds = [v.kind for v in committee.violations()]
    assert kinds == ["high_failure_rate"]
    committee.advance(START + 30)
    committee.inject("error_burst", 0.8, 10, START + 30)
    committee.advance(START + 35)
    assert [v.kind for v in committee.violations()] == ["high_failure_rate"] * 2
    assert committee.counters.violations == 2


def test_the_latency_histogram_is_cumulative_and_counts_served_validations() -> None:
    committee = Committee(7, "calm", start=START)
    committee.advance(START + 10)
    buckets = committee.counters.latency_buckets
    assert buckets == sorted(buckets)
    assert buckets[-1] <= committee.counters.latency_count
    assert committee.counters.latency_count == pytest.approx(1800, rel=0.1)
