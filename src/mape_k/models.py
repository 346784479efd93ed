"""Frozen domain values and enums shared by the phases of the loop.

No I/O and no behaviour beyond small derived properties: every phase receives these and
hands back new ones. Times are Unix seconds (float) taken from the caller's clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


SEVERITY_WEIGHT: dict[Severity, float] = {
    Severity.CRITICAL: 1.0,
    Severity.WARNING: 0.7,
    Severity.INFO: 0.4,
}


class ViolationSource(StrEnum):
    RULE = "rule"  # a configured violation rule over a PromQL query
    ALERT = "alert"  # a firing alert delivered by Alertmanager


@dataclass(frozen=True, slots=True)
class Sample:
    """One element of an instant vector (or a scalar, with no labels)."""

    labels: dict[str, str]
    value: float
    timestamp: float


@dataclass(frozen=True, slots=True)
class Metric:
    """A value read by a named query of the Monitor, attributed to a component."""

    name: str  # the configured query name, e.g. "failure_rate"
    component: str
    value: float
    timestamp: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Violation:
    """Something is wrong with a component: from a violation rule or a firing alert."""

    kind: str  # the rule name or the alertname, e.g. "high_failure_rate"
    component: str  # the target the remediation acts on
    severity: Severity
    source: ViolationSource
    timestamp: float  # when it was observed (rule) or started (alert)
    value: float | None = None
    threshold: float | None = None
    query: str | None = None  # the configured query name whose value this is (rules)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # an alert's (untrusted)
    # A forecast (loop/predict.py), not a reading: the rule's threshold is expected to be
    # crossed in `lead_s` seconds. Never in an Observation's violations.
    predicted: bool = False
    lead_s: float | None = None

    @property
    def key(self) -> str:
        """Identity of the condition, stable across iterations."""
        return f"{self.kind}/{self.component}"


@dataclass(frozen=True, slots=True)
class QueryResult:
    """How one configured query went in one Monitor pass."""

    name: str
    ok: bool
    samples: int = 0
    duration_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """What the Monitor saw in one pass. `degraded` means: do not act on this."""

    at: float
    metrics: tuple[Metric, ...]
    violations: tuple[Violation, ...]
    queries: tuple[QueryResult, ...]
    alerts_firing: int = 0
    # Firing alerts a fresh rule reading showed as recovered: "AlertName (kind/component)".
    alerts_superseded: tuple[str, ...] = ()
    degraded_reason: str | None = None

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None

    def value(self, name: str, component: str) -> float | None:
        """The current value of query `name` for `component`, if it was read."""
        for metric in self.metrics:
            if metric.name == name and metric.component == component:
                return metric.value
        return None


class PatternKind(StrEnum):
    TEMPORAL_BURST = "temporal_burst"
    SPATIAL = "spatial"
    CAUSAL = "causal"
    FREQUENCY_ANOMALY = "frequency_anomaly"


@dataclass(frozen=True, slots=True)
class ViolationPattern:
    kind: PatternKind
    cause: str  # the violation kind the pattern is about (for causal: the leading kind A)
    components: tuple[str, ...]
    count: int
    confidence: float
    first_seen: float
    last_seen: float
    description: str
    related: tuple[str, ...] = ()  # causal: the kinds that follow the cause (B)


@dataclass(frozen=True, slots=True)
class Cause:
    """A problem to remediate: one violation kind on one target, with its evidence."""

    name: str  # the violation kind
    target: str
    severity: Severity
    confidence: float  # 0..1; a lone violation gives its base, patterns raise it
    violations: int
    patterns: tuple[PatternKind, ...] = ()
    query: str | None = None
    value: float | None = None
    threshold: float | None = None
    source: ViolationSource = ViolationSource.RULE
    # The labels and annotations of the latest violation behind it (an alert's, or a rule's
    # sample): untrusted, they reach user-defined actions only through the strict templates
    # of mape_k.actuators.template.
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # A predicted violation's cause (loop/predict.py): expected in `lead_s` seconds.
    predicted: bool = False
    lead_s: float | None = None

    @property
    def key(self) -> str:
        return f"{self.name}/{self.target}"


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    at: float
    violations: int
    patterns: tuple[ViolationPattern, ...]
    causes: tuple[Cause, ...]  # most urgent first
    inhibited: tuple[str, ...] = ()  # "kind/target (by root)": symptoms hidden by a root cause


class ActionType(StrEnum):
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    RESTART_SERVICE = "restart_service"
    APPLY_POLICY = "apply_policy"
    BYPASS_VALIDATION = "bypass_validation"
    THROTTLE_REQUESTS = "throttle_requests"
    ACTIVATE_EMERGENCY_OVERRIDE = "activate_emergency_override"
    REBALANCE_LOAD = "rebalance_load"
    UPDATE_CONFIGURATION = "update_configuration"


# What restart_service (the Charter's POST /committee/restart) restarts: "all" the members
# (a short full outage), or only the "unhealthy" ones (crashed or not up yet) while the
# healthy ones keep serving.
RestartScope = Literal["all", "rolling", "unhealthy"]
RESTART_SCOPES: tuple[RestartScope, ...] = ("all", "rolling", "unhealthy")

# An action's name: one of the nine built-in Charter actions (an `ActionType`, which is a
# str) or the name of a user-defined action (`planner.actions.<name>` with an actuator).
# Built-in names are always held as their `ActionType` member (`action_name`), so
# `kind is ActionType.SCALE_UP` keeps working wherever a name is compared.
ActionName = str
BUILTIN_ACTIONS: frozenset[str] = frozenset(t.value for t in ActionType)


def action_name(value: str) -> ActionName:
    """`value` as the loop holds an action name: the `ActionType` member for a built-in."""
    return ActionType(value) if value in BUILTIN_ACTIONS else str(value)


def is_builtin(name: str) -> bool:
    """One of the nine Charter actions (else a user-defined action with its own actuator)."""
    return name in BUILTIN_ACTIONS


@dataclass(frozen=True, slots=True)
class KnobSetting:
    """One knob of the target set to an absolute value (the knobs: loop/actions.py)."""

    knob: str  # "size", "throttle", "bypass", "override", "policy", "config:<key>"
    before: Any  # its value in the one reading of the target the action was resolved against
    after: Any  # the value the executor sends, literally


@dataclass(frozen=True, slots=True)
class RemediationAction:
    action_type: ActionName
    target: str
    parameters: dict[str, Any] = field(default_factory=dict)  # as configured (may be relative)
    # The absolute desired state, resolved once against one reading of the target
    # (loop/actions.resolve): what the guards judge, the executor sends and the journal
    # records. None: not resolved (a proposal); (): the action moves no knob (a restart).
    sets: tuple[KnobSetting, ...] | None = None


@dataclass(frozen=True, slots=True)
class Posterior:
    """Beta(alpha, beta) belief that an action fixes a cause on a target: the configured
    benefit as prior pseudo-counts plus the outcomes learned, each one's reward in [0, 1]
    split between the two (loop/plan.py `posterior`, loop/knowledge.py `evidence`)."""

    alpha: float
    beta: float
    samples: float = 0.0  # the outcomes behind it (other targets' discounted)

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def sd(self) -> float:
        n = self.alpha + self.beta
        return math.sqrt(self.alpha * self.beta / (n * n * (n + 1.0)))

    def as_dict(self) -> dict[str, float]:
        return {
            "alpha": round(self.alpha, 3),
            "beta": round(self.beta, 3),
            "mean": round(self.mean, 3),
            "sd": round(self.sd, 3),
            "samples": round(self.samples, 3),
        }


@dataclass(frozen=True, slots=True)
class CandidateScore:
    """Why a policy got its score: shown in the decision record.

    score = confidence * (posterior mean + exploration) - cost; `exploration` is the
    optimism bonus (planner.exploration x the posterior's sd) that makes an untried or
    little-tried candidate worth a try. `posterior` is None only in records written before
    posteriors existed (their score was benefit x a knowledge weight)."""

    cost: float
    benefit: float  # as configured: the prior's mean
    confidence: float  # the cause's confidence
    score: float
    posterior: Posterior | None = None
    exploration: float = 0.0


@dataclass(frozen=True, slots=True)
class RemediationPolicy:
    id: str
    cause: Cause
    actions: tuple[RemediationAction, ...]
    score: CandidateScore
    requires_approval: bool
    created_at: float
    rationale: str = ""
    shadow: bool = False  # at autonomy level shadow: a would-do, never executed
    rollback_of: str | None = None  # the recorded change it rolls back (loop/changes.py)

    @property
    def primary_action(self) -> ActionName:
        return self.actions[0].action_type

    @property
    def target(self) -> str:
        return self.cause.target


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class ActionExecution:
    action: RemediationAction
    status: ExecutionStatus
    idempotency_key: str
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] = field(default_factory=dict)  # what rollback needs, e.g. from_size
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyExecution:
    id: str
    policy: RemediationPolicy
    status: ExecutionStatus
    actions: tuple[ActionExecution, ...]
    started_at: float
    finished_at: float | None = None
    error: str | None = None
    dry_run: bool = False
    baseline: float | None = None  # the triggering metric's value before acting
    # What the signal was doing before acting (change per second, from the recent readings)
    # and the offered load then: what it would have been without the action is judged
    # from them (attribution), not from the baseline alone.
    baseline_trend: float | None = None
    baseline_load: float | None = None
    baseline_utilisation: float | None = None  # executor.utilisation_query then


class OutcomeType(StrEnum):
    SUCCESS = "success"
    PARTIAL = "partial"
    INEFFECTIVE = "ineffective"
    DEGRADATION = "degradation"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    execution_id: str
    policy_id: str
    cause: str
    action_type: ActionName
    target: str
    outcome: OutcomeType
    recorded_at: float
    value_before: float | None = None
    value_after: float | None = None
    threshold: float | None = None
    time_to_stabilize_s: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PolicyPattern:
    """What Knowledge has learned about one (cause, action) pair."""

    cause: str
    action_type: ActionName
    samples: int
    successes: float  # SUCCESS counts 1, PARTIAL 0.5 (see loop/knowledge.py)
    mean_time_to_stabilize_s: float | None
    confidence: float  # min(samples / saturation, 1)
    # The outcomes as Beta evidence (loop/knowledge.py `evidence`): a quick success adds
    # ~1 to wins, a slow one splits, a failure adds 1 to losses, a degradation more.
    wins: float = 0.0
    losses: float = 0.0

    @property
    def success_rate(self) -> float:
        return self.successes / self.samples if self.samples else 0.0


@dataclass(frozen=True, slots=True)
class LearningInsight:
    cause: str
    action_type: ActionName | None
    kind: str  # e.g. "preferred_action", "ineffective_action", "degrading_action"
    message: str
    confidence: float


class GuardVerdict(StrEnum):
    ALLOW = "allow"
    DELAY = "delay"  # not now; may pass later by itself
    BLOCK = "block"  # not without a human (or until a freeze/back-off ends)


@dataclass(frozen=True, slots=True)
class GuardDecision:
    guard: str
    verdict: GuardVerdict
    reason: str
    policy_id: str | None = None
    until: float | None = None
