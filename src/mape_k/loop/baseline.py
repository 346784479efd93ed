"""Return to baseline: when a knob the daemon moved may go back, and how far. Pure, but
for `Peaks`, the readings it is sized for.

The daemon scales up and throttles to fix a cause; once the cause has cleared and stayed
clear it takes the knob back to where it was before (HPA-style scale-down stabilisation,
with hysteresis). A return is a cause like any other (`causes.RETURNS`:
`excess_capacity` returns the size, `throttle_unneeded` the throttle), planned from
`planner.remediations`, resolved against the one reading, judged by the guards, journaled,
verified and learned — this module only says which returns are due and where to.

- **The baseline** is derived from the guards' change history (the envelope's, the one
  copy): an *excursion* of a knob starts at the daemon's first change of it (its `before`
  is the baseline) and ends when a change brings it back. A knob moved by someone else in
  between (its reading, or a change's `before`, is not where the daemon left it) starts a
  new excursion from there: the daemon never returns past an operator's setting.
- **When**: no violation on the target for `window_s`, doubled for each earlier return on
  the target that another action followed within `reversal_s` (a premature return: on
  flapping load the window grows until the load stays calm long enough), capped at
  `max_window_s`; nothing settling on the target; the throttle before the size.
- **How far** (hysteresis): the size goes to what the load needs at `target_value`
  (ceil(size x saturation / target_value)), never below the baseline, and only if that is
  smaller; the throttle is lifted only when the saturation it projects with the shed load
  admitted is at most `target_value`. A return needs two of the velocity guard's actions
  left (its own and a fix after it); its size change is not counted against the guard's
  size budget (loop/guards.py), which stays for fixes.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from mape_k.causes import CAUSE, RETURNS
from mape_k.loop import actions
from mape_k.loop.guards import Change
from mape_k.models import Cause, KnobSetting, Observation, RemediationPolicy, Severity

if TYPE_CHECKING:
    from mape_k.config import ReturnToBaselineConfig, VelocityConfig
    from mape_k.integrations.charter.base import CommitteeState

# The signal a return is judged on: load per member (the overload cause's).
SIGNAL = CAUSE["overload"].signal
THRESHOLD = CAUSE["overload"].threshold
CAUSE_OF: dict[str, str] = {knob: name for name, knob in RETURNS.items()}


def is_return(cause: str) -> bool:
    """True for the causes the daemon raises to return a knob (never a rule's)."""
    return cause in RETURNS


@dataclass(frozen=True, slots=True)
class Excursion:
    """A knob the daemon moved away from its baseline and has not brought back."""

    target: str
    knob: str  # "size" | "throttle"
    baseline: Any  # the value before the daemon's first change of this excursion
    since: float
    current: Any  # where the daemon's last change left it
    opened_by: str = ""  # the execution that took it away


@dataclass(frozen=True, slots=True)
class Proposal:
    """A return due now: the cause to plan, and the value it takes the knob to."""

    cause: Cause
    knob: str
    value: Any
    baseline: Any  # where the knob was before the fault


@dataclass(frozen=True, slots=True)
class Returns:
    """This iteration's returns: the due ones, why others are held back, and the size each
    target's load needs now (the scale-down stabilisation's recommendation)."""

    proposals: tuple[Proposal, ...] = ()
    held: tuple[str, ...] = ()
    fits: Mapping[str, int] = field(default_factory=dict)

    def proposal(self, target: str, knob: str) -> Proposal | None:
        for proposal in self.proposals:
            if proposal.cause.target == target and proposal.knob == knob:
                return proposal
        return None


class Peaks:
    """The recent readings of the return signal (SIGNAL) per target: each iteration's and
    each watch pass's (loop/orchestrator.py). The only state of this module."""

    MAX_POINTS = 512  # per target: over an hour at a 10 s watch (max_window_s)

    def __init__(self) -> None:
        self._points: dict[str, deque[tuple[float, float]]] = {}

    def add(self, observation: Observation) -> None:
        for metric in observation.metrics:
            if metric.name == SIGNAL and not math.isnan(metric.value):
                points = self._points.setdefault(metric.component, deque(maxlen=self.MAX_POINTS))
                points.append((observation.at, metric.value))

    def highest(self, target: str, *, after: float) -> float:
        """The highest reading of `target` taken after `after` (-inf: none)."""
        return max((v for t, v in self._points.get(target, ()) if t > after), default=-math.inf)


def excursions(history: Iterable[Change]) -> dict[tuple[str, str], Excursion]:
    """The open excursions per (target, knob) of the returnable knobs, from the history."""
    open_: dict[tuple[str, str], Excursion] = {}
    for change in sorted(history, key=lambda c: c.at):
        if change.knob not in CAUSE_OF:
            continue
        key = (change.target, change.knob)
        excursion = open_.get(key)
        if excursion is None or change.before != excursion.current:
            # The first change, or the knob was moved by someone else in between. A return
            # opens nothing (the change that opened its excursion was forgotten).
            if change.returning:
                open_.pop(key, None)
                continue
            excursion = Excursion(
                change.target, change.knob, change.before, change.at, None, change.execution_id
            )
        excursion = replace(excursion, current=change.after)
        if excursion.current == excursion.baseline:
            open_.pop(key, None)
        else:
            open_[key] = excursion
    return open_


def openings(history: Iterable[Change]) -> set[Change]:
    """Every change of an excursion still open, from the one that opened it: what history
    pruning must keep, or the baseline (its first change) or where the knob now is (its
    last) would be forgotten, and a knob moved in two steps read as moved by someone else."""
    ordered = sorted(history, key=lambda c: c.at)
    keep: set[Change] = set()
    for excursion in excursions(ordered).values():
        keep.update(
            change
            for change in ordered
            if (change.target, change.knob) == (excursion.target, excursion.knob)
            and change.at >= excursion.since
        )
    return keep


def premature(history: Sequence[Change], target: str, *, within_s: float) -> int:
    """Returns on `target` whose next change of a knob there was a fix (not a return)
    within `within_s`: the cause came back. A return in steps counts once, at its last
    step. A knob-less action in between (a restart for a crashed member) says nothing of
    the load, and is passed over."""
    ordered = sorted(
        (c for c in history if c.target == target and c.knob is not None), key=lambda c: c.at
    )
    count = 0
    for change, after in itertools.pairwise(ordered):
        if change.execution_id == after.execution_id:
            continue
        if change.returning and not after.returning and after.at - change.at <= within_s:
            count += 1
    return count


def window_s(history: Sequence[Change], target: str, config: ReturnToBaselineConfig) -> float:
    """How long `target` must stay free of violations before a return: `window_s`, doubled
    for each premature return, at most `max_window_s`."""
    n = premature(history, target, within_s=config.reversal_s)
    return float(min(config.window_s * 2.0**n, config.max_window_s))


def _fit(size: int, saturation: float, target_value: float) -> int:
    return max(1, math.ceil(size * saturation / target_value - 1e-9))


def _spare(history: Sequence[Change], velocity: VelocityConfig, now: float) -> bool:
    """True when the velocity guard's action budget leaves room for a return and a fix
    after it (a return's size change is not counted against its size budget)."""
    if not velocity.enabled:
        return True
    recent = [c for c in history if c.at > now - velocity.window_s]
    count = len({(c.execution_id, c.action_type, c.at) for c in recent})
    return count + 2 <= velocity.max_actions


def propose(  # noqa: C901, PLR0912
    *,
    state: CommitteeState | None,
    observation: Observation,
    history: Sequence[Change],
    last_violation: Mapping[str, float],
    watching_since: float,
    settling: Mapping[str, str],
    config: ReturnToBaselineConfig,
    velocity: VelocityConfig,
    now: float,
    fix_loads: Mapping[str, float] | None = None,
    peaks: Peaks | None = None,
) -> Returns:
    """The returns due now against this reading, and why the others wait.

    `last_violation`: target -> the last usable observation with a violation on it;
    `watching_since`: the first usable observation (a target never seen violating has been
    quiet since then, not forever: after a restart the window starts again);
    `fix_loads`: execution id -> the offered load when it ran, for the executions that
    fixed a load-proportional cause (overload): the knob it moved goes back only once the
    load has fallen below `load_fraction` of that (a ramp that is still there is not a
    cause that cleared); `peaks`: the signal's readings between iterations too — a return
    is sized for the highest since the target's knobs last moved, within the quiet window
    (load spikes of 10 s that the 30 s grid never reads, the watch does).
    """
    if not config.enabled or state is None or observation.degraded:
        return Returns()
    violating = {v.component for v in observation.violations}
    open_ = excursions(history)
    proposals: list[Proposal] = []
    held: list[str] = []
    fits: dict[str, int] = {}
    for (target, knob), excursion in sorted(open_.items()):
        if target in violating:
            continue  # the cause's own policies speak for the target now
        reading = actions.read(state, knob)
        if knob == "throttle":
            reading = None if reading is None else float(reading)
        what = f"{knob} on {target} ({excursion.current!r} -> {excursion.baseline!r})"
        if reading != excursion.current:
            held.append(
                f"{what} not returned: set to {reading!r} outside the daemon since; its"
                " setting stands"
            )
            continue
        saturation = observation.value(SIGNAL, target)
        if saturation is None:
            held.append(f"{what} waits: no {SIGNAL} reading")
            continue
        if knob == "size":  # this reading's recommendation (the stabilization's window)
            need = _fit(int(reading), saturation, config.target_value)
            fits[target] = min(int(reading), max(int(excursion.baseline), need))
        wait = window_s(history, target, config)
        quiet_s = now - max(last_violation.get(target, watching_since), watching_since)
        if quiet_s <= wait:  # the last violating reading's recommendation must be out too
            doubled = wait > config.window_s
            held.append(
                f"{what} waits: no violation for {quiet_s:.0f} s of {wait:.0f} s"
                + (" (window doubled after a premature return)" if doubled else "")
            )
            continue
        waits = _waits(
            settling.get(target),
            spare=_spare(history, velocity, now),
            load=state.offered_load,
            then=(fix_loads or {}).get(excursion.opened_by),
            config=config,
        )
        if waits is not None:
            held.append(f"{what} {waits}")
            continue
        if peaks is not None:  # the return itself is sized for the peak of its window
            moved = max((c.at for c in history if c.target == target and c.knob), default=now)
            saturation = max(saturation, peaks.highest(target, after=max(moved, now - wait)))
        if knob == "size":
            proposal = _size_return(
                excursion,
                size=int(reading),
                saturation=saturation,
                config=config,
            )
            if isinstance(proposal, str):
                held.append(f"{what} {proposal}")
                continue
            if (target, "throttle") in open_:
                held.append(f"{what} waits: the throttle is lifted first")
                continue
        else:
            proposal = _throttle_return(excursion, float(reading), saturation, state, config)
            if isinstance(proposal, str):
                held.append(f"{what} {proposal}")
                continue
        proposals.append(proposal)
    return Returns(proposals=tuple(proposals), held=tuple(held), fits=fits)


def _waits(
    settling: str | None,
    *,
    spare: bool,
    load: float,
    then: float | None,
    config: ReturnToBaselineConfig,
) -> str | None:
    """Why a return whose window has passed still waits, or None."""
    if settling is not None:
        return f"waits: {settling} is settling"
    if not spare:
        return "waits: the velocity guard's actions left are kept for a fix"
    if then is not None and load > config.load_fraction * then:
        return (
            f"stays: the offered load ({load:.0f} ops/s) has not fallen below"
            f" {config.load_fraction:g} of its level at the fix ({then:.0f})"
        )
    return None


def _cause(name: str, target: str, saturation: float) -> Cause:
    return Cause(
        name=name,
        target=target,
        severity=Severity.INFO,
        confidence=1.0,
        violations=0,
        query=SIGNAL,
        value=saturation,
        threshold=THRESHOLD,
    )


def _size_return(
    excursion: Excursion,
    *,
    size: int,
    saturation: float,
    config: ReturnToBaselineConfig,
) -> Proposal | str:
    baseline = int(excursion.baseline)
    need = _fit(size, saturation, config.target_value)
    to = max(baseline, need)
    if to >= size:
        return (
            f"stays: the load needs {need} members for saturation {config.target_value:g}"
            f" ({saturation:.2f} at {size})"
        )
    cause = _cause("excess_capacity", excursion.target, saturation)
    return Proposal(cause, "size", to, baseline)


def _throttle_return(
    excursion: Excursion,
    limit: float,
    saturation: float,
    state: CommitteeState,
    config: ReturnToBaselineConfig,
) -> Proposal | str:
    offered = state.offered_load
    admitted = min(offered, limit)
    baseline = excursion.baseline
    after = offered if baseline is None else min(offered, float(baseline))
    if admitted <= 0:
        return "waits: no load admitted to project from"
    projected = saturation * after / admitted
    if projected > config.target_value:
        return (
            f"stays: admitting the shed load would take saturation to {projected:.2f}"
            f" (over {config.target_value:g})"
        )
    value = None if baseline is None else float(baseline)
    cause = _cause("throttle_unneeded", excursion.target, saturation)
    return Proposal(cause, "throttle", value, value)


def fit(policy: RemediationPolicy, returns: Returns) -> RemediationPolicy:
    """A resolved return policy set to where its proposal takes the knob: the size no lower
    than the proposal allows (the baseline, what the load needs), the throttle to its
    baseline. Under a new id when rewritten (idempotency keys name the value); any other
    policy, or one not resolved, is returned as is."""
    knob = RETURNS.get(policy.cause.name)
    proposal = None if knob is None else returns.proposal(policy.target, knob)
    if knob is None or proposal is None or not actions.is_resolved(policy):
        return policy
    steps = []
    rewritten: Any = None
    changed = False
    for action in policy.actions:
        sets = []
        for setting in action.sets or ():
            after = setting.after
            if setting.knob == knob:
                after = proposal.value
                if knob == "size" and setting.after is not None:
                    after = max(int(setting.after), int(proposal.value))
            if after != setting.after:
                changed, rewritten = True, after
                setting = KnobSetting(setting.knob, setting.before, after)  # noqa: PLW2901
            sets.append(setting)
        steps.append(replace(action, sets=tuple(sets)))
    if not changed:
        return policy
    note = f"; returns {knob} to {rewritten!r} (before the fault: {proposal.baseline!r})"
    return replace(
        policy,
        id=f"{policy.id}-b{rewritten}",
        actions=tuple(steps),
        rationale=policy.rationale + note,
    )
