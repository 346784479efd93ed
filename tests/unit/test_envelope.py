"""The safety envelope owns the switches (freeze, kill switch, dry-run, stopping) and the
approvals: one copy, one TTL (guards.approval_ttl_s), persisted with the policy they let run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from structlog.testing import capture_logs

import builders
from builders import NOW, action, outcome, policy
from builders import settings as settings_for
from fakes import FakeClock
from mape_k.app import build
from mape_k.config import GuardsConfig
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop import guards
from mape_k.loop.envelope import STATE_KEY, SafetyEnvelope, config_problems
from mape_k.loop.guards import Freeze
from mape_k.models import ActionType, ExecutionStatus, OutcomeType
from mape_k.store import Store
from mape_k.storeio import AsyncStore


def risky(id: str = "pol-1", *, created_at: float = NOW):  # noqa: A002
    return policy(
        action(ActionType.BYPASS_VALIDATION), id=id, requires_approval=True, created_at=created_at
    )


async def test_hold_names_what_stops_a_running_policy():
    clock = FakeClock(NOW)
    envelope = SafetyEnvelope(GuardsConfig(), clock=clock)
    assert envelope.hold() is None
    envelope.dry_run = True
    assert envelope.hold() == "dry-run mode was switched on"
    envelope.dry_run = False
    await envelope.set_freeze(
        Freeze(reason="incident", since=NOW, until=NOW + 60, source="op"), now=NOW
    )
    assert envelope.hold() == "frozen (op): incident"
    clock.advance(61)
    assert envelope.hold() is None  # a timed freeze that expired holds nothing
    envelope.stopping = True
    assert envelope.hold() == "the daemon is stopping"


async def test_a_reload_owns_only_its_own_switches():
    envelope = SafetyEnvelope(GuardsConfig(), clock=FakeClock(NOW), dry_run=False)
    operator = Freeze(reason="incident", since=NOW, until=None, source="operator alice")
    await envelope.set_freeze(operator, now=NOW)
    envelope.reconfigure(GuardsConfig(frozen=True), dry_run=False)
    assert envelope.freeze is operator  # the operator's freeze stays
    await envelope.set_freeze(None, now=NOW)
    envelope.reconfigure(GuardsConfig(frozen=True), dry_run=False)
    assert envelope.freeze is not None
    assert envelope.freeze.source == "config"
    envelope.reconfigure(GuardsConfig(), dry_run=False)
    assert envelope.freeze is None
    # dry-run set over the API stays until the configured value changes
    envelope.dry_run = True
    envelope.reconfigure(GuardsConfig(), dry_run=False)
    assert envelope.dry_run
    envelope.reconfigure(GuardsConfig(), dry_run=True)
    envelope.reconfigure(GuardsConfig(), dry_run=False)
    assert not envelope.dry_run


def test_an_approval_is_found_by_what_it_does_not_by_its_id():
    envelope = SafetyEnvelope(GuardsConfig())
    approved = risky("pol-1")
    envelope.approve(approved, now=NOW, keep=10)
    again = replace(approved, id="pol-2", created_at=NOW + 30)  # the next iteration's proposal
    assert envelope.approved_for(again) is approved  # the id the operator saw
    other = replace(again, actions=(action(ActionType.ACTIVATE_EMERGENCY_OVERRIDE),))
    assert envelope.approved_for(other) is None
    assert envelope.revoke("pol-1") is approved
    assert envelope.approved_for(again) is None


def test_an_approval_expires_at_the_one_ttl_and_the_bound_drops_the_oldest():
    envelope = SafetyEnvelope(GuardsConfig(approval_ttl_s=60))
    envelope.approve(risky("a"), now=NOW, keep=2)
    envelope.approve(risky("b"), now=NOW + 30, keep=2)
    envelope.approve(risky("c"), now=NOW + 31, keep=2)
    assert list(envelope.approvals) == ["b", "c"]
    assert envelope.expire_approvals(NOW + 89) == []
    assert [p.id for p in envelope.expire_approvals(NOW + 90)] == ["b"]
    assert list(envelope.approvals) == ["c"]


async def test_an_approval_survives_a_restart_with_its_policy(tmp_path: Path):
    with Store.open(tmp_path / "k.sqlite3") as opened:
        store = AsyncStore(opened, threaded=False)
        envelope = SafetyEnvelope(GuardsConfig(), store=store)
        envelope.approve(risky(), now=NOW, keep=10)
        await envelope.save(now=NOW)
        again = SafetyEnvelope(GuardsConfig(), store=store)
        await again.load()
        assert again.approved_for(risky("pol-9")) == risky()
        # A state saved by an older version (approval times without policies) loads,
        # without approvals: there is nothing they could run.
        saved = opened.get_state(STATE_KEY)
        opened.set_state(STATE_KEY, {**saved, "approvals": {"pol-1": NOW}}, at=NOW)
        old = SafetyEnvelope(GuardsConfig(), store=store)
        await old.load()
    assert old.approvals == {}
    assert old.history == again.history


RISKY = {  # the only candidate for the fault's cause needs an operator's approval
    "planner.remediations.high_failure_rate": [[{"type": "bypass_validation"}]],
    "planner.min_score": -1.0,
}


async def test_an_approval_given_before_a_restart_runs_after_it_once(tmp_path: Path):
    clock = FakeClock(NOW)
    settings = settings_for(tmp_path, **RISKY)
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(5)
        first = await parts.orchestrator.run_once()
        assert first["result"] == "pending_approval"
        [pending] = parts.orchestrator.planner.pending_approvals()
        assert await parts.orchestrator.approve(pending.id, now=clock()) == pending
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(5)
        ran = await parts.orchestrator.run_once()
        assert ran["result"] == "acted"
        assert ran["choice"]["policy_id"] == pending.id
        assert parts.orchestrator.envelope.approvals == {}  # spent: one approval, one run
        clock.advance(60)
        after = await parts.orchestrator.run_once()
    assert after["choice"]["policy_id"] != pending.id


async def test_an_operator_can_reject_an_approval_not_yet_used(tmp_path: Path):
    clock = FakeClock(NOW)
    settings = settings_for(tmp_path, **{**RISKY, "orchestrator.interval_s": 3600})
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        orchestrator = parts.orchestrator
        clock.advance(5)
        await orchestrator.run_once()
        [pending] = orchestrator.planner.pending_approvals()
        await orchestrator.approve(pending.id, now=clock())
        assert await orchestrator.reject(pending.id, now=clock()) == pending
        assert orchestrator.envelope.approvals == {}
        clock.advance(5)
        record = await orchestrator.run_once()
    assert record["result"] == "pending_approval"  # not run, and not queued again
    assert record["pending_approvals"] == []


def test_a_panic_freeze_starts_short_and_doubles_while_panics_repeat():
    envelope = SafetyEnvelope(GuardsConfig())  # 300 s, at most 3600 s
    panic = GuardsConfig().panic
    at = NOW
    lengths = []
    for _ in range(6):
        lengths.append(envelope.panic_freeze_s(panic, now=at))
        at += 1000
    assert lengths == [300, 600, 1200, 2400, 3600, 3600]
    assert envelope.panic_freeze_s(panic, now=at + 3601) == 300  # quiet for long: noise
    until_lifted = panic.model_copy(update={"freeze_s": None})
    assert envelope.panic_freeze_s(until_lifted, now=at + 4000) is None


def test_a_needs_human_hold_sticks_until_the_target_stays_quiet():
    envelope = SafetyEnvelope(GuardsConfig())  # 3 failures; released after 900 s quiet
    for n in range(3):
        envelope.note_outcome(
            outcome(outcome=OutcomeType.INEFFECTIVE, target="charter"), now=NOW + n
        )
    hold = envelope.needs_human["charter"]
    assert hold.until is None  # no time limit: it does not expire to try again
    envelope.prune(now=NOW + 10 * 86_400)
    assert "charter" in envelope.needs_human
    assert envelope.note_quiet({"charter"}, now=NOW + 100) == []  # still violating
    assert envelope.note_quiet(set(), now=NOW + 200) == []  # quiet from now
    assert envelope.note_quiet({"charter"}, now=NOW + 300) == []  # not for long: again
    assert envelope.note_quiet(set(), now=NOW + 400) == []
    assert envelope.note_quiet(set(), now=NOW + 1299) == []
    assert envelope.note_quiet(set(), now=NOW + 1300) == ["charter"]
    assert envelope.needs_human == {}


USELESS = {  # the only candidate for the fault's cause does not fix it
    "planner.remediations.high_failure_rate": [[{"type": "rebalance_load"}]],
    "planner.min_score": -1.0,
}


async def test_a_target_with_no_good_fix_is_held_until_it_stays_quiet(tmp_path: Path):
    clock = FakeClock(NOW)
    settings = settings_for(tmp_path, **USELESS)
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        records = []
        for _ in range(240):  # two hours on the 30 s grid: past any timed hold
            clock.advance(30)
            records.append(await parts.orchestrator.run_once())
        tried = sum(1 for r in records if r["result"] == "acted")
        held = parts.orchestrator.envelope.needs_human
        assert tried == 3  # three failures, then it stops: no retry when a timer runs out
        assert list(held) == ["charter"]
        assert records[-1]["result"] == "held"
        world.committee.clear_faults()  # someone fixed it
        for _ in range(40):  # 20 min: quiet for longer than clear_after_s (15 min)
            clock.advance(30)
            await parts.orchestrator.run_once()
        assert parts.orchestrator.envelope.needs_human == {}


def test_a_load_query_missing_from_the_monitor_is_said_but_does_not_stop_acting(tmp_path):
    queries = {"failure_rate": "max(westworld_charter_failure_rate)"}
    rules = [{"name": "high_failure_rate", "query": "failure_rate", "threshold": 0.05}]
    settings = settings_for(tmp_path, **{"monitor.queries": queries, "monitor.rules": rules})
    with capture_logs() as logs:
        assert config_problems(settings) == []
    assert [e["load_query"] for e in logs if e["event"] == "load_query_missing"] == ["offered_load"]
    with capture_logs() as logs:
        config_problems(settings_for(tmp_path))
    assert not [e for e in logs if e["event"] == "load_query_missing"]


async def test_the_load_a_fix_ran_at_survives_a_restart_with_its_change(tmp_path: Path):
    # The return to baseline waits for the load to fall below what it was at the fix:
    # after a restart that load must still be known (it was read from memory before).
    up = builders.execution(
        policy=policy(
            action(ActionType.SCALE_UP, delta=2),
            cause=builders.cause("overload", query="saturation", threshold=0.9),
        ),
        started_at=NOW,
        finished_at=NOW + 1,
        baseline=0.95,
        baseline_load=330.0,
    )
    up = replace(
        up,
        actions=tuple(
            replace(
                step,
                status=ExecutionStatus.COMPLETED,
                result={"previous": {"target_size": 3}, "current": {"target_size": 5}},
            )
            for step in up.actions
        ),
    )
    changes = guards.executed_changes(up, at=NOW + 1, load_normalised=("saturation",))
    assert [c.load for c in changes] == [330.0]
    assert [c.load for c in guards.executed_changes(up, at=NOW + 1)] == [None]
    with Store.open(tmp_path / "k.sqlite3") as opened:
        store = AsyncStore(opened, threaded=False)
        envelope = SafetyEnvelope(GuardsConfig(), store=store)
        envelope.record_changes(changes, now=NOW + 1)
        await envelope.save(now=NOW + 1)
        again = SafetyEnvelope(GuardsConfig(), store=store)
        await again.load()
    assert [c.load for c in again.history] == [330.0]
