"""Every Prometheus collector of the daemon, built on a registry that is passed in.

Names follow Prometheus conventions (`mapek_` prefix, base units, `_total` counters).
Label values come from StrEnums or from config (cause = a configured rule/alert kind),
so cardinality is bounded by construction. No global registry: tests pass a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mape_k.models import ActionType, ExecutionStatus, GuardVerdict, OutcomeType, PatternKind

PHASES = ("monitor", "analyze", "plan", "guard", "execute", "verify", "total")
ITERATION_RESULTS = ("acted", "idle", "held", "degraded", "error", "pending_approval", "shadow")

_PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True, slots=True)
class StateGauges:
    """The daemon's state as gauges, read when Prometheus scrapes (see StateCollector)."""

    frozen: bool = False
    dry_run: bool = False
    pending_approvals: int = 0
    pending_verifications: int = 0
    oscillating_targets: int = 0
    needs_human: int = 0
    charter_circuit_open: bool = False


class StateCollector(Collector):
    """Gauges pulled from the state's owner at scrape time, never pushed: a timed freeze
    that expires reads 0 at the next scrape, since nothing has to remember to reset it."""

    def __init__(self, read: Callable[[], StateGauges]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self._read())

    @staticmethod
    def _families(state: StateGauges | None) -> Iterator[Metric]:
        """The families; with `state` None (describing), without samples."""
        values: dict[str, float] = {}
        if state is not None:
            values = {
                "frozen": int(state.frozen),
                "dry_run": int(state.dry_run),
                "pending_approvals": state.pending_approvals,
                "pending_verifications": state.pending_verifications,
                "oscillating_targets": state.oscillating_targets,
                "needs_human": state.needs_human,
            }
        for name, doc in _STATE_DOCS.items():
            yield GaugeMetricFamily(f"mapek_{name}", doc, value=values.get(name))
        circuit = GaugeMetricFamily(
            "mapek_circuit_open",
            "1 while a circuit breaker is open, by circuit.",
            labels=["circuit"],
        )
        if state is not None:
            circuit.add_metric(["charter"], int(state.charter_circuit_open))
        yield circuit


_STATE_DOCS = {
    "frozen": "1 while a freeze (or the kill switch, or a freeze window) holds.",
    "dry_run": "1 while in dry-run mode.",
    "pending_approvals": "Policies waiting for an operator.",
    "pending_verifications": "Executions not yet verified.",
    "oscillating_targets": "Targets blocked by the oscillation detector now.",
    "needs_human": "Targets where repeated remediation failed (deeper problem), on hold now.",
}


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.iteration_duration = Histogram(
            "mapek_iteration_duration_seconds",
            "Time spent per phase of one MAPE-K iteration (phase=total for the whole).",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=registry,
        )
        self.iterations = Counter(
            "mapek_iterations_total", "Iterations by result.", ["result"], registry=registry
        )
        self.last_iteration = Gauge(
            "mapek_last_iteration_timestamp_seconds",
            "Unix time the last iteration started.",
            registry=registry,
        )
        self.violations = Counter(
            "mapek_violations_total",
            "Violations observed, by source and severity.",
            ["source", "severity"],
            registry=registry,
        )
        self.active_violations = Gauge(
            "mapek_active_violations", "Violations in the last observation.", registry=registry
        )
        self.patterns = Counter(
            "mapek_patterns_total", "Patterns detected, by kind.", ["kind"], registry=registry
        )
        self.actions = Counter(
            "mapek_actions_total",
            "Remediation actions by type and final status.",
            ["action_type", "status"],
            registry=registry,
        )
        self.outcomes = Counter(
            "mapek_outcomes_total", "Verified outcomes by type.", ["outcome"], registry=registry
        )
        self.success_rate = Gauge(
            "mapek_knowledge_success_rate",
            "Observed success rate per (cause, action type).",
            ["cause", "action_type"],
            registry=registry,
        )
        self.knowledge_samples = Gauge(
            "mapek_knowledge_samples",
            "Outcomes recorded per (cause, action type).",
            ["cause", "action_type"],
            registry=registry,
        )
        self.posterior_mean = Gauge(
            "mapek_posterior_mean",
            "Posterior mean of 'this action fixes this cause' per (cause, primary action):"
            " the configured benefit as prior plus the outcomes learned.",
            ["cause", "action_type"],
            registry=registry,
        )
        self.posterior_upper = Gauge(
            "mapek_posterior_upper_bound",
            "Posterior mean plus the exploration bonus: what the planner ranks by.",
            ["cause", "action_type"],
            registry=registry,
        )
        self.guard_decisions = Counter(
            "mapek_guard_decisions_total",
            "Guard decisions by guard and verdict.",
            ["guard", "verdict"],
            registry=registry,
        )
        self.prometheus_queries = Counter(
            "mapek_prometheus_queries_total",
            "Monitor queries by result.",
            ["result"],
            registry=registry,
        )
        self.watch_passes = Counter(
            "mapek_watch_passes_total",
            "Reads of the rule queries between iterations (orchestrator.watch_interval_s), by"
            " result: triggered (a violation the last iteration did not see) or quiet.",
            ["result"],
            registry=registry,
        )
        self.prometheus_up = Gauge(
            "mapek_prometheus_up",
            "1 when the last Monitor pass read Prometheus.",
            registry=registry,
        )
        self.charter_calls = Counter(
            "mapek_charter_calls_total",
            "Charter API calls by operation and result.",
            ["operation", "result"],
            registry=registry,
        )
        self.charter_call_duration = Histogram(
            "mapek_charter_call_duration_seconds",
            "Charter API call latency.",
            ["operation"],
            buckets=_PHASE_BUCKETS,
            registry=registry,
        )
        self.alerts_received = Counter(
            "mapek_alerts_received_total",
            "Alerts received by the webhook, by their own status.",
            ["status"],
            registry=registry,
        )
        self.alerts_duplicate = Counter(
            "mapek_alerts_duplicate_total",
            "Alert deliveries already seen (same fingerprint, status and startsAt).",
            registry=registry,
        )
        self.alerts_truncated = Counter(
            "mapek_alerts_truncated_total",
            "Alerts Alertmanager left out of notifications (truncatedAlerts).",
            registry=registry,
        )
        self.webhook_rejections = Counter(
            "mapek_webhook_rejections_total",
            "Webhook requests refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.inbox_full = Counter(
            "mapek_inbox_full_total",
            "Webhook deliveries answered 503 because the alert inbox was full.",
            registry=registry,
        )
        self.http_connections = Gauge(
            "mapek_http_connections", "Open HTTP connections of the server.", registry=registry
        )
        self.http_connections_max = Gauge(
            "mapek_http_connections_max",
            "The connection cap in force (server.max_connections, fitted to the file limit).",
            registry=registry,
        )
        self.http_connections_dropped = Counter(
            "mapek_http_connections_dropped_total",
            "Connections the server closed on its own: header_timeout, idle_timeout, evicted"
            " (made room at the cap), refused (503 at the cap).",
            ["reason"],
            registry=registry,
        )
        self.predictions = Counter(
            "mapek_predictions_total",
            "Predicted violations by rule and outcome: raised, then came_true, did_not or"
            " prevented (acted on, and the violation did not come).",
            ["rule", "outcome"],
            registry=registry,
        )
        self.prediction_precision = Gauge(
            "mapek_prediction_precision",
            "came_true / (came_true + did_not) of a rule's predictions (once one resolved).",
            ["rule"],
            registry=registry,
        )
        self.prediction_recall = Gauge(
            "mapek_prediction_recall",
            "A rule's violation onsets that an open prediction foresaw / all its onsets.",
            ["rule"],
            registry=registry,
        )
        self.oscillations = Counter(
            "mapek_oscillations_total", "Oscillations detected.", registry=registry
        )
        self.panic_reverts = Counter(
            "mapek_panic_reverts_total", "Panic reverts performed.", registry=registry
        )
        self.escalations = Counter(
            "mapek_escalations_total",
            "MapekNeedsHuman alerts Alertmanager took, by state: firing (a hold began),"
            " resolved (it cleared); re-sends are not counted.",
            ["state"],
            registry=registry,
        )
        self.escalation_failures = Counter(
            "mapek_escalation_failures_total",
            "MapekNeedsHuman deliveries to Alertmanager that failed (retried next iteration).",
            registry=registry,
        )
        self.ready = Gauge("mapek_ready", "1 when /readyz would answer 200.", registry=registry)
        self.leader = Gauge(
            "mapek_leader",
            "1 while this replica holds the leader lease and may act (a single node: 1).",
            registry=registry,
        )
        self.leader.set(1)
        self.lease_epoch = Gauge(
            "mapek_lease_epoch",
            "The leader lease's epoch as last read from the shared store (0: none, single node).",
            registry=registry,
        )
        self.knowledge_bytes = Gauge(
            "mapek_knowledge_bytes",
            "Bytes of the knowledge store (database pages plus WAL), after the last write.",
            registry=registry,
        )
        self.knowledge_writable = Gauge(
            "mapek_knowledge_writable",
            "0 while a kind of write to the knowledge store fails (disk full, read-only), else 1.",
            registry=registry,
        )
        self.knowledge_pruned_rows = Counter(
            "mapek_knowledge_pruned_rows_total",
            "Journal rows pruned, by table and reason (retention: age or max_rows; bytes:"
            " knowledge.max_bytes).",
            ["table", "reason"],
            registry=registry,
        )
        self._prime()

    def watch_state(self, read: Callable[[], StateGauges]) -> None:
        """Serve the state gauges from `read`, called at each scrape (once per registry)."""
        self.registry.register(StateCollector(read))

    def _prime(self) -> None:
        """Create the labelled children we know of, so dashboards show zeros, not gaps."""
        for phase in PHASES:
            self.iteration_duration.labels(phase=phase)
        for result in ITERATION_RESULTS:
            self.iterations.labels(result=result)
        for kind in PatternKind:
            self.patterns.labels(kind=kind.value)
        for outcome in OutcomeType:
            self.outcomes.labels(outcome=outcome.value)
        for action in ActionType:
            for status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED):
                self.actions.labels(action_type=action.value, status=status.value)
        for verdict in GuardVerdict:
            self.guard_decisions.labels(guard="all", verdict=verdict.value)
        for state in ("firing", "resolved"):
            self.escalations.labels(state=state)


class FamiliesCollector(Collector):
    """Metric families an owner of state builds at scrape time (loop/autonomy.py)."""

    def __init__(self, read: Callable[[], Iterator[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        return self._read()
