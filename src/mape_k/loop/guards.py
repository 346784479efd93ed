"""Guards: pure decisions, between Plan and Execute, on whether a policy may run now.

Each guard looks at the policy and a `GuardContext` (a snapshot built by the orchestrator:
time, modes, freezes, what is still settling) and answers allow / delay / block with a
reason. A policy runs only when every guard allows it. No I/O and no clock here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mape_k.models import GuardDecision, GuardVerdict, RemediationPolicy


@dataclass(frozen=True, slots=True)
class Freeze:
    reason: str
    since: float
    until: float | None  # None: until lifted (the kill switch)
    source: str = "operator"  # "config" | "operator" | "panic"

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class GuardContext:
    now: float
    dry_run: bool = False
    freeze: Freeze | None = None
    degraded_reason: str | None = None  # the observation cannot be trusted
    settling: Mapping[str, str] = field(default_factory=dict)  # target -> execution id


Guard = Callable[[RemediationPolicy, GuardContext], GuardDecision]


def _decision(
    name: str, verdict: GuardVerdict, reason: str, policy: RemediationPolicy, until: float | None
) -> GuardDecision:
    return GuardDecision(
        guard=name, verdict=verdict, reason=reason, policy_id=policy.id, until=until
    )


def data_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    if ctx.degraded_reason is not None:
        reason = f"no action on missing or stale data: {ctx.degraded_reason}"
        return _decision("data", GuardVerdict.BLOCK, reason, policy, None)
    return _decision("data", GuardVerdict.ALLOW, "observation complete", policy, None)


def freeze_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    freeze = ctx.freeze
    if freeze is not None and freeze.active(ctx.now):
        until = "until lifted" if freeze.until is None else f"until {freeze.until:.0f}"
        reason = f"frozen ({freeze.source}) {until}: {freeze.reason}"
        return _decision("freeze", GuardVerdict.BLOCK, reason, policy, freeze.until)
    return _decision("freeze", GuardVerdict.ALLOW, "not frozen", policy, None)


def settle_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    execution = ctx.settling.get(policy.target)
    if execution is not None:
        reason = f"{policy.target} is settling after {execution}; its effect is not measured yet"
        return _decision("settle", GuardVerdict.DELAY, reason, policy, None)
    return _decision("settle", GuardVerdict.ALLOW, "target settled", policy, None)


def dry_run_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    if ctx.dry_run:
        actions = ", ".join(a.action_type.value for a in policy.actions)
        reason = f"dry-run: would execute {actions} on {policy.target}"
        return _decision("dry_run", GuardVerdict.BLOCK, reason, policy, None)
    return _decision("dry_run", GuardVerdict.ALLOW, "live mode", policy, None)


# Order matters only for reading: every guard is evaluated and recorded.
DEFAULT_GUARDS: tuple[Guard, ...] = (data_guard, freeze_guard, settle_guard, dry_run_guard)


def evaluate(
    policy: RemediationPolicy, ctx: GuardContext, guards: tuple[Guard, ...] = DEFAULT_GUARDS
) -> tuple[GuardDecision, ...]:
    return tuple(guard(policy, ctx) for guard in guards)


def allowed(decisions: tuple[GuardDecision, ...]) -> bool:
    return all(d.verdict is GuardVerdict.ALLOW for d in decisions)


def holding(decisions: tuple[GuardDecision, ...]) -> list[GuardDecision]:
    return [d for d in decisions if d.verdict is not GuardVerdict.ALLOW]
