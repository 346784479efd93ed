"""Every Prometheus collector of the daemon, built on a registry that is passed in.

Names follow Prometheus conventions (`mapek_` prefix, base units, `_total` counters).
Label values come from StrEnums or from config (cause = a configured rule/alert kind),
so cardinality is bounded by construction. No global registry: tests pass a fresh one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mape_k.models import ActionType, ExecutionStatus, GuardVerdict, OutcomeType, PatternKind

PHASES = ("monitor", "analyze", "plan", "guard", "execute", "verify", "total")
ITERATION_RESULTS = ("acted", "idle", "held", "degraded", "error", "pending_approval")

_PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        self.pending_approvals = Gauge(
            "mapek_pending_approvals", "Policies waiting for an operator.", registry=registry
        )
        self.pending_verifications = Gauge(
            "mapek_pending_verifications", "Executions not yet verified.", registry=registry
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
        self.frozen = Gauge(
            "mapek_frozen", "1 while a freeze (or the kill switch) holds.", registry=registry
        )
        self.dry_run = Gauge("mapek_dry_run", "1 while in dry-run mode.", registry=registry)
        self.oscillations = Counter(
            "mapek_oscillations_total", "Oscillations detected.", registry=registry
        )
        self.oscillating_targets = Gauge(
            "mapek_oscillating_targets",
            "Targets blocked by the oscillation detector now.",
            registry=registry,
        )
        self.panic_reverts = Counter(
            "mapek_panic_reverts_total", "Panic reverts performed.", registry=registry
        )
        self.circuit_open = Gauge(
            "mapek_circuit_open",
            "1 while a circuit breaker is open, by circuit.",
            ["circuit"],
            registry=registry,
        )
        self.needs_human = Gauge(
            "mapek_needs_human",
            "Targets where repeated remediation failed (deeper problem).",
            registry=registry,
        )
        self.ready = Gauge("mapek_ready", "1 when /readyz would answer 200.", registry=registry)
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
