"""Monitor: the configured queries + violation rules + the alert inbox → one Observation.

Reads every named query concurrently through a `MetricSource` (Prometheus, or the mock
committee), each under its own deadline; turns fresh samples into Metrics and rule
Violations; adds the inbox's firing alerts. A source failure never raises: it makes the
Observation degraded, so nothing is executed on missing data. No clock reads for `now`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from mape_k.config import MonitorConfig, ViolationRule
from mape_k.errors import MapekError, PrometheusTimeout
from mape_k.metrics import Metrics
from mape_k.models import Metric, Observation, QueryResult, Sample, Violation, ViolationSource

_log = structlog.get_logger(__name__)

DEFAULT_COMPONENT_LABEL = "component"
DEFAULT_COMPONENT = "charter"

_Outcome = Literal["ok", "error", "timeout"]


class MetricSource(Protocol):
    """Where the Monitor reads its named queries (PrometheusClient, the mock committee)."""

    async def read(self, name: str, promql: str, *, timeout_s: float) -> list[Sample]: ...


class AlertSource(Protocol):
    """The alert inbox: its currently firing alerts, already turned into Violations."""

    async def firing_now(self) -> list[Violation]: ...


@dataclass(frozen=True, slots=True)
class _Read:
    """One query's outcome in one pass, before it becomes a QueryResult."""

    name: str
    outcome: _Outcome
    samples: tuple[Sample, ...]
    duration_s: float
    error: str | None = None


class Monitor:
    """Runs the configured queries and rules; keeps the last Observation for the SPEC's getters."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        source: MetricSource,
        alerts: AlertSource | None,
        metrics: Metrics | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._config = config
        self._source = source
        self._alerts = alerts
        self._metrics = metrics
        self._timer = timer  # only for query durations, never for `now`
        self._unreachable = False
        self._failing: set[str] = set()
        self._last: Observation | None = None

    @property
    def last_observation(self) -> Observation | None:
        return self._last

    def reconfigure(self, config: MonitorConfig) -> None:
        """A reloaded configuration, used from the next observation on."""
        self._config = config

    async def observe(self, now: float) -> Observation:
        """Read all queries, apply the rules, add firing alerts. A source failure never raises."""
        reads = await self._read_all(list(self._config.queries))
        metrics: list[Metric] = []
        problems: dict[str, str] = {}  # query name -> why its data cannot be trusted
        fresh: dict[str, tuple[Sample, ...]] = {}
        for read in reads:
            if read.outcome != "ok":
                problems[read.name] = read.error or read.outcome
                continue
            kept = self._fresh(read, now)
            fresh[read.name] = kept
            if not read.samples:
                problems[read.name] = "no samples"
            elif not kept:
                age = now - max(s.timestamp for s in read.samples)
                problems[read.name] = f"stale: newest sample {age:.0f}s old"
            metrics.extend(self._to_metrics(read.name, kept))

        violations = self._rule_violations(fresh, now=now)
        firing = await self._alerts.firing_now() if self._alerts is not None else []
        # An alert lags its measurement (`for:`, group_wait, rate windows): where a rule of the
        # same kind just read the component fresh and found it fine, the reading wins, so a
        # recovered target is neither re-remediated nor verified as still broken.
        cleared = self._measured_fine(fresh, violations)
        current = [a for a in firing if (a.kind, a.component) not in cleared]
        violations.extend(current)

        observation = Observation(
            at=now,
            metrics=tuple(metrics),
            violations=tuple(violations),
            queries=tuple(self._query_result(read, problems.get(read.name)) for read in reads),
            alerts_firing=len(firing),
            alerts_superseded=tuple(
                f"{a.labels.get('alertname', 'alert')} ({a.kind}/{a.component})"
                for a in firing
                if (a.kind, a.component) in cleared
            ),
            degraded_reason=self._degraded_reason(reads, problems),
        )
        self._record(reads, observation)
        self._last = observation
        return observation

    async def watch(self, now: float) -> Observation:
        """The rule queries alone, read between iterations: their readings and the rule
        violations they show now (no alerts). Nothing is kept (the last observation, the
        failure log and the gauges stay the iteration's); a query that fails shows nothing
        (the iteration reports it)."""
        # each rule's query is a configured query (config validation)
        reads = await self._read_all(sorted({rule.query for rule in self._config.rules}))
        fresh: dict[str, tuple[Sample, ...]] = {}
        for read in reads:
            if self._metrics is not None:
                self._metrics.prometheus_queries.labels(result=read.outcome).inc()
            if read.outcome == "ok":
                fresh[read.name] = self._fresh(read, now)
        return Observation(
            at=now,
            metrics=tuple(m for name, kept in fresh.items() for m in self._to_metrics(name, kept)),
            violations=tuple(self._rule_violations(fresh, now=now)),
            queries=tuple(self._query_result(read, None) for read in reads),
        )

    def _fresh(self, read: _Read, now: float) -> tuple[Sample, ...]:
        return tuple(s for s in read.samples if now - s.timestamp <= self._config.max_staleness_s)

    def get_metrics(self) -> list[Metric]:
        return list(self._last.metrics) if self._last is not None else []

    def get_violations(self) -> list[Violation]:
        return list(self._last.violations) if self._last is not None else []

    def get_violation_stats(self) -> dict[str, object]:
        """Counts of the last observation's violations: total, by kind, severity and source."""
        violations = self.get_violations()
        return {
            "total": len(violations),
            "by_kind": dict(Counter(v.kind for v in violations)),
            "by_severity": dict(Counter(v.severity.value for v in violations)),
            "by_source": dict(Counter(v.source.value for v in violations)),
            "degraded": self._last.degraded if self._last is not None else False,
        }

    # --- one query -----------------------------------------------------------------------

    async def _read_all(self, names: list[str]) -> list[_Read]:
        """The named queries read concurrently, in `names`' order."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._read(n, self._config.queries[n])) for n in names]
        return [task.result() for task in tasks]

    async def _read(self, name: str, promql: str) -> _Read:
        timeout_s = self._config.query_timeout_s
        started = self._timer()
        outcome: _Outcome
        try:
            async with asyncio.timeout(timeout_s):
                samples = await self._source.read(name, promql, timeout_s=timeout_s)
        except TimeoutError:
            # asyncio.timeout turns its own cancellation into TimeoutError; an outer
            # cancellation still propagates as CancelledError.
            outcome, error = "timeout", f"timeout after {timeout_s:g}s"
        except PrometheusTimeout as exc:
            outcome, error = "timeout", str(exc)
        except MapekError as exc:
            outcome, error = "error", str(exc)
        else:
            return _Read(name, "ok", tuple(samples), self._timer() - started)
        return _Read(name, outcome, (), self._timer() - started, error)

    # --- samples → metrics and violations -----------------------------------------------

    def _rules_of(self, query: str) -> list[ViolationRule]:
        return [rule for rule in self._config.rules if rule.query == query]

    def _to_metrics(self, name: str, samples: tuple[Sample, ...]) -> list[Metric]:
        rules = self._rules_of(name)
        label = rules[0].component_label if rules else DEFAULT_COMPONENT_LABEL
        default = rules[0].default_component if rules else DEFAULT_COMPONENT
        return [
            Metric(
                name=name,
                component=sample.labels.get(label) or default,
                value=sample.value,
                timestamp=sample.timestamp,
                labels=dict(sample.labels),
            )
            for sample in samples
        ]

    def _measured_fine(
        self, fresh: dict[str, tuple[Sample, ...]], violations: list[Violation]
    ) -> set[tuple[str, str]]:
        """(kind, component) pairs a rule read fresh this pass without finding a violation."""
        violating = {(v.kind, v.component) for v in violations}
        fine: set[tuple[str, str]] = set()
        for rule in self._config.rules:
            for sample in fresh.get(rule.query, ()):
                key = (rule.name, sample.labels.get(rule.component_label) or rule.default_component)
                if not math.isnan(sample.value) and key not in violating:
                    fine.add(key)
        return fine

    def _rule_violations(
        self, fresh: dict[str, tuple[Sample, ...]], *, now: float
    ) -> list[Violation]:
        violations: list[Violation] = []
        for rule in self._config.rules:
            for sample in fresh.get(rule.query, ()):
                if math.isnan(sample.value) or not rule.comparator.holds(
                    sample.value, rule.threshold
                ):
                    continue
                violations.append(
                    Violation(
                        kind=rule.name,
                        component=sample.labels.get(rule.component_label) or rule.default_component,
                        severity=rule.severity,
                        source=ViolationSource.RULE,
                        timestamp=now,
                        value=sample.value,
                        threshold=rule.threshold,
                        query=rule.query,
                        labels=dict(sample.labels),
                    )
                )
        return violations

    # --- degraded, results, logs, metrics ------------------------------------------------

    def _degraded_reason(self, reads: list[_Read], problems: dict[str, str]) -> str | None:
        if reads and all(read.outcome != "ok" for read in reads):
            return "all queries failed: " + group_problems([r.name for r in reads], problems)
        needed = {rule.query for rule in self._config.rules}
        bad = [read.name for read in reads if read.name in needed and read.name in problems]
        if not bad:
            return None
        return "no usable data for rule queries: " + group_problems(bad, problems)

    @staticmethod
    def _query_result(read: _Read, problem: str | None) -> QueryResult:
        return QueryResult(
            name=read.name,
            ok=problem is None,
            samples=len(read.samples),
            duration_s=read.duration_s,
            error=problem,
        )

    def _record(self, reads: list[_Read], observation: Observation) -> None:
        failed = {read.name: read for read in reads if read.outcome != "ok"}
        for name in sorted(failed.keys() - self._failing):
            read = failed[name]
            _log.warning("monitor_query_failed", query=name, result=read.outcome, error=read.error)
        for name in sorted(self._failing - failed.keys()):
            _log.info("monitor_query_recovered", query=name)
        self._failing = set(failed)

        unreachable = bool(reads) and len(failed) == len(reads)
        if unreachable and not self._unreachable:
            _log.warning("prometheus_unreachable", reason=observation.degraded_reason)
        elif self._unreachable and not unreachable:
            _log.info("prometheus_recovered")
        self._unreachable = unreachable

        if self._metrics is not None:
            for read in reads:
                self._metrics.prometheus_queries.labels(result=read.outcome).inc()
            if reads:
                self._metrics.prometheus_up.set(0 if unreachable else 1)
            self._metrics.active_violations.set(len(observation.violations))


def newly_violated(seen: Iterable[Violation], known: Iterable[Violation]) -> list[Violation]:
    """The violations in `seen` whose (kind, component) is not among `known`'s."""
    keys = {(v.kind, v.component) for v in known}
    return [v for v in seen if (v.kind, v.component) not in keys]


def group_problems(names: list[str], problems: dict[str, str], *, shown: int = 3) -> str:
    """Each distinct problem once, with the queries it hit: the same connection error on
    eight queries reads `<error> (8 queries: a, b, c +5 more)`, not eight times."""
    by_problem: dict[str, list[str]] = {}
    for name in names:
        by_problem.setdefault(problems[name], []).append(name)
    parts = []
    for problem, hit in by_problem.items():
        listed = ", ".join(hit[:shown]) + (f" +{len(hit) - shown} more" if len(hit) > shown else "")
        parts.append(
            f"{hit[0]} ({problem})"
            if len(hit) == 1
            else f"{problem} ({len(hit)} queries: {listed})"
        )
    return "; ".join(parts)
