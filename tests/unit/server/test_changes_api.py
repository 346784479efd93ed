"""POST/GET /api/v1/changes over real HTTP: both body forms, auth, followers, and every bad
input a 4xx naming the field (never a 500)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from server_harness import ADMIN_TOKEN, FakeControl, admin_headers, fixture_payload

from fakes import FakeClock
from mape_k import openapi
from mape_k.config import ChangesConfig, PlannerConfig, ServerConfig
from mape_k.integrations.alertmanager import AlertMessageRouter
from mape_k.loop.changes import ChangeLog
from mape_k.metrics import Metrics
from mape_k.server import build_app
from mape_k.store import Store
from mape_k.storeio import AsyncStore

PATH = "/api/v1/changes"
# An hour after the captured fixtures' alerts started (changes.max_age_s is a day).
NOW = dt.datetime(2026, 11, 22, 5, tzinfo=dt.UTC).timestamp()
MAX_BODY = 4096
SPEC = openapi.document(openapi.DAEMON_API)["paths"][PATH]


def documented(method: str, status: int) -> bool:
    """Every status these tests see is in the daemon's OpenAPI document."""
    return str(status) in SPEC[method]["responses"]


@dataclass
class Api:
    client: TestClient[Any, Any]
    control: FakeControl
    changes: ChangeLog
    clock: FakeClock

    async def post(
        self, body: Any, *, token: str | None = ADMIN_TOKEN, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers.update(admin_headers(token))
        data = raw if raw is not None else json.dumps(body)
        response = await self.client.post(PATH, data=data, headers=headers)
        assert documented("post", response.status), response.status
        return response.status, await response.json()

    async def get(self, query: str = "", *, token: str | None = ADMIN_TOKEN) -> Any:
        headers = {} if token is None else admin_headers(token)
        response = await self.client.get(f"{PATH}{query}", headers=headers)
        assert documented("get", response.status), response.status
        return response


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    clock = FakeClock(NOW)
    with Store.open(tmp_path / "k.sqlite3") as opened:
        changes = ChangeLog(
            ChangesConfig(),
            actions=PlannerConfig().actions,
            store=AsyncStore(opened, threaded=False),
            clock=clock,
        )
        control = FakeControl()
        app = build_app(
            control=control,
            router=AlertMessageRouter(),
            metrics=Metrics(CollectorRegistry()),
            config=ServerConfig(max_body_bytes=MAX_BODY),
            webhook_token=None,
            admin_token=ADMIN_TOKEN,
            changes=changes,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        yield Api(client, control, changes, clock)
        await client.close()


async def test_a_plain_change_is_recorded_journaled_and_persisted(api: Api, tmp_path: Path):
    status, body = await api.post(
        {
            "target": "charter",
            "kind": "config",
            "description": "policy v42",
            "at": NOW - 60,
            "rollback": {"type": "apply_policy", "parameters": {"policy_id": "v41"}},
        }
    )
    assert status == 201, body
    change = body["change"]
    assert (change["target"], change["kind"], change["at"], change["source"]) == (
        "charter",
        "config",
        NOW - 60,
        "api",
    )
    assert change["rollback"] == {"type": "apply_policy", "parameters": {"policy_id": "v41"}}
    assert body["duplicate"] is False
    recent = api.changes.recent("charter", NOW)
    assert recent is not None
    assert recent.id == change["id"]
    [journaled] = api.control.records
    assert journaled["route"] == "POST /api/v1/changes"
    assert journaled["body"]["changes"][0]["id"] == change["id"]
    # Persisted: a fresh log over the same file has it.
    with Store.open(tmp_path / "k.sqlite3") as opened:
        fresh = ChangeLog(ChangesConfig(), store=AsyncStore(opened, threaded=False))
        await fresh.load()
    assert [c.id for c in fresh.latest(5)] == [change["id"]]
    # The same change again is no second one.
    again, repeat = await api.post(
        {
            "target": "charter",
            "kind": "config",
            "description": "policy v42",
            "at": NOW - 60,
            "rollback": {"type": "apply_policy", "parameters": {"policy_id": "v41"}},
        }
    )
    assert (again, repeat["duplicate"], len(api.changes)) == (200, True, 1)


async def test_an_alertmanager_payload_records_each_firing_alert(api: Api):
    payload = fixture_payload("grouped_firing_2_alerts.json")
    for alert in payload["alerts"]:
        alert["labels"]["target"] = alert["labels"].get("service", "charter")
    payload["alerts"][1]["labels"]["change_kind"] = "config"
    status, body = await api.post(payload)
    assert status == 201, body
    recorded = body["recorded"]
    assert [c["source"] for c in recorded] == ["webhook", "webhook"]
    assert recorded[1]["kind"] == "config"
    assert body["duplicates"] == []
    assert body["skipped"] == []
    # Alertmanager re-sends the group: nothing new.
    status, body = await api.post(payload)
    assert status == 200
    assert sorted(body["duplicates"]) == sorted(c["id"] for c in recorded)
    assert len(api.changes) == 2


async def test_a_resolved_payload_records_nothing(api: Api):
    payload = fixture_payload("grouped_resolved_2_alerts.json")
    status, body = await api.post(payload)
    assert status == 200, body
    assert body["recorded"] == []
    assert body["skipped"] == [
        "alerts[0]: resolved",
        "alerts[1]: resolved",
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "deploy"}, "target"),
        ({"target": "../etc", "kind": "deploy"}, "target"),
        ({"target": "charter", "kind": 3}, "kind"),
        ({"target": "charter", "kind": "deploy", "at": NOW + 3600}, "at"),
        ({"target": "charter", "kind": "deploy", "at": "yesterday"}, "at"),
        ({"target": "charter", "kind": "deploy", "window_s": -1}, "window_s"),
        ({"target": "charter", "kind": "deploy", "description": ["a"]}, "description"),
        ({"target": "charter", "kind": "deploy", "rollback": {"type": "rm_rf"}}, "rollback.type"),
        ({"target": "charter", "kind": "deploy", "rollback": []}, "rollback"),
        ({"target": "charter", "kind": "deploy", "extra": True}, "extra"),
        ({**fixture_payload("firing_single_alert.json"), "alerts": "none"}, "alerts"),
        ({**fixture_payload("firing_single_alert.json"), "receiver": 7}, "receiver"),
        ({"alerts": [], "version": "5"}, "version"),
        ({"alerts": []}, "version"),
        ([1, 2], "body"),
    ],
)
async def test_every_bad_field_is_a_400_naming_it(api: Api, body: Any, field: str):
    status, answer = await api.post(body)
    assert status == 400, answer
    assert answer["field"] == field
    assert answer["error"]
    assert len(api.changes) == 0
    assert api.control.records == []


async def test_a_bad_alert_label_is_a_400_naming_the_alert(api: Api):
    payload = fixture_payload("firing_single_alert.json")  # no target or component label
    status, answer = await api.post(payload)
    assert (status, answer["field"]) == (400, "alerts[0].labels.target")


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"\xff\xfe{}", 400, "body"),
        (b'{"target": "c", "kind": "deploy", "at": NaN}', 400, "body"),
        (b"x" * (MAX_BODY + 1), 413, "body"),
    ],
)
async def test_a_body_that_is_not_a_json_object_or_too_large_is_refused(
    api: Api, raw: bytes, status: int, field: str
):
    got, answer = await api.post(None, raw=raw)
    assert (got, answer["field"]) == (status, field)


async def test_the_content_type_must_be_json(api: Api):
    response = await api.client.post(
        PATH, data=b"{}", headers={**admin_headers(), "Content-Type": "text/plain"}
    )
    assert response.status == 415
    assert documented("post", 415)


async def test_the_admin_token_is_required(api: Api):
    status, _ = await api.post({"target": "charter", "kind": "deploy"}, token=None)
    assert status == 401
    status, _ = await api.post({"target": "charter", "kind": "deploy"}, token="wrong")
    assert status == 401
    response = await api.get(token=None)
    assert response.status == 401
    assert len(api.changes) == 0


async def test_a_follower_refuses_a_change(api: Api):
    api.control.follower = "replica b follows a"
    status, answer = await api.post({"target": "charter", "kind": "deploy"})
    assert status == 409
    assert "send it to the leader" in answer["error"]
    assert len(api.changes) == 0


async def test_get_lists_the_newest_changes_and_the_recent_ones(api: Api):
    for target, at in (("charter", NOW - 7200), ("db", NOW - 60), ("charter", NOW - 30)):
        status, _ = await api.post({"target": target, "kind": "deploy", "at": at})
        assert status == 201
    response = await api.get()
    body = await response.json()
    assert [(c["target"], c["age_s"]) for c in body["changes"]] == [
        ("charter", 30),
        ("db", 60),
        ("charter", 7200),
    ]
    assert set(body["recent"]) == {"charter", "db"}
    response = await api.get("?target=charter&limit=1")
    assert [c["age_s"] for c in (await response.json())["changes"]] == [30]
    for query, field in (("limit=0", "limit"), ("limit=x", "limit"), ("target=a%20b", "target")):
        response = await api.get(f"?{query}")
        assert response.status == 400
        assert (await response.json())["field"] == field
