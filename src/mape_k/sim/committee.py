"""The simulated Charter committee: load, capacity, queue, latency, failures, faults, actions.

One model, shared by `MockCharterClient` and the simulator service, so what the daemon
learns against the mock holds against the service. PURE: no I/O and no clock — every
call takes `now`, dynamics advance in fixed sub-steps from a seeded `random.Random`.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mape_k.causes import CAUSES, FAULT_KINDS
from mape_k.errors import CharterError, CharterNotFound, CharterRequestError, ConfigError
from mape_k.integrations.charter.base import (
    SIGNALS,
    ActionResult,
    CharterPolicy,
    CharterViolation,
    CommitteeState,
    PolicyValidation,
)
from mape_k.models import RESTART_SCOPES

Regime = Literal["calm", "volatile", "spike"]
REGIMES: tuple[str, ...] = ("calm", "volatile", "spike")
LAST_KNOWN_GOOD = "last_known_good"
LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ERROR_REASONS: tuple[str, ...] = ("internal", "policy", "timeout", "overload")

_DT = 0.1  # sub-step of the dynamics, seconds
_TAU = 1.0  # smoothing of the rate signals (like a short Prometheus rate window), seconds
_MAX_CATCH_UP_S = 600.0  # a longer gap is skipped, not simulated step by step
_BASE_P99_S = 0.04  # p99 of an idle member
_MAX_UTILISATION = 0.98
_OVERRIDE_CAPACITY = 1.3
_OVERRIDE_RISK = 0.01
_BYPASS_CAPACITY = 1.5
_BYPASS_RISK = 0.02

# Rising edges of the causes' tests are recorded as Charter's own violations.
_VIOLATION_RULES: tuple[tuple[str, str, float, str], ...] = tuple(
    (c.name, c.signal, c.threshold, c.severity.value) for c in CAUSES
)

_DEFAULT_CONFIG: dict[str, Any] = {
    "validation_timeout_s": 1.0,  # requests slower than this time out
    "max_queue": 500,  # validations waiting beyond this are dropped (overload)
    "batch_size": 16,  # bigger batches: more capacity, more latency
    "cache_enabled": True,  # without the cache each member does 20% less
}


class InvalidArgument(CharterRequestError):
    """A request argument is out of range; `.field` names it."""

    def __init__(self, message: str, *, operation: str, field: str) -> None:
        self.field = field
        super().__init__(message, operation=operation, status=400)


@dataclass(slots=True)
class _Policy:
    id: str
    version: int
    known_good: bool
    description: str
    error_rate: float = 0.0  # fraction of validations it wrongly rejects


@dataclass(slots=True)
class _Member:
    crashed_by: str | None = None  # fault id
    up_at: float = 0.0  # unavailable before (restart)
    down_at: float = -math.inf  # ...and from this (a rolling restart's turn)

    def up(self, t: float) -> bool:
        return self.crashed_by is None and not self.down_at <= t < self.up_at


@dataclass(slots=True)
class Fault:
    id: str
    kind: str
    magnitude: float
    started_at: float
    ends_at: float | None  # None = until cleared or remediated
    data: dict[str, Any] = field(default_factory=dict)

    def magnitude_at(self, t: float) -> float:
        """Its magnitude now: a rolling restart under way clears it member by member."""
        rolling = self.data.get("rolling")
        if rolling is None:
            return self.magnitude
        start, end = float(rolling[0]), float(rolling[1])
        return self.magnitude * min(1.0, max(0.0, (end - t) / (end - start)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "magnitude": self.magnitude,
            "started_at": self.started_at,
            "ends_at": self.ends_at,
        }


@dataclass(frozen=True, slots=True)
class ActionLogEntry:
    time: float
    operation: str
    arguments: dict[str, Any]
    idempotency_key: str
    replayed: bool  # the key was seen before: no effect, first result returned
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "operation": self.operation,
            "arguments": self.arguments,
            "idempotency_key": self.idempotency_key,
            "replayed": self.replayed,
            "error": self.error,
        }


@dataclass(slots=True)
class _Counters:
    violations: int = 0
    executions_success: float = 0.0
    executions_failure: float = 0.0
    errors: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ERROR_REASONS, 0.0))
    restarts: int = 0
    scale_operations: int = 0
    latency_buckets: list[float] = field(default_factory=lambda: [0.0] * len(LATENCY_BUCKETS))
    latency_count: float = 0.0
    latency_sum: float = 0.0
    offered: float = 0.0  # validations offered (before any throttle), the scenario suite's base
    shed: float = 0.0  # validations a throttle refused (never admitted, so in no other counter)


def _clamp(value: float, low: float = 0.0, high: float = 1.0) -> float:
    return max(low, min(high, value))


class Committee:
    """A committee of validating members under an offered load; see the module docstring."""

    def __init__(
        self,
        seed: int,
        regime: str,
        *,
        start: float,
        size: int = 3,
        per_member_ops: float = 100.0,
        base_utilisation: float = 0.6,
        scale_delay_s: float = 5.0,
        restart_s: float = 3.0,
        max_size: int = 50,
        max_idempotency_keys: int = 10_000,
        max_log: int = 1000,
    ) -> None:
        if regime not in REGIMES:
            raise ConfigError(f"unknown regime {regime!r}, expected one of {', '.join(REGIMES)}")
        if not 1 <= size <= max_size:
            raise ConfigError(f"committee size must be in 1..{max_size}, got {size}")
        self.seed = seed
        self.regime = regime
        self.per_member_ops = per_member_ops
        self.scale_delay_s = scale_delay_s
        self.restart_s = restart_s
        self.max_size = max_size
        self._rng = random.Random(seed)
        self._t = start
        self._start = start
        self._steps = 0
        self._base_load = base_utilisation * size * per_member_ops
        self._members = [_Member(up_at=start) for _ in range(size)]
        self._pending_scale: tuple[int, float] | None = None  # (target, effective at)
        self._throttle: float | None = None
        self._override = False
        self._bypass = False
        self._config: dict[str, Any] = dict(_DEFAULT_CONFIG)
        self._policies: dict[str, _Policy] = {
            p.id: p
            for p in (
                _Policy("baseline-v1", 1, True, "Default validation rules"),
                _Policy("strict-v2", 2, True, "Stricter quorum checks"),
                _Policy("experimental-v3", 3, False, "Untested fast path", error_rate=0.08),
            )
        }
        self._active_policy = "baseline-v1"
        self._policy_history: list[str] = []  # previously active, most recent last
        self._faults: dict[str, Fault] = {}
        self._fault_seq = 0
        self._violation_seq = 0
        self._violations: deque[CharterViolation] = deque(maxlen=200)
        self._violating: set[str] = set()
        self._log: deque[ActionLogEntry] = deque(maxlen=max_log)
        self._results: OrderedDict[str, ActionResult] = OrderedDict()
        self._max_keys = max_idempotency_keys
        self.counters = _Counters()
        # An external shape of the offered load, a factor at model time t (None = 1): how the
        # scenario suite (mape_k.quality) draws ramps and pulses on top of the regime.
        self.load_shape: Callable[[float], float] | None = None
        # dynamic state
        self._noise = 0.0
        self._level = 1.0
        self._level_target = 1.0
        self._offered = self._base_load
        self._admitted = self._base_load
        self._queue = 0.0
        self._failure_rate = 0.0
        self._policy_error_rate = 0.0
        self._p99 = _BASE_P99_S / (1 - base_utilisation)
        self._saturation = base_utilisation
        self._throughput = self._base_load

    # --- time ----------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The model's own time: the last sub-step reached."""
        return self._t

    def advance(self, now: float) -> None:
        """Step the dynamics up to `now` in fixed sub-steps (a clock going back is ignored)."""
        if now - self._t > _MAX_CATCH_UP_S:
            self._steps += math.floor((now - _MAX_CATCH_UP_S - self._t) / _DT)
            self._t = self._start + self._steps * _DT
        # time is start + steps * dt (no float drift), the grid is fixed by `start`
        while self._start + (self._steps + 1) * _DT <= now + 1e-9:
            self._steps += 1
            self._t = self._start + self._steps * _DT
            self._step(_DT)

    # --- derived quantities --------------------------------------------------------------

    def _healthy(self) -> int:
        return sum(1 for m in self._members if m.up(self._t))

    def _fault_magnitude(self, kind: str) -> float:
        return max(
            (f.magnitude_at(self._t) for f in self._faults.values() if f.kind == kind), default=0.0
        )

    @property
    def capacity(self) -> float:
        """Validations per second the healthy members can serve now."""
        return self._capacity()

    def _capacity(self) -> float:
        per_member = self.per_member_ops
        per_member *= 1 + 0.1 * math.log2(max(1, int(self._config["batch_size"])) / 16)
        if not self._config["cache_enabled"]:
            per_member *= 0.8
        per_member /= 1 + 0.3 * self._fault_magnitude("latency_degradation")
        if self._override:
            per_member *= _OVERRIDE_CAPACITY
        if self._bypass:
            per_member *= _BYPASS_CAPACITY
        return self._healthy() * per_member

    def _regime_level(self, dt: float) -> float:
        rng = self._rng
        if self.regime == "calm":
            # AR(1) noise, stationary std about 3 %
            self._noise += -self._noise * dt / 2.0 + rng.gauss(0, 0.03) * math.sqrt(dt)
            return 1.0 + self._noise
        if self.regime == "volatile":
            self._noise += -self._noise * dt / 2.0 + rng.gauss(0, 0.1) * math.sqrt(dt)
            if rng.random() < dt / 20.0:  # a swing about every 20 s
                self._level_target = rng.uniform(0.6, 1.45)
            self._level += (self._level_target - self._level) * dt / 5.0
            return self._level + self._noise
        # spike: 10 s at 1.6x every 60 s
        phase = (self._t - self._start) % 60.0
        self._noise += -self._noise * dt / 2.0 + rng.gauss(0, 0.03) * math.sqrt(dt)
        return (1.6 if 45.0 <= phase < 55.0 else 1.0) + self._noise

    def _step(self, dt: float) -> None:  # noqa: PLR0915 - one step of the whole model, in order
        self._expire_faults()
        self._apply_pending_scale()
        level = max(0.0, self._regime_level(dt))
        offered = self._base_load * level * (1 + 1.5 * self._fault_magnitude("load_spike"))
        if self.load_shape is not None:
            offered *= max(0.0, self.load_shape(self._t))
        admitted = offered if self._throttle is None else min(offered, self._throttle)
        capacity = self._capacity()
        incoming = admitted * dt
        counters = self.counters
        counters.offered += offered * dt
        counters.shed += (offered - admitted) * dt
        if capacity <= 0:
            # nobody to serve: everything is rejected, nothing waits
            served = dropped = 0.0
            failed = incoming
            counters.errors["internal"] += incoming
            inst_failure = 1.0 if incoming > 0 else 0.0
            inst_policy = 0.0
            inst_p99 = self._p99
            saturation = 1.0 if admitted > 0 else 0.0
        else:
            total = self._queue + incoming
            served = min(total, capacity * dt)
            self._queue = total - served
            dropped = max(0.0, self._queue - float(self._config["max_queue"]))
            self._queue -= dropped
            utilisation = admitted / capacity
            saturation = utilisation
            inst_p99 = _BASE_P99_S * (1 + 10 * self._fault_magnitude("latency_degradation"))
            inst_p99 *= 1 + 0.02 * math.log2(max(1, int(self._config["batch_size"])) / 16 + 1)
            inst_p99 = inst_p99 / (1 - min(utilisation, _MAX_UTILISATION))
            inst_p99 += self._queue / capacity
            timeout = float(self._config["validation_timeout_s"])
            timeout_rate = (
                min(0.5, 0.01 + 0.2 * (inst_p99 / timeout - 1)) if inst_p99 > timeout else 0.0
            )
            internal_rate = 0.3 * self._fault_magnitude("error_burst")
            internal_rate += _OVERRIDE_RISK if self._override else 0.0
            internal_rate += _BYPASS_RISK if self._bypass else 0.0
            policy_rate = self._policies[self._active_policy].error_rate
            ok = (1 - timeout_rate) * (1 - _clamp(internal_rate)) * (1 - policy_rate)
            failed = served * (1 - ok) + dropped
            counters.errors["timeout"] += served * timeout_rate
            counters.errors["internal"] += served * (1 - timeout_rate) * _clamp(internal_rate)
            counters.errors["policy"] += served * (1 - ok) - served * (
                timeout_rate + (1 - timeout_rate) * _clamp(internal_rate)
            )
            counters.errors["overload"] += dropped
            handled = served + dropped
            inst_failure = failed / handled if handled > 0 else 0.0
            inst_policy = policy_rate
            self._record_latency(served, inst_p99)
        succeeded = max(0.0, served + dropped - failed)
        counters.executions_success += succeeded
        counters.executions_failure += failed
        alpha = dt / _TAU
        self._offered = offered
        self._admitted = admitted
        self._failure_rate += (inst_failure - self._failure_rate) * alpha
        self._policy_error_rate += (inst_policy - self._policy_error_rate) * alpha
        self._p99 += (inst_p99 - self._p99) * alpha
        self._saturation += (saturation - self._saturation) * alpha
        self._throughput += (succeeded / dt - self._throughput) * alpha
        self._record_violations()

    def _record_latency(self, served: float, p99: float) -> None:
        # exponential latency distribution with this p99: P(L <= b) = 1 - 100 ** (-b / p99)
        counters = self.counters
        for index, bound in enumerate(LATENCY_BUCKETS):
            counters.latency_buckets[index] += served * (1 - 100 ** (-bound / p99))
        counters.latency_count += served
        counters.latency_sum += served * p99 / math.log(100)

    def _record_violations(self) -> None:
        signals = self.signals()
        for kind, signal, threshold, severity in _VIOLATION_RULES:
            value = signals[signal]
            if value > threshold and kind not in self._violating:
                self._violating.add(kind)
                self._violation_seq += 1
                self.counters.violations += 1
                self._violations.append(
                    CharterViolation(
                        id=f"v-{self._violation_seq}",
                        kind=kind,
                        severity=severity,
                        message=f"{signal} {value:.3g} > {threshold:g}",
                        timestamp=self._t,
                    )
                )
            elif value <= threshold:
                self._violating.discard(kind)

    # --- faults --------------------------------------------------------------------------

    def _expire_faults(self) -> None:
        for fault in list(self._faults.values()):
            if fault.kind == "bad_policy" and self._active_policy != fault.data["policy_id"]:
                del self._faults[fault.id]  # rolled back or replaced: cause gone
            elif fault.kind == "member_crash" and not any(
                m.crashed_by == fault.id for m in self._members
            ):
                del self._faults[fault.id]  # crashed members restarted or scaled away
            elif fault.ends_at is not None and self._t >= fault.ends_at:
                self._end_fault(fault)

    def _end_fault(self, fault: Fault) -> None:
        self._faults.pop(fault.id, None)
        if fault.kind == "member_crash":
            for member in self._members:
                if member.crashed_by == fault.id:
                    member.crashed_by = None
        elif fault.kind == "bad_policy" and self._active_policy == fault.data["policy_id"]:
            self._activate(self._policy_history.pop() if self._policy_history else "baseline-v1")

    def inject(self, kind: str, magnitude: float, duration_s: float, now: float) -> str:
        """Start a fault; return its id. magnitude in (0, 1], duration 0 = until cleared."""
        if kind not in FAULT_KINDS:
            raise InvalidArgument(
                f"unknown fault kind {kind!r}, expected one of {', '.join(FAULT_KINDS)}",
                operation="inject_fault",
                field="kind",
            )
        if not 0 < magnitude <= 1:
            raise InvalidArgument(
                "magnitude must be in (0, 1]", operation="inject_fault", field="magnitude"
            )
        if not duration_s >= 0:
            raise InvalidArgument(
                "duration_s must be >= 0", operation="inject_fault", field="duration_s"
            )
        self.advance(now)
        self._fault_seq += 1
        fault = Fault(
            id=f"fault-{self._fault_seq}",
            kind=kind,
            magnitude=magnitude,
            started_at=self._t,
            ends_at=self._t + duration_s if duration_s > 0 else None,
        )
        if kind == "member_crash":
            healthy = [m for m in self._members if m.crashed_by is None]
            count = max(1, round(magnitude * (len(self._members) - 1)))
            for member in healthy[: min(count, max(0, len(healthy) - 1)) or 1]:
                member.crashed_by = fault.id
        elif kind == "bad_policy":
            version = max(p.version for p in self._policies.values()) + 1
            policy = _Policy(
                f"bad-v{version}",
                version,
                known_good=False,
                description="Regressed rule set (injected fault)",
                error_rate=0.05 + 0.15 * magnitude,
            )
            self._policies[policy.id] = policy
            self._activate(policy.id)
            fault.data["policy_id"] = policy.id
        self._faults[fault.id] = fault
        return fault.id

    def clear_faults(self) -> list[str]:
        """End every fault now (crashed members come back, a bad policy is rolled back)."""
        ids = list(self._faults)
        for fault in list(self._faults.values()):
            self._end_fault(fault)
        return ids

    @property
    def active_faults(self) -> list[Fault]:
        return list(self._faults.values())

    # --- reading -------------------------------------------------------------------------

    def signals(self) -> dict[str, float]:
        """The current value of every name in base.SIGNALS."""
        size = len(self._members)
        healthy = self._healthy()
        values = {
            "failure_rate": _clamp(self._failure_rate),
            "policy_error_rate": _clamp(self._policy_error_rate),
            "p99_latency_s": self._p99,
            "queue_depth": self._queue,
            "saturation": self._saturation,
            "unhealthy_members": float(size - healthy),
            "committee_size": float(size),
            "healthy_members": float(healthy),
            "throughput_ops_per_sec": self._throughput,
            "offered_load": self._offered,
        }
        return {name: values[name] for name in SIGNALS}

    def state(self) -> CommitteeState:
        return CommitteeState(
            size=len(self._members),
            healthy_members=self._healthy(),
            target_size=self._target_size(),
            offered_load=self._offered,
            throughput_ops_per_sec=self._throughput,
            failure_rate=_clamp(self._failure_rate),
            p99_latency_s=self._p99,
            queue_depth=self._queue,
            throttle_limit=self._throttle,
            emergency_override=self._override,
            validation_bypass=self._bypass,
            active_policy=self._active_policy,
            config=dict(self._config),
        )

    def policies(self) -> list[CharterPolicy]:
        return [
            CharterPolicy(
                id=p.id,
                version=p.version,
                status="active" if p.id == self._active_policy else "inactive",
                known_good=p.known_good,
                description=p.description,
            )
            for p in sorted(self._policies.values(), key=lambda p: p.version)
        ]

    def violations(self) -> list[CharterViolation]:
        return list(self._violations)

    @property
    def actions(self) -> list[ActionLogEntry]:
        return list(self._log)

    @property
    def throttle_limit(self) -> float | None:
        return self._throttle

    def validate_policy(self, policy_id: str) -> PolicyValidation:
        policy = self._policy(self._resolve(policy_id), operation="validate_policy")
        if policy.known_good:
            return PolicyValidation(policy_id=policy.id, valid=True)
        return PolicyValidation(
            policy_id=policy.id,
            valid=False,
            errors=(f"shadow run rejects {policy.error_rate:.0%} of valid requests",),
        )

    def find_action(self, key: str) -> ActionResult | None:
        """The result of the mutation made with idempotency key `key`, if one was (a read:
        nothing is applied or logged). How a restarted caller learns whether its call of
        an interrupted action arrived."""
        found = self._results.get(key) if key else None
        return None if found is None else replace(found, replayed=True)

    # --- mutating operations -------------------------------------------------------------

    def _once(
        self,
        operation: str,
        arguments: dict[str, Any],
        *,
        key: str,
        now: float,
        effect: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
    ) -> ActionResult:
        """Run `effect` once per idempotency key; log every call received."""
        self.advance(now)
        if key and key in self._results:
            self._results.move_to_end(key)
            self._log.append(ActionLogEntry(self._t, operation, arguments, key, replayed=True))
            return replace(self._results[key], replayed=True)
        try:
            previous, current = effect()
        except CharterError as exc:
            entry = ActionLogEntry(self._t, operation, arguments, key, False, error=exc.message)
            self._log.append(entry)
            raise
        self._log.append(ActionLogEntry(self._t, operation, arguments, key, replayed=False))
        result = ActionResult(
            operation=operation, idempotency_key=key, previous=previous, current=current
        )
        if key:
            self._results[key] = result
            while len(self._results) > self._max_keys:
                self._results.popitem(last=False)
        return result

    def _target_size(self) -> int:
        return self._pending_scale[0] if self._pending_scale else len(self._members)

    def _apply_pending_scale(self) -> None:
        if self._pending_scale is None or self._t < self._pending_scale[1]:
            return
        target = self._pending_scale[0]
        self._pending_scale = None
        while len(self._members) < target:
            self._members.append(_Member(up_at=self._t))
        if len(self._members) > target:
            # unhealthy members go first
            self._members.sort(key=lambda m: not m.up(self._t))
            del self._members[target:]

    def scale(self, size: int, *, key: str = "", now: float) -> ActionResult:
        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            if isinstance(size, bool) or not isinstance(size, int):
                raise InvalidArgument(
                    "size must be an integer", operation="scale_committee", field="size"
                )
            if not 1 <= size <= self.max_size:
                raise InvalidArgument(
                    f"size must be in 1..{self.max_size}, got {size}",
                    operation="scale_committee",
                    field="size",
                )
            previous = self._target_size()
            if size != previous:
                self.counters.scale_operations += 1
                if size == len(self._members):
                    self._pending_scale = None
                else:
                    self._pending_scale = (size, self._t + self.scale_delay_s)
            effective = self._pending_scale[1] if self._pending_scale else self._t
            return {"size": previous}, {"size": size, "effective_at": effective}

        return self._once("scale_committee", {"size": size}, key=key, now=now, effect=effect)

    def restart(self, *, key: str = "", now: float, scope: str = "all") -> ActionResult:
        """Restart the committee. scope "all": every member is unavailable for `restart_s`,
        then healthy; clears error_burst and member_crash; drops the queue. scope
        "rolling": one member at a time, the unhealthy first, each unavailable for
        `restart_s` in turn; the others keep serving (and the queue); member_crash clears
        at once (its members restart first), error_burst member by member (gone when the
        last is back). scope "unhealthy": only the members not up (crashed, or still
        restarting) restart, the healthy ones keep serving (and the queue); clears
        member_crash only. Nothing unhealthy: nothing changes, and the result says
        `restarted_members: 0`."""

        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            if scope not in RESTART_SCOPES:
                raise InvalidArgument(
                    f"scope must be one of {', '.join(RESTART_SCOPES)}, got {scope!r}",
                    operation="restart_committee",
                    field="scope",
                )
            back = self._t + self.restart_s
            if scope == "unhealthy":
                return {}, self._restart_unhealthy(back)
            if scope == "rolling":
                return {}, self._restart_rolling()
            self.counters.restarts += 1
            for member in self._members:
                member.crashed_by = None
                member.up_at = back
            for fault in list(self._faults.values()):
                if fault.kind in {"error_burst", "member_crash"}:
                    del self._faults[fault.id]
            self._queue = 0.0  # in-memory queues do not survive a restart
            return {}, {"available_at": back}

        arguments = {"scope": scope}
        return self._once("restart_committee", arguments, key=key, now=now, effect=effect)

    def _restart_rolling(self) -> dict[str, Any]:
        self.counters.restarts += 1
        t, step = self._t, self.restart_s
        turns = sorted(self._members, key=lambda m: m.up(t))  # the unhealthy first
        for index, member in enumerate(turns):
            member.crashed_by = None
            member.down_at, member.up_at = t + index * step, t + (index + 1) * step
        end = t + len(turns) * step
        for fault in list(self._faults.values()):
            if fault.kind == "member_crash":
                del self._faults[fault.id]  # its crashed members restart first
            elif fault.kind == "error_burst":
                fault.data["rolling"] = (t, end)
                fault.ends_at = end if fault.ends_at is None else min(fault.ends_at, end)
        return {"scope": "rolling", "restarted_members": len(turns), "available_at": end}

    def _restart_unhealthy(self, back: float) -> dict[str, Any]:
        unhealthy = [m for m in self._members if not m.up(self._t)]
        if not unhealthy:
            return {"scope": "unhealthy", "restarted_members": 0, "available_at": self._t}
        self.counters.restarts += 1
        for member in unhealthy:
            member.crashed_by = None
            member.up_at = back
        for fault in list(self._faults.values()):
            if fault.kind == "member_crash":
                del self._faults[fault.id]  # its crashed members are restarting
        return {"scope": "unhealthy", "restarted_members": len(unhealthy), "available_at": back}

    def rebalance(self, *, key: str = "", now: float) -> ActionResult:
        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            cleared = [f.id for f in self._faults.values() if f.kind == "latency_degradation"]
            for fault_id in cleared:
                del self._faults[fault_id]
            return {}, {"cleared_faults": cleared}

        return self._once("rebalance_load", {}, key=key, now=now, effect=effect)

    def set_throttle(self, limit: float | None, *, key: str = "", now: float) -> ActionResult:
        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0
            ):
                raise InvalidArgument(
                    "limit_ops_per_sec must be a number > 0 or null",
                    operation="set_throttle",
                    field="limit_ops_per_sec",
                )
            previous = self._throttle
            self._throttle = None if limit is None else float(limit)
            return {"throttle_limit": previous}, {"throttle_limit": self._throttle}

        arguments = {"limit_ops_per_sec": limit}
        return self._once("set_throttle", arguments, key=key, now=now, effect=effect)

    def set_validation_bypass(self, active: bool, *, key: str = "", now: float) -> ActionResult:
        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            previous, self._bypass = self._bypass, bool(active)
            return {"validation_bypass": previous}, {"validation_bypass": self._bypass}

        op = "set_validation_bypass"
        return self._once(op, {"active": active}, key=key, now=now, effect=effect)

    def set_emergency_override(self, active: bool, *, key: str = "", now: float) -> ActionResult:
        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            previous, self._override = self._override, bool(active)
            return {"emergency_override": previous}, {"emergency_override": self._override}

        op = "set_emergency_override"
        return self._once(op, {"active": active}, key=key, now=now, effect=effect)

    def update_configuration(
        self, settings: dict[str, Any], *, key: str = "", now: float
    ) -> ActionResult:
        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            checked = {name: self._check_setting(name, value) for name, value in settings.items()}
            previous = {name: self._config[name] for name in checked}
            self._config.update(checked)
            return {"settings": previous}, {"settings": checked}

        arguments = {"settings": dict(settings)}
        return self._once("update_configuration", arguments, key=key, now=now, effect=effect)

    @staticmethod
    def _check_setting(name: str, value: Any) -> Any:
        op = "update_configuration"
        if name not in _DEFAULT_CONFIG:
            raise InvalidArgument(
                f"unknown setting {name!r}, expected one of {', '.join(_DEFAULT_CONFIG)}",
                operation=op,
                field=f"settings.{name}",
            )
        default = _DEFAULT_CONFIG[name]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InvalidArgument(
                    f"{name} must be a boolean", operation=op, field=f"settings.{name}"
                )
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise InvalidArgument(
                f"{name} must be a number > 0", operation=op, field=f"settings.{name}"
            )
        if isinstance(default, int) and not float(value).is_integer():
            raise InvalidArgument(
                f"{name} must be a whole number", operation=op, field=f"settings.{name}"
            )
        return type(default)(value)

    # --- policies ------------------------------------------------------------------------

    def _policy(self, policy_id: str, *, operation: str) -> _Policy:
        try:
            return self._policies[policy_id]
        except KeyError:
            raise CharterNotFound(
                f"unknown policy {policy_id!r}", operation=operation, status=404
            ) from None

    def _resolve(self, policy_id: str) -> str:
        """`last_known_good` is resolved here (in the model, for both clients): the known-good
        policy that was active most recently, else the known-good one of highest version."""
        if policy_id != LAST_KNOWN_GOOD:
            return policy_id
        for candidate in [self._active_policy, *reversed(self._policy_history)]:
            if self._policies[candidate].known_good:
                return candidate
        good = [p for p in self._policies.values() if p.known_good]
        return max(good, key=lambda p: p.version).id

    def _activate(self, policy_id: str) -> None:
        if policy_id != self._active_policy:
            self._policy_history.append(self._active_policy)
            del self._policy_history[:-50]
            self._active_policy = policy_id

    def apply_policy(self, policy_id: str, *, key: str = "", now: float) -> ActionResult:
        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            policy = self._policy(self._resolve(policy_id), operation="apply_policy")
            previous = self._active_policy
            self._activate(policy.id)
            return {"active_policy": previous}, {"active_policy": policy.id}

        arguments = {"policy_id": policy_id}
        return self._once("apply_policy", arguments, key=key, now=now, effect=effect)

    def rollback_policy(self, policy_id: str, *, key: str = "", now: float) -> ActionResult:
        """Roll the active policy `policy_id` back to the one active before it."""

        def effect() -> tuple[dict[str, Any], dict[str, Any]]:
            policy = self._policy(policy_id, operation="rollback_policy")
            if policy.id != self._active_policy:
                raise CharterRequestError(
                    f"policy {policy.id!r} is not active ({self._active_policy!r} is)",
                    operation="rollback_policy",
                    status=409,
                )
            history = [p for p in self._policy_history if p != policy.id]
            if not history:
                raise CharterRequestError(
                    f"policy {policy.id!r} has no previous policy to roll back to",
                    operation="rollback_policy",
                    status=409,
                )
            restored = history[-1]
            self._active_policy = restored
            self._policy_history = history[:-1]
            return {"active_policy": policy.id}, {"active_policy": restored}

        arguments = {"policy_id": policy_id}
        return self._once("rollback_policy", arguments, key=key, now=now, effect=effect)
