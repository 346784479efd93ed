"""Change awareness through the assembled daemon (app.build, the mock Charter with a bad
policy): a recorded change's rollback is what the loop runs, a maintenance window holds
every action, and /stats shows both."""

from __future__ import annotations

from pathlib import Path

from builders import settings as settings_for
from fakes import FakeClock
from mape_k.app import Daemon, build, reload_config
from mape_k.loop.changes import from_request

TUESDAY_ALL_DAY = [
    {"name": "patch-tuesday", "targets": ["charter"], "time_intervals": [{"weekdays": ["tuesday"]}]}
]


async def test_a_recent_change_is_rolled_back_first(tmp_path: Path, clock: FakeClock):
    settings = settings_for(tmp_path)
    async with build(settings, clock=clock, fault="bad_policy") as parts:
        assert parts.changes is not None
        assert parts.orchestrator.pipeline.changes is parts.changes
        change = from_request(
            {
                "target": "charter",
                "kind": "deploy",
                "description": "policy bad-v4",
                "at": clock() - 60,
                "rollback": {"type": "apply_policy", "parameters": {"policy_id": "baseline-v1"}},
            },
            now=clock(),
            config=settings.changes,
            actions=settings.planner.actions,
        )
        await parts.changes.record(change)
        clock.advance(5)
        # Inside the change's window every action on the target is one level down — but not
        # the rollback of that change, ranked first: it runs, the configured fix waits.
        record = await parts.orchestrator.run_once()
        [configured] = parts.orchestrator.planner.pending_approvals()
        stats = await Daemon(parts, clock=clock).statistics(limit=1)
    assert record["result"] == "acted"
    assert record["execution"]["status"] == "completed"
    [step] = record["execution"]["actions"]
    assert step["sets"] == [{"knob": "policy", "before": "bad-v4", "after": "baseline-v1"}]
    assert record["choice"]["why"].startswith(
        f"apply_policy on charter: rollback of change {change.id} (deploy 'policy bad-v4' 65 s ago)"
    )
    assert "one level down" not in record["choice"]["why"]
    assert not configured.rationale.startswith("rollback")
    assert f"(needs approval: one level down after change {change.id}" in configured.rationale
    [opened] = record["autonomy_changes"]  # the window's drop is a change of level
    assert (opened["key"], opened["target"], opened["by"]) == ("*", "charter", "change_window")
    assert (opened["before"], opened["after"]) == ("auto", "approve")
    assert stats["autonomy"]["windows"]["charter"]["change"] == change.id
    assert stats["changes"]["recent"] == {"charter": change.id}
    assert stats["maintenance"] == []


async def test_without_the_cause_in_rollback_causes_the_configured_fix_runs(
    tmp_path: Path, clock: FakeClock
):
    settings = settings_for(tmp_path, **{"changes.rollback_causes": []})
    async with build(settings, clock=clock, fault="bad_policy") as parts:
        assert parts.changes is not None
        await parts.changes.record(
            from_request(
                {
                    "target": "charter",
                    "kind": "deploy",
                    "rollback": {
                        "type": "apply_policy",
                        "parameters": {"policy_id": "baseline-v1"},
                    },
                },
                now=clock(),
                config=settings.changes,
                actions=settings.planner.actions,
            )
        )
        clock.advance(5)
        record = await parts.orchestrator.run_once()
        [pending] = parts.orchestrator.planner.pending_approvals()  # one level down: approve
        assert await Daemon(parts, clock=clock).approve(pending.id, caller="t") is not None
        record = await parts.orchestrator.run_once()
    [step] = record["execution"]["actions"]
    assert step["sets"][0]["after"] != "baseline-v1"
    assert "rollback of change" not in record["choice"]["why"]


async def test_a_maintenance_window_delays_every_action_on_its_target(
    tmp_path: Path, clock: FakeClock
):
    # The fake clock starts on a Tuesday, 22:13 UTC.
    settings = settings_for(tmp_path, maintenance=TUESDAY_ALL_DAY)
    async with build(settings, clock=clock, fault="bad_policy") as parts:
        clock.advance(5)
        record = await parts.orchestrator.run_once()
        stats = await Daemon(parts, clock=clock).statistics(limit=1)
    assert record["result"] != "acted"
    assert record["execution"] is None
    held = [d for d in record["guard_decisions"] if d["guard"] == "maintenance"]
    assert held, record["guard_decisions"]
    assert {(d["verdict"], d["reason"]) for d in held} == {
        ("delay", "maintenance window patch-tuesday until 2023-11-15T00:00:00Z")
    }
    assert stats["maintenance"] == [
        {"name": "patch-tuesday", "targets": ["charter"], "until": 1_700_006_400.0}
    ]


async def test_a_reload_applies_the_changes_section_and_the_windows(
    tmp_path: Path, clock: FakeClock
):
    settings = settings_for(tmp_path)
    async with build(settings, clock=clock) as parts:
        assert parts.changes is not None
        new = settings_for(
            tmp_path, **{"changes.window_s": 60, "changes.max_kept": 5}, maintenance=TUESDAY_ALL_DAY
        )
        assert reload_config(parts, lambda: new, configure_logging=False) == []
        clock.advance(5)
        await parts.orchestrator.run_once()  # a reload applies between iterations
        assert parts.changes.config.window_s == 60
        assert parts.changes.config.max_kept == 5
        windows = parts.orchestrator.pipeline.settings.maintenance
    assert [w.name for w in windows] == ["patch-tuesday"]
