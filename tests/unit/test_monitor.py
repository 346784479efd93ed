"""Monitor: queries → metrics → rule violations + alerts, degraded on missing data."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from builders import violation
from mape_k.config import Comparator, MonitorConfig, ViolationRule
from mape_k.errors import PrometheusQueryError, PrometheusTimeout, PrometheusUnavailable
from mape_k.loop.monitor import Monitor, group_problems
from mape_k.metrics import Metrics
from mape_k.models import Sample, Severity, Violation, ViolationSource

NOW = 1_800_000_000.0

QUERIES = {
    "failure_rate": "max(westworld_charter_failure_rate)",
    "queue_depth": "max(westworld_charter_queue_depth)",
}
FAILURE_RULE = ViolationRule(
    name="high_failure_rate",
    query="failure_rate",
    comparator=Comparator.GT,
    threshold=0.05,
    severity=Severity.CRITICAL,
)


def sample(value: float, *, at: float = NOW - 1, **labels: str) -> Sample:
    return Sample(labels=labels, value=value, timestamp=at)


def config(**overrides: Any) -> MonitorConfig:
    values: dict[str, Any] = {
        "queries": QUERIES,
        "rules": (FAILURE_RULE,),
        "query_timeout_s": 1.0,
        "max_staleness_s": 120.0,
    }
    values.update(overrides)
    return MonitorConfig(**values)


class FakeSource:
    """Answers each query name with samples or raises the configured error."""

    def __init__(self, answers: dict[str, list[Sample] | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, float]] = []

    async def read(self, name: str, promql: str, *, timeout_s: float) -> list[Sample]:
        self.calls.append((name, promql, timeout_s))
        answer = self.answers[name]
        if isinstance(answer, Exception):
            raise answer
        return answer


class BarrierSource:
    """Every read waits until all `expected` reads have started: only concurrency passes."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started = 0
        self.all_started = asyncio.Event()

    async def read(self, name: str, promql: str, *, timeout_s: float) -> list[Sample]:
        self.started += 1
        if self.started == self.expected:
            self.all_started.set()
        await self.all_started.wait()
        return [sample(0.01)]


class HangingSource:
    """`hang` never answers (its event is never set); the others answer at once."""

    def __init__(self, hang: str) -> None:
        self.hang = hang
        self.never = asyncio.Event()
        self.hanging = asyncio.Event()

    async def read(self, name: str, promql: str, *, timeout_s: float) -> list[Sample]:
        if name == self.hang:
            self.hanging.set()
            await self.never.wait()
        return [sample(0.5)]


class FakeAlerts:
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations

    async def firing_now(self) -> list[Violation]:
        return list(self.violations)


def healthy_source(failure_rate: float = 0.01) -> FakeSource:
    return FakeSource({"failure_rate": [sample(failure_rate)], "queue_depth": [sample(3)]})


# --- metrics and rules ------------------------------------------------------------------


async def test_samples_become_metrics_named_by_query_with_default_component():
    source = healthy_source(0.01)
    monitor = Monitor(config(), source=source, alerts=None)

    observation = await monitor.observe(NOW)

    assert not observation.degraded
    assert observation.value("failure_rate", "charter") == 0.01
    assert observation.value("queue_depth", "charter") == 3
    assert {m.name for m in monitor.get_metrics()} == {"failure_rate", "queue_depth"}
    assert sorted(call[:2] for call in source.calls) == sorted(QUERIES.items())
    assert all(call[2] == 1.0 for call in source.calls)
    assert [q.ok for q in observation.queries] == [True, True]


async def test_rule_over_threshold_produces_a_violation():
    monitor = Monitor(config(), source=healthy_source(0.3), alerts=None)

    observation = await monitor.observe(NOW)

    assert observation.violations == (
        violation(timestamp=NOW, value=0.3, threshold=0.05, query="failure_rate", labels={}),
    )
    assert monitor.get_violations() == list(observation.violations)


@pytest.mark.parametrize(
    ("comparator", "value", "threshold", "fires"),
    [
        (Comparator.GT, 0.06, 0.05, True),
        (Comparator.GT, 0.05, 0.05, False),
        (Comparator.GE, 0.05, 0.05, True),
        (Comparator.GE, 0.04, 0.05, False),
        (Comparator.LT, 1.0, 2.0, True),
        (Comparator.LT, 2.0, 2.0, False),
        (Comparator.LE, 2.0, 2.0, True),
        (Comparator.LE, 2.1, 2.0, False),
        (Comparator.GT, math.inf, 0.05, True),
        (Comparator.GT, math.nan, 0.05, False),
        (Comparator.LT, math.nan, 0.05, False),
        (Comparator.LE, math.nan, 0.05, False),
    ],
)
async def test_rules_fire_per_comparator_and_nan_never_violates(
    comparator, value, threshold, fires
):
    rule = ViolationRule(name="r", query="failure_rate", comparator=comparator, threshold=threshold)
    source = FakeSource({"failure_rate": [sample(value)], "queue_depth": [sample(0)]})
    monitor = Monitor(config(rules=(rule,)), source=source, alerts=None)

    observation = await monitor.observe(NOW)

    assert [v.kind for v in observation.violations] == (["r"] if fires else [])
    assert not observation.degraded


async def test_component_comes_from_the_rules_label_or_its_default():
    rule = ViolationRule(
        name="members_down",
        query="failure_rate",
        threshold=0.05,
        component_label="member",
        default_component="committee",
    )
    source = FakeSource(
        {
            "failure_rate": [sample(0.2, member="m-2"), sample(0.3, other="x")],
            "queue_depth": [sample(1, component="charter-b")],
        }
    )
    monitor = Monitor(config(rules=(rule,)), source=source, alerts=None)

    observation = await monitor.observe(NOW)

    assert sorted(v.component for v in observation.violations) == ["committee", "m-2"]
    assert observation.value("failure_rate", "m-2") == 0.2
    assert observation.value("queue_depth", "charter-b") == 1  # no rule: "component" label


async def test_firing_alerts_are_added_to_the_violations():
    alert = violation("members_unhealthy", source=ViolationSource.ALERT, timestamp=NOW - 30)
    monitor = Monitor(config(), source=healthy_source(0.3), alerts=FakeAlerts([alert]))

    observation = await monitor.observe(NOW)

    assert observation.alerts_firing == 1
    assert [v.kind for v in observation.violations] == ["high_failure_rate", "members_unhealthy"]
    assert monitor.get_violation_stats() == {
        "total": 2,
        "by_kind": {"high_failure_rate": 1, "members_unhealthy": 1},
        "by_severity": {"critical": 2},
        "by_source": {"rule": 1, "alert": 1},
        "degraded": False,
    }


async def test_getters_are_empty_before_the_first_observation():
    monitor = Monitor(config(), source=healthy_source(), alerts=None)
    assert monitor.get_metrics() == []
    assert monitor.get_violations() == []
    assert monitor.get_violation_stats()["total"] == 0
    assert monitor.last_observation is None


# --- degraded ---------------------------------------------------------------------------


async def test_stale_samples_are_missing_and_make_the_observation_degraded():
    source = FakeSource(
        {"failure_rate": [sample(0.9, at=NOW - 121)], "queue_depth": [sample(3, at=NOW - 5)]}
    )
    monitor = Monitor(config(), source=source, alerts=None)

    observation = await monitor.observe(NOW)

    assert observation.degraded
    assert "failure_rate" in (observation.degraded_reason or "")
    assert "stale" in (observation.degraded_reason or "")
    assert observation.value("failure_rate", "charter") is None
    assert observation.violations == ()  # a stale 0.9 does not violate
    assert observation.value("queue_depth", "charter") == 3


async def test_a_sample_exactly_at_the_staleness_bound_is_still_fresh():
    source = FakeSource({"failure_rate": [sample(0.9, at=NOW - 120)], "queue_depth": []})
    observation = await Monitor(config(), source=source, alerts=None).observe(NOW)
    assert not observation.degraded
    assert [v.value for v in observation.violations] == [0.9]


async def test_a_failed_rule_query_makes_the_observation_degraded_naming_it():
    error = PrometheusQueryError(error_type="bad_data", error="parse error", query="max(")
    source = FakeSource({"failure_rate": error, "queue_depth": [sample(3)]})
    monitor = Monitor(config(), source=source, alerts=None)

    observation = await monitor.observe(NOW)

    assert observation.degraded
    assert "failure_rate" in (observation.degraded_reason or "")
    assert "parse error" in (observation.degraded_reason or "")
    assert "queue_depth" not in (observation.degraded_reason or "")
    failed = {q.name: q for q in observation.queries}["failure_rate"]
    assert not failed.ok
    assert "parse error" in (failed.error or "")


async def test_an_empty_answer_to_a_rule_query_is_missing_data():
    source = FakeSource({"failure_rate": [], "queue_depth": [sample(3)]})
    observation = await Monitor(config(), source=source, alerts=None).observe(NOW)
    assert observation.degraded
    assert "failure_rate (no samples)" in (observation.degraded_reason or "")


async def test_a_failed_query_no_rule_needs_is_reported_but_not_degraded():
    source = FakeSource(
        {"failure_rate": [sample(0.01)], "queue_depth": PrometheusUnavailable("refused")}
    )
    observation = await Monitor(config(), source=source, alerts=None).observe(NOW)
    assert not observation.degraded
    assert {q.name: q.ok for q in observation.queries} == {
        "failure_rate": True,
        "queue_depth": False,
    }


async def test_all_queries_failing_is_degraded_even_without_rules():
    source = FakeSource(
        {"failure_rate": PrometheusUnavailable("refused"), "queue_depth": PrometheusTimeout("slow")}
    )
    observation = await Monitor(config(rules=()), source=source, alerts=None).observe(NOW)
    assert observation.degraded
    reason = observation.degraded_reason or ""
    assert reason.startswith("all queries failed")
    assert "failure_rate (refused)" in reason
    assert "queue_depth (slow)" in reason


async def test_firing_alerts_are_kept_when_degraded():
    alert = violation("overload", source=ViolationSource.ALERT, timestamp=NOW)
    source = FakeSource(
        {
            "failure_rate": PrometheusUnavailable("refused"),
            "queue_depth": PrometheusUnavailable("x"),
        }
    )
    observation = await Monitor(config(), source=source, alerts=FakeAlerts([alert])).observe(NOW)
    assert observation.degraded
    assert observation.violations == (alert,)


# --- concurrency, timeouts, cancellation ------------------------------------------------


async def test_queries_run_concurrently():
    queries = {f"q{i}": f"max(metric_{i})" for i in range(5)}
    source = BarrierSource(expected=len(queries))
    monitor = Monitor(
        MonitorConfig(queries=queries, rules=(), query_timeout_s=2.0), source=source, alerts=None
    )

    observation = await monitor.observe(NOW)

    # Sequential reads would block on the barrier and time out one by one.
    assert source.all_started.is_set()
    assert not observation.degraded
    assert all(q.ok for q in observation.queries)


async def test_a_hanging_query_times_out_and_degrades_instead_of_hanging():
    source = HangingSource(hang="failure_rate")
    monitor = Monitor(config(query_timeout_s=0.05), source=source, alerts=None)

    observation = await monitor.observe(NOW)

    assert observation.degraded
    assert "failure_rate (timeout after 0.05s)" in (observation.degraded_reason or "")
    assert observation.value("queue_depth", "charter") == 0.5
    results = {q.name: q for q in observation.queries}
    assert not results["failure_rate"].ok
    assert results["queue_depth"].ok


async def test_cancelling_observe_propagates_cancelled_error():
    source = HangingSource(hang="failure_rate")
    monitor = Monitor(config(query_timeout_s=60), source=source, alerts=None)
    task = asyncio.create_task(monitor.observe(NOW))
    await source.hanging.wait()

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_unexpected_source_bugs_are_not_swallowed():
    source = FakeSource({"failure_rate": ValueError("bug"), "queue_depth": [sample(1)]})
    monitor = Monitor(config(), source=source, alerts=None)
    with pytest.raises(ExceptionGroup) as caught:
        await monitor.observe(NOW)
    assert caught.group_contains(ValueError)


# --- transition logs and metrics --------------------------------------------------------


async def test_unreachable_and_recovered_are_logged_once_per_transition():
    down = FakeSource(
        {
            "failure_rate": PrometheusUnavailable("refused"),
            "queue_depth": PrometheusUnavailable("x"),
        }
    )
    up = healthy_source()
    monitor = Monitor(config(), source=down, alerts=None)

    with capture_logs() as logs:
        for _ in range(3):
            await monitor.observe(NOW)
        monitor._source = up
        for _ in range(3):
            await monitor.observe(NOW)
        monitor._source = down
        await monitor.observe(NOW)

    events = [e["event"] for e in logs if e["event"].startswith("prometheus_")]
    assert events == ["prometheus_unreachable", "prometheus_recovered", "prometheus_unreachable"]
    unreachable = next(e for e in logs if e["event"] == "prometheus_unreachable")
    assert unreachable["log_level"] == "warning"
    assert "refused" in unreachable["reason"]


async def test_a_single_failing_query_is_logged_when_it_starts_and_stops_failing():
    failing = FakeSource(
        {"failure_rate": [sample(0.01)], "queue_depth": PrometheusTimeout("slow", query="q")}
    )
    monitor = Monitor(config(), source=failing, alerts=None)
    with capture_logs() as logs:
        await monitor.observe(NOW)
        await monitor.observe(NOW)
        monitor._source = healthy_source()
        await monitor.observe(NOW)
        await monitor.observe(NOW)

    assert [(e["event"], e["query"]) for e in logs] == [
        ("monitor_query_failed", "queue_depth"),
        ("monitor_query_recovered", "queue_depth"),
    ]
    assert logs[0]["result"] == "timeout"


async def test_metrics_count_query_results_and_prometheus_up():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    source = FakeSource(
        {"failure_rate": [sample(0.3)], "queue_depth": PrometheusTimeout("slow", query="q")}
    )
    monitor = Monitor(config(), source=source, alerts=None, metrics=metrics)

    await monitor.observe(NOW)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("mapek_prometheus_queries_total", result="ok") == 1
    assert value("mapek_prometheus_queries_total", result="timeout") == 1
    assert value("mapek_prometheus_up") == 1
    assert value("mapek_active_violations") == 1

    source.answers["failure_rate"] = PrometheusQueryError(error_type="execution", error="boom")
    await monitor.observe(NOW)

    assert value("mapek_prometheus_queries_total", result="error") == 1
    assert value("mapek_prometheus_queries_total", result="timeout") == 2
    assert value("mapek_prometheus_up") == 0
    assert value("mapek_active_violations") == 0


async def test_the_same_error_on_every_query_is_said_once_with_the_count():
    names = [f"q{i}" for i in range(8)]
    refused = "cannot reach Prometheus at http://127.0.0.1:9: connection refused"
    source = FakeSource({name: PrometheusUnavailable(refused) for name in names})
    queries = {name: f"up{{n='{name}'}}" for name in names}
    monitor = Monitor(config(queries=queries, rules=()), source=source, alerts=None)
    observation = await monitor.observe(NOW)
    reason = observation.degraded_reason or ""
    assert reason.count(refused) == 1, reason
    assert f"{refused} (8 queries: q0, q1, q2 +5 more)" in reason


def test_group_problems_keeps_distinct_problems_apart_in_first_seen_order():
    problems = {"a": "refused", "b": "slow", "c": "refused"}
    assert group_problems(["a", "b", "c"], problems) == "refused (2 queries: a, c); b (slow)"


async def test_a_superseded_alert_is_named_in_the_observation():
    alert = violation(
        source=ViolationSource.ALERT,
        timestamp=NOW - 30,
        labels={"alertname": "CharterHighFailureRate"},
    )
    monitor = Monitor(config(), source=healthy_source(0.01), alerts=FakeAlerts([alert]))
    observation = await monitor.observe(NOW)
    assert observation.violations == ()
    assert observation.alerts_superseded == ("CharterHighFailureRate (high_failure_rate/charter)",)
