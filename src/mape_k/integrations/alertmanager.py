"""Alertmanager webhook (payload version 4, as Alertmanager 0.25 sends it): models, inbox, router.

The inbox turns firing alerts into Violations for the Monitor, forgets resolved ones (or
ones not re-delivered within a TTL, should the resolve be lost), and acknowledges
re-deliveries without counting them twice. Its memory is bounded.
No I/O here: the HTTP side lives in mape_k.server; the clock is injected.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from mape_k.metrics import Metrics
from mape_k.models import Severity, Violation, ViolationSource

log = structlog.get_logger(__name__)

WEBHOOK_VERSION = "4"
# RFC 3339 date-time with a mandatory offset; Go may send up to nanoseconds.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_MAX_TRUNCATED = 2**53  # a Counter adds floats: keep the increment exactly representable
# Longer than the shipped Alertmanager repeat_interval (12h): a firing alert is re-sent in time.
DEFAULT_ALERT_TTL_S = 13 * 3600.0


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class _Model(BaseModel):
    # Strict scalars ("7" is not an int, 1 is not a label value); unknown keys (newer
    # Alertmanager versions add notification_reason, routeLabels) are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


Labels = dict[StrictStr, StrictStr]


class Alert(_Model):
    """One alert of a notification; its own `status` counts, not the notification's."""

    status: AlertStatus
    labels: Labels
    annotations: Labels = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: StrictStr = Field("", alias="generatorURL")
    fingerprint: StrictStr = Field(min_length=1, max_length=128)

    @field_validator("starts_at", "ends_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _RFC3339.match(value):
            raise ValueError("must be an RFC 3339 date-time with an offset")
        return value

    @property
    def started(self) -> float:
        """startsAt as Unix seconds."""
        return self.starts_at.timestamp()

    @property
    def ends(self) -> float | None:
        """endsAt as Unix seconds, None when unset (absent or Go's zero time, year 1)."""
        if self.ends_at is None or self.ends_at.year <= 1:
            return None
        return self.ends_at.timestamp()


class WebhookPayload(_Model):
    """The body Alertmanager POSTs to a webhook receiver (version "4")."""

    version: Literal["4"]
    group_key: StrictStr = Field(alias="groupKey")
    truncated_alerts: StrictInt = Field(0, ge=0, le=_MAX_TRUNCATED, alias="truncatedAlerts")
    status: AlertStatus
    receiver: StrictStr
    group_labels: Labels = Field(default_factory=dict, alias="groupLabels")
    common_labels: Labels = Field(default_factory=dict, alias="commonLabels")
    common_annotations: Labels = Field(default_factory=dict, alias="commonAnnotations")
    external_url: StrictStr = Field("", alias="externalURL")
    alerts: list[Alert]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one batch of alerts did. `rejected` > 0 means the inbox was full (answer 503)."""

    new_firing: int = 0
    resolved: int = 0
    duplicates: int = 0
    rejected: int = 0
    unrouted: int = 0

    @property
    def full(self) -> bool:
        return self.rejected > 0

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(
            new_firing=self.new_firing + other.new_firing,
            resolved=self.resolved + other.resolved,
            duplicates=self.duplicates + other.duplicates,
            rejected=self.rejected + other.rejected,
            unrouted=self.unrouted + other.unrouted,
        )


@dataclass(slots=True)
class _Entry:
    started: float
    violation: Violation
    last_seen: float  # clock time of the latest delivery of this occurrence
    ends: float | None  # endsAt of the latest delivery, None when unset


_DeliveryKey = tuple[str, AlertStatus, float]  # (fingerprint, status, startsAt)


class AlertInbox:
    """Firing alerts as Violations, bounded; the Monitor reads it through `firing()`.

    A delivery seen before (same fingerprint, status and startsAt) is a duplicate; so is a
    firing delivery of an occurrence already resolved (a late retry must not resurrect it).

    Resolves can be lost (Alertmanager restarted, delivery given up, daemon down), so an
    entry also expires when no delivery of its occurrence (duplicates included: Alertmanager
    re-sends firing alerts every repeat_interval) came for `ttl_s`, or when its endsAt is set
    and past. Expired entries leave `firing()` and free capacity; a later re-delivery of an
    expired occurrence (not resolved meanwhile) brings it back as new.
    """

    def __init__(
        self,
        *,
        max_alerts: int,
        component_label: str = "component",
        default_component: str = "charter",
        metrics: Metrics | None = None,
        dedupe_size: int | None = None,
        ttl_s: float = DEFAULT_ALERT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_alerts < 1:
            raise ValueError("max_alerts must be >= 1")
        if not ttl_s > 0:
            raise ValueError("ttl_s must be > 0")
        self._max_alerts = max_alerts
        self._component_label = component_label
        self._default_component = default_component
        self._metrics = metrics
        self._dedupe_size = dedupe_size if dedupe_size is not None else max(4 * max_alerts, 1024)
        self._ttl_s = ttl_s
        self._clock = clock
        # Ordered by last_seen (a refreshed entry moves to the end): expiry scans the front.
        self._firing: dict[str, _Entry] = {}
        self._with_ends: set[str] = set()  # fingerprints whose entry has an endsAt
        self._seen: OrderedDict[_DeliveryKey, None] = OrderedDict()
        # (fingerprint, startsAt) of expired occurrences, bounded like the dedupe memory.
        self._expired: OrderedDict[tuple[str, float], None] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._max_alerts

    @property
    def remembered(self) -> int:
        """How many delivery keys the dedupe memory holds (bounded by dedupe_size)."""
        return len(self._seen)

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def __len__(self) -> int:
        """How many alerts are firing now (expired entries are dropped first)."""
        self.expire()
        return len(self._firing)

    def firing(self) -> list[Violation]:
        """The violations of the alerts firing now (the Monitor's AlertSource protocol)."""
        self.expire()
        return [entry.violation for entry in self._firing.values()]

    def expire(self) -> int:
        """Drop the entries past their TTL or their endsAt; return how many."""
        return self._expire(self._clock())

    def _expire(self, now: float) -> int:
        cutoff = now - self._ttl_s
        stale: list[tuple[str, str]] = []
        for fingerprint, entry in self._firing.items():
            if entry.last_seen >= cutoff:
                break  # ordered by last_seen: the rest were seen later
            stale.append((fingerprint, "ttl"))
        ttl_expired = {fingerprint for fingerprint, _ in stale}
        for fingerprint in self._with_ends:
            ends = self._firing[fingerprint].ends
            if ends is not None and ends <= now and fingerprint not in ttl_expired:
                stale.append((fingerprint, "ends_at"))
        for fingerprint, reason in stale:
            entry = self._drop(fingerprint)
            self._expired[(fingerprint, entry.started)] = None
            while len(self._expired) > self._dedupe_size:
                self._expired.popitem(last=False)
            log.warning(
                "alert_expired",
                kind=entry.violation.kind,
                component=entry.violation.component,
                fingerprint=fingerprint,
                reason=reason,
                last_seen_age_s=round(now - entry.last_seen, 3),
                ttl_s=self._ttl_s,
            )
        return len(stale)

    def offer(self, alerts: Sequence[Alert]) -> IngestResult:
        """Take a batch: resolved alerts first (they free room), then firing ones."""
        now = self._clock()
        self._expire(now)  # expired entries free room too
        resolved = duplicates = new_firing = rejected = 0
        for alert in alerts:
            if alert.status is AlertStatus.RESOLVED:
                if self._resolve(alert):
                    resolved += 1
                else:
                    duplicates += 1
        for alert in alerts:
            if alert.status is not AlertStatus.FIRING:
                continue
            outcome = self._fire(alert, now)
            if outcome == "new":
                new_firing += 1
            elif outcome == "duplicate":
                duplicates += 1
            else:
                rejected += 1
        if self._metrics is not None and duplicates:
            self._metrics.alerts_duplicate.inc(duplicates)
        if rejected:
            log.warning("alert_inbox_full", rejected=rejected, capacity=self._max_alerts)
        return IngestResult(
            new_firing=new_firing, resolved=resolved, duplicates=duplicates, rejected=rejected
        )

    def _resolve(self, alert: Alert) -> bool:
        started = alert.started
        key = (alert.fingerprint, AlertStatus.RESOLVED, started)
        if self._seen_before(key):
            return False
        entry = self._firing.get(alert.fingerprint)
        # A resolve of an older occurrence must not clear a newer one.
        if entry is not None and entry.started <= started:
            self._drop(alert.fingerprint)
        self._expired.pop((alert.fingerprint, started), None)
        self._remember(key)
        return True

    def _fire(self, alert: Alert, now: float) -> Literal["new", "duplicate", "full"]:
        fingerprint, started, ends = alert.fingerprint, alert.started, alert.ends
        key = (fingerprint, AlertStatus.FIRING, started)
        seen = self._seen_before(key)
        if (fingerprint, AlertStatus.RESOLVED, started) in self._seen:
            return "duplicate"
        entry = self._firing.get(fingerprint)
        if entry is not None and entry.started >= started:
            if entry.started == started:  # a re-delivery of this occurrence: still firing
                self._refresh(fingerprint, entry, now=now, ends=ends)
            if not seen:
                self._remember(key)  # the same or an older occurrence: nothing new
            return "duplicate"
        if ends is not None and ends <= now:
            return "duplicate"  # a late retry of an occurrence that has ended since
        if seen and (fingerprint, started) not in self._expired:
            return "duplicate"  # only an expired occurrence may come back
        if entry is None and len(self._firing) >= self._max_alerts:
            return "full"  # not remembered: Alertmanager's retry must be able to land
        self._expired.pop((fingerprint, started), None)
        if entry is not None:
            self._drop(fingerprint)  # an older occurrence: the new one goes to the end
        self._firing[fingerprint] = _Entry(started, self._violation(alert), now, ends)
        if ends is not None:
            self._with_ends.add(fingerprint)
        self._remember(key)
        return "new"

    def _refresh(self, fingerprint: str, entry: _Entry, *, now: float, ends: float | None) -> None:
        entry.last_seen = now
        entry.ends = ends  # the latest delivery's endsAt is the current one
        if ends is None:
            self._with_ends.discard(fingerprint)
        else:
            self._with_ends.add(fingerprint)
        del self._firing[fingerprint]
        self._firing[fingerprint] = entry  # keep the dict ordered by last_seen

    def _drop(self, fingerprint: str) -> _Entry:
        self._with_ends.discard(fingerprint)
        return self._firing.pop(fingerprint)

    def _violation(self, alert: Alert) -> Violation:
        labels = alert.labels
        kind = labels.get("cause") or labels.get("alertname") or "alert"
        component = labels.get(self._component_label) or self._default_component
        try:
            severity = Severity(labels.get("severity", "").lower())
        except ValueError:
            severity = Severity.WARNING
        return Violation(
            kind=kind,
            component=component,
            severity=severity,
            source=ViolationSource.ALERT,
            timestamp=alert.started,
            labels=dict(labels),
        )

    def _seen_before(self, key: _DeliveryKey) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        return False

    def _remember(self, key: _DeliveryKey) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self._dedupe_size:
            self._seen.popitem(last=False)


AlertMatcher = Mapping[str, str] | Callable[[Alert], bool]
AlertHandler = Callable[[Sequence[Alert]], IngestResult]


def _matches(matcher: AlertMatcher, alert: Alert) -> bool:
    if isinstance(matcher, Mapping):
        return all(alert.labels.get(name) == value for name, value in matcher.items())
    return bool(matcher(alert))


class AlertMessageRouter:
    """Dispatch each alert to the first handler whose matcher fits, else the default.

    A Mapping matcher fits when every given label has exactly that value. Each handler is
    called once per batch with its alerts, in order. The default handler feeds the inbox.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[AlertMatcher, AlertHandler]] = []
        self._default: AlertHandler | None = None

    def register_handler(self, matcher: AlertMatcher, handler: AlertHandler) -> None:
        if isinstance(matcher, Mapping):
            matcher = dict(matcher)
        self._routes.append((matcher, handler))

    def register_default_handler(self, handler: AlertHandler) -> None:
        self._default = handler

    def route_alerts(self, alerts: Sequence[Alert]) -> IngestResult:
        batches: dict[int, list[Alert]] = {}
        default: list[Alert] = []
        for alert in alerts:
            for index, (matcher, _) in enumerate(self._routes):
                if _matches(matcher, alert):
                    batches.setdefault(index, []).append(alert)
                    break
            else:
                default.append(alert)
        result = IngestResult()
        for index, batch in sorted(batches.items()):
            result += self._routes[index][1](batch)
        if default:
            if self._default is not None:
                result += self._default(default)
            else:
                log.warning("alerts_unrouted", count=len(default))
                result += IngestResult(unrouted=len(default))
        return result
