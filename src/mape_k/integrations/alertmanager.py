"""Alertmanager webhook (payload version 4, as Alertmanager 0.25 sends it): models, inbox, router.

The inbox turns firing alerts into Violations for the Monitor, forgets resolved ones (or
ones not re-delivered within a TTL, should the resolve be lost), and acknowledges
re-deliveries without counting them twice. Its memory is bounded.
No I/O here: the HTTP side lives in mape_k.server; the clock is injected, and so is the
journal (the knowledge store) that keeps the inbox across restarts.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from mape_k.causes import RETURNS
from mape_k.errors import MapekError
from mape_k.metrics import Metrics
from mape_k.models import Severity, Violation, ViolationSource
from mape_k.store import InboxRow

log = structlog.get_logger(__name__)

WEBHOOK_VERSION = "4"
# RFC 3339 date-time with a mandatory offset; Go may send up to nanoseconds.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
# Alertmanager's truncatedAlerts is a Go uint64: every value it can send is accepted (the
# Counter that adds it is a float, exact up to 2^53; the log and the answer keep the integer).
MAX_TRUNCATED = 2**64 - 1
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
    truncated_alerts: StrictInt = Field(0, ge=0, le=MAX_TRUNCATED, alias="truncatedAlerts")
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


class InboxJournal(Protocol):
    """Where the inbox keeps what it remembers across restarts (the knowledge store)."""

    async def save_inbox(self, upserts: list[InboxRow], deletes: list[tuple[str, str]]) -> None:
        """Write the changed rows and delete the forgotten (fingerprint, status) keys."""

    async def inbox_rows(self) -> list[InboxRow]:
        """Every row, oldest delivery first."""


@dataclass(slots=True)
class _Entry:
    started: float
    violation: Violation
    last_seen: float  # clock time of the latest delivery of this occurrence
    ends: float | None  # endsAt of the latest delivery, None when unset
    saved_seen: float  # last_seen as the journal has it


@dataclass(slots=True)
class _Resolve:
    starts: float  # startsAt of the resolve delivery (what makes a re-delivery a duplicate)
    ends: float  # its endsAt (receipt time when unset): firing that started by then is over
    received: float  # clock time of its latest delivery


_FIRING = AlertStatus.FIRING.value
_RESOLVED = AlertStatus.RESOLVED.value
# A re-delivery moves last_seen; the journal is told at most this often (the TTL is hours).
_SAVE_SEEN_EVERY_S = 60.0


class AlertInbox:
    """Firing alerts as Violations, bounded; the Monitor reads it through `firing()`.

    Alertmanager keeps one alert per fingerprint, so the inbox decides per fingerprint, in
    the order deliveries arrive:

    * A **resolved** delivery ends the firing alert of its fingerprint, whatever its
      startsAt: Alertmanager merges a re-posted alert into the one it holds and keeps the
      earliest startsAt, so a resolve can carry an earlier startsAt than the firing it ends.
      Only a firing alert that started *after* the resolve's endsAt survives it (that is a
      newer occurrence; the resolve is a late retry about an older one). A resolve without
      an endsAt ends at its receipt (never before its own startsAt).
    * The inbox remembers the latest resolve of each fingerprint (for `ttl_s`, at most
      `dedupe_size` of them). A firing delivery whose startsAt is at or before that
      resolve's endsAt belongs to the resolved occurrence (a late retry, or a re-post
      Alertmanager merged into the resolved alert): it is acknowledged as a duplicate and
      never acted on. A **new firing** is one received after the resolve whose startsAt
      is after the resolve's endsAt.
    * A firing delivery with the startsAt of the firing alert is a re-delivery (a
      duplicate that keeps it alive); an earlier startsAt is a duplicate too; a later one
      is a new occurrence that replaces it.

    Resolves can be lost (Alertmanager restarted, delivery given up, daemon down), so an
    entry also expires when no delivery of its occurrence (duplicates included: Alertmanager
    re-sends firing alerts every repeat_interval) came for `ttl_s`, or when its endsAt is set
    and past. Expired entries leave `firing()` and free capacity; a later re-delivery of an
    expired occurrence (not resolved meanwhile) brings it back as new.

    With a `journal`, every change is written through it by `flush()` (a refresh of
    last_seen at most once a minute) and `restore()` takes the rows back after a restart. A
    failed write is logged once, kept and retried with the next flush: memory stays the
    truth. A `shared` journal is one inbox for several replicas (PostgreSQL): before each
    batch and each read, `refresh()` writes what this replica changed and takes the
    journal's rows as the truth, so a delivery to any replica reaches the leader, deduped
    by fingerprint across them.
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
        journal: InboxJournal | None = None,
        shared: bool = False,
    ) -> None:
        if max_alerts < 1:
            raise ValueError("max_alerts must be >= 1")
        if not ttl_s > 0:
            raise ValueError("ttl_s must be > 0")
        self._max_alerts = max_alerts
        self._component_label = component_label
        self._default_component = default_component
        self._metrics = metrics
        self._dedupe_size = dedupe_size if dedupe_size is not None else max(2 * max_alerts, 1024)
        self._ttl_s = ttl_s
        self._clock = clock
        self._journal = journal
        self._shared = shared and journal is not None
        # Ordered by last_seen (a refreshed entry moves to the end): expiry scans the front.
        self._firing: dict[str, _Entry] = {}
        self._with_ends: set[str] = set()  # fingerprints whose entry has an endsAt
        # The latest resolve per fingerprint, ordered by receipt: expiry scans the front.
        self._resolved: OrderedDict[str, _Resolve] = OrderedDict()
        # Journal writes not done yet, by (fingerprint, status); None = delete the row.
        self._unsaved: dict[tuple[str, str], InboxRow | None] = {}
        self._save_failing = False

    @property
    def capacity(self) -> int:
        return self._max_alerts

    @property
    def remembered(self) -> int:
        """How many resolves the inbox remembers (bounded by dedupe_size)."""
        return len(self._resolved)

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

    async def firing_now(self) -> list[Violation]:
        """The Monitor's read (its AlertSource): the shared inbox refreshed first, and what
        expiry dropped written after."""
        await self.refresh()
        violations = self.firing()
        await self.flush()
        return violations

    def restore(self, rows: Iterable[InboxRow]) -> int:
        """Take back the rows a previous run saved (oldest delivery first); return how many fire.

        Call it before the first delivery (then `flush()`). Rows beyond the capacity (the
        oldest) and rows past their TTL are dropped, and dropped from the journal too.
        """
        self._load(rows)
        log.info("alert_inbox_restored", firing=len(self._firing), resolves=len(self._resolved))
        return len(self._firing)

    async def refresh(self) -> None:
        """A shared inbox: write what this replica changed, then take the journal's rows
        as the truth (another replica may have received a firing alert or its resolve).
        A journal that cannot be read or written leaves memory as it is."""
        if not self._shared or self._journal is None:
            return
        await self.flush()
        if self._unsaved:
            return
        try:
            rows = await self._journal.inbox_rows()
        except MapekError as exc:
            log.warning("alert_inbox_refresh_failed", error=str(exc))
            return
        self._firing.clear()
        self._with_ends.clear()
        self._resolved.clear()
        self._load(rows)

    def _load(self, rows: Iterable[InboxRow]) -> None:
        for row in rows:
            if row.status == _FIRING and row.labels is not None:
                self._firing.pop(row.fingerprint, None)
                self._firing[row.fingerprint] = _Entry(
                    started=row.starts_at,
                    violation=self._violation(row.labels, row.starts_at),
                    last_seen=row.seen_at,
                    ends=row.ends_at,
                    saved_seen=row.seen_at,
                )
                if row.ends_at is not None:
                    self._with_ends.add(row.fingerprint)
                else:
                    self._with_ends.discard(row.fingerprint)
            elif row.status == _RESOLVED:
                self._resolved.pop(row.fingerprint, None)
                self._resolved[row.fingerprint] = _Resolve(
                    starts=row.starts_at,
                    ends=row.seen_at if row.ends_at is None else row.ends_at,
                    received=row.seen_at,
                )
            else:
                self._forget(row.fingerprint, row.status)
        # Rows written by different replicas: a resolve ends the firing it covers.
        for fingerprint, resolve in self._resolved.items():
            entry = self._firing.get(fingerprint)
            if entry is not None and entry.started <= resolve.ends:
                self._drop(fingerprint)
        while len(self._firing) > self._max_alerts:
            fingerprint = next(iter(self._firing))
            self._drop(fingerprint)
        self._bound_resolved()
        self._expire(self._clock())

    def _expire(self, now: float) -> int:
        cutoff = now - self._ttl_s
        while self._resolved:
            fingerprint, resolve = next(iter(self._resolved.items()))
            if resolve.received >= cutoff:
                break
            del self._resolved[fingerprint]
            self._forget(fingerprint, _RESOLVED)
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
                if self._resolve(alert, now):
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

    def _resolve(self, alert: Alert, now: float) -> bool:
        """Apply one resolve; False when it is a re-delivery that changed nothing."""
        fingerprint = alert.fingerprint
        # Without an endsAt the resolve ends at its receipt; it never ends before it starts.
        ends = max(alert.ends if alert.ends is not None else now, alert.started)
        entry = self._firing.get(fingerprint)
        # Only a firing alert that started after this resolve's end is a newer occurrence.
        ended = entry is not None and entry.started <= ends
        if ended:
            self._drop(fingerprint)
        known = self._resolved.pop(fingerprint, None)
        if known is not None and known.ends > ends:
            resolve = _Resolve(known.starts, known.ends, now)  # a late retry of an older one
        else:
            resolve = _Resolve(alert.started, ends, now)
        self._resolved[fingerprint] = resolve
        if self._journal is not None:
            self._unsaved[(fingerprint, _RESOLVED)] = InboxRow(
                fingerprint, _RESOLVED, resolve.starts, resolve.ends, now
            )
        self._bound_resolved()
        return ended or known is None or known.starts != alert.started

    def _fire(self, alert: Alert, now: float) -> Literal["new", "duplicate", "full"]:
        fingerprint, started, ends = alert.fingerprint, alert.started, alert.ends
        resolve = self._resolved.get(fingerprint)
        if resolve is not None and started <= resolve.ends:
            return "duplicate"  # the resolved occurrence: never acted on again
        entry = self._firing.get(fingerprint)
        if entry is not None and entry.started >= started:
            if entry.started == started:  # a re-delivery of this occurrence: still firing
                self._refresh(fingerprint, entry, now=now, ends=ends)
            return "duplicate"  # the same or an older occurrence: nothing new
        if ends is not None and ends <= now:
            return "duplicate"  # a late retry of an occurrence that has ended since
        if entry is None and len(self._firing) >= self._max_alerts:
            return "full"  # not remembered: Alertmanager's retry must be able to land
        if entry is not None:
            self._drop(fingerprint)  # an older occurrence: the new one goes to the end
        entry = _Entry(
            started, self._violation(alert.labels, started, alert.annotations), now, ends, now
        )
        self._firing[fingerprint] = entry
        if ends is not None:
            self._with_ends.add(fingerprint)
        self._save_entry(fingerprint, entry)
        return "new"

    def _refresh(self, fingerprint: str, entry: _Entry, *, now: float, ends: float | None) -> None:
        entry.last_seen = now
        changed = entry.ends != ends
        entry.ends = ends  # the latest delivery's endsAt is the current one
        if ends is None:
            self._with_ends.discard(fingerprint)
        else:
            self._with_ends.add(fingerprint)
        del self._firing[fingerprint]
        self._firing[fingerprint] = entry  # keep the dict ordered by last_seen
        if changed or now - entry.saved_seen >= _SAVE_SEEN_EVERY_S:
            self._save_entry(fingerprint, entry)

    def _drop(self, fingerprint: str) -> _Entry:
        self._with_ends.discard(fingerprint)
        self._forget(fingerprint, _FIRING)
        return self._firing.pop(fingerprint)

    def _bound_resolved(self) -> None:
        while len(self._resolved) > self._dedupe_size:
            fingerprint, _ = self._resolved.popitem(last=False)
            self._forget(fingerprint, _RESOLVED)

    def _forget(self, fingerprint: str, status: str) -> None:
        if self._journal is not None:
            self._unsaved[(fingerprint, status)] = None

    def _save_entry(self, fingerprint: str, entry: _Entry) -> None:
        entry.saved_seen = entry.last_seen
        if self._journal is None:
            return
        self._unsaved[(fingerprint, _FIRING)] = InboxRow(
            fingerprint,
            _FIRING,
            entry.started,
            entry.ends,
            entry.last_seen,
            entry.violation.labels,
        )

    async def flush(self) -> None:
        """Hand the unsaved changes to the journal; on failure keep them for the next time."""
        if not self._unsaved or self._journal is None:
            return
        unsaved = dict(self._unsaved)
        upserts = [row for row in unsaved.values() if row is not None]
        deletes = [key for key, row in unsaved.items() if row is None]
        try:
            await self._journal.save_inbox(upserts, deletes)
        except MapekError as exc:
            if not self._save_failing:
                log.warning("alert_inbox_save_failed", error=str(exc), unsaved=len(self._unsaved))
            self._save_failing = True
            return
        for key, row in unsaved.items():  # a change made while the write ran stays unsaved
            if self._unsaved.get(key, row) is row:
                self._unsaved.pop(key, None)
        if self._save_failing:
            log.info("alert_inbox_saved")
            self._save_failing = False

    def _violation(
        self,
        labels: Mapping[str, str],
        started: float,
        annotations: Mapping[str, str] | None = None,
    ) -> Violation:
        kind = labels.get("cause") or labels.get("alertname") or "alert"
        if kind in RETURNS:  # the daemon's own cause: an alert cannot ask for a return
            log.warning("alert_cause_reserved", cause=kind)
            kind = "alert"
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
            timestamp=started,
            labels=dict(labels),
            annotations=dict(annotations or {}),
        )


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

    def __init__(self, inbox: AlertInbox | None = None) -> None:
        self._routes: list[tuple[AlertMatcher, AlertHandler]] = []
        self._default: AlertHandler | None = None
        self._inbox = inbox
        if inbox is not None:
            self._default = inbox.offer

    async def deliver(self, alerts: Sequence[Alert]) -> IngestResult:
        """A webhook's batch: the inbox refreshed first (shared across replicas), routed,
        and what changed written before the answer (Alertmanager retries what failed)."""
        if self._inbox is not None:
            await self._inbox.refresh()
        result = self.route_alerts(alerts)
        if self._inbox is not None:
            await self._inbox.flush()
        return result

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
