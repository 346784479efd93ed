"""`mape-k status`: /stats rendered for a terminal, and fetched with clear errors."""

from __future__ import annotations

import httpx
import pytest
import respx

from mape_k.errors import MapekError
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


def test_render_shows_scalars_sections_and_the_last_items() -> None:
    text = render_status(STATS)
    lines = text.splitlines()
    assert "iteration: 12" in lines
    assert "dry_run: no" in lines
    assert "last_started_at: 2026-11-22 04:17:10Z" in lines
    assert "mean_cycle_s: 0.01235" in lines
    assert "  reason: incident 42" in lines
    assert "Last iterations (12):" in lines
    assert "  … 2 earlier" in lines
    assert "  - id=it-11 result=idle started_at=2026-11-22 04:17:21Z" in lines
    assert "Pending approvals: none" in lines
    assert text.index("frozen:") < text.index("Last iterations") < text.index("Knowledge")


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


def test_iterations_render_as_one_decision_line_each_oldest_first():
    stats = {
        "iterations": [
            {
                "started_at": 60.0,
                "result": "acted",
                "choice": {"why": "restart_service on charter"},
            },
            {"started_at": 30.0, "result": "idle", "choice": {"why": "no violations"}},
        ]
    }
    text = render_status(stats)
    first = text.index("1970-01-01 00:00:30Z  idle")
    second = text.index("1970-01-01 00:01:00Z  acted            restart_service on charter")
    assert first < second
