"""The change log (loop/changes.py): validation at the edge, the window, since, the bound,
persistence through a real SQLite store; and the planner ranking a recent change's
rollback first (loop/plan.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

import builders
from fakes import FIXTURES, FakeClock
from mape_k.config import CandidateAction, ChangesConfig, PlannerConfig
from mape_k.loop.changes import (
    MAX_DESCRIPTION,
    Change,
    ChangeLog,
    ChangeRefused,
    from_alertmanager,
    from_request,
)
from mape_k.loop.plan import Planner
from mape_k.models import ActionType, AnalysisResult, Cause
from mape_k.store import Store
from mape_k.storeio import AsyncStore

NOW = builders.NOW
ACTIONS = PlannerConfig().actions
CONFIG = ChangesConfig()
parse = functools.partial(from_request, now=NOW, config=CONFIG, actions=ACTIONS)


def change(
    at: float,
    *,
    target: str = "charter",
    id: str | None = None,  # noqa: A002
    window_s: float | None = None,
) -> Change:
    return Change(
        id=id or f"chg-{target}-{at:.0f}",
        target=target,
        kind="deploy",
        at=at,
        description=f"deploy at {at:g}",
        window_s=window_s,
    )


# --- the plain body -------------------------------------------------------------------


def test_a_plain_change_is_taken_with_its_defaults_and_a_stable_id():
    taken = parse({"target": "charter", "kind": "deploy", "description": "v42  to\nprod"})
    assert (taken.target, taken.kind, taken.at, taken.source) == ("charter", "deploy", NOW, "api")
    assert taken.description == "v42 to prod"  # whitespace collapsed: one line in a rationale
    assert taken.rollback is None
    assert taken.window_s is None
    assert taken.id.startswith("chg-")
    assert len(taken.id) == 20
    assert parse({"target": "charter", "kind": "deploy", "description": "v42 to prod"}) == taken
    assert parse({"target": "charter", "kind": "config", "description": "v42 to prod"}).id != (
        taken.id
    )


def test_a_rollback_is_validated_like_a_configured_candidate():
    taken = parse(
        {
            "target": "charter",
            "kind": "config",
            "at": NOW - 30,
            "window_s": 600,
            "rollback": {"type": "apply_policy", "parameters": {"policy_id": "v41"}},
        }
    )
    assert taken.rollback == CandidateAction(
        type=ActionType.APPLY_POLICY, parameters={"policy_id": "v41"}
    )
    assert (taken.at, taken.window_s) == (NOW - 30, 600.0)


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"kind": "deploy"}, "target", "required"),
        ({"target": "charter"}, "kind", "required"),
        ({"target": "a b", "kind": "deploy"}, "target", "not a target name"),
        ({"target": "x" * 129, "kind": "deploy"}, "target", "not a target name"),
        ({"target": 7, "kind": "deploy"}, "target", "not a target name"),
        ({"target": "charter", "kind": "Deploy!"}, "kind", "not a kind"),
        ({"target": "charter", "kind": "deploy", "colour": 1}, "colour", "unknown field"),
        ({"target": "charter", "kind": "deploy", "description": 3}, "description", "string"),
        (
            {"target": "charter", "kind": "deploy", "description": "x" * (MAX_DESCRIPTION + 1)},
            "description",
            "longer than",
        ),
        (
            {"target": "charter", "kind": "deploy", "description": "a\x1b[31m"},
            "description",
            "control or format characters",
        ),
        (
            {"target": "charter", "kind": "deploy", "description": "v42\u202egnp.exe"},
            "description",
            "control or format characters",
        ),
        ({"target": "charter", "kind": "deploy", "at": "noon"}, "at", "must be a number"),
        ({"target": "charter", "kind": "deploy", "at": True}, "at", "must be a number"),
        ({"target": "charter", "kind": "deploy", "at": NOW + 61}, "at", "in the future"),
        ({"target": "charter", "kind": "deploy", "at": NOW - 86_401}, "at", "older than"),
        ({"target": "charter", "kind": "deploy", "window_s": 0}, "window_s", "must be > 0"),
        ({"target": "charter", "kind": "deploy", "window_s": 1e9}, "window_s", "must be > 0"),
        ({"target": "charter", "kind": "deploy", "source": "a b"}, "source", "not a source"),
        ({"target": "charter", "kind": "deploy", "rollback": "undo"}, "rollback", "object"),
        (
            {"target": "charter", "kind": "deploy", "rollback": {"type": "Undo!"}},
            "rollback.type",
            "not an action name",
        ),
        (
            {"target": "charter", "kind": "deploy", "rollback": {"type": "page_oncall"}},
            "rollback.type",
            "not in planner.actions",
        ),
        (
            {
                "target": "charter",
                "kind": "deploy",
                "rollback": {"type": "scale_up", "parameters": {"delta": "two"}},
            },
            "rollback",
            "delta",
        ),
        (
            {"target": "charter", "kind": "deploy", "rollback": {"type": "apply_policy", "x": 1}},
            "rollback.x",
            "",
        ),
    ],
)
def test_every_bad_field_is_refused_naming_it(body, field, says):
    with pytest.raises(ChangeRefused) as refused:
        parse(body)
    assert refused.value.field == field
    assert says in refused.value.message


# --- the Alertmanager form ------------------------------------------------------------


def alert_payload(*alerts: dict[str, object]) -> dict[str, object]:
    """The captured firing fixture's envelope around `alerts`."""
    document = json.loads((FIXTURES / "alertmanager/webhook/firing_single_alert.json").read_text())
    document["alerts"] = list(alerts)
    return document


def alert(
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    *,
    status: str = "firing",
    starts: str = "2023-11-14T22:03:20Z",  # NOW - 600
    fingerprint: str = "5a764585f3009a1c",
) -> dict[str, object]:
    return {
        "status": status,
        "labels": {"alertname": "Deploy", **labels},
        "annotations": annotations or {},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint,
    }


def from_alerts(document: dict[str, object], now: float = NOW):
    return from_alertmanager(document, now=now, config=CONFIG, actions=ACTIONS)


def test_each_firing_alert_is_a_change_at_its_start():
    got = from_alerts(
        alert_payload(
            alert(
                {"target": "charter", "change_kind": "config"},
                {"description": "raised\tthe limit", "summary": "ignored"},
            ),
            alert({"component": "db"}, {"summary": "v7"}, fingerprint="b"),
            alert({"target": "charter"}, status="resolved", fingerprint="c"),
        )
    )
    first, second = got.changes
    assert (first.target, first.kind, first.at, first.source) == (
        "charter",
        "config",
        NOW - 600,
        "webhook",
    )
    assert first.description == "raised the limit"
    assert (second.target, second.kind, second.description) == ("db", "deploy", "v7")
    assert got.skipped == ("alerts[2]: resolved",)
    # A re-delivery of the same alert is the same change.
    assert from_alerts(alert_payload(alert({"target": "charter"}))).changes[0].id == first.id


def test_an_alert_may_name_its_rollback_and_window_and_a_long_text_is_cut():
    [taken] = from_alerts(
        alert_payload(
            alert(
                {"target": "charter"},
                {
                    "rollback": '{"type": "apply_policy", "parameters": {"policy_id": "v41"}}',
                    "window_s": "900",
                    "description": "\x07bell\u200b\x9b31m " + "y" * 900,
                },
            )
        )
    ).changes
    assert taken.rollback is not None
    assert taken.rollback.parameters == {"policy_id": "v41"}
    assert taken.window_s == 900.0
    assert len(taken.description) == MAX_DESCRIPTION
    assert taken.description.startswith("bell 31m yyy")


def test_an_old_alert_is_skipped_not_refused():
    got = from_alerts(alert_payload(alert({"target": "charter"})), now=NOW + 86_400)
    assert got.changes == ()
    assert got.skipped == ("alerts[0]: older than changes.max_age_s",)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (alert_payload(alert({"service": "x"})), "alerts[0].labels.target"),
        (alert_payload(alert({"target": "a/b"})), "alerts[0].labels.target"),
        (alert_payload(alert({"component": "a b"})), "alerts[0].labels.component"),
        (alert_payload(alert({"target": "c", "kind": "BIG"})), "alerts[0].labels.kind"),
        (
            alert_payload(alert({"target": "c"}, {"rollback": "{nope"})),
            "alerts[0].annotations.rollback",
        ),
        (
            alert_payload(alert({"target": "c"}, {"rollback": '{"type": "nope_x"}'})),
            "alerts[0].annotations.rollback.type",
        ),
        (
            alert_payload(alert({"target": "c"}, {"window_s": "soon"})),
            "alerts[0].annotations.window_s",
        ),
        (
            alert_payload(alert({"target": "c"}, {"window_s": "nan"})),
            "alerts[0].annotations.window_s",
        ),
        (
            alert_payload(alert({"target": "c"}, starts="2023-11-14T23:13:20Z")),
            "alerts[0].startsAt",
        ),
        ({**alert_payload(), "version": "3"}, "version"),
        ({**alert_payload(), "alerts": [{"status": "firing"}]}, "alerts.0.labels"),
    ],
)
def test_a_bad_alert_refuses_the_payload_naming_the_field(payload, field):
    with pytest.raises(ChangeRefused) as refused:
        from_alerts(payload)
    assert refused.value.field == field


# --- the log: window, since, bound ------------------------------------------------------


async def test_recent_is_the_newest_change_on_the_target_inside_its_window():
    log = ChangeLog(ChangesConfig(window_s=100))
    assert log.recent("charter", NOW) is None
    await log.record(change(NOW - 150))
    assert log.recent("charter", NOW) is None  # its window is over
    await log.record(change(NOW - 50, window_s=30))
    assert log.recent("charter", NOW) is None  # its own, shorter window is over too
    await log.record(change(NOW - 80))
    await log.record(change(NOW - 10, target="db"))
    assert log.recent("charter", NOW) == change(NOW - 80)
    # Then the newer ones had not happened yet: the older one, still in its window.
    assert log.recent("charter", NOW - 81) == change(NOW - 150)
    assert log.recent("charter", NOW + 19.9) == change(NOW - 80)
    assert log.recent("charter", NOW + 20) is None  # the window's end is exclusive
    assert log.recent("db", NOW) == change(NOW - 10, target="db")


async def test_since_lists_the_changes_on_a_target_after_a_time_oldest_first():
    log = ChangeLog(CONFIG)
    for at in (NOW - 30, NOW - 10, NOW - 20):  # recorded out of order
        await log.record(change(at))
    await log.record(change(NOW - 15, target="db"))
    assert [c.at for c in log.since("charter", NOW - 30)] == [NOW - 20, NOW - 10]
    assert log.since("charter", NOW) == []
    assert [c.target for c in log.since("db", 0)] == ["db"]


async def test_a_duplicate_is_not_recorded_twice():
    log = ChangeLog(CONFIG)
    assert await log.record(change(NOW - 5)) is True
    assert await log.record(change(NOW - 5)) is False
    assert len(log) == 1


async def test_only_the_newest_max_kept_are_kept():
    log = ChangeLog(ChangesConfig(max_kept=3))
    for at in (5, 1, 4, 2, 3):
        await log.record(change(NOW - 100 + at))
    assert [c.at - NOW + 100 for c in log.latest(10)] == [5, 4, 3]
    log.reconfigure(ChangesConfig(max_kept=2), ACTIONS)
    assert [c.at - NOW + 100 for c in log.latest(10)] == [5, 4]
    assert log.since("charter", 0)[0].at == NOW - 96


async def test_stats_say_which_targets_have_a_recent_change():
    log = ChangeLog(ChangesConfig(window_s=60))
    await log.record(change(NOW - 100, target="db"))
    await log.record(change(NOW - 10, id="chg-new"))
    stats = log.as_dict(NOW)
    assert stats["recent"] == {"charter": "chg-new"}
    assert [row["id"] for row in stats["latest"]] == ["chg-new", "chg-db-1699999900"]
    assert stats["latest"][0]["age_s"] == 10
    assert stats["kept"] == 2


# --- persistence ------------------------------------------------------------------------


async def test_changes_survive_a_restart_through_the_store(tmp_path: Path):
    clock = FakeClock(NOW)
    rollback = CandidateAction(type=ActionType.APPLY_POLICY, parameters={"policy_id": "v41"})
    kept = Change(
        id="chg-1",
        target="charter",
        kind="config",
        at=NOW - 5,
        description="limit 'x'",
        source="ci",
        rollback=rollback,
        window_s=300.0,
    )
    with Store.open(tmp_path / "k.sqlite3") as opened:
        store = AsyncStore(opened, threaded=False)
        log = ChangeLog(CONFIG, store=store, clock=clock)
        await log.record(kept)
        await log.record(change(NOW - 1, target="db"))
    with Store.open(tmp_path / "k.sqlite3") as opened:
        again = ChangeLog(CONFIG, store=AsyncStore(opened, threaded=False), clock=clock)
        await again.load()
    assert again.latest(10) == [change(NOW - 1, target="db"), kept]
    assert again.recent("charter", NOW) == kept


async def test_a_follower_writes_no_change(tmp_path: Path):
    with Store.open(tmp_path / "k.sqlite3") as opened:
        store = AsyncStore(opened, threaded=False)
        follower = ChangeLog(CONFIG, store=store, not_leading=lambda: "a follower")
        await follower.record(change(NOW - 5))
        assert await store.get_state("changes") is None
        fresh = ChangeLog(CONFIG, store=store)
        await fresh.load(strict=True)
    assert len(fresh) == 0


async def test_a_bad_saved_state_is_not_loaded(tmp_path: Path):
    with Store.open(tmp_path / "k.sqlite3") as opened:
        store = AsyncStore(opened, threaded=False)
        await store.set_state("changes", {"changes": [{"id": "chg-1"}]})
        log = ChangeLog(CONFIG, store=store)
        await log.load()
    assert len(log) == 0


# --- the planner: rollback of a recent change first -------------------------------------

REGRESSION = builders.cause("policy_regression", confidence=0.85)
SCALE = CandidateAction(type=ActionType.SCALE_UP)
LKG = CandidateAction(
    type=ActionType.APPLY_POLICY, parameters={"policy_id": "last_known_good"}, benefit=0.9
)
V41 = CandidateAction(type=ActionType.APPLY_POLICY, parameters={"policy_id": "v41"})


def planned(*causes: Cause, changes=None, remediations=None):
    planner = Planner(
        PlannerConfig(
            remediations=remediations or {"policy_regression": ((SCALE,), (LKG,))},
            exploration=0.0,
        )
    )
    analysis = AnalysisResult(at=NOW, violations=1, patterns=(), causes=causes)
    return planner.generate_policies(analysis, knowledge={}, now=NOW, changes=changes)


def deploy(rollback: CandidateAction | None) -> Change:
    return Change(
        id="chg-7",
        target="charter",
        kind="deploy",
        at=NOW - 120,
        description="policy v42",
        rollback=rollback,
    )


def test_without_a_change_the_configured_candidates_rank_by_score():
    policies = planned(REGRESSION)
    assert [p.actions[0].parameters for p in policies] == [{"policy_id": "last_known_good"}, {}]
    assert "change" not in policies[0].rationale


def test_the_rollback_of_a_recent_change_ranks_first_and_says_why():
    key = ("policy_regression", "charter")
    policies = planned(REGRESSION, changes={key: deploy(V41)})
    first = policies[0]
    assert first.actions[0].parameters == {"policy_id": "v41"}
    assert first.rationale.startswith(
        "rollback of change chg-7 (deploy 'policy v42' 120 s ago): apply_policy for"
    )
    # Still scored honestly (its own posterior), and the others keep their order after it.
    assert first.score.score == pytest.approx(0.85 * 0.6 - 0.1)
    assert [p.actions[0].parameters for p in policies[1:]] == [
        {"policy_id": "last_known_good"},
        {},
    ]
    assert all("after change chg-7" in p.rationale for p in policies[1:])


def test_the_rollback_outranks_another_cause_only_where_its_cause_would():
    crash = builders.cause("members_unhealthy", confidence=1.0)
    remediations = {
        "policy_regression": ((SCALE,),),
        "members_unhealthy": ((CandidateAction(type=ActionType.RESTART_SERVICE, benefit=1.0),),),
    }
    changes = {("policy_regression", "charter"): deploy(V41)}
    policies = planned(REGRESSION, crash, changes=changes, remediations=remediations)
    assert [p.cause.name for p in policies] == [
        "members_unhealthy",
        "policy_regression",
        "policy_regression",
    ]
    assert policies[1].actions[0].parameters == {"policy_id": "v41"}


def test_a_rollback_equal_to_a_configured_candidate_is_planned_once():
    policies = planned(REGRESSION, changes={("policy_regression", "charter"): deploy(LKG)})
    assert len({p.id for p in policies}) == len(policies) == 2
    assert policies[0].rationale.startswith("rollback of change chg-7")


def test_a_change_without_a_rollback_keeps_the_order_and_is_named():
    policies = planned(REGRESSION, changes={("policy_regression", "charter"): deploy(None)})
    assert [p.actions[0].parameters for p in policies] == [{"policy_id": "last_known_good"}, {}]
    assert policies[0].rationale.endswith("; after change chg-7 (deploy 'policy v42' 120 s ago)")


def test_a_change_on_another_target_or_cause_changes_nothing():
    plain = planned(REGRESSION)
    other = planned(REGRESSION, changes={("policy_regression", "db"): deploy(V41)})
    assert [p.rationale for p in other] == [p.rationale for p in plain]
