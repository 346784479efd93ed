"""The one table of what goes wrong with the Charter and what fixes it.

`CAUSES`: each violation kind the daemon acts on, the committee signal it is read from,
the threshold (violating while above it), the severity, and the Prometheus expression of
the same test. `FAULTS`: each fault the simulator can inject, the cause it must raise, the
magnitude the demo and the tests use, and the simulator operations that fit it.

Everything else is built from or checked against these: the default monitor rules
(config.py), the simulator's own violations (sim/committee.py), the local stack, the demo
and the e2e tests; tests/unit/test_causes.py checks the shipped Prometheus rules
(staging/prometheus/rules/charter.rules.yml) say the same. Pure data, no imports of the
loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from mape_k.models import Severity


@dataclass(frozen=True, slots=True)
class Cause:
    """A violation kind: `signal > threshold`, the same test as the alert rule's `expr`."""

    name: str
    signal: str  # a committee signal, and the name of the monitor query reading it
    threshold: float
    severity: Severity
    expr: str  # the Prometheus alert rule with `cause: <name>` compares exactly this


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault the simulator injects, the cause it raises and the operations that fix it."""

    kind: str
    cause: str
    magnitude: float  # clearly visible, without side effects on other rules
    fixes: frozenset[str]


CAUSES: tuple[Cause, ...] = (
    Cause(
        "high_failure_rate",
        "failure_rate",
        0.05,
        Severity.CRITICAL,
        "westworld_charter_failure_rate > 0.05",
    ),
    Cause(
        "policy_regression",
        "policy_error_rate",
        0.02,
        Severity.CRITICAL,
        "westworld_charter_policy_error_rate > 0.02",
    ),
    Cause(
        "members_unhealthy",
        "unhealthy_members",
        0.0,
        Severity.CRITICAL,
        "westworld_charter_committee_size - westworld_charter_healthy_members > 0",
    ),
    Cause(
        "overload",
        "saturation",
        0.9,
        Severity.CRITICAL,
        "westworld_charter_saturation_ratio > 0.9",
    ),
    Cause(
        "high_latency",
        "p99_latency_s",
        0.5,
        Severity.WARNING,
        "westworld_charter_p99_latency_seconds > 0.5",
    ),
    Cause(
        "queue_backlog",
        "queue_depth",
        100.0,
        Severity.WARNING,
        "westworld_charter_queue_depth > 100",
    ),
)
CAUSE: dict[str, Cause] = {cause.name: cause for cause in CAUSES}

# The return-to-baseline causes (loop/baseline.py): raised by the daemon itself, never by a
# rule or an alert, when a knob it moved may go back to where it was before; the knob each
# one returns. Their changes are not flip-flops for the oscillation guard (loop/guards.py):
# a return has its own stabilisation window and back-off.
RETURNS: dict[str, str] = {"excess_capacity": "size", "throttle_unneeded": "throttle"}

FAULTS: tuple[Fault, ...] = (
    Fault("load_spike", "overload", 0.7, frozenset({"scale_committee", "set_throttle"})),
    Fault("error_burst", "high_failure_rate", 0.7, frozenset({"restart_committee"})),
    Fault("member_crash", "members_unhealthy", 0.7, frozenset({"restart_committee"})),
    # 0.8 would also push p99 past the 1 s validation timeout
    Fault("latency_degradation", "high_latency", 0.6, frozenset({"rebalance_load"})),
    Fault("bad_policy", "policy_regression", 0.7, frozenset({"apply_policy", "rollback_policy"})),
)
FAULT: dict[str, Fault] = {fault.kind: fault for fault in FAULTS}
FAULT_KINDS: tuple[str, ...] = tuple(FAULT)


def fault_signal(kind: str) -> tuple[str, float]:
    """(signal, threshold) that the fault `kind` drives over its threshold."""
    cause = CAUSE[FAULT[kind].cause]
    return cause.signal, cause.threshold
