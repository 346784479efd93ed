"""A real Alertmanager (Debian `prometheus-alertmanager`) delivers to the daemon's webhook.

The test starts Alertmanager on loopback with its own config and storage, its webhook
receiver pointing at the app with a bearer token read from a file, posts an alert to
Alertmanager's API and waits (bounded) for the daemon's trigger.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from am_support import (
    AMTOOL,
    DEADLINE_S,
    INSTALL_HINT,
    TOKEN,
    alertmanager,
    alertmanager_config,
    am_alert,
    now_rfc3339,
)
from prometheus_client import CollectorRegistry

from mape_k.config import ServerConfig
from mape_k.integrations.alertmanager import (
    Alert,
    AlertInbox,
    AlertMessageRouter,
    AlertStatus,
    IngestResult,
)
from mape_k.metrics import Metrics
from mape_k.models import Severity
from mape_k.server import build_app

pytestmark = pytest.mark.integration


class EventControl:
    """A DaemonControl whose trigger sets an asyncio.Event (the loop's wake-up)."""

    def __init__(self) -> None:
        self.triggered = asyncio.Event()
        self.triggers: list[str] = []

    def trigger(self, reason: str) -> None:
        self.triggers.append(reason)
        self.triggered.set()

    async def health(self) -> tuple[bool, str]:
        return True, "ok"

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        return True, {}

    async def statistics(self) -> dict[str, Any]:
        return {}

    async def pending_approvals(self) -> list[dict[str, Any]]:
        return []

    async def approve(self, policy_id: str, *, caller: str) -> dict[str, Any] | None:
        return None

    async def reject(self, policy_id: str, *, caller: str) -> dict[str, Any] | None:
        return None

    async def freeze(self, reason: str, duration_s: float | None, *, caller: str) -> dict[str, Any]:
        return {}

    async def unfreeze(self, *, caller: str) -> dict[str, Any]:
        return {}

    async def set_dry_run(self, enabled: bool, *, caller: str) -> dict[str, Any]:
        return {}

    async def clear_hold(self, target: str, *, caller: str) -> dict[str, Any] | None:
        return None

    async def record_control(self, *, route: str, body: dict[str, Any], caller: str) -> None:
        return None


@dataclass
class Stack:
    daemon_url: str
    alertmanager_url: str
    control: EventControl
    inbox: AlertInbox
    metrics: Metrics
    resolved: asyncio.Event


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    metrics = Metrics(CollectorRegistry())
    inbox = AlertInbox(max_alerts=100, metrics=metrics)
    resolved = asyncio.Event()

    def default_handler(alerts: Sequence[Alert]) -> IngestResult:
        result = inbox.offer(alerts)
        if any(a.status is AlertStatus.RESOLVED for a in alerts):
            resolved.set()
        return result

    router = AlertMessageRouter()
    router.register_default_handler(default_handler)
    control = EventControl()
    app = build_app(
        control=control,
        router=router,
        metrics=metrics,
        config=ServerConfig(host="127.0.0.1", port=0),
        webhook_token=TOKEN,
        admin_token=None,
    )
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    daemon_url = f"http://{host}:{port}"

    try:
        async with alertmanager(tmp_path, webhook_url=f"{daemon_url}/api/v1/alerts") as am_url:
            yield Stack(daemon_url, am_url, control, inbox, metrics, resolved)
    finally:
        await runner.cleanup()


async def test_real_alertmanager_delivery_triggers_the_daemon(stack: Stack) -> None:
    alert = am_alert()
    async with httpx.AsyncClient(timeout=5.0) as client:
        posted = await client.post(f"{stack.alertmanager_url}/api/v2/alerts", json=[alert])
        assert posted.status_code == 200, posted.text

        await asyncio.wait_for(stack.control.triggered.wait(), timeout=DEADLINE_S)

        assert stack.control.triggers == ["alert"]
        [violation] = stack.inbox.firing()
        assert (violation.kind, violation.component, violation.severity) == (
            "high_failure_rate",
            "charter",
            Severity.CRITICAL,
        )
        received = stack.metrics.registry.get_sample_value(
            "mapek_alerts_received_total", {"status": "firing"}
        )
        assert received is not None
        assert received >= 1

        # Without the token the same webhook refuses, while Alertmanager's delivery landed.
        payload = {"version": "4", "alerts": []}
        refused = await client.post(f"{stack.daemon_url}/api/v1/alerts", json=payload)
        assert refused.status_code == 401
        unauthorized = stack.metrics.registry.get_sample_value(
            "mapek_webhook_rejections_total", {"reason": "unauthorized"}
        )
        assert unauthorized == 1

        # Resolving it at Alertmanager clears the violation without a new trigger.
        ended = await client.post(
            f"{stack.alertmanager_url}/api/v2/alerts", json=[{**alert, "endsAt": now_rfc3339()}]
        )
        assert ended.status_code == 200, ended.text
        await asyncio.wait_for(stack.resolved.wait(), timeout=DEADLINE_S)
        assert stack.inbox.firing() == []
        assert stack.control.triggers == ["alert"]


def test_shipped_style_receiver_config_passes_amtool(tmp_path: Path) -> None:
    if shutil.which(AMTOOL) is None:
        pytest.fail(f"{AMTOOL} not found; {INSTALL_HINT}")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config_file = tmp_path / "am.yml"
    config_file.write_text(
        alertmanager_config(
            webhook_url="http://127.0.0.1:8001/api/v1/alerts", token_file=token_file
        )
    )
    result = subprocess.run(
        [AMTOOL, "check-config", str(config_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 receivers" in result.stdout
