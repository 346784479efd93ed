"""MapekNeedsHuman (loop/escalation.py): while the envelope holds a target for a human, an
alert goes to Alertmanager's API v2, re-sent while the hold lasts and resolved when it
clears (quiet window, operator, expiry, or while the daemon was down); dry-run sends
nothing; a failed delivery is logged, counted and retried. A fake clock drives every
step; the fake Alertmanager records each POST."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from builders import NOW, TARGET, outcome
from builders import settings as settings_for
from fakes import FakeClock
from mape_k.app import build
from mape_k.config import Settings, needs_human_alert_url
from mape_k.errors import ConfigError
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop.envelope import SafetyEnvelope
from mape_k.loop.escalation import STATE_KEY, NeedsHumanAlerts
from mape_k.loop.guards import Hold
from mape_k.metrics import Metrics
from mape_k.models import OutcomeType
from mape_k.store import Store
from mape_k.storeio import AsyncStore

AM = "http://alertmanager.test:9093"


class FakeAlertmanager:
    """Records every POST /api/v2/alerts; `fail` makes it answer that status or raise."""

    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.attempts = 0
        self.fail: int | Exception | None = None
        self.hang = False
        self.transport = httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/api/v2/alerts")
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()  # never answers: the notifier's bound cuts it
        if isinstance(self.fail, Exception):
            raise self.fail
        if self.fail is not None:
            return httpx.Response(self.fail, text="no")
        self.posts.append(json.loads(request.content))
        return httpx.Response(200)

    def last(self) -> dict[str, Any]:
        [alert] = self.posts[-1]
        return alert


async def _no_sleep(_: float) -> None:
    return None


class Rig:
    """One daemon's worth of state: a store, an envelope over it, the notifier."""

    def __init__(self, tmp_path: Path, clock: FakeClock, settings: Settings, am: FakeAlertmanager):
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics(CollectorRegistry())
        self.store = Store.open(tmp_path / "k.sqlite3")
        journal = AsyncStore(self.store, threaded=False)
        self.envelope = SafetyEnvelope(settings.guards, store=journal, clock=clock)
        self.alerts = NeedsHumanAlerts(
            store=journal, metrics=self.metrics, transport=am.transport, sleep=_no_sleep
        )

    async def start(self) -> Rig:
        """What the daemon loads at start: the guards' state, the alerts it had sent."""
        await self.envelope.load()
        await self.alerts.load()
        return self

    def hold(self, target: str = TARGET) -> Hold:
        """Two remediations of `target` that did not fix it (the journal has them)."""
        hold = None
        for n, kind in enumerate((OutcomeType.INEFFECTIVE, OutcomeType.DEGRADATION)):
            verdict = outcome(
                f"e-{target}-{n}", outcome=kind, target=target, recorded_at=self.clock()
            )
            self.store.record_outcome(verdict)
            hold = self.envelope.note_outcome(verdict, now=self.clock())
        assert hold is not None
        return hold

    async def sync(self) -> None:
        await self.alerts.sync(self.envelope, self.settings, now=self.clock())
        await self.envelope.save(now=self.clock())

    def counted(self, state: str) -> float:
        value = self.metrics.registry.get_sample_value("mapek_escalations_total", {"state": state})
        assert value is not None
        return value

    def close(self) -> None:
        self.store.close()


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return settings_for(
        tmp_path,
        **{
            "guards.target_breaker.alert.url": AM,
            "guards.target_breaker.failures": 2,
            "orchestrator.interval_s": 30,
            **overrides,
        },
    )


@pytest.fixture
def am() -> FakeAlertmanager:
    return FakeAlertmanager()


@pytest.fixture
async def rig(tmp_path: Path, clock: FakeClock, am: FakeAlertmanager) -> AsyncIterator[Rig]:
    rig = await Rig(tmp_path, clock, _settings(tmp_path), am).start()
    yield rig
    rig.close()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


async def test_a_hold_fires_the_alert_with_what_was_tried_and_how_to_clear_it(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    hold = rig.hold()
    with capture_logs() as logs:
        await rig.sync()
    alert = am.last()
    assert alert["labels"] == {
        "alertname": "MapekNeedsHuman",
        "target": TARGET,
        "cause": "high_failure_rate",
        "severity": "critical",
        "component": "mape-k",
    }
    notes = alert["annotations"]
    assert notes["tried"] == (
        "restart_service for high_failure_rate: ineffective;"
        " restart_service for high_failure_rate: degradation"
    )
    assert notes["reason"] == hold.reason
    assert "DELETE /api/v1/holds/charter" in notes["clear"]
    assert "high_failure_rate" in notes["summary"]
    assert notes["runbook_url"] == "docs/runbook.md#mapekneedshuman"
    assert alert["startsAt"] == _iso(NOW)
    assert alert["endsAt"] == _iso(NOW + 4 * 60)  # 4 re-send periods ahead
    assert rig.counted("firing") == 1
    events = [e for e in logs if e["event"] == "needs_human_alert"]
    assert [(e["state"], e["target"], e["cause"]) for e in events] == [
        ("firing", TARGET, "high_failure_rate")
    ]
    [shown] = rig.alerts.snapshot(rig.settings)["alerts"]
    assert (shown["target"], shown["state"], shown["error"]) == (TARGET, "firing", None)


async def test_the_alert_is_re_sent_every_resend_s_with_the_same_identity(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig.hold()
    await rig.sync()
    first = am.last()
    clock.advance(30)
    await rig.sync()
    assert len(am.posts) == 1  # not due yet
    clock.advance(30)
    await rig.sync()
    assert len(am.posts) == 2
    again = am.last()
    assert (again["labels"], again["annotations"], again["startsAt"]) == (
        first["labels"],
        first["annotations"],
        first["startsAt"],
    )
    assert again["endsAt"] == _iso(NOW + 60 + 4 * 60)
    assert rig.counted("firing") == 1  # a re-send is not a new escalation


async def test_a_quiet_window_resolves_the_alert(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig.hold()
    await rig.sync()
    released: list[str] = []
    while not released:  # an iteration every 30 s, no violation
        clock.advance(30)
        released = rig.envelope.note_quiet(set(), now=clock())
        if not released:
            await rig.sync()
    assert released == [TARGET]
    assert clock() == NOW + 30 + rig.settings.guards.target_breaker.clear_after_s
    assert len(am.posts) == 1 + 900 // 60  # re-sent once a minute meanwhile
    with capture_logs() as logs:
        await rig.sync()
    resolved = am.last()
    assert resolved["labels"]["target"] == TARGET
    assert resolved["endsAt"] == _iso(clock())
    assert rig.counted("resolved") == 1
    assert [e["state"] for e in logs if e["event"] == "needs_human_alert"] == ["resolved"]
    posts = len(am.posts)
    clock.advance(120)
    await rig.sync()
    assert len(am.posts) == posts  # resolved once, then nothing
    assert rig.alerts.snapshot(rig.settings)["alerts"] == []


async def test_an_operator_clear_resolves_the_alert(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig.hold()
    rig.hold("web")
    await rig.sync()
    assert sorted(a["labels"]["target"] for a in am.posts[-1]) == [TARGET, "web"]
    clock.advance(5)
    assert rig.envelope.clear_needs_human("web") == ["web"]
    await rig.sync()
    [resolved] = am.posts[-1]  # the other alert is not due for a re-send
    assert (resolved["labels"]["target"], resolved["endsAt"]) == ("web", _iso(clock()))
    assert [a["target"] for a in rig.alerts.snapshot(rig.settings)["alerts"]] == [TARGET]


async def test_a_hold_that_expires_resolves_the_alert(
    tmp_path: Path, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig = await Rig(
        tmp_path, clock, _settings(tmp_path, **{"guards.target_breaker.hold_s": 100}), am
    ).start()
    rig.hold()
    await rig.sync()
    clock.advance(100)
    await rig.sync()
    assert am.last()["endsAt"] == _iso(clock())
    assert rig.counted("resolved") == 1
    rig.close()


async def test_dry_run_decides_and_logs_but_sends_nothing(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig.hold()
    rig.envelope.dry_run = True
    with capture_logs() as logs:
        await rig.sync()
        clock.advance(60)
        await rig.sync()
    assert am.attempts == 0
    skipped = [e for e in logs if e["event"] == "needs_human_alert_skipped"]
    assert [(e["target"], e["state"], e["why"]) for e in skipped] == [
        (TARGET, "firing", "dry-run")  # once per decision, not once per iteration
    ]
    assert rig.alerts.sent == {}
    rig.envelope.dry_run = False
    await rig.sync()
    assert am.last()["labels"]["target"] == TARGET


@pytest.mark.parametrize(
    "failure",
    [503, 400, httpx.ConnectError("connection refused"), httpx.InvalidURL("no host in URL")],
    ids=str,
)
async def test_a_failed_delivery_is_logged_and_retried_next_iteration(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock, failure: int | Exception
) -> None:
    rig.hold()
    am.fail = failure
    with capture_logs() as logs:
        await rig.sync()  # never raises
    assert am.posts == []
    [failed] = [e for e in logs if e["event"] == "needs_human_alert_failed"]
    assert failed["firing"] == [TARGET]
    assert failed["log_level"] == "warning"
    failures = rig.metrics.registry.get_sample_value("mapek_escalation_failures_total")
    assert failures == 1
    [shown] = rig.alerts.snapshot(rig.settings)["alerts"]
    assert shown["state"] == "pending"
    assert shown["error"]
    assert rig.counted("firing") == 0
    am.fail = None
    clock.advance(30)  # the next iteration, before resend_s: a failed one is retried at once
    await rig.sync()
    assert am.last()["labels"]["target"] == TARGET
    assert rig.counted("firing") == 1
    assert rig.alerts.snapshot(rig.settings)["alerts"][0]["error"] is None


async def test_a_failed_resolve_is_retried(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig.hold()
    await rig.sync()
    rig.envelope.clear_needs_human(TARGET)
    am.fail = 503
    await rig.sync()
    assert rig.alerts.snapshot(rig.settings)["alerts"][0]["state"] == "resolving"
    am.fail = None
    clock.advance(30)
    await rig.sync()
    assert am.last()["endsAt"] == _iso(clock())
    assert rig.counted("resolved") == 1


async def test_an_alertmanager_that_never_answers_is_cut_at_timeout_s(
    tmp_path: Path, am: FakeAlertmanager, clock: FakeClock
) -> None:
    settings = _settings(tmp_path, **{"guards.target_breaker.alert.timeout_s": 0.05})
    rig = await Rig(tmp_path, clock, settings, am).start()
    rig.hold()
    am.hang = True
    with capture_logs() as logs:
        await asyncio.wait_for(rig.sync(), 5)
    [failed] = [e for e in logs if e["event"] == "needs_human_alert_failed"]
    assert "0.05 s" in failed["error"]
    rig.close()


async def test_after_a_restart_held_targets_go_on_firing_and_cleared_ones_resolve(
    tmp_path: Path, am: FakeAlertmanager, clock: FakeClock
) -> None:
    settings = _settings(tmp_path, **{"guards.target_breaker.hold_s": 600})
    first = await Rig(tmp_path, clock, settings, am).start()
    first.hold()
    clock.advance(300)
    first.hold("web")  # held 300 s later: it outlives the first hold
    await first.sync()
    labels = {a["labels"]["target"]: a["labels"] for a in am.posts[-1]}
    first.close()  # the daemon stops; the charter hold expires while it is down

    clock.advance(400)
    second = await Rig(tmp_path, clock, settings, am).start()
    assert sorted(second.alerts.sent) == [TARGET, "web"]
    await second.sync()
    sent = {a["labels"]["target"]: a for a in am.posts[-1]}
    assert sent["web"]["labels"] == labels["web"]  # the same alert goes on
    assert sent["web"]["startsAt"] == _iso(NOW + 300)
    assert sent["web"]["endsAt"] == _iso(clock() + 240)
    assert sent[TARGET]["labels"] == labels[TARGET]  # resolved: its hold is gone
    assert sent[TARGET]["endsAt"] == _iso(clock())
    assert sorted(second.alerts.sent) == ["web"]
    assert sorted(second.store.get_state(STATE_KEY)) == ["web"]
    second.close()


async def test_hostile_label_values_go_into_the_json_body_only(
    rig: Rig, am: FakeAlertmanager
) -> None:
    target = 'web"; rm -rf / #\n{{ .x }}'
    rig.hold(target)
    await rig.sync()
    alert = am.last()
    assert alert["labels"]["target"] == target  # verbatim, JSON-escaped on the wire
    assert (
        "DELETE /api/v1/holds/web%22%3B%20rm%20-rf%20%2F%20%23%0A" in alert["annotations"]["clear"]
    )


async def test_off_without_an_alertmanager_url_and_on_with_an_alertmanager_actuator(
    tmp_path: Path, am: FakeAlertmanager, clock: FakeClock
) -> None:
    plain = settings_for(tmp_path, **{"guards.target_breaker.failures": 2})
    assert needs_human_alert_url(plain) is None
    rig = await Rig(tmp_path, clock, plain, am).start()
    rig.hold()
    await rig.sync()
    assert am.attempts == 0
    rig.close()
    actuator = settings_for(
        tmp_path,
        **{
            "planner.actions": {
                "page": {
                    "cost": 0.1,
                    "benefit": 0.5,
                    "settle_s": 5,
                    "actuator": {"type": "alertmanager", "url": f"{AM}/", "operation": "alert"},
                }
            }
        },
    )
    assert needs_human_alert_url(actuator) == AM
    off = settings_for(
        tmp_path,
        **{"guards.target_breaker.alert.url": AM, "guards.target_breaker.alert.enabled": False},
    )
    assert needs_human_alert_url(off) is None
    with pytest.raises(ConfigError, match=r"guards.target_breaker.alert.enabled"):
        settings_for(tmp_path, **{"guards.target_breaker.alert.enabled": True})


async def test_the_loop_sends_it_and_stats_show_it_beside_the_holds(
    tmp_path: Path, am: FakeAlertmanager, clock: FakeClock
) -> None:
    settings = _settings(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts:
        pipeline = parts.orchestrator.pipeline
        assert pipeline.alerts is not None
        pipeline.alerts._transport = am.transport  # the fake Alertmanager
        for n in range(2):
            verdict = outcome(f"e{n}", outcome=OutcomeType.INEFFECTIVE, recorded_at=clock())
            await parts.store.record_outcome(verdict)
            parts.orchestrator.envelope.note_outcome(verdict, now=clock())
        await parts.orchestrator.run_once()
        assert am.last()["labels"]["target"] == TARGET
        guards = parts.orchestrator.guard_statistics(clock())
        assert [h["target"] for h in guards["needs_human"]] == [TARGET]
        alerts = guards["needs_human_alerts"]
        assert alerts["url"] == AM
        assert [(a["target"], a["state"]) for a in alerts["alerts"]] == [(TARGET, "firing")]
        assert await parts.orchestrator.clear_hold(TARGET, now=clock())
        clock.advance(1)
        await parts.orchestrator.run_once()
        assert am.last()["endsAt"] == _iso(clock())
        assert parts.orchestrator.guard_statistics(clock())["needs_human_alerts"]["alerts"] == []


async def test_an_alert_past_its_ends_at_is_not_resolved_again(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig.hold()
    await rig.sync()
    clock.advance(4 * 60)  # no re-send (no iteration ran): Alertmanager resolved it itself
    rig.envelope.clear_needs_human(TARGET)
    with capture_logs() as logs:
        await rig.sync()
    assert len(am.posts) == 1
    assert [e["event"] for e in logs] == ["needs_human_alert_ended"]
    assert rig.alerts.sent == {}


async def test_dry_run_switched_on_while_firing_stops_the_re_sends(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig.hold()
    await rig.sync()
    rig.envelope.dry_run = True
    clock.advance(60)
    await rig.sync()
    assert len(am.posts) == 1
    rig.envelope.dry_run = False
    clock.advance(30)
    await rig.sync()
    assert len(am.posts) == 2
    assert am.last()["labels"]["target"] == TARGET


async def test_a_new_hold_with_another_cause_resolves_the_old_alert(
    rig: Rig, am: FakeAlertmanager, clock: FakeClock
) -> None:
    rig.hold()
    await rig.sync()
    old = am.last()
    rig.envelope.clear_needs_human(TARGET)
    clock.advance(10)
    for n in range(2):  # held again, for another cause, before the next iteration
        verdict = outcome(
            f"o{n}", outcome=OutcomeType.INEFFECTIVE, cause="overload", recorded_at=clock()
        )
        rig.store.record_outcome(verdict)
        rig.envelope.note_outcome(verdict, now=clock())
    await rig.sync()
    by_cause = {a["labels"]["cause"]: a for a in am.posts[-1]}
    assert by_cause["high_failure_rate"]["labels"] == old["labels"]
    assert by_cause["high_failure_rate"]["endsAt"] == _iso(clock())  # resolved
    assert by_cause["overload"]["startsAt"] == _iso(clock())  # the new hold fires
    assert by_cause["overload"]["annotations"]["tried"] == (
        "restart_service for overload: ineffective; restart_service for overload: ineffective"
    )
