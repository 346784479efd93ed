"""Helpers for the HTTP face tests: a recording DaemonControl, an app factory, fixture paths."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

import fakes
from mape_k.config import ChangesConfig, PlannerConfig, ServerConfig
from mape_k.integrations.alertmanager import AlertInbox, AlertMessageRouter
from mape_k.loop.changes import ChangeLog
from mape_k.metrics import Metrics
from mape_k.server import build_app

FIXTURES = fakes.FIXTURES / "alertmanager" / "webhook"
WEBHOOK_TOKEN = "s3cr3t-test-token"
ADMIN_TOKEN = "admin-test-token"


def fixture_payload(name: str) -> dict[str, Any]:
    """A webhook body from the captured fixtures (retry files hold it under `payload`)."""
    document = json.loads((FIXTURES / name).read_text())
    return document.get("payload", document)


class FakeControl:
    """Implements mape_k.server.DaemonControl and records every call."""

    def __init__(self) -> None:
        self.triggers: list[str] = []
        self.follower: str | None = None
        self.records: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any, str]] = []
        self.alive: tuple[bool, str] = (True, "last iteration 3.0 s ago")
        self.ready: tuple[bool, dict[str, str]] = (
            True,
            {"prometheus": "ok", "knowledge": "ok", "charter": "ok"},
        )
        self.stats: dict[str, Any] = {"statistics": {"iterations": 3}, "last_iterations": []}
        self.pending: list[dict[str, Any]] = [{"policy_id": "pol-1", "action": "restart_service"}]
        self.holds: set[str] = {"charter"}
        self.statistics_error: Exception | None = None
        self.stats_pages: list[tuple[int, float | None]] = []  # (limit, before) asked for

    def trigger(self, reason: str) -> None:
        self.triggers.append(reason)

    async def health(self) -> tuple[bool, str]:
        return self.alive

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        return self.ready

    async def statistics(self, *, limit: int, before: float | None) -> dict[str, Any]:
        self.stats_pages.append((limit, before))
        if self.statistics_error is not None:
            raise self.statistics_error
        return self.stats

    async def pending_approvals(self) -> list[dict[str, Any]]:
        return list(self.pending)

    def _take(self, policy_id: str) -> dict[str, Any] | None:
        for item in self.pending:
            if item["policy_id"] == policy_id:
                self.pending.remove(item)
                return item
        return None

    async def approve(self, policy_id: str, *, caller: str) -> dict[str, Any] | None:
        self.calls.append(("approve", policy_id, caller))
        item = self._take(policy_id)
        return None if item is None else {"policy_id": policy_id, "status": "approved"}

    async def set_autonomy(
        self, key: str, level: str | None, reason: str, *, caller: str
    ) -> dict[str, Any]:
        self.calls.append(("set_autonomy", (key, level, reason), caller))
        if key.rpartition("/")[2] == "nope":
            return {"error": "no action 'nope' in planner.actions", "field": "key"}
        return {"key": key, "after": level, "by": "operator", "reason": reason}

    async def reject(self, policy_id: str, *, caller: str) -> dict[str, Any] | None:
        self.calls.append(("reject", policy_id, caller))
        item = self._take(policy_id)
        return None if item is None else {"policy_id": policy_id, "status": "rejected"}

    async def freeze(self, reason: str, duration_s: float | None, *, caller: str) -> dict[str, Any]:
        self.calls.append(("freeze", (reason, duration_s), caller))
        return {"frozen": True, "reason": reason, "duration_s": duration_s}

    async def unfreeze(self, *, caller: str) -> dict[str, Any]:
        self.calls.append(("unfreeze", None, caller))
        return {"frozen": False}

    async def set_dry_run(self, enabled: bool, *, caller: str) -> dict[str, Any]:
        self.calls.append(("dry_run", enabled, caller))
        return {"dry_run": enabled}

    async def clear_hold(self, target: str, *, caller: str) -> dict[str, Any] | None:
        self.calls.append(("clear_hold", target, caller))
        return None if target not in self.holds else {"target": target, "cleared": True}

    async def record_control(self, *, route: str, body: dict[str, Any], caller: str) -> None:
        self.records.append({"route": route, "body": body, "caller": caller})

    def not_leading(self) -> str | None:
        return self.follower  # None: it leads (or runs alone) and takes every call


@dataclass
class Harness:
    client: TestClient[Any, Any]
    control: FakeControl
    inbox: AlertInbox
    metrics: Metrics
    router: AlertMessageRouter
    extra: dict[str, Any] = field(default_factory=dict)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


MakeHarness = Callable[..., Awaitable[Harness]]


def make_app_parts(
    *,
    webhook_token: str | None = WEBHOOK_TOKEN,
    admin_token: str | None = ADMIN_TOKEN,
    max_alerts: int = 100,
    max_body_bytes: int = 1_048_576,
    host: str = "127.0.0.1",
    body_timeout_s: float = 30.0,
) -> tuple[Any, FakeControl, AlertInbox, Metrics, AlertMessageRouter]:
    metrics = Metrics(CollectorRegistry())
    inbox = AlertInbox(max_alerts=max_alerts, metrics=metrics)
    router = AlertMessageRouter()
    router.register_default_handler(inbox.offer)
    control = FakeControl()
    config = ServerConfig(
        host=host,
        max_body_bytes=max_body_bytes,
        inbox_max_alerts=max_alerts,
        body_timeout_s=body_timeout_s,
    )
    app = build_app(
        control=control,
        router=router,
        metrics=metrics,
        config=config,
        webhook_token=webhook_token,
        admin_token=admin_token,
        changes=ChangeLog(ChangesConfig(), actions=PlannerConfig().actions),
    )
    return app, control, inbox, metrics, router


def webhook_headers(token: str | None = WEBHOOK_TOKEN) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": "Alertmanager/0.25.0"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
