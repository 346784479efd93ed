"""One contract for both Charter clients: the mock, and the HTTP client against the simulator.

Every test runs twice: `MockCharterClient` over a committee, and `HttpCharterClient` against
the simulator service serving the same kind of committee, in-process on a free port. Where a
result is compared, it is compared with the model itself run on a twin committee.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from fakes import FakeClock
from mape_k.errors import CharterNotFound, CharterRequestError
from mape_k.integrations.charter.base import ActionResult, CharterClient
from mape_k.integrations.charter.http import HttpCharterClient
from mape_k.integrations.charter.mock import MockCharterClient
from mape_k.sim.committee import Committee
from mape_k.sim.service import build_app

START = 2_000_000.0
SEED = 11


@dataclass
class Harness:
    client: CharterClient
    committee: Committee  # the committee behind the client
    twin: Committee  # an identical committee the tests drive directly, for expected values
    clock: FakeClock


async def _no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture(params=["mock", "http"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    clock = FakeClock(START)
    committee = Committee(SEED, "calm", start=clock())
    twin = Committee(SEED, "calm", start=clock())
    if request.param == "mock":
        client = MockCharterClient(committee, clock=clock)
        await client.connect()
        yield Harness(client, committee, twin, clock)
        await client.disconnect()
        return
    server = TestServer(build_app(seed=SEED, regime="calm", clock=clock, committee=committee))
    await server.start_server()
    http = HttpCharterClient(url=str(server.make_url("")), sleep=_no_sleep)
    await http.connect()
    try:
        yield Harness(http, committee, twin, clock)
    finally:
        await http.disconnect()
        await server.close()


def same(result: ActionResult, expected: ActionResult) -> None:
    assert (result.operation, result.idempotency_key, result.replayed) == (
        expected.operation,
        expected.idempotency_key,
        expected.replayed,
    )
    assert result.previous == expected.previous
    assert result.current == expected.current


def test_both_clients_implement_the_protocol() -> None:
    assert isinstance(MockCharterClient(clock=FakeClock(START)), CharterClient)
    assert isinstance(HttpCharterClient(url="http://127.0.0.1:1"), CharterClient)


async def test_ping_answers(harness: Harness) -> None:
    await harness.client.ping()


async def test_get_policies_lists_the_seeded_policies_with_one_active(harness: Harness) -> None:
    policies = await harness.client.get_policies()
    assert policies == harness.twin.policies()
    assert [p.id for p in policies if p.status == "active"] == ["baseline-v1"]


async def test_validate_policy_reports_validity_and_unknown_is_not_found(harness: Harness) -> None:
    assert (await harness.client.validate_policy("baseline-v1")).valid
    invalid = await harness.client.validate_policy("experimental-v3")
    assert invalid == harness.twin.validate_policy("experimental-v3")
    with pytest.raises(CharterNotFound) as info:
        await harness.client.validate_policy("no-such-policy")
    assert info.value.status == 404


async def test_apply_policy_switches_and_reports_the_previous_one(harness: Harness) -> None:
    result = await harness.client.apply_policy("strict-v2", idempotency_key="a1")
    same(result, harness.twin.apply_policy("strict-v2", key="a1", now=harness.clock()))
    assert result.previous == {"active_policy": "baseline-v1"}
    assert (await harness.client.get_committee_state()).active_policy == "strict-v2"


async def test_apply_unknown_policy_is_not_found_and_changes_nothing(harness: Harness) -> None:
    with pytest.raises(CharterNotFound) as info:
        await harness.client.apply_policy("no-such-policy", idempotency_key="a2")
    assert "no-such-policy" in info.value.message
    assert (await harness.client.get_committee_state()).active_policy == "baseline-v1"


async def test_last_known_good_rolls_a_bad_policy_back(harness: Harness) -> None:
    harness.committee.inject("bad_policy", 0.8, 0, harness.clock())
    result = await harness.client.apply_policy("last_known_good", idempotency_key="lkg")
    assert result.previous == {"active_policy": "bad-v4"}
    assert result.current == {"active_policy": "baseline-v1"}
    harness.clock.advance(1)
    assert (await harness.client.get_committee_state()).active_policy == "baseline-v1"
    assert harness.committee.active_faults == []


async def test_rollback_policy_restores_the_previous_policy(harness: Harness) -> None:
    await harness.client.apply_policy("strict-v2", idempotency_key="a3")
    result = await harness.client.rollback_policy("strict-v2", idempotency_key="rb")
    assert (result.previous, result.current) == (
        {"active_policy": "strict-v2"},
        {"active_policy": "baseline-v1"},
    )


async def test_rollback_of_an_inactive_policy_is_refused(harness: Harness) -> None:
    with pytest.raises(CharterRequestError) as info:
        await harness.client.rollback_policy("strict-v2", idempotency_key="rb2")
    assert info.value.status == 409
    with pytest.raises(CharterNotFound):
        await harness.client.rollback_policy("no-such-policy", idempotency_key="rb3")


async def test_committee_state_matches_the_model(harness: Harness) -> None:
    harness.clock.advance(12.3)
    state = await harness.client.get_committee_state()
    harness.twin.advance(harness.clock())
    assert state == harness.twin.state()


async def test_violations_appear_after_a_fault(harness: Harness) -> None:
    assert await harness.client.get_violations() == []
    harness.committee.inject("error_burst", 0.8, 0, harness.clock())
    harness.clock.advance(3)
    violations = await harness.client.get_violations()
    assert [v.kind for v in violations] == ["high_failure_rate"]
    assert violations[0].severity == "critical"
    assert violations[0].timestamp > START


async def test_scale_reports_sizes_and_takes_effect_after_the_delay(harness: Harness) -> None:
    result = await harness.client.scale_committee(5, idempotency_key="s1")
    same(result, harness.twin.scale(5, key="s1", now=harness.clock()))
    state = await harness.client.get_committee_state()
    assert (state.size, state.target_size) == (3, 5)
    harness.clock.advance(6)
    assert (await harness.client.get_committee_state()).size == 5


@pytest.mark.parametrize("size", [0, -3, 51])
async def test_invalid_size_is_a_request_error(harness: Harness, size: int) -> None:
    with pytest.raises(CharterRequestError) as info:
        await harness.client.scale_committee(size, idempotency_key="bad")
    assert not isinstance(info.value, CharterNotFound)
    assert info.value.status == 400
    assert "size" in info.value.message
    assert (await harness.client.get_committee_state()).target_size == 3


async def test_restart_takes_members_down_for_a_while(harness: Harness) -> None:
    result = await harness.client.restart_committee(idempotency_key="r1")
    same(result, harness.twin.restart(key="r1", now=harness.clock()))
    harness.clock.advance(1)
    assert (await harness.client.get_committee_state()).healthy_members == 0
    harness.clock.advance(5)
    assert (await harness.client.get_committee_state()).healthy_members == 3


async def test_an_unhealthy_only_restart_keeps_the_healthy_members_up(harness: Harness) -> None:
    harness.committee.inject("member_crash", 0.5, 0, harness.clock())
    harness.twin.inject("member_crash", 0.5, 0, harness.clock())
    harness.clock.advance(2)
    result = await harness.client.restart_committee(idempotency_key="u1", scope="unhealthy")
    same(result, harness.twin.restart(key="u1", now=harness.clock(), scope="unhealthy"))
    assert result.current["restarted_members"] == 1
    harness.clock.advance(1)
    assert (await harness.client.get_committee_state()).healthy_members == 2
    harness.clock.advance(5)
    assert (await harness.client.get_committee_state()).healthy_members == 3
    assert harness.committee.active_faults == []


async def test_a_rolling_restart_keeps_all_but_one_member_up(harness: Harness) -> None:
    result = await harness.client.restart_committee(idempotency_key="r1", scope="rolling")
    same(result, harness.twin.restart(key="r1", now=harness.clock(), scope="rolling"))
    assert result.current["restarted_members"] == 3
    harness.clock.advance(1)
    assert (await harness.client.get_committee_state()).healthy_members == 2
    harness.clock.advance(4)
    assert (await harness.client.get_committee_state()).healthy_members == 2  # the second
    harness.clock.advance(5)
    assert (await harness.client.get_committee_state()).healthy_members == 3


async def test_an_unhealthy_only_restart_of_a_healthy_committee_changes_nothing(
    harness: Harness,
) -> None:
    result = await harness.client.restart_committee(idempotency_key="u0", scope="unhealthy")
    assert (result.current["scope"], result.current["restarted_members"]) == ("unhealthy", 0)
    assert harness.committee.counters.restarts == 0
    harness.clock.advance(0.5)
    assert (await harness.client.get_committee_state()).healthy_members == 3


async def test_an_unknown_restart_scope_is_a_request_error(harness: Harness) -> None:
    with pytest.raises(CharterRequestError) as info:
        await harness.client.restart_committee(idempotency_key="x", scope="crashed")  # type: ignore[arg-type]
    assert info.value.status == 400
    assert "scope" in info.value.message
    assert harness.committee.counters.restarts == 0


async def test_throttle_sets_and_clears_the_limit(harness: Harness) -> None:
    result = await harness.client.set_throttle(120.5, idempotency_key="t1")
    assert (result.previous, result.current) == (
        {"throttle_limit": None},
        {"throttle_limit": 120.5},
    )
    assert (await harness.client.get_committee_state()).throttle_limit == 120.5
    cleared = await harness.client.set_throttle(None, idempotency_key="t2")
    assert cleared.previous == {"throttle_limit": 120.5}
    assert (await harness.client.get_committee_state()).throttle_limit is None


async def test_throttle_limit_must_be_positive(harness: Harness) -> None:
    with pytest.raises(CharterRequestError) as info:
        await harness.client.set_throttle(0.0, idempotency_key="t3")
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("method", "field", "state_field"),
    [
        ("set_validation_bypass", "validation_bypass", "validation_bypass"),
        ("set_emergency_override", "emergency_override", "emergency_override"),
    ],
)
async def test_risky_switches_report_the_previous_value(
    harness: Harness, method: str, field: str, state_field: str
) -> None:
    result = await getattr(harness.client, method)(True, idempotency_key="sw")
    assert (result.previous, result.current) == ({field: False}, {field: True})
    assert getattr(await harness.client.get_committee_state(), state_field) is True
    off = await getattr(harness.client, method)(False, idempotency_key="sw2")
    assert off.previous == {field: True}


async def test_rebalance_clears_latency_degradation(harness: Harness) -> None:
    fault = harness.committee.inject("latency_degradation", 0.7, 0, harness.clock())
    result = await harness.client.rebalance_load(idempotency_key="rb")
    assert result.current == {"cleared_faults": [fault]}
    assert harness.committee.active_faults == []


async def test_update_configuration_returns_previous_settings(harness: Harness) -> None:
    settings: dict[str, Any] = {"batch_size": 32, "cache_enabled": False}
    result = await harness.client.update_configuration(settings, idempotency_key="c1")
    same(result, harness.twin.update_configuration(settings, key="c1", now=harness.clock()))
    assert result.previous == {"settings": {"batch_size": 16, "cache_enabled": True}}
    assert (await harness.client.get_committee_state()).config["batch_size"] == 32
    with pytest.raises(CharterRequestError):
        await harness.client.update_configuration({"warp": 9}, idempotency_key="c2")


async def test_the_same_key_twice_has_one_effect_and_returns_the_first_result(
    harness: Harness,
) -> None:
    first = await harness.client.scale_committee(4, idempotency_key="same-key")
    harness.clock.advance(1)
    again = await harness.client.scale_committee(7, idempotency_key="same-key")
    assert (first.replayed, again.replayed) == (False, True)
    assert (again.previous, again.current) == (first.previous, first.current)
    assert (await harness.client.get_committee_state()).target_size == 4
    effects = [a for a in harness.committee.actions if not a.replayed]
    assert [(a.operation, a.idempotency_key) for a in effects] == [("scale_committee", "same-key")]
    assert len(harness.committee.actions) == 2


async def test_a_replayed_restart_does_not_restart_again(harness: Harness) -> None:
    await harness.client.restart_committee(idempotency_key="once")
    harness.clock.advance(5)
    replay = await harness.client.restart_committee(idempotency_key="once")
    assert replay.replayed
    assert harness.committee.counters.restarts == 1
    assert (await harness.client.get_committee_state()).healthy_members == 3


async def test_find_action_tells_whether_a_key_arrived_and_applies_nothing(
    harness: Harness,
) -> None:
    assert await harness.client.find_action("never-sent") is None
    made = await harness.client.scale_committee(5, idempotency_key="k-scale")
    found = await harness.client.find_action("k-scale")
    assert found is not None
    assert found.replayed
    assert (found.operation, found.previous, found.current) == (
        "scale_committee",
        made.previous,
        made.current,
    )
    effects = [a for a in harness.committee.actions if not a.replayed]
    assert len(effects) == 1  # the lookups applied and logged nothing
    assert len(harness.committee.actions) == 1
