"""The built-in `MapekNeedsHuman` alert: Alertmanager (API v2) is told while the safety
envelope holds a target for a human, and told again, resolved, when the hold clears.

The envelope owns the holds. This module owns only what it told Alertmanager: `sent`, one
entry per target, persisted in the store's state table under "needs_human_alerts" when an
alert starts, is first delivered or ends, so that after a restart a held target's alert
goes on and one whose hold cleared meanwhile (expired, say) is resolved. Each iteration
`sync()` compares the envelope's active holds with `sent`:

* a held target with no alert fires: its labels (the identity Alertmanager dedups on:
  alertname, target, cause, severity, component="mape-k") and annotations (what was tried,
  the reason, how to clear it) are fixed then, from the journal, and kept for every re-send;
* a firing alert is re-sent every `resend_s` (at most once an iteration), with endsAt
  4 periods ahead: Alertmanager resolves an alert by itself at its endsAt, so three missed
  re-sends do not end it, and one nobody re-sends (the daemon stopped) ends within minutes
  instead of paging forever;
* an alert whose hold is gone (quiet window, operator, expiry) is sent with endsAt = now.

Everything due goes in one POST, bounded by `timeout_s` (retry included); a failure is
logged, counted and retried at the next iteration, never raised. Dry-run: decided and
logged, nothing sent. Label values come from alerts (untrusted): they only ever go into
the JSON body.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from mape_k.actuators.alertmanager import iso, post_alerts
from mape_k.config import Settings, needs_human_alert_url
from mape_k.errors import MapekError
from mape_k.integrations import retry
from mape_k.loop.envelope import SafetyEnvelope
from mape_k.loop.guards import Hold
from mape_k.metrics import Metrics
from mape_k.models import ExecutionStatus, OutcomeType, Severity
from mape_k.storeio import BAD_STATE, AsyncStore, read_state

log = structlog.get_logger(__name__)

ALERTNAME = "MapekNeedsHuman"
STATE_KEY = "needs_human_alerts"
RUNBOOK_URL = "docs/runbook.md#mapekneedshuman"
ENDS_AFTER_PERIODS = 4  # endsAt this many re-send periods ahead (as Prometheus does)
MAX_TRIED = 10  # attempts named in the annotation at most, the latest
MAX_ANNOTATION = 1000  # characters of one annotation value
_FAILED = frozenset({ExecutionStatus.FAILED, ExecutionStatus.ROLLED_BACK})


def alert_labels(target: str, cause: str, severity: Severity) -> dict[str, str]:
    """The alert's identity (Alertmanager dedups on its labels): component "mape-k" routes
    it to the operators like mape-k's other alerts, never back to mape-k's webhook."""
    return {
        "alertname": ALERTNAME,
        "target": target,
        "cause": cause,
        "severity": severity.value,
        "component": "mape-k",
    }


@dataclass(frozen=True, slots=True)
class Sent:
    """One target's alert as this daemon told (or is telling) Alertmanager."""

    labels: dict[str, str]
    annotations: dict[str, str]
    since: float  # the hold's start: the alert's startsAt
    delivered: bool = False  # Alertmanager took it at least once
    resolving: bool = False  # the hold is gone; the resolve is not delivered yet
    sent_at: float | None = None  # the last delivery (this process)
    ends_at: float | None = None  # endsAt of the last firing delivery (this process)
    error: str | None = None  # why the last delivery failed

    def state(self) -> str:
        if self.resolving:
            return "resolving"
        return "firing" if self.delivered else "pending"


@dataclass(slots=True)
class _Batch:
    """What one sync sends: targets whose alert fires (new or re-sent), targets whose
    alert resolves, and delivered alerts a new hold's alert (other labels) replaces."""

    firing: list[str] = field(default_factory=list)
    resolving: list[str] = field(default_factory=list)
    replaced: list[Sent] = field(default_factory=list)


class NeedsHumanAlerts:
    """What `MapekNeedsHuman` alerts were told to Alertmanager, kept in step with the holds."""

    def __init__(
        self,
        *,
        store: AsyncStore,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: retry.Sleep = asyncio.sleep,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._transport = transport
        self._sleep = sleep
        self.sent: dict[str, Sent] = {}
        self._dry_logged: set[tuple[str, str, float]] = set()

    # --- persistence -----------------------------------------------------------------------

    async def load(self, *, strict: bool = False) -> None:
        """The alerts an earlier run told Alertmanager about (re-sent or resolved next).
        `strict` (a takeover): a read that fails raises; nothing saved means none sent."""
        saved = await read_state(
            self._store, STATE_KEY, strict=strict, event="needs_human_alerts_unreadable"
        )
        if saved is None:
            return
        try:
            sent = {
                str(target): Sent(
                    labels={str(k): str(v) for k, v in entry["labels"].items()},
                    annotations={str(k): str(v) for k, v in entry["annotations"].items()},
                    since=float(entry["since"]),
                    delivered=bool(entry["delivered"]),
                    resolving=bool(entry["resolving"]),
                )
                for target, entry in saved.items()
            }
        except BAD_STATE as exc:
            log.error("needs_human_alerts_unreadable", error=f"bad saved state: {exc}")
            return
        self.sent = sent
        if sent:
            log.info("needs_human_alerts_restored", targets=sorted(sent))

    async def _save(self, now: float) -> None:
        data = {
            target: {
                "labels": s.labels,
                "annotations": s.annotations,
                "since": s.since,
                "delivered": s.delivered,
                "resolving": s.resolving,
            }
            for target, s in self.sent.items()
        }
        try:
            await self._store.set_state(STATE_KEY, data, at=now)
        except MapekError as exc:  # memory stays the truth; the next change writes again
            log.error("needs_human_alerts_save_failed", error=str(exc))

    # --- one iteration -------------------------------------------------------------------

    async def sync(self, envelope: SafetyEnvelope, settings: Settings, *, now: float) -> None:
        """Tell Alertmanager what changed since the last call: new holds fire, firing
        alerts are re-sent when due, alerts of cleared holds are resolved."""
        url = needs_human_alert_url(settings)
        cfg = settings.guards.target_breaker
        holds = {t: h for t, h in envelope.needs_human.items() if h.active(now)}
        if url is None:
            if self.sent:
                # Turned off (or its URL gone) on reload: nowhere to resolve them; each ends
                # at its own endsAt in Alertmanager.
                log.warning("needs_human_alerts_dropped", targets=sorted(self.sent))
                self.sent = {}
                await self._save(now)
            return
        before = self._persisted()
        period = max(cfg.alert.resend_s, settings.orchestrator.interval_s)
        sent = dict(self.sent)  # decided on a copy: dry-run keeps none of it
        tried = {
            target: await self._tried(
                target, since=hold.since - cfg.window_s, count=min(cfg.failures, MAX_TRIED)
            )
            for target, hold in holds.items()
            if (old := sent.get(target)) is None or old.since != hold.since
        }
        batch = self._decide(sent, holds, settings, tried, now=now)
        if envelope.dry_run:
            self._skip(sent, batch)
            return
        self.sent = sent
        if batch.firing or batch.resolving:
            ends_at = now + ENDS_AFTER_PERIODS * period
            await self._deliver(url, cfg.alert.timeout_s, batch, ends_at=ends_at, now=now)
        if self._persisted() != before:
            await self._save(now)

    def _decide(
        self,
        sent: dict[str, Sent],
        holds: dict[str, Hold],
        settings: Settings,
        tried: Mapping[str, tuple[str, list[str]]],
        *,
        now: float,
    ) -> _Batch:
        """What to send now, `sent` updated to match (`tried`: the journal's cause and
        attempts of each new hold)."""
        resend_s = settings.guards.target_breaker.alert.resend_s
        batch = _Batch()
        for target, hold in holds.items():
            old = sent.get(target)
            if old is None or old.since != hold.since:
                sent[target] = self._new(target, hold, settings, tried[target])
                batch.firing.append(target)
                if old is not None and old.delivered and old.labels != sent[target].labels:
                    batch.replaced.append(old)
            elif old.resolving or old.sent_at is None or now - old.sent_at >= resend_s:
                sent[target] = replace(old, resolving=False)
                batch.firing.append(target)
        for target, old in list(sent.items()):
            if target in holds:
                continue
            if not old.delivered:
                del sent[target]  # Alertmanager never had it
            elif old.ends_at is not None and now >= old.ends_at:
                del sent[target]  # Alertmanager resolved it at its endsAt already
                log.info("needs_human_alert_ended", target=target, ends_at=old.ends_at)
            else:
                sent[target] = replace(old, resolving=True)
                batch.resolving.append(target)
        return batch

    def _persisted(self) -> dict[str, tuple[float, bool, bool]]:
        return {t: (s.since, s.delivered, s.resolving) for t, s in self.sent.items()}

    def _skip(self, sent: dict[str, Sent], batch: _Batch) -> None:
        """Dry-run: each decision logged once (not once an iteration); nothing sent."""
        decided = [(t, "firing") for t in batch.firing]
        decided += [(t, "resolved") for t in batch.resolving]
        for target, state in decided:
            key = (target, state, sent[target].since)
            if key not in self._dry_logged:  # once per decision, not once per iteration
                self._dry_logged.add(key)
                log.warning("needs_human_alert_skipped", target=target, state=state, why="dry-run")

    async def _deliver(
        self, url: str, timeout_s: float, batch: _Batch, *, ends_at: float, now: float
    ) -> None:
        firing, resolving = batch.firing, batch.resolving
        bodies = [self._body(self.sent[t], ends_at) for t in firing]
        # A replaced alert's resolve is not retried: it ends at its own endsAt anyway.
        ended = [*(self.sent[t] for t in resolving), *batch.replaced]
        bodies += [self._body(s, now) for s in ended]
        try:
            async with asyncio.timeout(timeout_s):
                await post_alerts(
                    url,
                    bodies,
                    operation="needs_human_alert",
                    timeout_s=timeout_s,
                    attempts=2,
                    transport=self._transport,
                    sleep=self._sleep,
                )
        except Exception as exc:
            # MapekError and TimeoutError are the expected ones; anything else (a URL
            # httpx refuses, a bug) is logged and retried the same way.
            error = str(exc) or f"no answer within {timeout_s:g} s"
            for target in firing + resolving:
                self.sent[target] = replace(self.sent[target], error=error)
            if self._metrics is not None:
                self._metrics.escalation_failures.inc()
            log.warning(
                "needs_human_alert_failed",
                firing=firing,
                resolved=resolving,
                url=url,
                error=error,
                retry="next iteration",
            )
            return
        for target in firing:
            old = self.sent[target]
            self.sent[target] = replace(
                old, delivered=True, sent_at=now, ends_at=ends_at, error=None
            )
            self._noted(target, old, "firing", resend=old.delivered)
        for target in resolving:
            self._noted(target, self.sent.pop(target), "resolved", resend=False)

    def _noted(self, target: str, sent: Sent, state: str, *, resend: bool) -> None:
        if resend:
            log.debug("needs_human_alert_resent", target=target)
            return
        if self._metrics is not None:
            self._metrics.escalations.labels(state=state).inc()
        log.warning(
            "needs_human_alert",
            state=state,
            target=target,
            cause=sent.labels.get("cause"),
            since=sent.since,
        )

    @staticmethod
    def _body(sent: Sent, ends_at: float) -> dict[str, Any]:
        return {
            "labels": sent.labels,
            "annotations": sent.annotations,
            "startsAt": iso(dt.datetime.fromtimestamp(sent.since, dt.UTC)),
            "endsAt": iso(dt.datetime.fromtimestamp(ends_at, dt.UTC)),
        }

    # --- what the alert says -------------------------------------------------------------

    def _new(
        self, target: str, hold: Hold, settings: Settings, journal: tuple[str, list[str]]
    ) -> Sent:
        cfg = settings.guards.target_breaker
        cause, tried = journal
        labels = alert_labels(target, cause, cfg.alert.severity)
        route = f"DELETE /api/v1/holds/{quote(target, safe='')}"
        annotations = {
            "summary": f"mape-k stopped acting on {target}: {cause} needs a human",
            "tried": "; ".join(tried) or "(no attempt in the journal)",
            "reason": hold.reason,
            "clear": f"fix it, then {route} on mape-k (admin token); it also clears by itself"
            f" after {cfg.clear_after_s:.0f} s without a violation",
            "runbook_url": RUNBOOK_URL,
        }
        return Sent(
            labels=labels,
            annotations={k: v[:MAX_ANNOTATION] for k, v in annotations.items()},
            since=hold.since,
        )

    async def _tried(self, target: str, *, since: float, count: int) -> tuple[str, list[str]]:
        """The cause and the attempts the target breaker counted, from the journal: the
        latest `count` (its `failures`) outcomes that did not fix `target` and failed
        executions since `since` and after its last success. Older ones led to an
        earlier hold (the breaker starts counting afresh at each)."""
        try:
            outcomes = await self._store.target_outcomes_since(target, since)
            executions = await self._store.executions_finished_since(since)
        except MapekError as exc:
            log.error("needs_human_alert_journal_unreadable", target=target, error=str(exc))
            return "unknown", [f"(the journal could not be read: {exc})"]
        attempts: list[tuple[float, str, str]] = []
        for outcome in outcomes:
            if outcome.outcome is OutcomeType.SUCCESS:
                attempts = []
            elif outcome.outcome is not OutcomeType.UNKNOWN:
                what = f"{outcome.action_type} for {outcome.cause}: {outcome.outcome.value}"
                attempts.append((outcome.recorded_at, outcome.cause, what))
        last_success = max(
            (o.recorded_at for o in outcomes if o.outcome is OutcomeType.SUCCESS), default=None
        )
        for execution in executions:
            policy = execution.policy
            finished = execution.finished_at or execution.started_at
            if policy.target != target or execution.status not in _FAILED:
                continue
            if last_success is not None and finished < last_success:
                continue
            error = (execution.error or execution.status.value)[:200]
            what = f"{policy.primary_action} for {policy.cause.name}: {error}"
            attempts.append((finished, policy.cause.name, what))
        attempts.sort(key=lambda a: a[0])
        cause = attempts[-1][1] if attempts else "unknown"
        return cause, [what for _, _, what in attempts[-count:]]

    # --- /stats ----------------------------------------------------------------------------

    def snapshot(self, settings: Settings) -> dict[str, Any]:
        """The alerts' state, for /stats beside the holds."""
        return {
            "url": needs_human_alert_url(settings),
            "alerts": [
                {
                    "target": target,
                    "state": s.state(),
                    "cause": s.labels.get("cause"),
                    "since": s.since,
                    "sent_at": s.sent_at,
                    "ends_at": s.ends_at,
                    "error": s.error,
                }
                for target, s in self.sent.items()
            ],
        }
