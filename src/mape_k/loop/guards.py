"""Guards: pure decisions, between Plan and Execute, on whether a policy may run now.

Each guard looks at the policy and a `GuardContext` (a snapshot built by the orchestrator:
time, modes, freezes, recent changes, breakers, back-offs) and answers allow / delay /
block with a reason. A policy runs only when every guard allows it. No I/O and no clock
here: the bookkeeping that feeds the context lives in safety.py. See docs/guards.md.

The guards judge a *resolved* policy (loop/actions.py): every action carries the absolute
state it sets and the value it starts from, in the one reading the orchestrator took. They
predict nothing themselves: what they judge is what the executor sends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mape_k.causes import RETURNS
from mape_k.config import FreezeWindow, GuardsConfig
from mape_k.loop import actions
from mape_k.loop.maintenance import MaintenanceWindow
from mape_k.loop.maintenance import active_window as maintenance_window
from mape_k.models import (
    ActionName,
    ActionType,
    ExecutionStatus,
    GuardDecision,
    GuardVerdict,
    KnobSetting,
    PolicyExecution,
    RemediationPolicy,
    is_builtin,
)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Freeze:
    reason: str
    since: float
    until: float | None  # None: until lifted (the kill switch)
    source: str = "operator"  # "config" | "operator ..." | "panic" | "window"

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class Change:
    """One action's effect on one knob of a target (or None: no knob, e.g. a restart; such
    changes count for cooldown and velocity, never for oscillation)."""

    at: float
    target: str
    action_type: ActionName
    execution_id: str
    knob: str | None = None  # "size", "throttle", "bypass", "override", "policy", "config:KEY"
    direction: int = 0  # +1 / -1 for ordered knobs, 0 when only values compare
    before: Any = None
    after: Any = None
    size_delta: int = 0  # |members changed| (scale actions)
    returning: bool = False  # a return to baseline (causes.RETURNS): never part of a flip-flop
    # The offered load when it ran, for a fix of a load-proportional signal: capacity added
    # for load returns only once the load fell below it (loop/baseline.py). Kept with the
    # change, so a restart does not forget it.
    load: float | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    """An oscillating target: no change to it before `until`."""

    target: str
    since: float
    until: float
    level: int  # 1, 2, 3...: the block lasts backoff_s * 2**(level - 1)
    reason: str


@dataclass(frozen=True, slots=True)
class Circuit:
    """The Charter API circuit breaker: closed, open (until), or half-open (one probe)."""

    state: str = "closed"  # "closed" | "open" | "half_open"
    failures: int = 0  # consecutive
    opened_at: float | None = None
    until: float | None = None
    last_error: str | None = None

    def phase(self, now: float) -> str:
        """The state as of `now`: an open circuit whose time is up is half-open."""
        if self.state == "open" and self.until is not None and now >= self.until:
            return "half_open"
        return self.state


@dataclass(frozen=True, slots=True)
class Hold:
    """A target where repeated remediation did not help: a human must look. It holds until
    an operator clears it or the target stays quiet (`until` None: no time limit)."""

    target: str
    since: float
    until: float | None
    reason: str
    quiet_since: float | None = None  # since when the target has had no violation

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The committee size one iteration asked for (scale-down stabilization)."""

    at: float
    target: str
    size: int


@dataclass(frozen=True, slots=True)
class Settling:
    """An execution on a target whose effect is not measured yet, and what it moved: the
    knobs its actions set, or None when one of them sets none (a restart, a rebalance: the
    whole target is settling)."""

    execution_id: str
    knobs: frozenset[str] | None
    actions: tuple[ActionName, ...] = ()
    cause: str | None = None  # the cause it remedies

    def describe(self) -> str:
        moved = "the whole target" if self.knobs is None else ", ".join(sorted(self.knobs))
        return f"{self.execution_id} ({'+'.join(self.actions) or 'no action'}: {moved})"


@dataclass(frozen=True, slots=True)
class GuardContext:
    now: float
    dry_run: bool = False
    freeze: Freeze | None = None
    degraded_reason: str | None = None  # the observation cannot be trusted
    # Target -> the executions on it whose effect is not measured yet (oldest first).
    settling: Mapping[str, tuple[Settling, ...]] = field(default_factory=dict)
    config: GuardsConfig = field(default_factory=GuardsConfig)
    history: tuple[Change, ...] = ()  # oldest first
    recommendations: tuple[Recommendation, ...] = ()
    # Why the policy being judged could not be resolved to absolute state (no reading of
    # the target, or none it could be resolved against); None when it was.
    unresolved: str | None = None
    backoffs: Mapping[str, Backoff] = field(default_factory=dict)
    charter: Circuit = field(default_factory=Circuit)
    needs_human: Mapping[str, Hold] = field(default_factory=dict)
    startup_problem: str | None = None
    approvals: Mapping[str, float] = field(default_factory=dict)  # policy id -> approved at
    # Why this replica must not act (a follower, or no lease); None: it leads (or is alone).
    not_leading: str | None = None
    maintenance: tuple[MaintenanceWindow, ...] = ()  # the config's `maintenance` windows


Guard = Callable[[RemediationPolicy, GuardContext], GuardDecision]


def _decision(
    name: str, verdict: GuardVerdict, reason: str, policy: RemediationPolicy, until: float | None
) -> GuardDecision:
    return GuardDecision(
        guard=name, verdict=verdict, reason=reason, policy_id=policy.id, until=until
    )


def _allow(name: str, reason: str, policy: RemediationPolicy) -> GuardDecision:
    return _decision(name, GuardVerdict.ALLOW, reason, policy, None)


def _at(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- what an action changes ------------------------------------------------------------


def _knob_changes(base: Change, sets: tuple[KnobSetting, ...] | None) -> list[Change]:
    """One Change per knob the settings move (the action-effect model says how); the bare
    action (no knob) when they move none, or when it was not resolved."""
    changes = []
    for setting in sets or ():
        moved = actions.movement(setting)
        if moved is None:
            continue
        before, after, direction, size_delta = moved
        changes.append(
            replace(
                base,
                knob=setting.knob,
                direction=direction,
                before=before,
                after=after,
                size_delta=size_delta,
            )
        )
    return changes or [base]


def planned_changes(policy: RemediationPolicy, *, now: float) -> list[Change]:
    """What `policy` would change if it ran now: exactly its resolved settings (the same
    absolute values the executor will send), judged against the reading they came from."""
    changes: list[Change] = []
    for action in policy.actions:
        base = Change(
            at=now, target=policy.target, action_type=action.action_type, execution_id=policy.id
        )
        changes.extend(_knob_changes(base, action.sets))
    return changes


def executed_changes(
    execution: PolicyExecution, *, at: float, load_normalised: Collection[str] = ()
) -> list[Change]:
    """What an execution did, from the Charter's previous/current answers; with the load
    it ran at when its cause's signal is one of `load_normalised`."""
    proportional = execution.policy.cause.query in load_normalised
    changes: list[Change] = []
    counted = {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.ROLLED_BACK}
    for step in execution.actions:
        if step.status not in counted:
            continue
        base = Change(
            at=at,
            target=execution.policy.target,
            action_type=step.action.action_type,
            execution_id=execution.id,
            returning=execution.policy.cause.name in RETURNS,
            load=execution.baseline_load if proportional else None,
        )
        if step.status is not ExecutionStatus.COMPLETED:
            # A failed attempt, or a change applied and undone: no knob moved for good, but
            # the target was acted on (cooldown and blast radius count it).
            changes.append(base)
            continue
        previous: dict[str, Any] = step.result.get("previous", {}) or {}
        current: dict[str, Any] = step.result.get("current", {}) or {}
        if is_builtin(step.action.action_type):
            reported = actions.reported(step.action.action_type, previous, current)
        else:  # a user-defined action: what it was prepared to set (its knob, its direction)
            reported = step.action.sets or ()
        changes.extend(_knob_changes(base, reported))
    return changes


def reverses(first: Change, second: Change) -> bool:
    """True when `second` undoes `first` on the same knob (opposite direction, or back)."""
    if first.knob is None or first.knob != second.knob or first.target != second.target:
        return False
    if first.direction and second.direction:
        return first.direction == -second.direction
    return second.after is not None and second.after == first.before


def oscillation(
    history: Iterable[Change], candidate: Change | None, *, window_s: float, now: float
) -> tuple[Change, ...] | None:
    """Three changes of one knob inside the window, each undoing the one before, or None.

    With a `candidate`, asks whether running it would complete such a flip-flop. A return
    to baseline is not one of the three: its own window and back-off (loop/baseline.py)
    keep it from flapping, and a fix after it is not undoing a mistake.
    """
    recent = [
        c for c in history if c.knob is not None and not c.returning and c.at >= now - window_s
    ]
    if candidate is not None:
        if candidate.knob is None:
            return None
        same = [c for c in recent if c.knob == candidate.knob and c.target == candidate.target]
        if len(same) >= 2 and reverses(same[-2], same[-1]) and reverses(same[-1], candidate):
            return (same[-2], same[-1], candidate)
        return None
    by_knob: dict[tuple[str, str], list[Change]] = {}
    for change in recent:
        by_knob.setdefault((change.target, change.knob or ""), []).append(change)
    for seq in by_knob.values():
        for a, b, c in zip(seq, seq[1:], seq[2:], strict=False):
            if reverses(a, b) and reverses(b, c):
                return (a, b, c)
    return None


def active_window(windows: Iterable[FreezeWindow], now: float) -> Freeze | None:
    """The configured freeze window `now` falls in (UTC), as a Freeze ending with it."""
    moment = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    for window in windows:
        sh, sm = (int(x) for x in window.start.split(":"))
        eh, em = (int(x) for x in window.end.split(":"))
        for days_back in (0, 1):  # a window crossing midnight started yesterday
            day = moment.date() - dt.timedelta(days=days_back)
            if _DAYS[day.weekday()] not in window.days:
                continue
            start = dt.datetime(day.year, day.month, day.day, sh, sm, tzinfo=dt.UTC)
            end = dt.datetime(day.year, day.month, day.day, eh, em, tzinfo=dt.UTC)
            if end <= start:
                end += dt.timedelta(days=1)
            if start <= moment < end:
                return Freeze(
                    reason=window.reason,
                    since=start.timestamp(),
                    until=end.timestamp(),
                    source="window",
                )
    return None


# --- the guards ------------------------------------------------------------------------


def data_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    if ctx.degraded_reason is not None:
        reason = f"no action on missing or stale data: {ctx.degraded_reason}"
        return _decision("data", GuardVerdict.BLOCK, reason, policy, None)
    if not actions.is_resolved(policy):
        why = ctx.unresolved or "it was not resolved against a reading of the target"
        reason = f"not resolved, not sent: {why}"
        return _decision("data", GuardVerdict.BLOCK, reason, policy, None)
    return _allow("data", "observation complete, policy resolved", policy)


def startup_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    if ctx.startup_problem is not None:
        reason = f"start-up validation failed, not acting: {ctx.startup_problem}"
        return _decision("startup", GuardVerdict.BLOCK, reason, policy, None)
    return _allow("startup", "start-up state valid", policy)


def freeze_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    freeze = ctx.freeze if ctx.freeze is not None and ctx.freeze.active(ctx.now) else None
    if freeze is None:
        freeze = active_window(ctx.config.freeze_windows, ctx.now)
    if freeze is not None:
        until = "until lifted" if freeze.until is None else f"until {_at(freeze.until)}"
        reason = f"frozen ({freeze.source}) {until}: {freeze.reason}"
        return _decision("freeze", GuardVerdict.BLOCK, reason, policy, freeze.until)
    return _allow("freeze", "not frozen", policy)


def charter_breaker_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    if not ctx.config.charter_breaker.enabled:
        return _allow("charter_breaker", "disabled", policy)
    if not actions.needs_reading(policy):
        return _allow("charter_breaker", "no Charter action", policy)
    phase = ctx.charter.phase(ctx.now)
    if phase == "open":
        until = ctx.charter.until
        when = f"until {_at(until)}" if until is not None else ""
        reason = (
            f"Charter API circuit open {when} after {ctx.charter.failures} failed calls"
            f" (last: {ctx.charter.last_error})"
        )
        return _decision("charter_breaker", GuardVerdict.BLOCK, reason, policy, until)
    if phase == "half_open":
        return _allow("charter_breaker", "half-open: this policy is the probe", policy)
    return _allow("charter_breaker", "closed", policy)


def target_breaker_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    hold = ctx.needs_human.get(policy.target)
    if ctx.config.target_breaker.enabled and hold is not None and hold.active(ctx.now):
        reason = f"deeper problem on {policy.target}, needs a human: {hold.reason}"
        return _decision("target_breaker", GuardVerdict.BLOCK, reason, policy, hold.until)
    return _allow("target_breaker", "no repeated failures", policy)


def oscillation_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    cfg = ctx.config.oscillation
    if not cfg.enabled:
        return _allow("oscillation", "disabled", policy)
    backoff = ctx.backoffs.get(policy.target)
    if backoff is not None and ctx.now < backoff.until:
        reason = (
            f"{policy.target} oscillated ({backoff.reason}); back-off level {backoff.level}"
            f" until {_at(backoff.until)}"
        )
        return _decision("oscillation", GuardVerdict.BLOCK, reason, policy, backoff.until)
    for change in planned_changes(policy, now=ctx.now):
        flip = oscillation(ctx.history, change, window_s=cfg.window_s, now=ctx.now)
        if flip is not None:
            steps = " -> ".join(c.action_type for c in flip)
            reason = f"would oscillate {policy.target} {change.knob}: {steps}"
            return _decision("oscillation", GuardVerdict.BLOCK, reason, policy, None)
    return _allow("oscillation", "no flip-flop", policy)


def cooldown_s(last: Change, config: GuardsConfig) -> float:
    cfg = config.cooldown
    large = last.size_delta >= cfg.large_delta
    return cfg.base_s * (cfg.large_factor if large else 1.0)


def cooldown_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    if not ctx.config.cooldown.enabled:
        return _allow("cooldown", "disabled", policy)
    for action in policy.actions:
        previous = [
            c
            for c in ctx.history
            if c.target == policy.target and c.action_type == action.action_type
        ]
        if not previous:
            continue
        last = max(previous, key=lambda c: c.at)
        until = last.at + cooldown_s(last, ctx.config)
        if ctx.now < until:
            reason = (
                f"{action.action_type} on {policy.target} cooling down until {_at(until)}"
                f" (last at {_at(last.at)}, size change {last.size_delta})"
            )
            return _decision("cooldown", GuardVerdict.DELAY, reason, policy, until)
    return _allow("cooldown", "no recent action of this type", policy)


def velocity_spent(recent: Iterable[Change]) -> tuple[int, int]:
    """(actions, size change) the velocity guard counts over `recent` changes. A return to
    baseline (causes.RETURNS) counts as an action, and gives back the size budget of the
    scale it undoes: it goes back toward the size before the fault, never past it
    (loop/baseline.py), so the fix the next fault needs still fits."""
    recent = list(recent)
    actions = len({(c.execution_id, c.action_type, c.at) for c in recent})
    grown = sum(c.size_delta for c in recent if not c.returning)
    return actions, max(0, grown - sum(c.size_delta for c in recent if c.returning))


def velocity_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    cfg = ctx.config.velocity
    if not cfg.enabled:
        return _allow("velocity", "disabled", policy)
    recent = [c for c in ctx.history if c.at > ctx.now - cfg.window_s]
    actions, size_change = velocity_spent(recent)
    planned = planned_changes(policy, now=ctx.now)
    more_size = 0 if policy.cause.name in RETURNS else sum(c.size_delta for c in planned)
    until = (min(c.at for c in recent) + cfg.window_s) if recent else None
    if actions + len(policy.actions) > cfg.max_actions:
        reason = (
            f"blast radius: {actions} actions in the last {cfg.window_s:.0f} s,"
            f" limit {cfg.max_actions}"
        )
        return _decision("velocity", GuardVerdict.DELAY, reason, policy, until)
    if more_size and size_change + more_size > cfg.max_size_change:
        reason = (
            f"committee size changed by {size_change} in the last {cfg.window_s:.0f} s;"
            f" {more_size} more would pass the limit {cfg.max_size_change}"
        )
        return _decision("velocity", GuardVerdict.DELAY, reason, policy, until)
    return _allow("velocity", f"{actions} actions, size change {size_change}", policy)


def stabilization_floor(
    recommendations: Iterable[Recommendation], *, target: str, now: float, window_s: float
) -> int | None:
    sizes = [r.size for r in recommendations if r.target == target and r.at >= now - window_s]
    return max(sizes) if sizes else None


def _last_scale(
    policy: RemediationPolicy, kind: ActionType = ActionType.SCALE_DOWN
) -> tuple[int, KnobSetting | None] | None:
    """The last `kind` scale of `policy` (its index and resolved size setting), if any."""
    found = [i for i, a in enumerate(policy.actions) if a.action_type is kind]
    if not found:
        return None
    action = policy.actions[found[-1]]
    sets = [s for s in action.sets or () if s.knob == "size"]
    return found[-1], (sets[0] if sets else None)


def fitted(policy: RemediationPolicy, ctx: GuardContext) -> RemediationPolicy:
    """A resolved policy as far as the guards let it go: a scale-down stopped at the
    stabilization floor, a scale-up at the velocity budget left (`stabilized`,
    `within_velocity`); what they cannot fit, the guards judge as it is. A policy that
    needs approval is never refitted: the operator approved that size, under that id."""
    if policy.requires_approval:
        return policy
    return within_velocity(stabilized(policy, ctx), ctx)


def _resized(
    policy: RemediationPolicy, index: int, before: int, size: int, note: str
) -> RemediationPolicy:
    """`policy` with its action at `index` setting the size from `before` to `size`, under
    a new id (its idempotency keys must not name the other size)."""
    action = replace(policy.actions[index], sets=(KnobSetting("size", before, size),))
    steps = (*policy.actions[:index], action, *policy.actions[index + 1 :])
    return replace(
        policy, id=f"{policy.id}-s{size}", actions=steps, rationale=policy.rationale + note
    )


def _sized_later(policy: RemediationPolicy, index: int) -> bool:
    """Whether an action after `index` sets the size (it would start from the old value)."""
    return any(s.knob == "size" for a in policy.actions[index + 1 :] for s in a.sets or ())


def _sized_elsewhere(policy: RemediationPolicy, index: int) -> bool:
    """Whether an action other than the one at `index` sets the size."""
    return _sized_later(policy, index) or any(
        s.knob == "size" for a in policy.actions[:index] for s in a.sets or ()
    )


def within_velocity(policy: RemediationPolicy, ctx: GuardContext) -> RemediationPolicy:
    """HPA's scale-up limit: a resolved scale-up larger than the velocity guard's size
    budget left in its window goes as far as the budget, not nowhere (a step caught early
    on a ramp sizes for the load then, and the next must still be able to follow it).
    With no budget left, another action of the policy setting the size, or the action
    budget used up (the guard holds it anyway), it is returned as is and the velocity
    guard judges it."""
    cfg = ctx.config.velocity
    found = _last_scale(policy, ActionType.SCALE_UP)
    if not cfg.enabled or found is None or policy.cause.name in RETURNS:
        return policy
    index, setting = found
    if setting is None or _sized_elsewhere(policy, index):
        return policy
    actions, spent = velocity_spent(c for c in ctx.history if c.at > ctx.now - cfg.window_s)
    if actions + len(policy.actions) > cfg.max_actions:
        return policy
    left = cfg.max_size_change - spent
    before, to = int(setting.before), int(setting.after)
    if left < 1 or to - before <= left:
        return policy
    size = before + left
    note = f"; velocity: up to {size}, not {to} ({left} of {cfg.max_size_change} members left)"
    return _resized(policy, index, before, size, note)


def stabilized(policy: RemediationPolicy, ctx: GuardContext) -> RemediationPolicy:
    """HPA's stabilization: a scale-down goes only to the highest size recommended in the
    window. A resolved scale-down past that floor (but still below the size it starts from)
    is rewritten to stop at the floor, under a new id (its idempotency keys must not name
    the other size) — when no later action of the policy sets the size, which would start
    from the old value; anything else is returned as is and judged by
    `stabilization_guard`."""
    cfg = ctx.config.stabilization
    found = _last_scale(policy)
    if not cfg.enabled or found is None:
        return policy
    index, setting = found
    if setting is None or _sized_later(policy, index):
        return policy
    floor = stabilization_floor(
        ctx.recommendations, target=policy.target, now=ctx.now, window_s=cfg.window_s
    )
    before, to = int(setting.before), int(setting.after)
    if floor is None or not to < floor < before:
        return policy
    note = f"; stabilized: down to {floor}, not {to} (highest recommendation in the window)"
    return _resized(policy, index, before, floor, note)


def stabilization_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    cfg = ctx.config.stabilization
    found = _last_scale(policy)
    if not cfg.enabled or found is None:
        return _allow("stabilization", "not a scale-down", policy)
    setting = found[1]
    if setting is None:
        reason = "scale-down held: the committee size is unknown (not resolved)"
        return _decision("stabilization", GuardVerdict.DELAY, reason, policy, None)
    floor = stabilization_floor(
        ctx.recommendations, target=policy.target, now=ctx.now, window_s=cfg.window_s
    )
    to = int(setting.after)
    if floor is not None and to < floor:
        reason = (
            f"scale-down to {to} held: the highest size recommended in the last"
            f" {cfg.window_s:.0f} s is {floor}"
        )
        return _decision("stabilization", GuardVerdict.DELAY, reason, policy, None)
    return _allow("stabilization", f"recommendations stayed at or below {to}", policy)


def approval_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    if not policy.requires_approval:
        return _allow("approval", "needs no approval", policy)
    approved_at = ctx.approvals.get(policy.id)
    if approved_at is None:
        return _decision("approval", GuardVerdict.BLOCK, "not approved", policy, None)
    expires = approved_at + ctx.config.approval_ttl_s
    if ctx.now >= expires:
        reason = f"approval expired at {_at(expires)}: default deny (rejected)"
        return _decision("approval", GuardVerdict.BLOCK, reason, policy, None)
    return _allow("approval", f"approved, valid until {_at(expires)}", policy)


def settle_conflict(
    knobs: frozenset[str] | None, settling: Settling, *, cause: str | None = None
) -> str | None:
    """Why a policy moving `knobs` (None: the whole target) for `cause` must wait for
    `settling`, or None when they touch different knobs for different causes. An action
    without a knob conflicts with every other action on its target, either way round:
    what it changes is not known. A second remedy for the same cause waits for the first's
    verdict whatever it moves: stacking remedies for one cause is how a scale-up that was
    working gets a throttle on top, and neither verdict can then be trusted."""
    if cause is not None and settling.cause == cause:
        return f"it remedies {cause} too, and its verdict comes first"
    if settling.knobs is None:
        return "it acts on the whole target"
    if knobs is None:
        moved = ", ".join(sorted(settling.knobs))
        return f"it moved {moved}, and this policy acts on the whole target"
    shared = sorted(knobs & settling.knobs)
    if shared:
        return f"it moved {', '.join(shared)}, which this policy moves too"
    return None


def settle_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    """Only the knob that moved is settling: a policy waits for an unmeasured execution on
    its target when it moves a knob that execution moved (or either acts on the whole
    target), or remedies the same cause; a policy for another cause on other knobs runs,
    and the verification of the first notes it."""
    settling = ctx.settling.get(policy.target, ())
    if not settling:
        return _allow("settle", "target settled", policy)
    knobs = actions.knobs(policy.actions)
    for pending in settling:
        why = settle_conflict(knobs, pending, cause=policy.cause.name)
        if why is not None:
            reason = (
                f"{policy.target} is settling after {pending.describe()}: {why};"
                " its effect is not measured yet"
            )
            return _decision("settle", GuardVerdict.DELAY, reason, policy, None)
    others = "; ".join(p.describe() for p in settling)
    reason = f"settling on other knobs only: {others}"
    return _allow("settle", reason, policy)


def leader_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    """Replicas on a shared store: only the holder of the leader lease acts."""
    if ctx.not_leading is not None:
        return _decision("leader", GuardVerdict.BLOCK, ctx.not_leading, policy, None)
    return _allow("leader", "this replica leads", policy)


def maintenance_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    """A target inside a maintenance window (config `maintenance`): every policy on it
    waits until the window ends."""
    window = maintenance_window(ctx.maintenance, policy.target, ctx.now)
    if window is not None:
        name, until = window
        reason = f"maintenance window {name} until {_at(until)}"
        return _decision("maintenance", GuardVerdict.DELAY, reason, policy, until)
    return _allow("maintenance", "no maintenance window", policy)


def dry_run_guard(policy: RemediationPolicy, ctx: GuardContext) -> GuardDecision:
    if ctx.dry_run:
        steps = ", ".join(actions.describe(a) for a in policy.actions)
        reason = f"dry-run: would execute {steps} on {policy.target}"
        return _decision("dry_run", GuardVerdict.BLOCK, reason, policy, None)
    return _allow("dry_run", "live mode", policy)


# Order matters only for reading: every guard is evaluated and recorded.
DEFAULT_GUARDS: tuple[Guard, ...] = (
    leader_guard,
    data_guard,
    startup_guard,
    freeze_guard,
    maintenance_guard,
    charter_breaker_guard,
    target_breaker_guard,
    approval_guard,
    oscillation_guard,
    cooldown_guard,
    velocity_guard,
    stabilization_guard,
    settle_guard,
    dry_run_guard,
)


def evaluate(
    policy: RemediationPolicy, ctx: GuardContext, guards: tuple[Guard, ...] = DEFAULT_GUARDS
) -> tuple[GuardDecision, ...]:
    return tuple(guard(policy, ctx) for guard in guards)


def allowed(decisions: tuple[GuardDecision, ...]) -> bool:
    return all(d.verdict is GuardVerdict.ALLOW for d in decisions)


def holding(decisions: tuple[GuardDecision, ...]) -> list[GuardDecision]:
    return [d for d in decisions if d.verdict is not GuardVerdict.ALLOW]
