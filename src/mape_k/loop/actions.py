"""The action-effect model: one table of what each action type moves, and the pure functions
that check, resolve, judge and undo an action from it.

PURE: no I/O, no clock. One model serves the whole loop:

- **config** checks a candidate's parameters against it at load (`parameter_problem`): a
  typo or a wrong type is a one-line error naming the parameter, never a guess;
- **resolution** (`resolve`, right after planning) turns the configured parameters —
  relative (`delta`, `fraction`) or omitted (`EFFECTS[...].defaults`, the only copy of the
  defaults) — into absolute desired state, once, against one reading of the target's
  state: `size 5 -> 7`, `throttle None -> 560.0`, `bypass False -> True`;
- the **guards** judge exactly those `KnobSetting`s (`movement`: direction and size change);
- the **executor** sends `after` literally (no fresh read, no recomputation), the journal
  records it, and rollback restores what the Charter reported as `previous` under the knob's
  `result_key` (`EFFECTS[...].inverse` says which actions can be undone);
- **verification** waits the longest `settle_s` of a policy's actions (`settle_s`).

The reading is the Charter's committee state (`CommitteeState`), taken once per iteration.
For the size its authoritative value is `target_size` — where the last scale is heading,
like the HPA's desired replica count of its last scale — not the members present now: while
a scale is pending the two differ, and the next decision starts from what the previous one
asked for, so a second scale-up never re-decides (or undoes) the first one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mape_k.models import (
    RESTART_SCOPES,
    ActionName,
    ActionType,
    KnobSetting,
    RemediationAction,
    RemediationPolicy,
    RestartScope,
    is_builtin,
)

if TYPE_CHECKING:
    from mape_k.config import ActionSpec
    from mape_k.integrations.charter.base import CommitteeState

# The policy name the Charter resolves itself (charter-api.yaml): the known-good policy that
# was active most recently. Resolution cannot know which one that is; the Charter answers.
LAST_KNOWN_GOOD = "last_known_good"
CONFIG_PREFIX = "config:"


@dataclass(frozen=True, slots=True)
class Knob:
    """A setting of the target an action moves."""

    name: str
    state_field: str  # its value in the reading (a CommitteeState attribute)
    result_key: str  # its key in the Charter's ActionResult.previous / current
    # "count" (size), "limit" (throttle: lower is tighter, None is off), "switch" (on/off),
    # "value" (compared by value only)
    kind: str


KNOBS: dict[str, Knob] = {
    "size": Knob("size", "target_size", "size", "count"),
    "throttle": Knob("throttle", "throttle_limit", "throttle_limit", "limit"),
    "bypass": Knob("bypass", "validation_bypass", "validation_bypass", "switch"),
    "override": Knob("override", "emergency_override", "emergency_override", "switch"),
    "policy": Knob("policy", "active_policy", "active_policy", "value"),
}


@dataclass(frozen=True, slots=True)
class Effect:
    """What one action type does to its target."""

    knob: str | None  # a KNOBS name; "config": one knob per setting; None: moves no knob
    inverse: ActionName | None  # what undoes it (restoring `previous`); None: nothing can
    parameters: tuple[str, ...]  # the parameters it takes
    defaults: Mapping[str, Any]  # the value of an omitted parameter (the only copy)


# `target_value`: HPA-style, scale so the cause's signal (load per member: saturation) would
# read this value: ceil(size * signal / target_value), at least one member.
_SCALE = ("delta", "to_size", "target_value")
EFFECTS: dict[ActionName, Effect] = {
    ActionType.SCALE_UP: Effect("size", ActionType.SCALE_DOWN, _SCALE, {"delta": 1}),
    ActionType.SCALE_DOWN: Effect("size", ActionType.SCALE_UP, _SCALE, {"delta": 1}),
    # scope "all" (the default): every member at once; "rolling": one member at a time, the
    # others keep serving (no outage); "unhealthy": only the members not up
    ActionType.RESTART_SERVICE: Effect(None, None, ("scope",), {"scope": "all"}),
    ActionType.APPLY_POLICY: Effect(
        "policy", ActionType.APPLY_POLICY, ("policy_id",), {"policy_id": LAST_KNOWN_GOOD}
    ),
    ActionType.BYPASS_VALIDATION: Effect(
        "bypass", ActionType.BYPASS_VALIDATION, ("active",), {"active": True}
    ),
    ActionType.THROTTLE_REQUESTS: Effect(
        "throttle",
        ActionType.THROTTLE_REQUESTS,
        ("limit_ops_per_sec", "fraction", "lift"),
        {"fraction": 0.8},  # of the offered load, when no limit is given; lift: no limit
    ),
    ActionType.ACTIVATE_EMERGENCY_OVERRIDE: Effect(
        "override", ActionType.ACTIVATE_EMERGENCY_OVERRIDE, ("active",), {"active": True}
    ),
    ActionType.REBALANCE_LOAD: Effect(None, None, (), {}),
    ActionType.UPDATE_CONFIGURATION: Effect(
        "config", ActionType.UPDATE_CONFIGURATION, ("settings",), {}
    ),
}
INVERSE: dict[ActionName, ActionName | None] = {kind: e.inverse for kind, e in EFFECTS.items()}


class Unresolvable(ValueError):
    """An action that cannot be resolved against this reading; the message says why."""


# --- parameters ----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parameter_problem(kind: ActionName, parameters: Mapping[str, Any]) -> str | None:  # noqa: C901, PLR0911, PLR0912
    """What is wrong with `parameters` for an action of type `kind`, in one line; else None.

    A user-defined action takes any parameters whose values are scalars: they are the
    `{params.NAME}` values of its templates (checked there like every other value).
    """
    if not is_builtin(kind):
        for name, value in parameters.items():
            if not isinstance(value, str | int | float | bool):
                return f"{kind}.{name} must be a string, number or boolean, got {value!r}"
        return None
    effect = EFFECTS[kind]
    unknown = sorted(set(parameters) - set(effect.parameters))
    if unknown:
        takes = ", ".join(effect.parameters) or "no parameters"
        return f"{kind} does not take {', '.join(unknown)} (it takes {takes})"
    for group in (("delta", "to_size", "target_value"), ("limit_ops_per_sec", "fraction", "lift")):
        given = [name for name in group if name in parameters]
        if len(given) > 1:
            return f"{kind} takes one of {', '.join(group)}, not {' and '.join(given)}"
    for name, value in parameters.items():
        if name in {"delta", "to_size"} and not (_is_int(value) and value >= 1):
            return f"{kind}.{name} must be a whole number >= 1, got {value!r}"
        if name == "target_value" and not (_is_number(value) and value > 0):
            return f"{kind}.target_value must be a number > 0, got {value!r}"
        if name == "limit_ops_per_sec" and not (_is_number(value) and value > 0):
            return f"{kind}.limit_ops_per_sec must be a number > 0 (ops/s), got {value!r}"
        if name == "fraction" and not (_is_number(value) and 0 < value <= 1):
            return f"{kind}.fraction must be a number in (0, 1], got {value!r}"
        if name == "lift" and value is not True:
            return f"{kind}.lift must be true (lift the throttle), got {value!r}"
        if name == "active" and not isinstance(value, bool):
            return f"{kind}.active must be true or false, got {value!r}"
        if name == "policy_id" and not (isinstance(value, str) and value):
            return f"{kind}.policy_id must be a policy name, got {value!r}"
        if name == "scope" and value not in RESTART_SCOPES:
            return f"{kind}.scope must be one of {', '.join(RESTART_SCOPES)}, got {value!r}"
    if kind is ActionType.UPDATE_CONFIGURATION:
        settings = parameters.get("settings")
        if not isinstance(settings, Mapping) or not settings:
            return "update_configuration.settings must be a non-empty mapping of setting: value"
    return None


def parameter(action: RemediationAction, name: str) -> Any:
    """A parameter of `action`: as configured, else the model's default."""
    if name in action.parameters:
        return action.parameters[name]
    return EFFECTS[action.action_type].defaults[name]


def restart_scope(action: RemediationAction) -> RestartScope:
    """What a restart_service restarts: "all" members, or only the "unhealthy" ones."""
    scope = parameter(action, "scope")
    for known in RESTART_SCOPES:  # narrowed to the Literal the Charter client takes
        if scope == known:
            return known
    raise Unresolvable(f"restart_service.scope must be one of {', '.join(RESTART_SCOPES)}")


# --- resolution ----------------------------------------------------------------------------


def read(state: CommitteeState, knob: str) -> Any:
    """The value of `knob` in the reading."""
    if knob.startswith(CONFIG_PREFIX):
        return state.config.get(knob.removeprefix(CONFIG_PREFIX))
    return getattr(state, KNOBS[knob].state_field)


def needs_reading(policy: RemediationPolicy) -> bool:
    """True when `policy` has a built-in (Charter) action, resolved against the reading."""
    return any(is_builtin(action.action_type) for action in policy.actions)


def resolve(policy: RemediationPolicy, state: CommitteeState | None) -> RemediationPolicy:
    """`policy` with every action resolved to absolute desired state against `state`.

    Actions resolve in order: a later action starts where the earlier ones leave a knob.
    Raises `Unresolvable` when an action's desired state cannot be decided from this reading
    (or would move its knob the wrong way); nothing else is touched (id, parameters).
    A user-defined action arrives prepared (its `sets` from mape_k.actuators.prepare); it
    needs no reading, so `state` may be None for a policy of user-defined actions only.
    """
    values: dict[str, Any] = {}

    def current(knob: str) -> Any:
        if knob in values:
            return values[knob]
        if state is None:
            raise Unresolvable("no reading of the Charter to resolve a built-in action against")
        return read(state, knob)

    resolved = []
    for action in policy.actions:
        if not is_builtin(action.action_type):
            if action.sets is None:
                raise Unresolvable(f"{action.action_type} was not prepared: nothing to send")
            resolved.append(action)
            continue
        if state is None:
            raise Unresolvable("no reading of the Charter to resolve a built-in action against")
        sets = _settings(action, current, state, policy.cause.value)
        values.update((s.knob, s.after) for s in sets)
        resolved.append(replace(action, sets=sets))
    return replace(policy, actions=tuple(resolved))


def _settings(
    action: RemediationAction,
    current: Callable[[str], Any],
    state: CommitteeState,
    signal: float | None,
) -> tuple[KnobSetting, ...]:
    kind = action.action_type
    problem = parameter_problem(kind, action.parameters)
    if problem is not None:
        raise Unresolvable(problem)
    knob = EFFECTS[kind].knob
    if knob is None:
        return ()
    if knob == "size":
        return (_size(action, int(current("size")), signal),)
    if knob == "throttle":
        return (KnobSetting("throttle", current("throttle"), _limit(action, state)),)
    if knob in {"bypass", "override"}:
        return (KnobSetting(knob, current(knob), bool(parameter(action, "active"))),)
    if knob == "policy":
        return (KnobSetting("policy", current("policy"), str(parameter(action, "policy_id"))),)
    settings: Mapping[str, Any] = action.parameters["settings"]
    return tuple(
        KnobSetting(f"{CONFIG_PREFIX}{key}", current(f"{CONFIG_PREFIX}{key}"), value)
        for key, value in settings.items()
    )


def _size(action: RemediationAction, before: int, signal: float | None) -> KnobSetting:
    up = action.action_type is ActionType.SCALE_UP
    if "to_size" in action.parameters:
        after = int(action.parameters["to_size"])
    elif "target_value" in action.parameters:
        target = float(action.parameters["target_value"])
        if signal is None:
            raise Unresolvable(
                f"{action.action_type} to target_value {target:g}: the cause's signal was not read"
            )
        after = max(1, math.ceil(before * signal / target - 1e-9))
        after = max(after, before + 1) if up else min(after, before - 1)
    else:
        after = max(1, before + (1 if up else -1) * int(parameter(action, "delta")))
    if (after - before) * (1 if up else -1) < 0:
        raise Unresolvable(
            f"{action.action_type} to {after} would go the other way: the committee is"
            f" already heading for {before}"
        )
    return KnobSetting("size", before, after)


def _limit(action: RemediationAction, state: CommitteeState) -> float | None:
    if action.parameters.get("lift") is True:
        return None  # no limit: the throttle is lifted
    if "limit_ops_per_sec" in action.parameters:
        return float(action.parameters["limit_ops_per_sec"])
    fraction = float(parameter(action, "fraction"))
    if not state.offered_load > 0:
        raise Unresolvable(
            f"throttle_requests to {fraction:g} of the offered load: no load is offered"
            f" ({state.offered_load:g} ops/s)"
        )
    return float(state.offered_load * fraction)


def is_resolved(policy: RemediationPolicy) -> bool:
    return all(action.sets is not None for action in policy.actions)


def desired(action: RemediationAction, knob: str) -> Any:
    """The absolute value a resolved `action` sets `knob` to (what the executor sends)."""
    if action.sets is None:
        raise Unresolvable(f"{action.action_type} was not resolved: nothing to send")
    for setting in action.sets:
        if setting.knob == knob:
            return setting.after
    raise Unresolvable(f"{action.action_type} sets no {knob}")


def config_settings(action: RemediationAction) -> dict[str, Any]:
    """The settings a resolved update_configuration sends."""
    if action.sets is None:
        raise Unresolvable(f"{action.action_type} was not resolved: nothing to send")
    return {s.knob.removeprefix(CONFIG_PREFIX): s.after for s in action.sets}


def final_value(policy: RemediationPolicy, knob: str) -> Any | None:
    """Where a resolved policy leaves `knob` (None: it does not set it)."""
    value = None
    for action in policy.actions:
        for setting in action.sets or ():
            if setting.knob == knob:
                value = setting.after
    return value


# What a restart of the unhealthy members alone moves: those members, which no knob sets
# (the healthy ones keep serving, so a size change beside it is not confounded with it).
MEMBERS = "members"


def knobs(actions: Iterable[RemediationAction]) -> frozenset[str] | None:
    """The knobs these resolved actions set (`MEMBERS` for a restart of the unhealthy
    members); None when one of them sets none (a full restart, a rebalance, a user-defined
    action without a knob: it acts on the whole target) or was not resolved (what it sets
    is not known)."""
    found: set[str] = set()
    for action in actions:
        if action.action_type is ActionType.RESTART_SERVICE and (
            parameter(action, "scope") == "unhealthy"
        ):
            found.add(MEMBERS)
            continue
        if not action.sets:
            return None
        found.update(s.knob for s in action.sets)
    return frozenset(found)


def describe(action: RemediationAction) -> str:
    """`scale_up (size 5 -> 7)`: an action with what it sets, for reasons and logs."""
    if not action.sets:
        return action.action_type
    sets = ", ".join(f"{s.knob} {s.before!r} -> {s.after!r}" for s in action.sets)
    return f"{action.action_type} ({sets})"


# --- judging and recording ------------------------------------------------------------------


def _kind(knob: str) -> str:
    """How a knob's values compare: a built-in knob's kind; a config key's by value; a
    user-defined action's knob by the direction it moves it ("direction": +1, -1, 0)."""
    if knob.startswith(CONFIG_PREFIX):
        return "value"
    known = KNOBS.get(knob)
    return known.kind if known is not None else "direction"


def user_setting(knob: str, moves: str) -> KnobSetting:
    """What a user-defined action sets, for the guards: its knob and which way it moves it
    (its value cannot be read: the service's state is not the Charter's)."""
    return KnobSetting(knob, None, {"up": 1, "down": -1}.get(moves, 0))


def _coerce(knob: str, value: Any) -> Any:
    kind = _kind(knob)
    if kind == "direction":
        return value
    if kind == "count":
        return int(value) if _is_number(value) else None
    if kind == "limit":
        return float(value) if _is_number(value) else None
    if kind == "switch":
        return bool(value)
    return value


def movement(setting: KnobSetting) -> tuple[Any, Any, int, int] | None:  # noqa: PLR0911
    """(before, after, direction, size change) of a setting that moves its knob, else None.

    Direction for ordered knobs: size up +1 / down -1; throttle tighter (a lower limit, or
    a limit where there was none) +1, looser -1; a switch turned on +1, off -1. Policies
    and configuration values compare by value only (0).
    """
    before, after = _coerce(setting.knob, setting.before), _coerce(setting.knob, setting.after)
    kind = _kind(setting.knob)
    if kind == "direction":
        direction = int(after) if _is_int(after) else 0
        return None, direction, direction, 0
    if before == after:
        return None
    if kind == "count":
        if before is None or after is None:
            return None
        return before, after, (after > before) - (after < before), abs(after - before)
    if kind == "limit":
        tighter = after is not None and (before is None or after < before)
        return before, after, 1 if tighter else -1, 0
    if kind == "switch":
        return before, after, 1 if after else -1, 0
    return before, after, 0, 0


def reported(
    kind: ActionName, previous: Mapping[str, Any], current: Mapping[str, Any]
) -> tuple[KnobSetting, ...]:
    """What a completed action set, from the Charter's answer (its previous/current values).
    A user-defined action's answer says nothing of the kind: () (its `sets` say it)."""
    if not is_builtin(kind):
        return ()
    knob = EFFECTS[kind].knob
    if knob is None:
        return ()
    if knob == "config":
        old: Mapping[str, Any] = previous.get("settings") or {}
        new: Mapping[str, Any] = current.get("settings") or {}
        return tuple(
            KnobSetting(f"{CONFIG_PREFIX}{key}", old.get(key), value) for key, value in new.items()
        )
    key = KNOBS[knob].result_key
    return (KnobSetting(knob, previous.get(key), current.get(key)),)


def restore_value(knob: str, previous: Mapping[str, Any]) -> Any:
    """The value an undo restores: what the Charter reported before the action. Raises
    KeyError when its answer does not say (the undo cannot be made, and says so)."""
    return previous[KNOBS[knob].result_key]


def settle_s(actions: Iterable[RemediationAction], specs: Mapping[ActionName, ActionSpec]) -> float:
    """How long the effect of these actions takes to show: the longest `settle_s`."""
    return max((specs[a.action_type].settle_s for a in actions), default=0.0)
