"""Simulated alert deliveries: the shipped Prometheus rules and Alertmanager route, on a clock.

Nothing here is invented: the rules (expr, `for:`, labels, the group's evaluation
interval), the scrape interval and Alertmanager's group_wait / group_interval are read
from the staging files shipped with the package (mape_k/staging). A rule is simulated when
its expression is one of causes.CAUSES' (`signal > threshold`); the others (histograms,
rates, absent()) are listed in `skipped` and not delivered.

Prometheus: a scrape every scrape_interval keeps the latest signals; every evaluation
interval each rule compares the last scrape, is pending while true and fires once true
for its `for:`. Alertmanager: alerts are grouped by the route's group_by; a new group is
sent group_wait after its first alert, then at most every group_interval when it changed
(a new firing alert or a resolve, send_resolved). What a delivery holds is the webhook's
`alerts` list, as `Alert` models: the router takes them like the server would.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from mape_k.causes import CAUSES
from mape_k.integrations.alertmanager import Alert
from mape_k.stack import parse_duration, staging_files

_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: a firing alert's endsAt, unset


@dataclass(frozen=True, slots=True)
class RuleSpec:
    alert: str
    cause: str
    signal: str
    threshold: float
    for_s: float
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class AlertConfig:
    rules: tuple[RuleSpec, ...]
    skipped: tuple[str, ...]  # rules not simulated (expressions beyond `signal > threshold`)
    scrape_s: float
    eval_s: float
    group_by: tuple[str, ...]
    routes: tuple[
        tuple[tuple[tuple[str, str, str], ...], float, float], ...
    ]  # (matchers, wait, interval)
    group_wait_s: float
    group_interval_s: float

    def timing(self, labels: Mapping[str, str]) -> tuple[float, float]:
        """(group_wait, group_interval) of the deepest matching route (first match wins)."""
        for matchers, wait, interval in self.routes:
            if all(_matches(op, labels.get(name, ""), value) for name, op, value in matchers):
                return wait, interval
        return self.group_wait_s, self.group_interval_s


def _matches(op: str, actual: str, value: str) -> bool:
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    if op == "=~":
        return re.fullmatch(value, actual) is not None
    return re.fullmatch(value, actual) is None


_MATCHER = re.compile(r'^\s*(\w+)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def _route_rows(
    route: dict[str, Any],
    inherited: tuple[tuple[str, str, str], ...],
    wait: float,
    interval: float,
    out: list[tuple[tuple[tuple[str, str, str], ...], float, float]],
) -> None:
    wait = parse_duration(route["group_wait"]) if "group_wait" in route else wait
    interval = parse_duration(route["group_interval"]) if "group_interval" in route else interval
    matchers = list(inherited)
    for text in route.get("matchers", []):
        match = _MATCHER.match(text)
        if match:
            matchers.append((match.group(1), match.group(2), match.group(3)))
    for child in route.get("routes", []):
        _route_rows(child, tuple(matchers), wait, interval, out)
    out.append((tuple(matchers), wait, interval))


@functools.cache  # package data: it does not change while the process runs
def load_config() -> AlertConfig:
    """The simulated alert path, from the shipped staging files (parsed once a process:
    it was an eighth of a simulated episode's CPU, docs/benchmarks.md, benchmark 12)."""
    staging = staging_files()
    prometheus = yaml.safe_load((staging / "prometheus" / "prometheus.yml").read_text("utf-8"))
    scrape_s = parse_duration(prometheus["global"]["scrape_interval"])
    by_expr = {cause.expr: cause for cause in CAUSES}
    rules: list[RuleSpec] = []
    skipped: list[str] = []
    eval_s = parse_duration(prometheus["global"].get("evaluation_interval", "1m"))
    rule_file = staging / "prometheus" / "rules" / "charter.rules.yml"
    for group in yaml.safe_load(rule_file.read_text("utf-8"))["groups"]:
        eval_s = parse_duration(group["interval"]) if "interval" in group else eval_s
        for rule in group["rules"]:
            cause = by_expr.get(" ".join(str(rule["expr"]).split()))
            if cause is None:
                skipped.append(rule["alert"])
                continue
            rules.append(
                RuleSpec(
                    alert=rule["alert"],
                    cause=rule["labels"]["cause"],
                    signal=cause.signal,
                    threshold=cause.threshold,
                    for_s=parse_duration(rule["for"]) if "for" in rule else 0.0,
                    labels={"alertname": rule["alert"], **rule["labels"]},
                )
            )
    am = yaml.safe_load((staging / "alertmanager" / "alertmanager.yml").read_text("utf-8"))
    route = am["route"]
    wait = parse_duration(route.get("group_wait", "30s"))
    interval = parse_duration(route.get("group_interval", "5m"))
    rows: list[tuple[tuple[tuple[str, str, str], ...], float, float]] = []
    for child in route.get("routes", []):
        _route_rows(child, (), wait, interval, rows)
    return AlertConfig(
        rules=tuple(rules),
        skipped=tuple(skipped),
        scrape_s=scrape_s,
        eval_s=eval_s,
        group_by=tuple(route.get("group_by", ["alertname"])),
        routes=tuple(rows),
        group_wait_s=wait,
        group_interval_s=interval,
    )


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class _RuleState:
    pending_since: float | None = None
    firing_since: float | None = None


@dataclass(slots=True)
class _Group:
    wait_s: float
    interval_s: float
    created: float
    next_flush: float
    changed: bool = True
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # fingerprint -> alert


@dataclass(frozen=True, slots=True)
class RuleEdge:
    """A rule that started firing (rising) or stopped (falling) at an evaluation."""

    rule: RuleSpec
    at: float
    rising: bool


class AlertPath:
    """Prometheus rule evaluation and Alertmanager grouping over simulated time.

    `tick(now, signals)` with the committee's signals at `now` (call it at every step of
    the episode, in order) returns (rule edges, firing rules evaluated now, deliveries).
    """

    def __init__(self, config: AlertConfig, *, start: float, scrape_offset: float,
                 eval_offset: float) -> None:  # fmt: skip
        self.config = config
        self._next_scrape = start + scrape_offset
        self._next_eval = start + eval_offset
        self._scraped: dict[str, float] | None = None
        self._state = {rule.alert: _RuleState() for rule in config.rules}
        self._groups: dict[tuple[str, ...], _Group] = {}
        self.deliveries = 0

    def tick(
        self, now: float, signals: Mapping[str, float]
    ) -> tuple[list[RuleEdge], list[RuleSpec], list[list[Alert]]]:
        edges: list[RuleEdge] = []
        evaluated_firing: list[RuleSpec] = []
        if now + 1e-9 >= self._next_scrape:
            self._scraped = dict(signals)
            while self._next_scrape <= now + 1e-9:
                self._next_scrape += self.config.scrape_s
        if now + 1e-9 >= self._next_eval:
            while self._next_eval <= now + 1e-9:
                self._next_eval += self.config.eval_s
            if self._scraped is not None:
                edges, evaluated_firing = self._evaluate(now, self._scraped)
        return edges, evaluated_firing, self._flush(now)

    def _evaluate(
        self, now: float, scraped: Mapping[str, float]
    ) -> tuple[list[RuleEdge], list[RuleSpec]]:
        edges: list[RuleEdge] = []
        firing: list[RuleSpec] = []
        for rule in self.config.rules:
            state = self._state[rule.alert]
            true = scraped[rule.signal] > rule.threshold
            if true:
                if state.pending_since is None:
                    state.pending_since = now
                if state.firing_since is None and now - state.pending_since >= rule.for_s - 1e-9:
                    state.firing_since = now
                    edges.append(RuleEdge(rule, now, rising=True))
                    self._send(rule, now, firing=True, since=now)
                if state.firing_since is not None:
                    firing.append(rule)
            else:
                if state.firing_since is not None:
                    edges.append(RuleEdge(rule, now, rising=False))
                    self._send(rule, now, firing=False, since=state.firing_since)
                state.pending_since = None
                state.firing_since = None
        return edges, firing

    def _send(self, rule: RuleSpec, now: float, *, firing: bool, since: float) -> None:
        labels = dict(rule.labels)
        key = tuple(labels.get(name, "") for name in self.config.group_by)
        group = self._groups.get(key)
        if group is None:
            wait, interval = self.config.timing(labels)
            group = _Group(wait_s=wait, interval_s=interval, created=now, next_flush=now + wait)
            self._groups[key] = group
        fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
        group.alerts[fingerprint] = {
            "status": "firing" if firing else "resolved",
            "labels": labels,
            "startsAt": _rfc3339(since),
            "endsAt": _ZERO_TIME if firing else _rfc3339(now),
            "fingerprint": fingerprint,
        }
        group.changed = True

    def _flush(self, now: float) -> list[list[Alert]]:
        out: list[list[Alert]] = []
        for key, group in list(self._groups.items()):
            if now + 1e-9 < group.next_flush or not group.changed:
                continue
            out.append([Alert.model_validate(a) for a in group.alerts.values()])
            self.deliveries += 1
            group.changed = False
            group.next_flush = now + group.interval_s
            for fingerprint in [f for f, a in group.alerts.items() if a["status"] == "resolved"]:
                del group.alerts[fingerprint]
            if not group.alerts:
                del self._groups[key]
        return out
