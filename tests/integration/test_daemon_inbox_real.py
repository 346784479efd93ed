"""The real daemon (app.run) and a real Alertmanager 0.25: what the inbox makes of deliveries.

Alerts are posted through Alertmanager's API v2 with a sender-set startsAt. A resolve posted
with an earlier startsAt is merged by Alertmanager into the alert it holds and delivered
with that earlier startsAt: the daemon must still take it as the end of the firing alert.
The inbox is kept in the knowledge store, so a restarted daemon still has what fires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from am_support import alertmanager, am_alert, in_process_daemon, shipped_max_alerts

from mape_k.app import Components
from mape_k.integrations.alertmanager import Alert, AlertStatus, IngestResult

pytestmark = pytest.mark.integration
DEADLINE_S = 20.0


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


@contextlib.asynccontextmanager
async def daemon(knowledge: Path) -> AsyncIterator[tuple[Components, asyncio.Queue[list[Alert]]]]:
    """The daemon (am_support.in_process_daemon); yields it and its deliveries."""
    async with in_process_daemon(knowledge, deadline_s=DEADLINE_S) as parts:
        deliveries: asyncio.Queue[list[Alert]] = asyncio.Queue()
        route = parts.router.route_alerts

        def recording_route(alerts: Sequence[Alert]) -> IngestResult:
            result = route(alerts)  # the inbox has taken them when the test looks
            deliveries.put_nowait(list(alerts))
            return result

        parts.router.route_alerts = recording_route  # type: ignore[method-assign]
        yield parts, deliveries


async def delivered(deliveries: asyncio.Queue[list[Alert]], status: AlertStatus) -> Alert:
    """The next delivered alert with this status (bounded by DEADLINE_S)."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            for alert in await deliveries.get():
                if alert.status is status:
                    return alert


async def firing_count(client: httpx.AsyncClient, parts: Components) -> Any:
    stats = await client.get(f"http://127.0.0.1:{parts.port}/stats")
    assert stats.status_code == 200, stats.text
    return stats.json()["alerts"]["firing"]


async def test_a_resolve_posted_with_an_earlier_starts_at_ends_the_alert_in_the_daemon(
    tmp_path: Path,
) -> None:
    async with daemon(tmp_path / "k.sqlite3") as (parts, deliveries):
        webhook = f"http://127.0.0.1:{parts.port}/api/v1/alerts"
        async with (
            alertmanager(tmp_path, webhook_url=webhook) as am_url,
            httpx.AsyncClient(timeout=5.0) as client,
        ):
            now = datetime.now(tz=UTC).timestamp()
            fired_at = now - 60
            alert = am_alert(cause="charter_down") | {"startsAt": rfc3339(fired_at)}
            posted = await client.post(f"{am_url}/api/v2/alerts", json=[alert])
            assert posted.status_code == 200, posted.text
            firing = await delivered(deliveries, AlertStatus.FIRING)
            assert firing.started == pytest.approx(fired_at, abs=0.001)
            assert [v.kind for v in parts.inbox.firing()] == ["charter_down"]

            # The sender resolves it with an earlier startsAt and endsAt = now.
            ended_at = datetime.now(tz=UTC).timestamp()
            resolve = alert | {"startsAt": rfc3339(fired_at - 60), "endsAt": rfc3339(ended_at)}
            posted = await client.post(f"{am_url}/api/v2/alerts", json=[resolve])
            assert posted.status_code == 200, posted.text
            resolved = await delivered(deliveries, AlertStatus.RESOLVED)
            # What Alertmanager delivered: the same fingerprint, an earlier startsAt than
            # the firing delivery's, an endsAt after it.
            assert resolved.fingerprint == firing.fingerprint
            assert resolved.started < firing.started
            assert resolved.ends is not None
            assert resolved.ends > firing.started
            assert parts.inbox.firing() == []
            assert await firing_count(client, parts) == 0

            # A genuinely new firing: its startsAt is after the resolve's endsAt.
            refired_at = datetime.now(tz=UTC).timestamp()
            assert refired_at > resolved.ends
            alert = alert | {"startsAt": rfc3339(refired_at)}
            posted = await client.post(f"{am_url}/api/v2/alerts", json=[alert])
            assert posted.status_code == 200, posted.text
            refired = await delivered(deliveries, AlertStatus.FIRING)
            assert refired.started == pytest.approx(refired_at, abs=0.001)
            assert [v.kind for v in parts.inbox.firing()] == ["charter_down"]
            assert await firing_count(client, parts) == 1


async def test_an_alert_alertmanager_delivered_still_fires_after_the_daemon_restarts(
    tmp_path: Path,
) -> None:
    knowledge = tmp_path / "k.sqlite3"
    async with daemon(knowledge) as (parts, deliveries):
        webhook = f"http://127.0.0.1:{parts.port}/api/v1/alerts"
        async with (
            alertmanager(tmp_path, webhook_url=webhook) as am_url,
            httpx.AsyncClient(timeout=5.0) as client,
        ):
            posted = await client.post(
                f"{am_url}/api/v2/alerts", json=[am_alert(cause="charter_down")]
            )
            assert posted.status_code == 200, posted.text
            await delivered(deliveries, AlertStatus.FIRING)
            assert await firing_count(client, parts) == 1
    # Alertmanager would re-send it only after repeat_interval (1 h here): the store has it.
    async with daemon(knowledge) as (parts, _), httpx.AsyncClient(timeout=5.0) as client:
        assert await firing_count(client, parts) == 1
        assert [v.kind for v in parts.inbox.firing()] == ["charter_down"]


async def test_a_group_larger_than_the_shipped_max_alerts_arrives_truncated_and_lands(
    tmp_path: Path,
) -> None:
    max_alerts = shipped_max_alerts()
    async with daemon(tmp_path / "k.sqlite3") as (parts, deliveries):
        webhook = f"http://127.0.0.1:{parts.port}/api/v1/alerts"
        async with (
            alertmanager(tmp_path, webhook_url=webhook) as am_url,
            httpx.AsyncClient(timeout=10.0) as client,
        ):
            group = [
                am_alert(cause="charter_down", member=f"m{i}") for i in range(max_alerts + 100)
            ]
            posted = await client.post(f"{am_url}/api/v2/alerts", json=group)
            assert posted.status_code == 200, posted.text
            async with asyncio.timeout(DEADLINE_S):
                while len(await deliveries.get()) < max_alerts:
                    pass  # Alertmanager may flush part of the group first
            registry = parts.metrics.registry
            assert registry.get_sample_value("mapek_alerts_truncated_total") == 100
            too_large = {"reason": "too_large"}
            assert registry.get_sample_value("mapek_webhook_rejections_total", too_large) == 0
            assert registry.get_sample_value("mapek_inbox_full_total") == 0
            assert len(parts.inbox.firing()) >= max_alerts
