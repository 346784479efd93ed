"""A real Alertmanager delivers to the real daemon (app.run), which iterates within 2 s.

The daemon runs in-process on a free port with the mock Charter and an interval of an
hour, so only the alert can wake it; Alertmanager 0.25 runs as a process with the
webhook's bearer token in a file, the way `http_config.authorization` sends it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from am_support import alertmanager, am_alert, in_process_daemon

pytestmark = pytest.mark.integration
DEADLINE_S = 20.0


async def test_an_alert_from_a_real_alertmanager_starts_an_iteration_within_two_seconds(
    tmp_path: Path,
) -> None:
    async with in_process_daemon(tmp_path / "k.sqlite3", deadline_s=DEADLINE_S) as parts:
        delivered: list[float] = []
        route = parts.router.route_alerts

        def timed_route(alerts):  # the moment the webhook hands the delivery to the inbox
            delivered.append(time.time())
            return route(alerts)

        parts.router.route_alerts = timed_route  # type: ignore[method-assign]
        iterations: asyncio.Queue[dict] = asyncio.Queue()
        parts.orchestrator.listeners.append(iterations.put_nowait)
        await asyncio.wait_for(iterations.get(), DEADLINE_S)  # the start-up slot

        webhook = f"http://127.0.0.1:{parts.port}/api/v1/alerts"
        async with alertmanager(tmp_path, webhook_url=webhook) as am_url:
            async with httpx.AsyncClient(timeout=5.0) as client:
                alert = am_alert(cause="charter_down")
                posted = await client.post(f"{am_url}/api/v2/alerts", json=[alert])
                assert posted.status_code == 200, posted.text
            record = await asyncio.wait_for(iterations.get(), DEADLINE_S)

    assert delivered, "Alertmanager never delivered to the daemon"
    reaction = record["started_at"] - delivered[0]
    assert 0 <= reaction < 2.0, f"iteration started {reaction:.3f} s after delivery"
    kinds = {(v["kind"], v["source"]) for v in record["inputs"]["violations"]}
    assert ("charter_down", "alert") in kinds
    assert record["result"] == "acted"
