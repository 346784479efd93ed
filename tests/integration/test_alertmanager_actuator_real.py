"""The `alertmanager` actuator against a real Alertmanager: a silence for the alert being
remediated is created with the policy (visible in /api/v2/silences, matching the alert's
labels), held while the action settles and expired once the outcome is verified; an
`alert` action posts an alert Alertmanager then holds; a hostile label refuses the silence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from am_support import alertmanager, now_rfc3339

from builders import settings as settings_for
from mape_k.app import build
from mape_k.integrations.alertmanager import Alert
from mape_k.integrations.charter.mock import MockCharterWorld

pytestmark = pytest.mark.integration


def _alert(status: str, **labels: str) -> Alert:
    return Alert.model_validate(
        {
            "status": status,
            "labels": {
                "alertname": "WebDown",
                "cause": "service_down",
                "component": "web",
                "severity": "critical",
                **labels,
            },
            "annotations": {"summary": "web is down"},
            "startsAt": "2026-11-22T04:17:10.023Z",
            "endsAt": now_rfc3339() if status == "resolved" else "0001-01-01T00:00:00Z",
            "fingerprint": "web-down-1",
        }
    )


def _overrides(am_url: str) -> dict[str, Any]:
    return {
        "planner.actions": {
            "hush": {
                "cost": 0.0,
                "benefit": 0.9,
                "settle_s": 5,
                "actuator": {
                    "type": "alertmanager",
                    "url": am_url,
                    "operation": "silence",
                    "matchers": ["alertname", "component"],
                    "duration_s": 600,
                },
            },
            "fix_web": {
                "cost": 0.1,
                "benefit": 0.9,
                "settle_s": 5,
                "actuator": {"type": "exec", "argv": ["/bin/true", "{target}"]},
            },
            "escalate": {
                "cost": 0.1,
                "benefit": 0.9,
                "settle_s": 5,
                "actuator": {
                    "type": "alertmanager",
                    "url": am_url,
                    "operation": "alert",
                    "labels": {"alertname": "MapekEscalation", "service": "{target}"},
                    "annotations": {"summary": "{cause} on {target} needs a human"},
                },
                "variables": {"annotations.summary": "^[ -~]{1,200}$"},
            },
        },
        "planner.remediations": {"service_down": [[{"type": "hush"}, {"type": "fix_web"}]]},
    }


async def _silences(am_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        answer = await client.get(f"{am_url}/api/v2/silences")
    answer.raise_for_status()
    return [s for s in answer.json() if s["createdBy"] == "mape-k"]


async def test_a_silence_is_held_while_the_action_settles_and_expired_after_verification(
    tmp_path: Path, clock: Any
) -> None:
    async with alertmanager(tmp_path, webhook_url="http://127.0.0.1:9/none") as am_url:
        settings = settings_for(tmp_path, **_overrides(am_url))
        world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
        async with build(settings, world=world, clock=clock) as parts:
            parts.inbox.offer([_alert("firing")])
            clock.advance(5)
            record = await parts.orchestrator.run_once()
            assert record["result"] == "acted", record.get("why")
            steps = record["execution"]["actions"]
            assert [s["type"] for s in steps] == ["hush", "fix_web"]
            [silence] = await _silences(am_url)
            assert silence["status"]["state"] == "active"
            matchers = {m["name"]: m["value"] for m in silence["matchers"]}
            assert matchers == {"alertname": "WebDown", "component": "web"}
            assert "service_down" in silence["comment"]

            parts.inbox.offer([_alert("resolved")])  # the fix worked
            clock.advance(2)
            settling = await parts.orchestrator.run_once()
            assert settling.get("verifications") == []  # not yet: settle_s is 5
            [silence] = await _silences(am_url)
            assert silence["status"]["state"] == "active"

            clock.advance(5)
            verified = await parts.orchestrator.run_once()
            assert [v["outcome"] for v in verified["verifications"]] == ["success"]
        [silence] = await _silences(am_url)
        assert silence["status"]["state"] == "expired"


async def test_a_hostile_label_refuses_the_silence_and_nothing_reaches_alertmanager(
    tmp_path: Path, clock: Any
) -> None:
    async with alertmanager(tmp_path, webhook_url="http://127.0.0.1:9/none") as am_url:
        settings = settings_for(tmp_path, **_overrides(am_url))
        world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
        async with build(settings, world=world, clock=clock) as parts:
            parts.inbox.offer([_alert("firing", component="web\nalertname=x")])
            clock.advance(5)
            record = await parts.orchestrator.run_once()
        assert record["result"] != "acted"
        reasons = [d["reason"] for d in record["guard_decisions"] if d["guard"] == "data"]
        assert any("hush refused" in r for r in reasons), reasons
        assert await _silences(am_url) == []


async def test_an_alert_action_posts_an_alert_alertmanager_holds(
    tmp_path: Path, clock: Any
) -> None:
    async with alertmanager(tmp_path, webhook_url="http://127.0.0.1:9/none") as am_url:
        overrides = _overrides(am_url)
        overrides["planner.remediations"] = {"service_down": [[{"type": "escalate"}]]}
        settings = settings_for(tmp_path, **overrides)
        world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
        async with build(settings, world=world, clock=clock) as parts:
            parts.inbox.offer([_alert("firing")])
            clock.advance(5)
            record = await parts.orchestrator.run_once()
        assert record["result"] == "acted", record.get("why")
        async with httpx.AsyncClient(timeout=5.0) as client:
            alerts = (await client.get(f"{am_url}/api/v2/alerts")).json()
        [posted] = [a for a in alerts if a["labels"].get("alertname") == "MapekEscalation"]
        assert posted["labels"]["service"] == "web"
        assert posted["annotations"]["summary"] == "service_down on web needs a human"
