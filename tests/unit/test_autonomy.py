"""Graded autonomy (loop/autonomy.py): levels per action or cause/action, the change-window
drop, shadow would-dos and their scores, promotion and demotion, persistence; and through
the assembled daemon (app.build, the mock Charter): a shadow policy calls nothing, is in
the record, /stats and /metrics, and an operator's change reaches the next record."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from builders import NOW, TARGET, action, cause, metric, observation, outcome, policy, violation
from builders import settings as settings_for
from fakes import FakeClock
from mape_k.app import Daemon, build
from mape_k.config import CandidateAction, ChangesConfig, ConfigError, Settings
from mape_k.errors import StoreError
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop.autonomy import STATE_KEY, Autonomy, WouldDo, likelihood
from mape_k.loop.changes import Change, ChangeLog, from_request
from mape_k.loop.plan import Planner
from mape_k.metrics import FamiliesCollector
from mape_k.models import (
    ActionType,
    AnalysisResult,
    CandidateScore,
    KnobSetting,
    OutcomeType,
    Posterior,
)
from mape_k.store import Store
from mape_k.storeio import AsyncStore


def settings(**autonomy: object) -> Settings:
    return Settings(autonomy=autonomy)


def scored_policy(mean_alpha: float = 1.5, mean_beta: float = 0.5, **kwargs: object):
    """A restart for high_failure_rate whose posterior mean is alpha / (alpha + beta)."""
    score = CandidateScore(
        cost=0.3,
        benefit=0.75,
        confidence=0.6,
        score=0.1,
        posterior=Posterior(mean_alpha, mean_beta),
    )
    return policy(score=score, **kwargs)  # type: ignore[arg-type]


def failing(at: float = NOW):
    return observation(at=at, violations=[violation(value=0.2, threshold=0.05)])


def fine(at: float = NOW):
    return observation(at=at)


def no_change(_wd: WouldDo) -> str | None:
    return None


# --- levels ---------------------------------------------------------------------------------


def test_default_levels_keep_todays_behaviour():
    autonomy = Autonomy(Settings())
    assert autonomy.level_of(cause(), ["restart_service"], NOW) == ("auto", None)
    level, why = autonomy.level_of(cause(), ["bypass_validation"], NOW)
    assert (level, why) == ("approve", "bypass_validation at approve")


def test_a_default_of_shadow_covers_risky_actions_and_auto_never_lifts_them():
    shadow = Autonomy(settings(default="shadow"))
    assert shadow.level_of(cause(), ["bypass_validation"], NOW)[0] == "shadow"
    autonomy = Autonomy(settings(default="auto"))
    assert autonomy.level_of(cause(), ["bypass_validation"], NOW)[0] == "approve"


def test_cause_action_is_more_specific_than_action_and_a_policy_takes_its_lowest():
    autonomy = Autonomy(
        settings(levels={"restart_service": "shadow", "high_failure_rate/restart_service": "auto"})
    )
    assert autonomy.level_of(cause(), ["restart_service"], NOW)[0] == "auto"
    assert autonomy.level_of(cause("members_unhealthy"), ["restart_service"], NOW)[0] == "shadow"
    level, why = autonomy.level_of(cause("members_unhealthy"), ["scale_up", "restart_service"], NOW)
    assert level == "shadow"
    assert why == "restart_service at shadow"


def deployed(at: float = NOW - 60, *, rollback: bool = True, window_s: float = 600) -> ChangeLog:
    """A change log with one deploy on charter (its rollback: apply_policy v41)."""
    changes = ChangeLog(ChangesConfig(window_s=window_s))
    undo = CandidateAction(type=ActionType.APPLY_POLICY, parameters={"policy_id": "v41"})
    changes.add(
        Change(
            id="chg-1",
            target=TARGET,
            kind="deploy",
            at=at,
            description="v42",
            rollback=undo if rollback else None,
        )
    )
    return changes


def test_a_change_window_drops_every_action_on_its_target_one_step_but_not_below_shadow():
    autonomy = Autonomy(settings(levels={"scale_up": "shadow"}), changes=deployed())
    assert autonomy.level_of(cause(), ["restart_service"], NOW)[0] == "auto"  # not noted yet
    [opened] = autonomy.note_windows(NOW)
    assert (opened.key, opened.target, opened.before, opened.after, opened.by) == (
        "*",
        TARGET,
        "auto",
        "approve",
        "change_window",
    )
    assert opened.reason == (
        "every action on charter one level down until 2023-11-14T22:22:20Z after change"
        " chg-1 (deploy 'v42' 60 s ago); its rollback (apply_policy) keeps its level"
    )
    level, why = autonomy.level_of(cause(), ["restart_service"], NOW)
    assert level == "approve"
    assert why == "one level down after change chg-1 (deploy 'v42' 60 s ago)"
    assert autonomy.level_of(cause(target="other"), ["restart_service"], NOW)[0] == "auto"
    assert autonomy.level_of(cause(), ["scale_up"], NOW)[0] == "shadow"
    assert autonomy.level_of(cause(), ["bypass_validation"], NOW)[0] == "shadow"  # approve - 1
    assert autonomy.note_windows(NOW + 10) == []  # still open: no change of level
    [closed] = autonomy.note_windows(NOW + 540)  # 600 s after the change
    assert (closed.before, closed.after, closed.target) == ("approve", "auto", TARGET)
    assert (
        closed.reason
        == "the window of change chg-1 on charter closed: every action back to its level"
    )
    assert autonomy.level_of(cause(), ["restart_service"], NOW + 540) == ("auto", None)
    assert [c.by for c in autonomy.unrecorded()] == ["change_window", "change_window"]
    assert autonomy.changes_by == {"change_window": 2}


def test_the_rollback_of_the_change_keeps_its_level_inside_the_window():
    autonomy = Autonomy(Settings(), changes=deployed())  # no autonomy section at all
    autonomy.note_windows(NOW)
    rollback = autonomy.level_of(
        cause("policy_regression"), ["apply_policy"], NOW, rollback_of="chg-1"
    )
    assert rollback == ("auto", None)
    other = autonomy.level_of(
        cause("policy_regression"), ["apply_policy"], NOW, rollback_of="chg-0"
    )
    assert other[0] == "approve"  # the rollback of another change is lowered like the rest


def test_the_planner_lowers_the_configured_candidates_and_not_the_rollback():
    autonomy = Autonomy(Settings(), changes=deployed())
    autonomy.note_windows(NOW)
    planner = Planner(Settings().planner, autonomy=autonomy.level_of)
    regression = cause("policy_regression", confidence=0.85)
    analysis = AnalysisResult(at=NOW, violations=1, patterns=(), causes=(regression,))
    change = deployed().recent(TARGET, NOW)
    assert change is not None
    policies = planner.generate_policies(
        analysis, knowledge={}, now=NOW, changes={("policy_regression", TARGET): change}
    )
    first, *rest = policies
    assert first.rationale.startswith("rollback of change chg-1")
    assert (first.rollback_of, first.requires_approval, first.shadow) == ("chg-1", False, False)
    assert rest, "no configured candidate after the rollback"
    assert all(p.requires_approval and p.rollback_of is None for p in rest)
    assert all("one level down after change chg-1" in p.rationale for p in rest)
    assert planner.still_gated(rest[0])


def test_a_follower_takes_the_windows_without_a_change_of_level():
    autonomy = Autonomy(Settings(), changes=deployed())
    assert autonomy.note_windows(NOW, leading=False) == []
    assert autonomy.level_of(cause(), ["restart_service"], NOW)[0] == "approve"
    assert autonomy.unrecorded() == []
    assert autonomy.note_windows(NOW + 1) == []  # the leader it becomes: nothing new opened


def test_the_window_in_force_is_in_stats_and_in_metrics():
    cfg = settings(levels={"scale_up": {"level": "auto", "min": "approve"}}, default="approve")
    autonomy = Autonomy(cfg, changes=deployed())
    autonomy.note_windows(NOW)
    assert autonomy.as_dict()["windows"] == {
        TARGET: {
            "change": "chg-1",
            "kind": "deploy",
            "description": "v42",
            "at": NOW - 60,
            "until": NOW + 540,
            "default": "shadow",  # approve, one level down
            "levels": {"scale_up": "approve"},
            "rollback": "apply_policy",
        }
    }
    registry = CollectorRegistry()
    registry.register(FamiliesCollector(autonomy.families))
    text = generate_latest(registry).decode()
    assert 'mapek_autonomy_level_drop{target="charter"} 1.0' in text
    assert 'mapek_autonomy_changes_total{by="change_window"} 1.0' in text
    assert 'mapek_autonomy_level{key="scale_up"} 2.0' in text  # its level: the drop is per target
    autonomy.note_windows(NOW + 540)
    assert autonomy.as_dict()["windows"] == {}
    assert "mapek_autonomy_level_drop{" not in generate_latest(registry).decode()


def test_the_planner_marks_shadow_and_approve_from_the_level():
    autonomy = Autonomy(
        settings(levels={"restart_service": "shadow", "throttle_requests": "approve"})
    )
    planner = Planner(Settings().planner, autonomy=autonomy.level_of)
    analysis = AnalysisResult(at=NOW, violations=1, patterns=(), causes=(cause(confidence=1.0),))
    policies = planner.generate_policies(analysis, knowledge={}, now=NOW)
    by_action = {p.primary_action: p for p in policies}
    restart = by_action[ActionType.RESTART_SERVICE]
    throttle = by_action[ActionType.THROTTLE_REQUESTS]
    assert (restart.shadow, restart.requires_approval) == (True, False)
    assert "(shadow: a would-do, nothing is called: restart_service at shadow)" in (
        restart.rationale
    )
    assert (throttle.shadow, throttle.requires_approval) == (False, True)
    assert [p.id for p in planner.pending_approvals()] == [throttle.id]


# --- shadow ---------------------------------------------------------------------------------


def test_a_would_do_that_clears_by_itself_before_its_settle_time_would_not_have_helped():
    autonomy = Autonomy(Settings())
    wd = autonomy.would_do(scored_policy(), now=NOW, settle_s=20, value=0.2)
    assert autonomy.open_for(wd.key) is wd
    assert wd.due_at == NOW + 20 + Settings().executor.ineffective_margin_s
    assert autonomy.follow(fine(NOW + 10), NOW + 10, no_change) == []  # not due yet
    [scored] = autonomy.follow(fine(NOW + 40), NOW + 40, no_change)
    assert (scored.verdict, scored.cleared_at, scored.would_have_helped) == ("cleared", NOW + 10, 0)
    stats = autonomy.stats[("high_failure_rate", "restart_service")]
    assert (stats.would_do, stats.scored, stats.cleared, stats.precision) == (1, 1, 1, 0.0)
    assert autonomy.open == {}  # cleared and scored: done


def test_a_would_do_whose_violation_persists_was_needed_and_saves_time_until_it_clears():
    autonomy = Autonomy(Settings())
    autonomy.would_do(scored_policy(1.5, 0.5), now=NOW, settle_s=20, value=0.2)
    [scored] = autonomy.follow(failing(NOW + 40), NOW + 40, no_change)
    assert scored.verdict == "persisted"
    assert scored.would_have_helped == pytest.approx(0.75)
    assert len(autonomy.open) == 1  # followed on: how long it would have saved
    autonomy.follow(failing(NOW + 300), NOW + 300, no_change)
    assert autonomy.follow(fine(NOW + 335), NOW + 335, no_change) == []
    stats = autonomy.stats[("high_failure_rate", "restart_service")]
    # it lasted 335 s; the restart would have shown its effect after 35 s: 300 s x 0.75
    assert stats.saved_s == pytest.approx(300 * 0.75)
    assert stats.precision == pytest.approx(0.75)
    assert autonomy.open == {}


def test_worse_and_fixed_by_someone_else():
    autonomy = Autonomy(Settings())
    autonomy.would_do(scored_policy(), now=NOW, settle_s=20, value=0.1)
    # further past the threshold on the cause's query (failure_rate) than at the would-do
    worse = observation(
        at=NOW + 40,
        violations=[violation(value=0.4, threshold=0.05)],
        metrics=[metric("failure_rate", 0.4)],
    )
    [scored] = autonomy.follow(worse, NOW + 40, no_change)
    assert scored.verdict == "worse"

    other = Autonomy(Settings())
    other.would_do(scored_policy(), now=NOW, settle_s=20, value=0.1)
    other.follow(fine(NOW + 30), NOW + 30, lambda wd: "size 3 -> 5 (not by mape-k)")
    [scored] = other.follow(fine(NOW + 40), NOW + 40, no_change)
    assert (scored.verdict, scored.other) == ("fixed_by_other", "size 3 -> 5 (not by mape-k)")
    assert scored.would_have_helped == pytest.approx(0.75)


def test_a_return_to_baseline_at_shadow_is_counted_not_scored():
    autonomy = Autonomy(Settings())
    back = policy(action("scale_down"), cause=cause("excess_capacity"))
    autonomy.would_do(back, now=NOW, settle_s=30, value=None)
    assert autonomy.open == {}  # no violation to watch clear
    stats = autonomy.stats[("excess_capacity", "scale_down")]
    assert (stats.would_do, stats.scored, stats.precision) == (1, 0, None)


def test_a_would_do_on_a_prediction_is_counted_and_keeps_the_cause_key_free():
    autonomy = Autonomy(Settings())
    ahead = policy(action("scale_up"), cause=replace(cause("overload"), predicted=True))
    autonomy.would_do(ahead, now=NOW, settle_s=30, value=0.8)
    assert autonomy.open == {}
    assert autonomy.stats[("overload", "scale_up")].scored == 0


def test_a_change_after_the_violation_cleared_is_not_who_fixed_it():
    autonomy = Autonomy(Settings())
    autonomy.would_do(scored_policy(), now=NOW, settle_s=20, value=0.2)
    autonomy.follow(fine(NOW + 10), NOW + 10, no_change)
    [scored] = autonomy.follow(fine(NOW + 40), NOW + 40, lambda wd: "a deploy after it cleared")
    assert (scored.verdict, scored.other) == ("cleared", None)


def test_degraded_readings_score_nothing():
    autonomy = Autonomy(Settings())
    autonomy.would_do(scored_policy(), now=NOW, settle_s=20, value=0.2)
    assert (
        autonomy.follow(observation(degraded_reason="prometheus down"), NOW + 90, no_change) == []
    )
    assert autonomy.stats[("high_failure_rate", "restart_service")].scored == 0


def test_capacity_is_scored_by_its_projection_and_the_rest_by_the_posterior():
    overload = cause("overload", value=1.2)
    up = replace(action("scale_up"), sets=(KnobSetting("size", 3, 6),))
    small = replace(action("scale_up"), sets=(KnobSetting("size", 3, 4),))
    fix = policy(up, cause=overload)
    assert likelihood(fix, 1.2, ("saturation",))[0] == 1.0  # 1.2 x 3/6 = 0.6 < 0.9
    helps, basis = likelihood(policy(small, cause=overload), 1.5, ("saturation",))
    assert (helps, basis) == (0.5, "capacity: 1.5 x 3/4 = 1.12, still over 0.9")
    assert likelihood(fix, 1.2, ())[0] == pytest.approx(0.75)  # not load-normalised: benefit
    assert likelihood(scored_policy(3, 1), 0.2, ("saturation",)) == (0.75, "posterior 0.75")


# --- promotion and demotion -----------------------------------------------------------------


def test_attributed_degradation_demotes_a_named_action_down_to_its_min_and_it_sticks():
    autonomy = Autonomy(
        settings(
            levels={"restart_service": {"level": "auto", "min": "approve"}},
            promotion={"enabled": True, "min_samples": 1, "min_posterior": 0.0},
        )
    )
    bad = outcome(outcome=OutcomeType.DEGRADATION)
    change = autonomy.note_outcome(bad, NOW)
    assert change is not None
    assert (change.key, change.before, change.after, change.by) == (
        "restart_service",
        "auto",
        "approve",
        "demotion",
    )
    assert autonomy.note_outcome(bad, NOW + 1) is None  # not below min
    beliefs = {("high_failure_rate", "restart_service"): (1.0, 100.0)}
    assert autonomy.promote(beliefs, NOW + 2) == []  # a demotion sticks
    assert autonomy.note_outcome(outcome(), NOW) is None  # a success demotes nothing
    assert Autonomy(Settings()).note_outcome(bad, NOW) is None  # unnamed: untouched
    pending = autonomy.unrecorded()
    assert [c.by for c in pending] == ["demotion"]
    assert autonomy.unrecorded() == pending  # pending until a journaled record has it
    autonomy.recorded(pending)
    assert autonomy.unrecorded() == []


def test_promotion_needs_precision_posterior_and_samples_and_stops_at_max():
    cfg = settings(
        levels={"restart_service": {"level": "shadow", "max": "approve"}},
        promotion={"enabled": True, "min_samples": 2, "min_precision": 0.7, "min_posterior": 0.7},
    )
    autonomy = Autonomy(cfg)
    for i in range(2):
        autonomy.would_do(scored_policy(), now=NOW + i * 1000, settle_s=20, value=0.2)
        autonomy.follow(failing(NOW + i * 1000 + 40), NOW + i * 1000 + 40, no_change)
        autonomy.follow(fine(NOW + i * 1000 + 60), NOW + i * 1000 + 60, no_change)
    pair = ("high_failure_rate", "restart_service")
    assert autonomy.promote({pair: (0.6, 5.0)}, NOW + 3000) == []  # posterior too low
    [change] = autonomy.promote({pair: (0.8, 5.0)}, NOW + 3000)
    assert (change.before, change.after, change.by) == ("shadow", "approve", "promotion")
    assert "shadow precision 0.75 over 2 would-dos" in change.reason
    assert autonomy.promote({pair: (0.99, 50.0)}, NOW + 3001) == []  # at its max
    assert autonomy.level_of(cause(), ["restart_service"], NOW)[0] == "approve"


def test_approve_to_auto_rests_on_verified_outcomes_without_any_shadow():
    cfg = settings(
        levels={"restart_service": {"level": "approve", "max": "auto"}},
        promotion={"enabled": True, "min_samples": 10, "min_posterior": 0.8},
    )
    autonomy = Autonomy(cfg)
    untried = ("members_unhealthy", "restart_service")  # a candidate with no outcome yet
    tried = ("high_failure_rate", "restart_service")
    assert autonomy.promote({tried: (0.9, 9.0), untried: (0.9, 0.0)}, NOW) == []
    [change] = autonomy.promote({tried: (0.9, 12.0), untried: (0.5, 0.0)}, NOW)
    assert (change.before, change.after) == ("approve", "auto")
    assert change.reason == "posterior 0.90 over 12 verified outcomes"


def test_demotion_follows_the_override_in_force_and_never_raises_a_level():
    autonomy = Autonomy(settings(levels={"scale_up": {"level": "auto", "min": "approve"}}))
    autonomy.set_level("overload/scale_up", "auto", now=NOW, reason="ops")
    degraded = outcome(
        outcome=OutcomeType.DEGRADATION, cause="overload", action_type=ActionType.SCALE_UP
    )
    change = autonomy.note_outcome(degraded, NOW)
    assert change is not None
    assert (change.key, change.after) == ("overload/scale_up", "approve")
    assert autonomy.level_of(cause("overload"), ["scale_up"], NOW)[0] == "approve"
    autonomy.set_level("scale_up", "shadow", now=NOW, reason="ops")  # below its min
    other = replace(degraded, cause="queue_backlog")
    assert autonomy.note_outcome(other, NOW) is None  # shadow stays shadow: never up


def test_an_operator_sets_and_resets_a_level_and_lifts_a_demotion():
    autonomy = Autonomy(settings(levels={"restart_service": "auto"}))
    autonomy.note_outcome(outcome(outcome=OutcomeType.DEGRADATION), NOW)
    change = autonomy.set_level("restart_service", "auto", now=NOW + 5, reason="fixed (by ops)")
    assert (change.before, change.after, change.by) == ("approve", "auto", "operator")
    assert "restart_service" not in autonomy.demoted
    autonomy.set_level("overload/scale_up", "shadow", now=NOW, reason="trial")
    assert autonomy.level_of(cause("overload"), ["scale_up"], NOW)[0] == "shadow"
    reset = autonomy.set_level("overload/scale_up", None, now=NOW, reason="done")
    assert reset.after == "auto"
    shadowed = Autonomy(settings(levels={"scale_up": "shadow"}))
    shadowed.set_level("overload/scale_up", "auto", now=NOW, reason="trial")
    back = shadowed.set_level("overload/scale_up", None, now=NOW, reason="done")
    assert (back.before, back.after) == ("auto", "shadow")  # what is in force, recorded
    assert autonomy.level_of(cause("overload"), ["scale_up"], NOW)[0] == "auto"


# --- persistence ----------------------------------------------------------------------------


async def test_levels_ledger_and_open_would_dos_survive_a_restart(tmp_path: Path):
    cfg = settings(levels={"restart_service": "shadow"})
    store = AsyncStore(Store.open(tmp_path / "k.sqlite3"), threaded=False)
    try:
        first = Autonomy(cfg, store=store)
        first.would_do(scored_policy(), now=NOW, settle_s=20, value=0.2)
        first.set_level("scale_up", "approve", now=NOW, reason="ops")
        await first.save(NOW)
        second = Autonomy(cfg, store=store)
        await second.load()
        assert second.as_dict() == first.as_dict()
        [scored] = second.follow(fine(NOW + 40), NOW + 40, no_change)  # resumes following
        assert scored.verdict == "cleared"
        await store.set_state(STATE_KEY, {"overrides": {"scale_up": "full"}}, at=NOW)
        third = Autonomy(cfg, store=store)
        with capture_logs() as logs:
            await third.load()
        assert third.overrides == {}  # a bad saved state: the configuration's levels
        assert logs[-1]["event"] == "autonomy_unreadable"
        assert "'full' is not a level" in logs[-1]["error"]
        # a bad derived entry (a change window, a pending note) is skipped alone: the
        # operator's levels stay
        saved = {**first._dump(), "windows": [{"change": {"id": "x"}}], "pending": [7]}
        await store.set_state(STATE_KEY, saved, at=NOW)
        fourth = Autonomy(cfg, store=store)
        with capture_logs() as logs:
            await fourth.load()
        assert fourth.overrides == first.overrides != {}
        assert fourth.windows == {}
        skipped = [e for e in logs if e["event"] == "autonomy_entry_skipped"]
        assert [e["what"] for e in skipped] == ["pending level change", "change window"]
    finally:
        store.close()


# --- through the daemon ---------------------------------------------------------------------


async def test_a_shadow_policy_calls_nothing_and_is_recorded_scored_and_exported(
    tmp_path: Path, clock: FakeClock
):
    cfg = settings_for(tmp_path, **{"autonomy.default": "shadow"})
    async with build(cfg, clock=clock, fault="error_burst") as parts:
        assert parts.world is not None
        before = parts.world.committee.counters.restarts
        first = await parts.orchestrator.run_once()
        assert first["result"] == "shadow"
        assert first["execution"] is None
        [wd] = first["shadow"]
        assert (wd["cause"], wd["actions"]) == ("high_failure_rate", ["restart_service"])
        assert first["choice"]["why"].startswith("shadow: would do restart_service on charter")
        clock.advance(30)
        second = await parts.orchestrator.run_once()
        still = f"shadow: would do restart_service on charter (as {wd['id']}, scored at"
        assert second["shadow"] == [f"{still} {wd['due_at']:.0f})"]
        clock.advance(30)
        third = await parts.orchestrator.run_once()
        [scored] = third["shadow_scored"]
        assert (scored["id"], scored["verdict"]) == (wd["id"], "persisted")
        assert parts.world.committee.counters.restarts == before  # nothing was called
        stats = await Daemon(parts, clock=clock).statistics(limit=1)
        [row] = stats["autonomy"]["shadow"]
        assert (row["would_do"], row["scored"], row["persisted"]) == (1, 1, 1)
        registry = parts.metrics.registry
        labels = {"cause": "high_failure_rate", "action_type": "restart_service"}
        assert registry.get_sample_value("mapek_shadow_would_do_total", labels) == 1
        assert registry.get_sample_value("mapek_shadow_precision", labels) == pytest.approx(
            row["precision"]
        )


async def test_an_operators_change_is_in_the_next_record(tmp_path: Path, clock: FakeClock):
    async with build(settings_for(tmp_path), clock=clock, fault="error_burst") as parts:
        daemon = Daemon(parts, clock=clock)
        answer = await daemon.set_autonomy(
            "restart_service", "shadow", "first week", caller="127.0.0.1"
        )
        assert (answer["before"], answer["after"]) == ("auto", "shadow")
        refused = await daemon.set_autonomy("nope", "auto", "x", caller="127.0.0.1")
        assert refused == {"error": "no action 'nope' in planner.actions", "field": "key"}
        record = await parts.orchestrator.run_once()
        [change] = record["autonomy_changes"]
        assert change["key"] == "restart_service"
        assert change["reason"] == "first week (by 127.0.0.1)"
        assert record["result"] == "shadow"
        later = await parts.orchestrator.run_once()
        assert "autonomy_changes" not in later


async def test_a_promotion_reaches_the_next_decision_record(tmp_path: Path, clock: FakeClock):
    cfg = settings_for(
        tmp_path,
        **{
            "autonomy.levels": {"restart_service": {"level": "shadow", "max": "approve"}},
            "autonomy.promotion": {
                "enabled": True,
                "min_samples": 1,
                "min_precision": 0.5,
                "min_posterior": 0.5,
            },
        },
    )
    async with build(cfg, clock=clock, fault="error_burst") as parts:
        records = []
        for _ in range(5):
            clock.advance(30)
            records.append(await parts.orchestrator.run_once())
        level = parts.orchestrator.pipeline.autonomy
        assert level is not None
        in_force = level.level_of(cause(), ["restart_service"], clock())[0]
    scored = [r for r in records if r.get("shadow_scored")]
    promoted = [r for r in records if r.get("autonomy_changes")]
    assert [s["verdict"] for s in scored[0]["shadow_scored"]] == ["persisted"]
    [record] = promoted  # once: at its max (approve) after it
    [change] = record["autonomy_changes"]
    assert (change["key"], change["before"], change["after"], change["by"]) == (
        "restart_service",
        "shadow",
        "approve",
        "promotion",
    )
    assert change["reason"] == "shadow precision 0.75 over 1 would-dos, posterior 0.75"
    # the evidence came first: scored in one iteration, promoted at the next verification
    assert records.index(scored[0]) < records.index(record)
    assert in_force == "approve"


async def test_a_demotion_reaches_the_record_of_the_verification_that_made_it(
    tmp_path: Path, clock: FakeClock
):
    cfg = settings_for(
        tmp_path, **{"autonomy.levels": {"restart_service": {"level": "auto", "min": "approve"}}}
    )
    world = MockCharterWorld.create(
        clock=clock, seed=3, regime="calm", fault="error_burst", fault_magnitude=0.2
    )
    async with build(cfg, world=world, clock=clock) as parts:
        clock.advance(5)
        acted = await parts.orchestrator.run_once()
        assert acted["result"] == "acted"
        world.committee.inject("error_burst", 1.0, 0, clock())  # worse after the restart
        records = []
        for _ in range(3):
            clock.advance(15)
            records.append(await parts.orchestrator.run_once())
        stats = await Daemon(parts, clock=clock).statistics(limit=1)
    [record] = [r for r in records if r["verifications"]]
    assert [v["outcome"] for v in record["verifications"]] == ["degradation"]
    [change] = record["autonomy_changes"]
    assert (change["key"], change["before"], change["after"], change["by"]) == (
        "restart_service",
        "auto",
        "approve",
        "demotion",
    )
    assert change["reason"] == (
        f"restart_service degraded high_failure_rate on charter ({acted['execution']['id']})"
    )
    assert stats["autonomy"]["levels"]["restart_service"]["demoted"] is True
    assert all("autonomy_changes" not in r for r in records if r is not record)


async def test_an_operators_change_survives_a_restart_before_the_next_record(
    tmp_path: Path, clock: FakeClock
):
    cfg = settings_for(tmp_path)
    async with build(cfg, clock=clock, fault="error_burst") as parts:
        await Daemon(parts, clock=clock).set_autonomy(
            "restart_service", "shadow", "first week", caller="127.0.0.1"
        )
    # stopped before any iteration (as a crash: the control call saved the state)
    async with build(cfg, clock=clock, fault="error_burst") as parts:
        clock.advance(5)
        record = await parts.orchestrator.run_once()
        clock.advance(30)
        later = await parts.orchestrator.run_once()
    [change] = record["autonomy_changes"]
    assert (change["key"], change["after"], change["by"]) == (
        "restart_service",
        "shadow",
        "operator",
    )
    assert change["reason"] == "first week (by 127.0.0.1)"
    assert record["result"] == "shadow"
    assert "autonomy_changes" not in later
    async with build(cfg, clock=clock, fault="error_burst") as parts:
        clock.advance(30)
        again = await parts.orchestrator.run_once()
    assert "autonomy_changes" not in again  # in one record only, restart or not


async def test_a_change_whose_record_never_reached_the_journal_goes_into_the_next(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    async with build(settings_for(tmp_path), clock=clock, fault="error_burst") as parts:
        await Daemon(parts, clock=clock).set_autonomy(
            "restart_service", "shadow", "first week", caller="127.0.0.1"
        )
        journal = parts.store.record_iteration

        async def disk_full(*args: object, **kwargs: object) -> None:
            raise StoreError("disk full")

        monkeypatch.setattr(parts.store, "record_iteration", disk_full)
        clock.advance(5)
        unjournaled = await parts.orchestrator.run_once()
        monkeypatch.setattr(parts.store, "record_iteration", journal)
        clock.advance(30)
        journaled = await parts.orchestrator.run_once()
        clock.advance(30)
        later = await parts.orchestrator.run_once()
    assert [c["by"] for c in unjournaled["autonomy_changes"]] == ["operator"]
    assert [c["by"] for c in journaled["autonomy_changes"]] == ["operator"]  # not lost
    assert "autonomy_changes" not in later


@pytest.mark.parametrize("someone_else", [True, False])
async def test_a_recorded_change_before_the_violation_cleared_is_who_fixed_it(
    tmp_path: Path, clock: FakeClock, someone_else: bool
):
    cfg = settings_for(tmp_path, **{"autonomy.default": "shadow"})
    async with build(cfg, clock=clock, fault="error_burst") as parts:
        assert parts.world is not None
        assert parts.changes is not None
        first = await parts.orchestrator.run_once()
        [wd] = first["shadow"]
        clock.advance(10)
        change = from_request(
            {"target": TARGET, "kind": "config", "description": "limits raised"},
            now=clock(),
            config=cfg.changes,
            actions=cfg.planner.actions,
        )
        if someone_else:
            await parts.changes.record(change)
        parts.world.committee.clear_faults()  # the violation goes: by that change, or by itself
        scored = []
        for _ in range(4):
            clock.advance(10)
            scored += (await parts.orchestrator.run_once()).get("shadow_scored", [])
        stats = await Daemon(parts, clock=clock).statistics(limit=1)
    [score] = scored
    assert score["id"] == wd["id"]
    [row] = stats["autonomy"]["shadow"]
    if someone_else:
        assert score["verdict"] == "fixed_by_other"
        assert score["other"] == f"change {change.id} (config 'limits raised' 10 s ago)"
        assert score["would_have_helped"] == pytest.approx(0.75)
        assert (row["fixed_by_other"], row["cleared"]) == (1, 0)
    else:
        assert (score["verdict"], score["other"], score["would_have_helped"]) == (
            "cleared",
            None,
            0,
        )
        assert (row["fixed_by_other"], row["cleared"]) == (0, 1)


async def test_the_shadow_and_level_metrics_render_from_the_daemons_registry(
    tmp_path: Path, clock: FakeClock
):
    cfg = settings_for(tmp_path, **{"autonomy.default": "shadow"})
    async with build(cfg, clock=clock, fault="error_burst") as parts:
        assert parts.world is not None
        await Daemon(parts, clock=clock).set_autonomy(
            "scale_up", "approve", "trial", caller="127.0.0.1"
        )
        first = await parts.orchestrator.run_once()
        [wd] = first["shadow"]
        cleared_at = None
        for i in range(12):
            clock.advance(30)
            if i == 4:
                parts.world.committee.clear_faults()
            record = await parts.orchestrator.run_once()
            if cleared_at is None and not record["inputs"]["violations"]:
                cleared_at = clock()
        text = generate_latest(parts.metrics.registry).decode()
    assert cleared_at is not None
    settle = wd["due_at"] - wd["at"]  # the restart's settle time and the margin
    saved = (cleared_at - wd["at"] - settle) * 0.75  # how much longer it lasted x likelihood
    assert saved > 0
    labels = 'action_type="restart_service",cause="high_failure_rate"'
    lines = set(text.splitlines())
    assert f"mapek_shadow_saved_seconds_total{{{labels}}} {saved}" in lines
    assert f"mapek_shadow_would_do_total{{{labels}}} 1.0" in lines
    for verdict, count in (("cleared", 0), ("fixed_by_other", 0), ("persisted", 1), ("worse", 0)):
        assert f'mapek_shadow_scored_total{{{labels},verdict="{verdict}"}} {count:.1f}' in lines
    assert f"mapek_shadow_precision{{{labels}}} 0.75" in lines
    assert 'mapek_autonomy_level{key="scale_up"} 1.0' in lines  # approve, by the operator
    assert 'mapek_autonomy_changes_total{by="operator"} 1.0' in lines
    assert 'mapek_autonomy_changes_total{by="promotion"} 0.0' in lines
    assert "# TYPE mapek_autonomy_level_drop gauge" in lines


# --- configuration --------------------------------------------------------------------------


LEVELS = "autonomy.levels"
ONE_OF = "Input should be 'shadow', 'approve' or 'auto'"


@pytest.mark.parametrize(
    ("key", "value", "field", "why"),
    [
        (LEVELS, {"scale_up": "full"}, "autonomy.levels.scale_up.level", ONE_OF),
        (
            LEVELS,
            {"scale_up": {"level": "auto", "max": "approve"}},
            "autonomy.levels.scale_up",
            "level auto is outside min shadow .. max approve",
        ),
        (
            LEVELS,
            {"scale_up": {"level": "shadow", "min": "approve", "max": "auto"}},
            "autonomy.levels.scale_up",
            "level shadow is outside min approve .. max auto",
        ),
        (
            LEVELS,
            {"scale_up": {"level": "auto", "ceiling": "auto"}},
            "autonomy.levels.scale_up.ceiling",
            "unknown key",
        ),
        (
            LEVELS,
            {"Scale-Up": "auto"},
            "autonomy.levels",
            "'Scale-Up' is not an action or cause/action name",
        ),
        (
            LEVELS,
            {"overload/scale_out": "auto"},
            "autonomy.levels.overload/scale_out",  # not "<root>" (from defaults)
            "no action 'scale_out' in planner.actions",
        ),
        ("autonomy.default", "full", "autonomy.default", ONE_OF),
        (
            "autonomy.promotion.min_precision",
            1.5,
            "autonomy.promotion.min_precision",
            "Input should be less than or equal to 1",
        ),
    ],
)
def test_a_bad_level_bound_or_key_is_one_line_naming_the_field(
    tmp_path: Path, key: str, value: object, field: str, why: str
):
    with pytest.raises(ConfigError) as refused:
        settings_for(tmp_path, **{key: value})
    assert str(refused.value) == f"{field}: {why} (from cli:{key})"


def test_promotion_with_nothing_it_could_raise_says_so(tmp_path: Path):
    idle = settings_for(
        tmp_path, **{"autonomy.default": "shadow", "autonomy.promotion.enabled": True}
    )
    with capture_logs() as logs:
        Autonomy(idle)
    [warning] = [e for e in logs if e["event"] == "autonomy_promotion_idle"]
    assert "an action at autonomy.default never" in warning["why"]
    room = settings_for(
        tmp_path,
        **{
            "autonomy.promotion.enabled": True,
            "autonomy.levels": {"scale_up": {"level": "shadow", "max": "auto"}},
        },
    )
    with capture_logs() as logs:
        autonomy = Autonomy(room)
        autonomy.reconfigure(room)
        autonomy.reconfigure(idle)
    assert [e["event"] for e in logs if e["event"] == "autonomy_promotion_idle"] == [
        "autonomy_promotion_idle"  # the reload to a config where nothing can be promoted
    ]
