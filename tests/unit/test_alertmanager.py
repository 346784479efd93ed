"""Alertmanager webhook models, the bounded AlertInbox and the AlertMessageRouter."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from structlog.testing import capture_logs

from fakes import FIXTURES, FakeClock
from mape_k.config import ServerConfig
from mape_k.errors import StoreError
from mape_k.integrations.alertmanager import (
    DEFAULT_ALERT_TTL_S,
    Alert,
    AlertInbox,
    AlertMessageRouter,
    AlertStatus,
    IngestResult,
    WebhookPayload,
)
from mape_k.metrics import Metrics
from mape_k.models import Severity, ViolationSource
from mape_k.store import InboxRow, Store
from mape_k.storeio import AsyncStore

WEBHOOK_FIXTURES = FIXTURES / "alertmanager" / "webhook"
TTL = 600.0


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def load(name: str) -> dict[str, Any]:
    document = json.loads((WEBHOOK_FIXTURES / name).read_text())
    payload: dict[str, Any] = document.get("payload", document)
    return payload


def alert(
    *,
    fingerprint: str = "aaaa000000000001",
    status: str = "firing",
    starts_at: str = "2026-11-22T04:17:10.023Z",
    ends_at: str = "0001-01-01T00:00:00Z",
    **labels: str,
) -> Alert:
    return Alert.model_validate(
        {
            "status": status,
            "labels": {"alertname": "CharterHighFailureRate", **labels},
            "annotations": {},
            "startsAt": starts_at,
            "endsAt": ends_at,
            "generatorURL": "",
            "fingerprint": fingerprint,
        }
    )


# --- models --------------------------------------------------------------------------------


def test_captured_payload_parses_with_each_alerts_own_fields() -> None:
    payload = WebhookPayload.model_validate(load("grouped_firing_2_alerts.json"))
    assert payload.version == "4"
    assert payload.status is AlertStatus.FIRING
    assert payload.truncated_alerts == 0
    assert payload.group_key == '{}/{service=~"grp-.*"}:{alertname="DemoGaugeHigh"}'
    assert [a.fingerprint for a in payload.alerts] == ["ef65cfe87988b0a9", "d36ebe4962053ce6"]
    first = payload.alerts[0]
    assert first.started == pytest.approx(1795321470.023)
    assert first.ends_at is not None
    assert first.ends_at.year == 1  # firing alerts carry the Go zero time


def test_nanosecond_timestamps_from_go_are_accepted() -> None:
    assert alert(starts_at="2026-11-22T04:17:10.123456789Z").started == pytest.approx(
        1795321030.123456
    )


@pytest.mark.parametrize(
    "starts_at", ["2026-11-22T04:17:10", "2026-11-22", "1795321030", "", "2026-11-22T25:00:00Z"]
)
def test_starts_at_must_be_rfc3339_with_an_offset(starts_at: str) -> None:
    with pytest.raises(ValidationError):
        alert(starts_at=starts_at)


def test_payload_types_are_strict() -> None:
    payload = load("firing_single_alert.json")
    payload["truncatedAlerts"] = "0"
    with pytest.raises(ValidationError):
        WebhookPayload.model_validate_json(json.dumps(payload))


# --- inbox: mapping ------------------------------------------------------------------------


def test_firing_alert_maps_to_an_alert_violation() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(cause="high_failure_rate", component="charter-2", severity="critical")])
    [violation] = inbox.firing()
    assert violation.kind == "high_failure_rate"
    assert violation.component == "charter-2"
    assert violation.severity is Severity.CRITICAL
    assert violation.source is ViolationSource.ALERT
    assert violation.timestamp == pytest.approx(1795321030.023)
    assert violation.labels["alertname"] == "CharterHighFailureRate"


def test_alertname_default_component_and_unknown_severity_fallbacks() -> None:
    inbox = AlertInbox(max_alerts=10, default_component="committee")
    inbox.offer([alert(severity="page-someone")])
    [violation] = inbox.firing()
    assert (violation.kind, violation.component, violation.severity) == (
        "CharterHighFailureRate",
        "committee",
        Severity.WARNING,
    )


@pytest.mark.parametrize("cause", ["excess_capacity", "throttle_unneeded"])
def test_an_alert_cannot_ask_for_a_return_to_baseline(cause: str) -> None:
    # A return lifts throttles and scales down outside the oscillation and velocity
    # budgets: only the daemon's own reading may raise one, never an alert's label.
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(cause=cause)])
    [violation] = inbox.firing()
    assert violation.kind == "alert"
    assert violation.labels["cause"] == cause  # kept as evidence, not as the kind


def test_component_label_is_configurable_and_severity_case_insensitive() -> None:
    inbox = AlertInbox(max_alerts=10, component_label="service")
    inbox.offer([alert(service="checkout", component="ignored", severity="INFO")])
    [violation] = inbox.firing()
    assert (violation.component, violation.severity) == ("checkout", Severity.INFO)


# --- inbox: dedupe and resolve -------------------------------------------------------------


def test_same_delivery_twice_is_a_duplicate_and_counted_as_such() -> None:
    metrics = Metrics(CollectorRegistry())
    inbox = AlertInbox(max_alerts=10, metrics=metrics)
    assert inbox.offer([alert()]) == IngestResult(new_firing=1)
    assert inbox.offer([alert()]) == IngestResult(duplicates=1)
    assert len(inbox) == 1
    assert metrics.registry.get_sample_value("mapek_alerts_duplicate_total") == 1


def test_resolved_alert_removes_its_violation_once() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert()])
    assert inbox.offer([alert(status="resolved")]) == IngestResult(resolved=1)
    assert inbox.firing() == []
    assert inbox.offer([alert(status="resolved")]) == IngestResult(duplicates=1)


def test_late_firing_retry_does_not_resurrect_a_resolved_occurrence() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(status="resolved")])  # resolved arrived before the firing retry
    assert inbox.offer([alert()]) == IngestResult(duplicates=1)
    assert inbox.firing() == []


def test_refiring_with_a_new_starts_at_is_new() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert()])
    inbox.offer([alert(status="resolved", ends_at="2026-11-22T04:30:00Z")])
    result = inbox.offer([alert(starts_at="2026-11-22T05:00:00Z")])
    assert result.new_firing == 1
    [violation] = inbox.firing()
    assert violation.timestamp == pytest.approx(1795323600.0)


def test_resolve_of_an_older_occurrence_keeps_the_newer_one() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(starts_at="2026-11-22T05:00:00Z")])
    older = alert(
        status="resolved", starts_at="2026-11-22T04:00:00Z", ends_at="2026-11-22T04:30:00Z"
    )
    inbox.offer([older])  # it ended before the firing one started: about another occurrence
    assert len(inbox) == 1


# The sequence seen with alerts posted through Alertmanager's API v2, where the sender sets
# startsAt: Alertmanager merges the resolving post into the alert it holds and keeps the
# earlier startsAt, so the resolve starts before the firing it ends (and ends after it).
FIRED = "2026-11-22T04:17:10.023Z"
EARLIER = "2026-11-22T04:10:00Z"
ENDED = "2026-11-22T04:25:00Z"


def resolve_with_an_earlier_starts_at() -> Alert:
    return alert(status="resolved", starts_at=EARLIER, ends_at=ENDED)


def test_a_resolve_with_an_earlier_starts_at_ends_the_firing_alert() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(starts_at=FIRED)])
    assert inbox.offer([resolve_with_an_earlier_starts_at()]) == IngestResult(resolved=1)
    assert inbox.firing() == []
    assert inbox.offer([resolve_with_an_earlier_starts_at()]) == IngestResult(duplicates=1)


@pytest.mark.parametrize("starts_at", [EARLIER, FIRED, "2026-11-22T04:20:00Z", ENDED])
def test_a_firing_delivery_of_the_resolved_span_is_never_acted_on_again(starts_at: str) -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(starts_at=FIRED)])
    inbox.offer([resolve_with_an_earlier_starts_at()])
    assert inbox.offer([alert(starts_at=starts_at)]) == IngestResult(duplicates=1)
    assert inbox.firing() == []


def test_a_firing_after_the_resolves_end_is_new_and_outlives_its_late_retry() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(starts_at=FIRED)])
    inbox.offer([resolve_with_an_earlier_starts_at()])
    assert inbox.offer([alert(starts_at="2026-11-22T04:25:00.001Z")]) == IngestResult(new_firing=1)
    # A late retry of the earlier resolve is about the older occurrence: the new one stays.
    assert inbox.offer([resolve_with_an_earlier_starts_at()]) == IngestResult(duplicates=1)
    [violation] = inbox.firing()
    assert violation.timestamp == pytest.approx(1795321500.001)


def test_a_late_retry_of_an_older_resolve_does_not_shorten_the_resolved_span() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(starts_at=FIRED)])
    inbox.offer([alert(status="resolved", starts_at=FIRED, ends_at="2026-11-22T05:00:00Z")])
    inbox.offer([resolve_with_an_earlier_starts_at()])  # ends 04:25, delivered late
    assert inbox.offer([alert(starts_at="2026-11-22T04:40:00Z")]) == IngestResult(duplicates=1)
    assert inbox.firing() == []


def test_a_resolve_without_an_ends_at_ends_at_its_receipt() -> None:
    clock = FakeClock(start=1795321030.023 + 60)
    inbox = AlertInbox(max_alerts=10, clock=clock)
    inbox.offer([alert(starts_at=FIRED)])
    inbox.offer([alert(status="resolved", starts_at=EARLIER)])  # Go's zero time: unset
    assert inbox.firing() == []
    assert inbox.offer([alert(starts_at=rfc3339(clock.now))]).duplicates == 1
    assert inbox.offer([alert(starts_at=rfc3339(clock.now + 1))]).new_firing == 1


def test_a_resolve_is_remembered_for_the_ttl_then_forgotten() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    inbox.offer([alert(starts_at=FIRED)])
    inbox.offer([resolve_with_an_earlier_starts_at()])
    clock.advance(TTL)
    assert inbox.offer([alert(starts_at=FIRED)]).duplicates == 1
    assert inbox.remembered == 1
    clock.advance(1)
    assert len(inbox) == 0
    assert inbox.remembered == 0  # Alertmanager re-sending it a TTL later: firing again
    assert inbox.offer([alert(starts_at=FIRED)]).new_firing == 1


def test_older_firing_occurrence_does_not_replace_a_newer_one() -> None:
    inbox = AlertInbox(max_alerts=10)
    inbox.offer([alert(starts_at="2026-11-22T05:00:00Z")])
    assert inbox.offer([alert(starts_at="2026-11-22T04:00:00Z")]).duplicates == 1
    assert inbox.firing()[0].timestamp == pytest.approx(1795323600.0)


def test_resolved_alerts_in_a_batch_free_room_before_firing_ones() -> None:
    inbox = AlertInbox(max_alerts=1)
    inbox.offer([alert(fingerprint="a")])
    result = inbox.offer([alert(fingerprint="b"), alert(fingerprint="a", status="resolved")])
    assert result == IngestResult(new_firing=1, resolved=1)
    assert [v.timestamp for v in inbox.firing()] == [pytest.approx(1795321030.023)]


# --- inbox: bounds -------------------------------------------------------------------------


def test_full_inbox_rejects_and_does_not_remember_so_a_retry_can_land() -> None:
    inbox = AlertInbox(max_alerts=2)
    result = inbox.offer([alert(fingerprint=f"f{i}") for i in range(3)])
    assert (result.new_firing, result.rejected, result.full) == (2, 1, True)
    inbox.offer([alert(fingerprint="f0", status="resolved")])
    retry = inbox.offer([alert(fingerprint=f"f{i}") for i in range(3)])
    assert (retry.new_firing, retry.duplicates, retry.full) == (1, 2, False)
    assert len(inbox) == 2


def test_memory_stays_bounded_under_churn() -> None:
    inbox = AlertInbox(max_alerts=50, dedupe_size=1000)
    template = alert()
    for i in range(30_000):
        fired = template.model_copy(update={"fingerprint": f"{i:016x}"})
        resolved = fired.model_copy(update={"status": AlertStatus.RESOLVED})
        inbox.offer([fired])
        inbox.offer([resolved])
        assert len(inbox) == 0
    assert inbox.remembered == 1000


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_alerts"):
        AlertInbox(max_alerts=0)


# --- inbox: expiry (lost resolves) ---------------------------------------------------------


def test_an_alert_not_re_delivered_expires_after_the_ttl_and_is_logged_once() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    inbox.offer([alert(fingerprint="f1", cause="overload", component="charter")])
    clock.advance(TTL)
    assert len(inbox.firing()) == 1  # exactly at the TTL: still firing
    clock.advance(1)
    with capture_logs() as logs:
        assert inbox.firing() == []
        assert inbox.firing() == []
        assert len(inbox) == 0
    expired = [e for e in logs if e["event"] == "alert_expired"]
    assert len(expired) == 1
    assert {k: expired[0][k] for k in ("kind", "component", "fingerprint", "reason")} == {
        "kind": "overload",
        "component": "charter",
        "fingerprint": "f1",
        "reason": "ttl",
    }
    assert expired[0]["last_seen_age_s"] == pytest.approx(TTL + 1)


def test_a_duplicate_re_delivery_keeps_the_alert_alive_and_still_counts_as_duplicate() -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    inbox = AlertInbox(max_alerts=10, metrics=metrics, ttl_s=TTL, clock=clock)
    inbox.offer([alert()])
    for _ in range(5):  # Alertmanager's repeat_interval re-sends, each within the TTL
        clock.advance(TTL - 1)
        assert inbox.offer([alert()]) == IngestResult(duplicates=1)
    assert len(inbox.firing()) == 1
    assert metrics.registry.get_sample_value("mapek_alerts_duplicate_total") == 5
    clock.advance(TTL + 1)
    assert inbox.firing() == []


def test_a_re_delivery_refreshes_only_its_own_occurrence() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    inbox.offer([alert(starts_at="2026-11-22T05:00:00Z")])
    clock.advance(TTL - 1)
    older = alert(starts_at="2026-11-22T04:00:00Z")
    assert inbox.offer([older]) == IngestResult(duplicates=1)
    clock.advance(2)
    assert inbox.firing() == []


def test_refreshes_keep_expiry_in_last_seen_order() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    inbox.offer([alert(fingerprint="a")])
    clock.advance(10)
    inbox.offer([alert(fingerprint="b")])
    clock.advance(10)
    inbox.offer([alert(fingerprint="a")])  # a is now the most recently seen
    clock.advance(TTL - 5)
    assert [v.timestamp for v in inbox.firing()] == [pytest.approx(1795321030.023)]
    assert inbox.offer([alert(fingerprint="b")]) == IngestResult(new_firing=1)  # b expired


def test_a_past_ends_at_expires_the_alert() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    inbox.offer([alert(ends_at=rfc3339(clock.now + 60))])
    clock.advance(59)
    assert len(inbox.firing()) == 1
    clock.advance(1)
    with capture_logs() as logs:
        assert inbox.firing() == []
    assert [e["reason"] for e in logs if e["event"] == "alert_expired"] == ["ends_at"]


def test_a_re_delivery_carries_the_current_ends_at() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    inbox.offer([alert(ends_at=rfc3339(clock.now + 60))])
    clock.advance(30)
    assert inbox.offer([alert(ends_at=rfc3339(clock.now + 60))]).duplicates == 1  # extended
    clock.advance(45)
    assert len(inbox.firing()) == 1
    inbox.offer([alert()])  # a Go zero time endsAt is unset: only the TTL applies now
    clock.advance(TTL)
    assert len(inbox.firing()) == 1


def test_a_firing_delivery_whose_ends_at_has_passed_is_not_admitted() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    assert inbox.offer([alert(ends_at=rfc3339(clock.now - 1))]) == IngestResult(duplicates=1)
    assert inbox.firing() == []


def test_expired_alerts_free_capacity() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=2, ttl_s=TTL, clock=clock)
    inbox.offer([alert(fingerprint="f0"), alert(fingerprint="f1")])
    assert inbox.offer([alert(fingerprint="f2")]).full
    clock.advance(TTL + 1)
    result = inbox.offer([alert(fingerprint="f2"), alert(fingerprint="f3")])
    assert result == IngestResult(new_firing=2)
    assert len(inbox) == 2


def test_a_re_delivery_after_expiry_brings_the_alert_back() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    inbox.offer([alert()])
    clock.advance(TTL + 1)
    assert inbox.firing() == []
    assert inbox.offer([alert()]) == IngestResult(new_firing=1)  # still firing after all
    assert len(inbox.firing()) == 1
    assert inbox.offer([alert()]) == IngestResult(duplicates=1)


def test_a_resolve_after_expiry_counts_and_a_late_firing_retry_stays_out() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock)
    inbox.offer([alert()])
    clock.advance(TTL + 1)
    assert inbox.firing() == []
    assert inbox.offer([alert(status="resolved")]) == IngestResult(resolved=1)
    assert inbox.offer([alert()]) == IngestResult(duplicates=1)
    assert inbox.firing() == []


def test_expiry_memory_stays_bounded() -> None:
    clock = FakeClock()
    inbox = AlertInbox(max_alerts=50, dedupe_size=100, ttl_s=TTL, clock=clock)
    template = alert()
    for i in range(2_000):
        inbox.offer([template.model_copy(update={"fingerprint": f"{i:016x}"})])
        clock.advance(TTL / 10)
        assert len(inbox) <= 11
    assert inbox.remembered == 0  # expired alerts leave nothing behind


@pytest.mark.parametrize("ttl_s", [0.0, -1.0])
def test_ttl_must_be_positive(ttl_s: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        AlertInbox(max_alerts=1, ttl_s=ttl_s)
    with pytest.raises(ValidationError, match="alert_ttl_s"):
        ServerConfig(alert_ttl_s=ttl_s)


def test_default_ttl_outlasts_the_shipped_repeat_interval() -> None:
    assert ServerConfig().alert_ttl_s == DEFAULT_ALERT_TTL_S > 12 * 3600


# --- inbox: kept in the knowledge store across restarts -----------------------------------


async def stored_inbox(store: Store, clock: FakeClock, **kwargs: Any) -> AlertInbox:
    journal = AsyncStore(store, threaded=False)
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock, journal=journal, **kwargs)
    inbox.restore(await journal.inbox_rows())
    await inbox.flush()
    return inbox


async def offered(inbox: AlertInbox, alerts: list[Alert]) -> IngestResult:
    """A webhook's batch: offered, then written (as `AlertMessageRouter.deliver` does)."""
    result = inbox.offer(alerts)
    await inbox.flush()
    return result


async def test_a_restarted_inbox_has_the_firing_alerts_and_remembers_the_resolves(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with Store.open(tmp_path / "k.sqlite3") as store:
        inbox = await stored_inbox(store, clock)
        await offered(inbox, [alert(fingerprint="a", cause="overload"), alert(fingerprint="b")])
        await offered(
            inbox, [alert(fingerprint="b", status="resolved", starts_at=EARLIER, ends_at=ENDED)]
        )
    with Store.open(tmp_path / "k.sqlite3") as store:
        inbox = await stored_inbox(store, clock)
        [violation] = inbox.firing()
        assert (violation.kind, violation.timestamp) == ("overload", pytest.approx(1795321030.023))
        assert violation.labels == {"alertname": "CharterHighFailureRate", "cause": "overload"}
        assert inbox.remembered == 1
        assert await offered(inbox, [alert(fingerprint="b")]) == IngestResult(duplicates=1)
        assert await offered(inbox, [alert(fingerprint="a")]) == IngestResult(duplicates=1)


async def test_a_restored_alert_keeps_its_ttl_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    with Store.open(tmp_path / "k.sqlite3") as store:
        inbox = await stored_inbox(store, clock)
        await offered(inbox, [alert(fingerprint="a"), alert(fingerprint="b")])
        clock.advance(61)  # a re-delivery is written once the stored one is a minute old
        await offered(inbox, [alert(fingerprint="b")])
        clock.advance(TTL - 30)
    with Store.open(tmp_path / "k.sqlite3") as store:
        with capture_logs() as logs:
            inbox = await stored_inbox(store, clock)
        assert [e["fingerprint"] for e in logs if e["event"] == "alert_expired"] == ["a"]
        assert len(inbox) == 1
        clock.advance(31)
        assert len(inbox) == 0
        await inbox.flush()
        assert store.inbox_rows() == []


async def test_a_restore_keeps_the_newest_alerts_that_fit(tmp_path: Path) -> None:
    clock = FakeClock()
    with Store.open(tmp_path / "k.sqlite3") as store:
        inbox = await stored_inbox(store, clock)
        for name in "abc":
            await offered(inbox, [alert(fingerprint=name, component=name)])
            clock.advance(1)
    with Store.open(tmp_path / "k.sqlite3") as store:
        journal = AsyncStore(store, threaded=False)
        smaller = AlertInbox(max_alerts=2, ttl_s=TTL, clock=clock, journal=journal)
        assert smaller.restore(store.inbox_rows()) == 2
        await smaller.flush()
        assert [v.component for v in smaller.firing()] == ["b", "c"]
        assert [row.fingerprint for row in store.inbox_rows()] == ["b", "c"]


class FailingJournal:
    """A journal whose writes fail until `working` is set; keeps what it was given."""

    def __init__(self) -> None:
        self.working = False
        self.rows: dict[tuple[str, str], InboxRow] = {}

    async def save_inbox(self, upserts: list[InboxRow], deletes: list[tuple[str, str]]) -> None:
        if not self.working:
            raise StoreError("disk full")
        for key in deletes:
            self.rows.pop(key, None)
        for row in upserts:
            self.rows[(row.fingerprint, row.status)] = row

    async def inbox_rows(self) -> list[InboxRow]:
        return list(self.rows.values())


async def test_a_failed_write_is_logged_once_kept_and_written_with_the_next_change() -> None:
    journal = FailingJournal()
    inbox = AlertInbox(max_alerts=10, journal=journal)
    with capture_logs() as logs:
        result = await offered(inbox, [alert(fingerprint="a"), alert(fingerprint="b")])
        assert result.new_firing == 2
        await offered(inbox, [alert(fingerprint="b", status="resolved", ends_at=ENDED)])
        assert len(inbox.firing()) == 1  # memory is the truth meanwhile
        assert journal.rows == {}
        journal.working = True
        await offered(inbox, [alert(fingerprint="c")])
    events = [e["event"] for e in logs if e["event"].startswith("alert_inbox_")]
    assert events == ["alert_inbox_save_failed", "alert_inbox_saved"]
    assert sorted(journal.rows) == [("a", "firing"), ("b", "resolved"), ("c", "firing")]


class SharedJournal:
    """One inbox for several replicas, in memory: rows keyed by (fingerprint, status)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], InboxRow] = {}

    async def save_inbox(self, upserts: list[InboxRow], deletes: list[tuple[str, str]]) -> None:
        for key in deletes:
            self.rows.pop(key, None)
        for row in upserts:
            self.rows[(row.fingerprint, row.status)] = row

    async def inbox_rows(self) -> list[InboxRow]:
        return sorted(self.rows.values(), key=lambda row: row.seen_at)


async def test_a_shared_inbox_is_one_inbox_for_every_replica() -> None:
    clock = FakeClock()
    journal = SharedJournal()
    a = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock, journal=journal, shared=True)
    b = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock, journal=journal, shared=True)
    assert a.offer([alert(fingerprint="x", cause="overload")]).new_firing == 1
    await a.flush()
    [seen] = await b.firing_now()  # delivered to A, seen by B
    assert seen.kind == "overload"
    clock.advance(1)
    resolve = alert(fingerprint="x", status="resolved", starts_at=EARLIER, ends_at=ENDED)
    assert await AlertMessageRouter(b).deliver([resolve]) == IngestResult(resolved=1)
    assert await a.firing_now() == []  # resolved at B, ended at A
    clock.advance(1)
    again = alert(fingerprint="y")
    assert (await AlertMessageRouter(a).deliver([again])).new_firing == 1
    assert await AlertMessageRouter(b).deliver([again]) == IngestResult(duplicates=1)
    assert len(await a.firing_now()) == 1
    assert len(await b.firing_now()) == 1


async def test_a_restore_drops_a_firing_row_its_resolve_covers() -> None:
    clock = FakeClock()
    writer = SharedJournal()
    inbox = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock, journal=writer)
    inbox.offer([alert(fingerprint="x"), alert(fingerprint="y", component="other")])
    await inbox.flush()
    # Another replica wrote the resolve of x (ending after x started) beside its firing row.
    other = SharedJournal()
    resolver = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock, journal=other)
    resolver.offer([alert(fingerprint="x", status="resolved", starts_at=EARLIER, ends_at=ENDED)])
    await resolver.flush()
    rows = [*writer.rows.values(), *other.rows.values()]
    assert {(row.fingerprint, row.status) for row in rows} == {
        ("x", "firing"),
        ("x", "resolved"),
        ("y", "firing"),
    }
    restarted = AlertInbox(max_alerts=10, ttl_s=TTL, clock=clock, journal=SharedJournal())
    assert restarted.restore(rows) == 1
    assert [v.component for v in restarted.firing()] == ["other"]
    assert restarted.remembered == 1


# --- router --------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, alerts: Sequence[Alert]) -> IngestResult:
        self.batches.append([a.fingerprint for a in alerts])
        return IngestResult(new_firing=len(alerts))


def test_router_sends_each_alert_to_the_first_matching_handler_else_the_default() -> None:
    router = AlertMessageRouter()
    by_labels, by_callable, second, default = Recorder(), Recorder(), Recorder(), Recorder()
    router.register_handler({"component": "mape-k", "severity": "critical"}, by_labels)
    router.register_handler(lambda a: a.labels.get("team") == "db", by_callable)
    router.register_handler({"component": "mape-k"}, second)
    router.register_default_handler(default)
    result = router.route_alerts(
        [
            alert(fingerprint="1", component="mape-k", severity="critical"),
            alert(fingerprint="2", team="db", component="mape-k"),
            alert(fingerprint="3", component="mape-k", severity="warning"),
            alert(fingerprint="4", component="charter"),
            alert(fingerprint="5", component="mape-k", severity="critical"),
        ]
    )
    assert by_labels.batches == [["1", "5"]]  # one call per batch, order kept
    assert by_callable.batches == [["2"]]
    assert second.batches == [["3"]]
    assert default.batches == [["4"]]
    assert result.new_firing == 5


def test_default_handler_feeds_the_inbox() -> None:
    inbox = AlertInbox(max_alerts=10)
    router = AlertMessageRouter()
    router.register_default_handler(inbox.offer)
    assert router.route_alerts([alert()]) == IngestResult(new_firing=1)
    assert len(inbox.firing()) == 1


def test_alerts_without_any_handler_are_counted_as_unrouted() -> None:
    router = AlertMessageRouter()
    assert router.route_alerts([alert(), alert(fingerprint="b")]) == IngestResult(unrouted=2)
