"""MapekNeedsHuman against a real Alertmanager: when the target breaker holds a target for
a human, the daemon's loop posts the alert (API v2) and Alertmanager holds it, with its
labels and annotations, and notifies its receiver; once an operator clears the hold, the
next iteration resolves it: Alertmanager no longer lists it and notifies it resolved.

The receiver here is a small aiohttp app standing for the operators' pager; each check
waits (bounded) on the event its handler sets, never on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from am_support import DEADLINE_S, alertmanager

from builders import TARGET, outcome
from builders import settings as settings_for
from fakes import FakeClock
from mape_k.app import build
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.models import OutcomeType

pytestmark = pytest.mark.integration


class Pager:
    """Alertmanager's webhook receiver: every notification's alerts, by status."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.alerts.extend(body["alerts"])
        self.changed.set()
        return web.json_response({"ok": True})

    async def wait_for(self, status: str) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                for alert in self.alerts:
                    if alert["status"] == status and alert["labels"]["alertname"] == (
                        "MapekNeedsHuman"
                    ):
                        return alert
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def pager() -> AsyncIterator[tuple[Pager, str]]:
    receiver = Pager()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield receiver, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def _needs_human(am_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        answer = await client.get(
            f"{am_url}/api/v2/alerts", params={"filter": 'alertname="MapekNeedsHuman"'}
        )
    answer.raise_for_status()
    alerts: list[dict[str, Any]] = answer.json()
    return alerts


async def test_a_hold_fires_mapek_needs_human_and_clearing_it_resolves_it(
    tmp_path: Path,
) -> None:
    # Alertmanager reads startsAt / endsAt on its real time: the loop's clock runs 2 min
    # behind it, so that advancing it for a re-send still resolves at once (endsAt = now).
    clock = FakeClock(time.time() - 120)
    async with pager() as (receiver, hook), alertmanager(tmp_path, webhook_url=hook) as am_url:
        settings = settings_for(
            tmp_path,
            **{
                "guards.target_breaker.alert.url": am_url,
                "guards.target_breaker.failures": 2,
            },
        )
        world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
        async with build(settings, world=world, clock=clock) as parts:
            envelope = parts.orchestrator.envelope
            for n, kind in enumerate((OutcomeType.INEFFECTIVE, OutcomeType.DEGRADATION)):
                verdict = outcome(f"e{n}", outcome=kind, recorded_at=clock())
                await parts.store.record_outcome(verdict)
                envelope.note_outcome(verdict, now=clock())
            assert TARGET in envelope.needs_human

            await parts.orchestrator.run_once()
            [held] = await _needs_human(am_url)
            assert held["status"]["state"] == "active"
            assert held["labels"] == {
                "alertname": "MapekNeedsHuman",
                "target": TARGET,
                "cause": "high_failure_rate",
                "severity": "critical",
                "component": "mape-k",
            }
            assert (
                "restart_service for high_failure_rate: degradation"
                in (held["annotations"]["tried"])
            )
            assert f"DELETE /api/v1/holds/{TARGET}" in held["annotations"]["clear"]
            firing = await receiver.wait_for("firing")
            assert firing["labels"]["target"] == TARGET

            clock.advance(60)  # a re-send: the same alert, not a second one
            await parts.orchestrator.run_once()
            [again] = await _needs_human(am_url)
            assert again["fingerprint"] == held["fingerprint"]

            assert await parts.orchestrator.clear_hold(TARGET, now=clock())
            await parts.orchestrator.run_once()
            resolved = await receiver.wait_for("resolved")
            assert resolved["labels"] == held["labels"]
            assert await _needs_human(am_url) == []
