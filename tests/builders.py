"""Builders of the domain values (mape_k.models) and of settings, shared by the test folders
(importable: `tests` is on pytest's pythonpath, like fakes.py).

Every builder gives a complete, plausible value with nothing but defaults, and takes the
model's own field names as keyword overrides. The defaults tell one story: the shipped cause
`high_failure_rate` on the target `charter`, remedied by a `restart_service` that worked:
`policy()` is that remediation, `execution(policy=...)` its run, `outcome()` its verdict.
A cause of the shipped table (mape_k.causes) gets its rule's query, threshold and severity
unless they are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

from mape_k.causes import CAUSE
from mape_k.config import Settings, load_settings
from mape_k.models import (
    ActionExecution,
    ActionType,
    CandidateScore,
    Cause,
    ExecutionStatus,
    Metric,
    Observation,
    OutcomeType,
    PatternKind,
    PolicyExecution,
    PolicyOutcome,
    QueryResult,
    RemediationAction,
    RemediationPolicy,
    Severity,
    Violation,
    ViolationSource,
)

NOW = 1_700_000_000.0  # FakeClock's start: 2023-11-14T22:13:20Z, a Tuesday
TARGET = "charter"
CAUSE_NAME = "high_failure_rate"


class _Default(Enum):
    TABLE = "from the shipped table"


TABLE = _Default.TABLE  # "the value mape_k.causes gives this cause" (None for an unknown one)


def settings(tmp_path: Path, **overrides: object) -> Settings:
    """The daemon's settings over a fresh knowledge file in `tmp_path`, the Charter mocked;
    `overrides` are dotted keys as on the command line (`**{"guards.frozen": True}`)."""
    cli = {"knowledge.path": str(tmp_path / "k.sqlite3"), "charter.mode": "mock", **overrides}
    return load_settings(None, {}, cli)[0]


def violation(
    kind: str = CAUSE_NAME,
    component: str = TARGET,
    *,
    severity: Severity = Severity.CRITICAL,
    source: ViolationSource = ViolationSource.RULE,
    timestamp: float = NOW,
    value: float | None = None,
    threshold: float | None = None,
    query: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Violation:
    return Violation(
        kind=kind,
        component=component,
        severity=severity,
        source=source,
        timestamp=timestamp,
        value=value,
        threshold=threshold,
        query=query,
        labels=dict(labels or {}),
    )


def cause(
    name: str = CAUSE_NAME,
    target: str = TARGET,
    *,
    value: float | None = None,
    query: str | _Default | None = TABLE,
    threshold: float | _Default | None = TABLE,
    severity: Severity | _Default = TABLE,
    confidence: float = 0.6,
    violations: int = 1,
    patterns: Iterable[PatternKind] = (),
    source: ViolationSource = ViolationSource.RULE,
) -> Cause:
    """A cause; one of the shipped table reads its rule's query and threshold (a rule cause
    only: an alert carries no reading) and has its severity, unless they are given."""
    shipped = CAUSE.get(name)
    reads = shipped if shipped is not None and source is ViolationSource.RULE else None
    if severity is TABLE:
        severity = Severity.CRITICAL if shipped is None else shipped.severity
    if query is TABLE:
        query = None if reads is None else reads.signal
    if threshold is TABLE:
        threshold = None if reads is None else reads.threshold
    return Cause(
        name=name,
        target=target,
        severity=severity,
        confidence=confidence,
        violations=violations,
        patterns=tuple(patterns),
        query=query,
        value=value,
        threshold=threshold,
        source=source,
    )


_cause = cause  # for the builders whose `cause` keyword hides this function


def action(kind: str, *, target: str = TARGET, **parameters: Any) -> RemediationAction:
    return RemediationAction(action_type=kind, target=target, parameters=dict(parameters))


def candidate_score(
    *,
    cost: float = 0.3,
    benefit: float = 0.75,
    confidence: float = 0.6,
    score: float | None = None,
) -> CandidateScore:
    """A score as the planner makes it without knowledge or exploration, unless `score` is
    given: confidence x benefit - cost."""
    if score is None:
        score = confidence * benefit - cost
    return CandidateScore(cost=cost, benefit=benefit, confidence=confidence, score=score)


def policy(
    *actions: RemediationAction | ActionType,
    id: str = "p1",  # noqa: A002 - the model's field
    cause: Cause | None = None,
    target: str | None = None,
    score: CandidateScore | None = None,
    requires_approval: bool = False,
    created_at: float = NOW,
    rationale: str = "",
) -> RemediationPolicy:
    """A remediation of `cause` (default: `cause()`) by `actions` (default: a restart); an
    ActionType is that action without parameters. `target` moves the cause and every action
    to that target."""
    the_cause = _cause() if cause is None else cause
    steps = tuple(
        item if isinstance(item, RemediationAction) else action(item, target=the_cause.target)
        for item in (actions or (ActionType.RESTART_SERVICE,))
    )
    if target is not None:
        the_cause = replace(the_cause, target=target)
        steps = tuple(replace(item, target=target) for item in steps)
    return RemediationPolicy(
        id=id,
        cause=the_cause,
        actions=steps,
        score=candidate_score(confidence=the_cause.confidence) if score is None else score,
        requires_approval=requires_approval,
        created_at=created_at,
        rationale=rationale,
    )


_policy = policy  # for the builders whose `policy` keyword hides this function


def step(
    remediation: RemediationAction | ActionType = ActionType.RESTART_SERVICE,
    *,
    status: ExecutionStatus = ExecutionStatus.COMPLETED,
    idempotency_key: str = "e1:0:restart_service",
    started_at: float | None = None,
    finished_at: float | None = None,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> ActionExecution:
    """One action of an execution (an ActionType is that action on the default target)."""
    if isinstance(remediation, ActionType):
        remediation = action(remediation)
    return ActionExecution(
        action=remediation,
        status=status,
        idempotency_key=idempotency_key,
        started_at=started_at,
        finished_at=finished_at,
        result=dict(result or {}),
        error=error,
    )


def execution(
    id: str = "e1",  # noqa: A002 - the model's field
    *,
    policy: RemediationPolicy | None = None,
    status: ExecutionStatus = ExecutionStatus.COMPLETED,
    actions: Iterable[ActionExecution] | None = None,
    started_at: float = NOW,
    finished_at: float | None = None,
    error: str | None = None,
    dry_run: bool = False,
    baseline: float | None = None,
    baseline_trend: float | None = None,
    baseline_load: float | None = None,
    baseline_utilisation: float | None = None,
) -> PolicyExecution:
    """A run of `policy` (default: `policy()`). Unless given, `actions` are the policy's
    actions in `status`, keyed as the executor keys them (`<id>:<index>:<type>`)."""
    the_policy = _policy() if policy is None else policy
    if actions is None:
        actions = (
            step(
                remediation,
                status=status,
                idempotency_key=f"{id}:{index}:{remediation.action_type}",
                started_at=started_at,
            )
            for index, remediation in enumerate(the_policy.actions)
        )
    return PolicyExecution(
        id=id,
        policy=the_policy,
        status=status,
        actions=tuple(actions),
        started_at=started_at,
        finished_at=finished_at,
        error=error,
        dry_run=dry_run,
        baseline=baseline,
        baseline_trend=baseline_trend,
        baseline_load=baseline_load,
        baseline_utilisation=baseline_utilisation,
    )


def interrupted(
    run: PolicyExecution,
    *,
    id: str | None = None,  # noqa: A002 - the model's field
    actions: Iterable[ActionExecution] | None = None,
) -> PolicyExecution:
    """`run` as a crash left it in the journal: in progress and unfinished, with `actions`
    (default: its own) and, if given, another id."""
    return execution(
        run.id if id is None else id,
        policy=run.policy,
        status=ExecutionStatus.IN_PROGRESS,
        actions=run.actions if actions is None else actions,
        started_at=run.started_at,
    )


def outcome(
    execution_id: str = "e1",
    *,
    outcome: OutcomeType = OutcomeType.SUCCESS,
    policy_id: str | None = None,
    cause: str = CAUSE_NAME,
    action_type: ActionType = ActionType.RESTART_SERVICE,
    target: str = TARGET,
    recorded_at: float = NOW,
    value_before: float | None = None,
    value_after: float | None = None,
    threshold: float | None = None,
    time_to_stabilize_s: float | None = None,
    detail: str = "",
) -> PolicyOutcome:
    """A verdict on execution `execution_id` (its policy: `pol-<execution_id>` unless given)."""
    return PolicyOutcome(
        execution_id=execution_id,
        policy_id=f"pol-{execution_id}" if policy_id is None else policy_id,
        cause=cause,
        action_type=action_type,
        target=target,
        outcome=outcome,
        recorded_at=recorded_at,
        value_before=value_before,
        value_after=value_after,
        threshold=threshold,
        time_to_stabilize_s=time_to_stabilize_s,
        detail=detail,
    )


def outcome_of(run: PolicyExecution, **fields: Any) -> PolicyOutcome:
    """The verdict on `run`: its ids, cause, primary action and target; `fields` as outcome()."""
    fields.setdefault("policy_id", run.policy.id)
    fields.setdefault("cause", run.policy.cause.name)
    fields.setdefault("action_type", run.policy.primary_action)
    fields.setdefault("target", run.policy.target)
    return outcome(run.id, **fields)


def metric(
    name: str = "failure_rate",
    value: float = 0.0,
    component: str = TARGET,
    *,
    timestamp: float = NOW,
    labels: Mapping[str, str] | None = None,
) -> Metric:
    return Metric(
        name=name,
        component=component,
        value=value,
        timestamp=timestamp,
        labels=dict(labels or {}),
    )


def observation(
    *,
    at: float = NOW,
    metrics: Iterable[Metric] = (),
    violations: Iterable[Violation] = (),
    queries: Iterable[QueryResult] = (),
    alerts_firing: int = 0,
    alerts_superseded: Iterable[str] = (),
    degraded_reason: str | None = None,
) -> Observation:
    return Observation(
        at=at,
        metrics=tuple(metrics),
        violations=tuple(violations),
        queries=tuple(queries),
        alerts_firing=alerts_firing,
        alerts_superseded=tuple(alerts_superseded),
        degraded_reason=degraded_reason,
    )
