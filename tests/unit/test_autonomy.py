"""Graded autonomy (loop/autonomy.py): levels per action or cause/action, the change-window
drop, shadow would-dos and their scores, promotion and demotion, persistence; and through
the assembled daemon (app.build, the mock Charter): a shadow policy calls nothing, is in
the record, /stats and /metrics, and an operator's change reaches the next record."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from builders import NOW, TARGET, action, cause, metric, observation, outcome, policy, violation
from builders import settings as settings_for
from fakes import FakeClock
from mape_k.app import Daemon, build
from mape_k.config import Settings
from mape_k.loop.autonomy import STATE_KEY, Autonomy, WouldDo, likelihood
from mape_k.loop.plan import Planner
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


def test_a_recent_change_drops_the_level_one_step_but_not_below_shadow():
    def recent(target: str, now: float) -> str | None:
        return "change c-1 (deploy 'v42' 60 s ago)" if target == TARGET else None

    autonomy = Autonomy(settings(levels={"scale_up": "shadow"}), recent_change=recent)
    level, why = autonomy.level_of(cause(), ["restart_service"], NOW)
    assert level == "approve"
    assert why == "one level down after change c-1 (deploy 'v42' 60 s ago)"
    assert autonomy.level_of(cause(target="other"), ["restart_service"], NOW)[0] == "auto"
    assert autonomy.level_of(cause(), ["scale_up"], NOW)[0] == "shadow"


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
    assert [c.by for c in autonomy.drain()] == ["demotion"]
    assert autonomy.drain() == []


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
