"""What only the mock has: the metric source, the world factory, injected faults and failures."""

from __future__ import annotations

import pytest

from fakes import FakeClock
from mape_k.errors import CharterUnavailable, PrometheusQueryError
from mape_k.integrations.charter.base import SIGNALS
from mape_k.integrations.charter.mock import MockCharterClient, MockCharterWorld
from mape_k.models import Sample

START = 500.0


async def test_metric_source_returns_each_signal_as_one_charter_sample() -> None:
    clock = FakeClock(START)
    world = MockCharterWorld.create(clock=clock, seed=4)
    clock.now += 10
    for name in SIGNALS:
        samples = await world.metrics.read(name, f"max({name})", timeout_s=1)
        assert samples == [
            Sample(labels={"component": "charter"}, value=samples[0].value, timestamp=START + 10)
        ]
    size = await world.metrics.read("committee_size", "q", timeout_s=1)
    assert size[0].value == 3


async def test_metric_source_refuses_an_unknown_name_naming_it() -> None:
    world = MockCharterWorld.create(clock=FakeClock(START))
    with pytest.raises(PrometheusQueryError, match="bogus") as info:
        await world.metrics.read("bogus", "max(bogus)", timeout_s=1)
    assert info.value.query == "max(bogus)"


async def test_the_world_shares_one_committee_between_client_and_metrics() -> None:
    clock = FakeClock(START)
    world = MockCharterWorld.create(clock=clock, fault="member_crash", fault_magnitude=0.5)
    clock.now += 1
    unhealthy = await world.metrics.read("unhealthy_members", "q", timeout_s=1)
    assert unhealthy[0].value == 1
    await world.client.restart_committee(idempotency_key="r")
    clock.now += 5
    unhealthy = await world.metrics.read("unhealthy_members", "q", timeout_s=1)
    assert unhealthy[0].value == 0
    assert world.client.committee is world.committee is world.metrics.committee


async def test_a_fault_given_at_construction_is_active_until_remediated() -> None:
    clock = FakeClock(START)
    client = MockCharterClient(clock=clock, fault="error_burst")
    clock.now += 3
    state = await client.get_committee_state()
    assert state.failure_rate > 0.05
    assert [f.kind for f in client.committee.active_faults] == ["error_burst"]


async def test_fail_next_makes_the_next_calls_fail_without_touching_the_committee() -> None:
    client = MockCharterClient(clock=FakeClock(START))
    client.fail_next("scale_committee", times=2)
    for _ in range(2):
        with pytest.raises(CharterUnavailable):
            await client.scale_committee(4, idempotency_key="k")
    assert client.committee.actions == []
    result = await client.scale_committee(4, idempotency_key="k")
    assert not result.replayed


async def test_connect_and_disconnect_track_the_connection() -> None:
    client = MockCharterClient(clock=FakeClock(START))
    await client.connect()
    assert client.connected
    await client.disconnect()
    assert not client.connected
