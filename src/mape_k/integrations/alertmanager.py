"""Alertmanager webhook (payload version 4, as Alertmanager 0.25 sends it): models, inbox, router.

The inbox turns firing alerts into Violations for the Monitor, forgets resolved ones, and
acknowledges re-deliveries without counting them twice. Its memory is bounded.
No I/O here: the HTTP side lives in mape_k.server.
"""

from __future__ import annotations

import re
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


@dataclass(frozen=True, slots=True)
class _Entry:
    started: float
    violation: Violation


_DeliveryKey = tuple[str, AlertStatus, float]  # (fingerprint, status, startsAt)


class AlertInbox:
    """Firing alerts as Violations, bounded; the Monitor reads it through `firing()`.

    A delivery seen before (same fingerprint, status and startsAt) is a duplicate; so is a
    firing delivery of an occurrence already resolved (a late retry must not resurrect it).
    """

    def __init__(
        self,
        *,
        max_alerts: int,
        component_label: str = "component",
        default_component: str = "charter",
        metrics: Metrics | None = None,
        dedupe_size: int | None = None,
    ) -> None:
        if max_alerts < 1:
            raise ValueError("max_alerts must be >= 1")
        self._max_alerts = max_alerts
        self._component_label = component_label
        self._default_component = default_component
        self._metrics = metrics
        self._dedupe_size = dedupe_size if dedupe_size is not None else max(4 * max_alerts, 1024)
        self._firing: dict[str, _Entry] = {}
        self._seen: OrderedDict[_DeliveryKey, None] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._max_alerts

    @property
    def remembered(self) -> int:
        """How many delivery keys the dedupe memory holds (bounded by dedupe_size)."""
        return len(self._seen)

    def __len__(self) -> int:
        return len(self._firing)

    def firing(self) -> list[Violation]:
        """The violations of the alerts firing now (the Monitor's AlertSource protocol)."""
        return [entry.violation for entry in self._firing.values()]

    def offer(self, alerts: Sequence[Alert]) -> IngestResult:
        """Take a batch: resolved alerts first (they free room), then firing ones."""
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
            outcome = self._fire(alert)
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
            del self._firing[alert.fingerprint]
        self._remember(key)
        return True

    def _fire(self, alert: Alert) -> Literal["new", "duplicate", "full"]:
        started = alert.started
        key = (alert.fingerprint, AlertStatus.FIRING, started)
        if (
            self._seen_before(key)
            or (alert.fingerprint, AlertStatus.RESOLVED, started) in self._seen
        ):
            return "duplicate"
        entry = self._firing.get(alert.fingerprint)
        if entry is not None and entry.started >= started:
            self._remember(key)  # the same or an older occurrence: nothing new
            return "duplicate"
        if entry is None and len(self._firing) >= self._max_alerts:
            return "full"  # not remembered: Alertmanager's retry must be able to land
        self._firing[alert.fingerprint] = _Entry(started, self._violation(alert))
        self._remember(key)
        return "new"

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
