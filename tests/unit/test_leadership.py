"""The leader lease as this replica sees it (loop/leadership.py), on a fake shared store.

The fake keeps one lease row with the semantics PostgresStore gives it (tested against a
real PostgreSQL in tests/integration/test_store_pg.py); its clock and the replica's
monotonic clock are moved by the test, so lapses are exact, not slept for.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mape_k.config import HAConfig
from mape_k.errors import StoreError
from mape_k.loop.leadership import Leadership
from mape_k.metrics import Metrics
from mape_k.store import Fence, LeaseState


class FakeLeases:
    """One lease row, decided by the fake database's clock `now`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.row: LeaseState | None = None
        self.fence: Fence | None = None
        self.down: str | None = None
        self.released: list[tuple[str, int]] = []

    def set_fence(self, fence: Fence | None) -> None:
        self.fence = fence

    async def lease_acquire(self, holder: str, ttl_s: float) -> LeaseState:
        if self.down is not None:
            raise StoreError(self.down)
        row = self.row
        if row is None or row.expires_at <= self.now:
            epoch = 1 if row is None else row.epoch + 1
            row = LeaseState("mapek", holder, epoch, self.now, self.now, self.now + ttl_s, self.now)
        elif row.holder == holder:
            row = LeaseState(
                "mapek", holder, row.epoch, row.acquired_at, self.now, self.now + ttl_s, self.now
            )
        self.row = LeaseState(
            row.name,
            row.holder,
            row.epoch,
            row.acquired_at,
            row.renewed_at,
            row.expires_at,
            self.now,
        )
        return self.row

    async def lease_release(self, holder: str, epoch: int) -> bool:
        self.released.append((holder, epoch))
        if self.row is not None and (self.row.holder, self.row.epoch) == (holder, epoch):
            row = self.row
            self.row = LeaseState(
                row.name, row.holder, row.epoch, row.acquired_at, row.renewed_at, self.now, self.now
            )
            return True
        return False


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def replica(store: FakeLeases, name: str, clock: Clock, ttl_s: float = 10.0) -> Leadership:
    fake: Any = store  # the fake has the SharedStore methods Leadership calls
    return Leadership(fake, replica_id=name, config=HAConfig(lease_ttl_s=ttl_s), monotonic=clock)


def test_a_single_node_always_leads_with_no_epoch() -> None:
    alone = Leadership(None, replica_id="solo", config=HAConfig())
    assert alone.leading()
    assert alone.epoch() is None
    assert alone.not_leading() is None
    assert not alone.takeover_due()
    assert alone.as_dict()["mode"] == "single"


async def test_one_replica_leads_the_other_follows_and_both_say_who() -> None:
    db, clock = FakeLeases(), Clock()
    a, b = replica(db, "a", clock), replica(db, "b", clock)
    assert db.fence == Fence("b", 0)  # refused until a replica leads
    assert not a.leading()
    assert a.not_leading() == "follower: no lease read yet"
    await a.renew()
    await b.renew()
    assert a.leading()
    assert a.epoch() == 1
    assert not b.leading()
    assert b.epoch() is None
    assert b.not_leading() == "follower: a leads (epoch 1, lease for 10.0 s)"
    assert b.as_dict()["role"] == "follower"
    assert a.takeover_due()
    a.took_over(a.epoch())
    assert not a.takeover_due()  # once per new epoch
    assert not b.takeover_due()


async def test_the_holder_stops_leading_before_the_database_lets_another_take_over() -> None:
    db, clock = FakeLeases(), Clock()
    a, b = replica(db, "a", clock, ttl_s=10.0), replica(db, "b", clock, ttl_s=10.0)
    await a.renew()
    # `a` is paused: no renewal. Its own reckoning ends its lease at send + ttl - margin.
    clock.t += 9.0 - 0.001
    assert a.leading()
    clock.t += 0.002
    assert not a.leading()
    assert a.epoch() is None
    assert a.not_leading() == "follower: this replica's lease (epoch 1) lapsed"
    # The database still holds it for `a` until its own expiry: `b` cannot take it yet.
    db.now += 9.0
    await b.renew()
    assert not b.leading()
    db.now += 1.0  # expired by the database's clock
    await b.renew()
    assert b.leading()
    assert b.epoch() == 2
    assert db.row is not None
    assert db.row.holder == "b"


async def test_a_paused_leader_that_resumes_follows_and_its_fence_is_refused() -> None:
    db, clock = FakeLeases(), Clock()
    a, b = replica(db, "a", clock), replica(db, "b", clock)
    await a.renew()
    assert a.takeover_due()
    a.took_over(a.epoch())
    fence_of_a = db.fence
    assert fence_of_a == Fence("a", 1)
    clock.t += 20.0
    db.now += 20.0
    await b.renew()
    assert b.epoch() == 2
    await a.renew()  # SIGCONT: its renewal finds b's lease
    assert not a.leading()
    assert a.not_leading() == "follower: b leads (epoch 2, lease for 10.0 s)"
    # Its fence went back to epoch 0: the shared store refuses every write it tries.
    assert db.fence == Fence("a", 0)


async def test_regaining_the_lease_takes_over_again() -> None:
    db, clock = FakeLeases(), Clock()
    a, b = replica(db, "a", clock), replica(db, "b", clock)
    await a.renew()
    assert a.takeover_due()
    a.took_over(a.epoch())
    clock.t += 20.0
    db.now += 20.0
    await b.renew()
    assert b.takeover_due()
    await b.release()
    assert db.released == [("b", 2)]
    await a.renew()
    assert a.leading()
    assert a.epoch() == 3
    assert a.takeover_due()  # what b left in the store is restored before a decides


async def test_an_unreachable_database_is_no_lease_and_recovers_without_a_restart() -> None:
    db, clock = FakeLeases(), Clock()
    a = replica(db, "a", clock)
    await a.renew()
    db.down = "cannot reach postgresql://mapek@127.0.0.1:5432/mapek: connection refused"
    clock.t += 4.0
    await a.renew()
    assert a.leading()  # still within its own reckoning: a blip changes nothing
    clock.t += 6.0
    await a.renew()
    assert not a.leading()
    assert a.not_leading() == f"no leader lease: {db.down}"
    db.down = None
    db.now += 10.0
    await a.renew()
    assert a.leading()
    assert a.epoch() == 2
    assert a.takeover_due()


async def test_run_renews_every_third_of_the_ttl_until_cancelled_then_releases() -> None:
    db, clock = FakeLeases(), Clock()
    a = replica(db, "a", clock, ttl_s=1.0)
    calls = 0
    acquire = db.lease_acquire
    renewed = asyncio.Event()

    async def counting(holder: str, ttl_s: float) -> LeaseState:
        nonlocal calls
        calls += 1
        if calls == 3:
            renewed.set()
        return await acquire(holder, ttl_s)

    db.lease_acquire = counting  # type: ignore[method-assign]
    task = asyncio.create_task(a.run())
    await asyncio.wait_for(renewed.wait(), timeout=5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await a.release()
    assert db.released == [("a", 1)]
    assert not a.leading()


async def test_a_follower_tries_again_just_after_the_lease_it_saw_expires() -> None:
    db, clock = FakeLeases(), Clock()
    a, b = replica(db, "a", clock, ttl_s=3.0), replica(db, "b", clock, ttl_s=3.0)
    await a.renew()
    assert a.next_renewal_s() == 1.0  # the leader: every third of the TTL
    db.now += 2.5
    clock.t += 2.5  # a has not renewed (it died): its lease has 0.5 s left
    await b.renew()
    assert b.next_renewal_s() == pytest.approx(0.55)
    clock.t += 0.3
    assert b.next_renewal_s() == pytest.approx(0.25)


@pytest.mark.parametrize("ttl_s", [0.5, 601.0])
def test_the_ttl_is_bounded(ttl_s: float) -> None:
    with pytest.raises(ValueError, match="lease_ttl_s"):
        HAConfig(lease_ttl_s=ttl_s)


async def test_the_leader_gauge_is_read_when_scraped() -> None:
    registry = CollectorRegistry()
    db, clock = FakeLeases(), Clock()
    fake: Any = db
    a = Leadership(
        fake,
        replica_id="a",
        config=HAConfig(lease_ttl_s=10.0),
        metrics=Metrics(registry),
        monotonic=clock,
    )
    assert registry.get_sample_value("mapek_leader") == 0.0
    await a.renew()
    assert registry.get_sample_value("mapek_leader") == 1.0
    assert registry.get_sample_value("mapek_lease_epoch") == 1.0
    clock.t += 10.0  # lapsed by its own reckoning: no renewal needed to read 0
    assert registry.get_sample_value("mapek_leader") == 0.0


async def test_a_new_leader_acts_only_once_it_has_taken_over() -> None:
    db, clock = FakeLeases(), Clock()
    elected: list[str] = []
    a = replica(db, "a", clock)
    a._on_elected = lambda: elected.append("a")  # what run(on_elected=...) sets
    await a.renew()
    assert elected == ["a"]  # an iteration at once, to take over
    assert a.leading()
    assert a.not_leading() == "taking over (epoch 1): restoring what the last leader left"
    a.took_over(a.epoch())
    assert a.not_leading() is None


async def test_a_takeover_for_an_epoch_since_lost_stays_due() -> None:
    db, clock = FakeLeases(), Clock()
    a, b = replica(db, "a", clock), replica(db, "b", clock)
    await a.renew()
    began = a.epoch()  # the restore for epoch 1 starts, and takes long...
    clock.t += 20.0
    db.now += 20.0
    await b.renew()  # ...b leads epoch 2 meanwhile...
    clock.t += 20.0
    db.now += 20.0
    await a.renew()  # ...and a is back, with epoch 3
    a.took_over(began)
    assert a.takeover_due()  # epoch 3 restores what b left


async def test_calls_carry_the_latest_epoch_even_after_the_lease_lapsed() -> None:
    db, clock = FakeLeases(), Clock()
    a = replica(db, "a", clock)
    assert a.call_epoch() == 0
    await a.renew()
    assert a.call_epoch() == 1
    clock.t += 20.0
    assert not a.leading()
    assert a.call_epoch() == 1  # a late call or undo of a stale leader is refused by epoch
    assert Leadership(None, replica_id="solo", config=HAConfig()).call_epoch() is None


async def test_a_restarted_replica_does_not_reuse_its_earlier_runs_epoch() -> None:
    db, clock = FakeLeases(), Clock()
    await replica(db, "a", clock).renew()  # the earlier run (then it crashed)
    db.now += 1.0  # restarted within the TTL, same replica id
    again = replica(db, "a", clock)
    await again.renew()
    assert again.epoch() == 2
    assert db.released == [("a", 1)]


async def test_only_the_epoch_after_its_own_resumes_what_it_kept() -> None:
    db, clock = FakeLeases(), Clock()
    a, b = replica(db, "a", clock), replica(db, "b", clock)
    await a.renew()
    assert not a.resumes_own_epoch()  # its first lease: nothing of its own to resume
    db.down = "down"
    clock.t += 20.0
    await a.renew()
    db.down = None
    db.now += 20.0
    await a.renew()  # nobody led in between: epoch 2 follows its 1
    assert a.epoch() == 2
    assert a.resumes_own_epoch()
    clock.t += 20.0
    db.now += 20.0
    await b.renew()
    clock.t += 20.0
    db.now += 20.0
    await a.renew()  # b led epoch 3 in between
    assert a.epoch() == 4
    assert not a.resumes_own_epoch()
