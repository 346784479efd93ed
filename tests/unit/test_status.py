"""`mape-k status`: /stats rendered for a terminal, and fetched with clear errors."""

from __future__ import annotations

import httpx
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import NOW
from mape_k.config import CandidateAction, ChangesConfig, Settings
from mape_k.errors import MapekError
from mape_k.loop.autonomy import Autonomy
from mape_k.loop.changes import Change, ChangeLog
from mape_k.models import ActionType
from mape_k.status import fetch_status, render_status

STATS = {
    "iteration": 12,
    "dry_run": False,
    "last_started_at": 1795321030.0,
    "mean_cycle_s": 0.012345,
    "frozen": {"reason": "incident 42", "until": None},
    "mean_phase_s": {"monitor": 0.01, "analyze": 0.001},
    "last_iterations": [
        {"id": f"it-{i}", "result": "idle", "started_at": 1795321030.0 + i} for i in range(12)
    ],
    "pending_approvals": [],
    "knowledge": {"outcomes": 3, "success_rate": {"high_failure_rate/restart_service": 0.66}},
}


def test_render_shows_decisions_first_then_scalars_and_sections() -> None:
    text = render_status(STATS)
    lines = text.splitlines()
    assert "iteration: 12" in lines
    assert "dry_run: no" in lines
    assert "last_started_at: 2026-11-22 04:17:10Z" in lines
    assert "mean_cycle_s: 0.01235" in lines
    assert "  reason: incident 42" in lines
    assert "Last decisions (12, newest first):" in lines
    assert lines[lines.index("Last decisions (12, newest first):") + 1].startswith(
        "  2026-11-22 04:17:21Z  idle"
    )
    assert "  … 2 older" in lines
    assert "  2026-11-22 04:17:11Z  idle" not in "\n".join(lines)  # the two oldest
    assert "Pending approvals: none" in lines
    assert "Holds: none" in lines
    order = ["Last decisions", "Pending approvals", "Holds", "iteration: 12", "frozen:"]
    assert [text.index(title) for title in order] == sorted(text.index(t) for t in order)
    assert text.index("frozen:") < text.index("Knowledge")


def test_render_truncates_long_items_and_survives_odd_shapes() -> None:
    text = render_status({"last_iterations": [{"note": "x" * 500}, 7, None]}, width=60)
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "  - -" in text.splitlines()
    assert render_status({"started_at": 1e300}).endswith("started_at: 1e+300")


@respx.mock
async def test_fetch_status_reads_stats_from_the_base_url() -> None:
    route = respx.get("http://127.0.0.1:8001/stats").mock(
        return_value=httpx.Response(200, json=STATS)
    )
    assert await fetch_status("http://127.0.0.1:8001/") == STATS
    assert await fetch_status("http://127.0.0.1:8001/stats") == STATS
    assert route.call_count == 2


@respx.mock
@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(503, text="down"), "HTTP 503"),
        (httpx.Response(200, text="<html>"), "did not answer JSON"),
        (httpx.Response(200, json=[1]), "not an object"),
        (httpx.ConnectError("refused"), "cannot reach"),
    ],
)
async def test_fetch_status_failures_are_mapek_errors(response: object, message: str) -> None:
    respx.get("http://127.0.0.1:8001/stats").mock(
        side_effect=[response] if isinstance(response, Exception) else None,
        return_value=None if isinstance(response, Exception) else response,
    )
    with pytest.raises(MapekError, match=message):
        await fetch_status("http://127.0.0.1:8001")


LONG_REASON = (
    "charter failed after 3 remediations in 900 s (restart_service twice, scale_up once) and "
    "none of them brought the error ratio under 5 %: a human must look at the members, the "
    "database and the last deploy, then clear the hold with POST /control/needs-human/charter"
)


def _guards(**overrides: object) -> dict[str, object]:
    """The guards section of /stats as the envelope's snapshot shapes it (no hold)."""
    guards: dict[str, object] = {
        "dry_run": False,
        "freeze": None,
        "freeze_window": None,
        "startup": {"ok": True, "problem": None},
        "approvals": [],
        "cooldowns": [{"target": "charter", "action_type": "scale_up", "until": 120.0}],
        "velocity": {"window_s": 600, "actions": 1, "max_actions": 5},
        "oscillating_targets": [],
        "charter_circuit": {
            "state": "closed",
            "failures": 0,
            "opened_at": None,
            "until": None,
            "last_error": None,
            "phase": "closed",
        },
        "needs_human": [],
        "failed_remediations": {"charter": 3},
    }
    return {**guards, **overrides}


def _joined(text: str) -> str:
    """The text with its wrapping and padding undone (every whitespace run one space)."""
    return " ".join(text.split())


def test_iterations_render_as_one_decision_line_each_newest_first():
    stats = {
        "iterations": [
            {"started_at": 30.0, "result": "idle", "choice": {"why": "no violations"}},
            {
                "started_at": 60.0,
                "result": "acted",
                "choice": {"why": "restart_service on charter"},
            },
        ]
    }
    text = render_status(stats)
    newest = text.index("  1970-01-01 00:01:00Z  acted            restart_service on charter")
    older = text.index("  1970-01-01 00:00:30Z  idle             no violations")
    assert newest < older


def test_a_hold_reason_is_never_cut_and_its_expiry_is_shown():
    stats = {
        "guards": _guards(
            needs_human=[{"target": "charter", "since": 0.0, "until": None, "reason": LONG_REASON}],
            freeze={"reason": LONG_REASON, "since": 0.0, "until": 3600.0, "source": "operator x"},
        )
    }
    text = render_status(stats, width=80)
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert _joined(text).count(LONG_REASON) == 2
    assert (
        "- needs a human: charter (since 1970-01-01 00:00:00Z, no expiry): charter failed"
        in _joined(text)
    )
    assert (
        "- frozen (since 1970-01-01 00:00:00Z, until 1970-01-01 01:00:00Z, by operator x):"
        in _joined(text)
    )
    assert "Holds (2):" in text.splitlines()


def test_backoffs_and_an_open_breaker_are_holds_an_expired_backoff_is_not():
    backoff = {"target": "web", "since": 0.0, "until": 600.0, "level": 2, "reason": LONG_REASON}
    stats = {
        "guards": _guards(
            oscillating_targets=[
                {**backoff, "active": True},
                {**backoff, "target": "old", "reason": "expired one", "active": False},
            ],
            charter_circuit={
                "state": "open",
                "failures": 5,
                "opened_at": 0.0,
                "until": 60.0,
                "last_error": "CharterUnavailable: connection refused",
                "phase": "open",
            },
            startup={"ok": False, "problem": "charter API unreachable at start"},
        )
    }
    text = _joined(render_status(stats, width=70))
    assert (
        "- back-off: web (since 1970-01-01 00:00:00Z, until 1970-01-01 00:10:00Z, level 2): "
        f"{LONG_REASON}" in text
    )
    assert (
        "- Charter breaker open (since 1970-01-01 00:00:00Z, until 1970-01-01 00:01:00Z, "
        "5 failures): CharterUnavailable: connection refused" in text
    )
    assert "- startup problem: charter API unreachable at start" in text
    assert "Holds (3):" in text
    assert "back-off: old" not in text
    assert (
        text.index("Holds (3):") < text.index("oscillating_targets (1):") < text.index("target=old")
    )


def test_decisions_then_approvals_then_holds_then_guard_internals():
    hold = {"target": "charter", "since": 0.0, "until": 900.0, "reason": LONG_REASON}
    stats = {
        "guards": _guards(needs_human=[hold]),
        "orchestrator": {"iteration": 7},
        "iterations": [
            {"id": "it-1", "started_at": 90.0, "result": "held", "choice": {"why": LONG_REASON}}
        ],
        "pending_approvals": [
            {
                "policy_id": "p-1",
                "cause": "high_failure_rate",
                "actions": ["scale_up", "throttle_requests"],
                "score": 0.712,
                "created_at": 60.0,
                "rationale": "scale_up needs approval",
            }
        ],
        "knowledge": {"outcomes": 3},
    }
    text = render_status(stats, width=80)
    order = [
        "Last decisions (1, newest first):",
        "Pending approvals (1):",
        "Holds (1):",
        "Guards:",
        "orchestrator:",
        "Knowledge:",
    ]
    assert [text.index(title) for title in order] == sorted(text.index(t) for t in order)
    joined = _joined(text)
    assert f"1970-01-01 00:01:30Z held {LONG_REASON}" in joined  # the why whole, too
    assert (
        "- p-1 high_failure_rate [scale_up, throttle_requests] score 0.712 "
        "since 1970-01-01 00:01:00Z scale_up needs approval" in joined
    )
    assert "until 1970-01-01 00:15:00Z" in joined
    guards = text[text.index("Guards:") :]
    assert "needs_human" not in guards  # shown in full above, not again cut in the internals
    assert "cooldowns (1):" in guards
    assert "until=1970-01-01 00:02:00Z" in guards
    assert "  failed_remediations:" in guards


@pytest.mark.parametrize(
    "guards",
    [
        [1, 2],
        "frozen",
        {"needs_human": "charter", "freeze": "yes", "charter_circuit": ["open"]},
        {"needs_human": [None, {"reason": 3}], "oscillating_targets": [7, {"active": True}]},
        {"charter_circuit": {"phase": "open"}, "startup": {"ok": False}, "freeze": {}},
    ],
)
def test_odd_guard_shapes_render_without_failing(guards: object) -> None:
    text = render_status({"guards": guards, "iterations": "x", "pending_approvals": {"a": 1}})
    assert text.startswith("mape-k status")
    assert "Holds" in text


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
_KEYS = st.sampled_from(
    ["needs_human", "oscillating_targets", "charter_circuit", "freeze", "startup", "x"]
)


@settings(max_examples=100, deadline=None)
@given(
    guards=_JSON | st.dictionaries(_KEYS, _JSON),
    iterations=_JSON,
    approvals=_JSON,
    width=st.integers(10, 120),
)
def test_render_never_fails_on_any_json(
    guards: object, iterations: object, approvals: object, width: int
) -> None:
    stats = {"guards": guards, "iterations": iterations, "pending_approvals": approvals}
    assert render_status(stats, width=width).startswith("mape-k status")


def test_terminal_control_characters_from_labels_are_shown_escaped():
    hostile = "esc\x1b[2J\x1b]0;pwned\x07\x9b31m"
    text = render_status(
        {
            "iterations": [
                {"id": "1", "started_at": 1.0, "result": "idle", "choice": {"why": hostile}}
            ],
            "guards": {"needs_human": [{"target": hostile, "reason": hostile, "until": None}]},
        }
    )
    assert not any(ch in text for ch in "\x1b\x07\x9b")
    assert "esc\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m" in text


@respx.mock
async def test_fetch_status_sends_the_token_as_a_bearer() -> None:
    route = respx.get("http://127.0.0.1:8001/stats").mock(
        return_value=httpx.Response(200, json=STATS)
    )
    await fetch_status("http://127.0.0.1:8001", token="viewer-xyz")
    assert route.calls.last.request.headers["Authorization"] == "Bearer viewer-xyz"


def test_a_replica_says_first_whether_it_leads() -> None:
    follower = {
        "mode": "replicas",
        "replica": "mapek-b",
        "role": "follower",
        "epoch": None,
        "why": "follower: mapek-a leads (epoch 7, lease for 12.0 s)",
    }
    text = render_status({"ha": follower, "iterations": []})
    assert (
        text.splitlines()[2]
        == "replica mapek-b: follower: mapek-a leads (epoch 7, lease for 12.0 s)"
    )
    leader = {**follower, "replica": "mapek-a", "role": "leader", "epoch": 7, "why": None}
    assert render_status({"ha": leader}).splitlines()[2] == "replica mapek-a: leader (epoch 7)"
    single = {"mode": "single", "replica": "h:8001", "role": "leader", "epoch": None}
    assert "replica " not in render_status({"ha": single}).splitlines()[2]


def test_autonomy_and_predictions_show_what_autonomy_is_raised_on():
    stats = {
        "autonomy": {
            "levels": {
                "scale_up": {
                    "level": "approve",
                    "configured": "shadow",
                    "min": "shadow",
                    "max": "auto",
                    "demoted": False,
                }
            },
            "shadow": [
                {
                    "cause": "overload",
                    "actions": "scale_up",
                    "would_do": 12,
                    "scored": 10,
                    "precision": 0.85,
                    "saved_s": 1240.4,
                    "cleared": 2,
                    "fixed_by_other": 0,
                    "persisted": 7,
                    "worse": 1,
                }
            ],
            "changes": [
                {
                    "at": 1_700_000_000.0,
                    "key": "scale_up",
                    "before": "shadow",
                    "after": "approve",
                    "by": "promotion",
                    "reason": "shadow precision 0.85 over 10 would-dos",
                }
            ],
        },
        "predictions": {
            "rules": {
                "overload": {
                    "raised": 5,
                    "came_true": 4,
                    "did_not": 1,
                    "prevented": 0,
                    "open": 0,
                    "precision": 0.8,
                    "recall": 1.0,
                }
            }
        },
    }
    text = render_status(stats, width=200)
    assert "  scale_up: approve [shadow..auto]" in text
    assert (
        "  shadow overload/scale_up: 12 would-do, 10 scored, precision 0.85 (est.), would have"
        " saved 1240 s; cleared by itself 2, fixed by someone else 0, persisted 7, worse 1"
    ) in text
    assert "scale_up: shadow -> approve by promotion: shadow precision 0.85" in text
    assert (
        "  overload: raised 5, came true 4, did not 1, prevented 0, open 0; precision 0.80,"
        " recall 1.00"
    ) in text
    assert (
        render_status({"autonomy": {"levels": {}, "shadow": [], "changes": []}}).count("Autonomy")
        == 0
    )


def test_a_change_window_shows_the_target_lowered_and_its_change_of_level():
    changes = ChangeLog(ChangesConfig(window_s=600))
    undo = CandidateAction(type=ActionType.APPLY_POLICY, parameters={"policy_id": "v41"})
    changes.add(Change(id="chg-1", target="charter", kind="deploy", at=NOW - 60,
                       description="v42", rollback=undo))  # fmt: skip
    autonomy = Autonomy(Settings(), changes=changes)
    autonomy.note_windows(NOW)
    text = render_status({"autonomy": autonomy.as_dict()}, width=300)
    assert (
        "  charter: every action one level down until 2023-11-14 22:22:20Z, after change chg-1"
        " (deploy 'v42'); its rollback (apply_policy) keeps its level"
    ) in text
    assert (
        "2023-11-14 22:13:20Z every action on charter: auto -> approve by change_window: every"
        " action on charter one level down until 2023-11-14T22:22:20Z after change chg-1"
    ) in text
