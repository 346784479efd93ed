"""The simulated world of one episode: the committee, its schedule of faults, the counterfactual.

Every mutating call a policy makes (mape-k through its executor, or a baseline) goes
through `CountingClient`, a MockCharterClient that, before the call reaches the committee,
copies the committee (its RNG included: `copy.deepcopy`), replays the next
COUNTERFACTUAL_S seconds with and without that one call (the scenario's scheduled faults
injected in both, no other action in either) and records what it cost: requests lost
(failed + shed) with the call minus without it. The daemon's own code is not touched.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mape_k.errors import CharterError
from mape_k.integrations.charter.base import ActionResult
from mape_k.integrations.charter.mock import MockCharterClient, MockCharterWorld, MockMetricSource
from mape_k.models import RestartScope
from mape_k.quality.scenario import Scenario, ShapeAt
from mape_k.sim.committee import Committee

COUNTERFACTUAL_S = 120.0
# A difference of requests lost smaller than this is no effect: max(1 request, this share
# of the requests offered in the window).
NO_EFFECT_SHARE = 0.001


@dataclass(frozen=True, slots=True)
class Injection:
    at: float
    kind: str
    magnitude: float
    duration_s: float


class Schedule:
    """The scenario's injections on the episode's clock, applied to any committee copy."""

    def __init__(self, scenario: Scenario, start: float) -> None:
        self.injections = [
            Injection(start + offset, kind, magnitude, duration)
            for offset, kind, magnitude, duration in scenario.injections()
        ]
        self.shape = None if scenario.load is None else ShapeAt(scenario.load, start)

    def advance(self, committee: Committee, since: float, until: float) -> None:
        """Advance `committee` from `since` to `until`, injecting what falls in (since, until]."""
        for injection in self.injections:
            if since < injection.at <= until:
                committee.advance(injection.at)
                committee.inject(
                    injection.kind, injection.magnitude, injection.duration_s, injection.at
                )
        committee.advance(until)


def lost(committee: Committee) -> float:
    return committee.counters.executions_failure + committee.counters.shed


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One mutating call, with its counterfactual."""

    at: float
    operation: str
    arguments: dict[str, Any]
    idempotency_key: str
    lost_with: float
    lost_without: float
    offered: float  # requests offered in the window (the same in both branches)
    error: str | None = None

    @property
    def delta(self) -> float:
        """Requests lost because of the call (negative: saved by it)."""
        return self.lost_with - self.lost_without

    @property
    def verdict(self) -> str:
        return verdict(self.delta, self.offered)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "operation": self.operation,
            "arguments": self.arguments,
            "idempotency_key": self.idempotency_key,
            "lost_with": round(self.lost_with, 3),
            "lost_without": round(self.lost_without, 3),
            "offered": round(self.offered, 3),
            "verdict": self.verdict,
            "error": self.error,
        }


def verdict(delta: float, offered: float) -> str:
    margin = max(1.0, NO_EFFECT_SHARE * offered)
    if delta > margin:
        return "harmed"
    if delta < -margin:
        return "helped"
    return "no effect"


Apply = Callable[[Committee, float], ActionResult]


def counterfactual(
    committee: Committee, schedule: Schedule, now: float, apply: Apply,
    horizon_s: float = COUNTERFACTUAL_S,
) -> tuple[float, float, float]:  # fmt: skip
    """(lost with the call, lost without, offered) over the next `horizon_s` from `now`."""
    with_call = copy.deepcopy(committee)
    without = copy.deepcopy(committee)
    base_lost = lost(committee)
    base_offered = committee.counters.offered
    try:
        apply(with_call, now)
    except CharterError:
        with_call = copy.deepcopy(committee)  # a refused call changes nothing
    schedule.advance(with_call, now, now + horizon_s)
    schedule.advance(without, now, now + horizon_s)
    return (
        lost(with_call) - base_lost,
        lost(without) - base_lost,
        without.counters.offered - base_offered,
    )


def apply_plan(plan: Sequence[Mapping[str, Any]]) -> Apply:
    """What a would-do's resolved plan (loop/autonomy.py `WouldDo.plan`) does to a committee:
    the calls the executor would have made, for its counterfactual."""

    def apply(committee: Committee, now: float) -> ActionResult:
        result = ActionResult(operation="none", idempotency_key="")
        for step in plan:
            action = step["action"]
            if action == "restart_service":
                result = committee.restart(now=now, scope=step["parameters"].get("scope", "all"))
            elif action == "rebalance_load":
                result = committee.rebalance(now=now)
            for setting in step["sets"]:
                result = _set(committee, setting["knob"], setting["after"], now)
        return result

    return apply


def _set(committee: Committee, knob: str, value: Any, now: float) -> ActionResult:
    if knob == "size":
        return committee.scale(int(value), now=now)
    if knob == "throttle":
        return committee.set_throttle(value, now=now)
    if knob == "bypass":
        return committee.set_validation_bypass(bool(value), now=now)
    if knob == "override":
        return committee.set_emergency_override(bool(value), now=now)
    if knob == "policy":
        return committee.apply_policy(str(value), now=now)
    if knob.startswith("config:"):
        return committee.update_configuration({knob.removeprefix("config:"): value}, now=now)
    raise CharterError(f"the simulator has no knob {knob!r}")


@dataclass(slots=True)
class Ledger:
    """Every mutating call of an episode, in order."""

    calls: list[CallRecord] = field(default_factory=list)
    counterfactual: bool = True


class CountingClient(MockCharterClient):
    """The mock Charter client with every mutating call measured by its counterfactual."""

    def __init__(
        self,
        committee: Committee,
        *,
        clock: Callable[[], float],
        schedule: Schedule,
        ledger: Ledger,
    ) -> None:
        super().__init__(committee, clock=clock)
        self.schedule = schedule
        self.ledger = ledger

    async def _mutate(
        self,
        operation: str,
        arguments: dict[str, Any],
        key: str,
        apply: Apply,
        call: Callable[[], Awaitable[ActionResult]],
    ) -> ActionResult:
        now = self._clock()
        self.committee.advance(now)
        if key and self.committee.find_action(key) is not None:
            return await call()  # a replay: no effect, not a mutating call
        lost_with = lost_without = offered = 0.0
        if self.ledger.counterfactual:
            lost_with, lost_without, offered = counterfactual(
                self.committee, self.schedule, now, apply
            )
        error: str | None = None
        try:
            return await call()
        except CharterError as exc:
            error = exc.message
            raise
        finally:
            self.ledger.calls.append(
                CallRecord(now, operation, arguments, key, lost_with, lost_without, offered, error)
            )

    async def scale_committee(self, size: int, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            "scale_committee",
            {"size": size},
            idempotency_key,
            lambda c, now: c.scale(size, now=now),
            lambda: super(CountingClient, self).scale_committee(
                size, idempotency_key=idempotency_key
            ),
        )

    async def restart_committee(
        self, *, idempotency_key: str, scope: RestartScope = "all"
    ) -> ActionResult:
        return await self._mutate(
            "restart_committee",
            {"scope": scope},
            idempotency_key,
            lambda c, now: c.restart(now=now, scope=scope),
            lambda: super(CountingClient, self).restart_committee(
                idempotency_key=idempotency_key, scope=scope
            ),
        )

    async def set_throttle(
        self, limit_ops_per_sec: float | None, *, idempotency_key: str
    ) -> ActionResult:
        return await self._mutate(
            "set_throttle",
            {"limit_ops_per_sec": limit_ops_per_sec},
            idempotency_key,
            lambda c, now: c.set_throttle(limit_ops_per_sec, now=now),
            lambda: super(CountingClient, self).set_throttle(
                limit_ops_per_sec, idempotency_key=idempotency_key
            ),
        )

    async def set_validation_bypass(self, active: bool, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            "set_validation_bypass",
            {"active": active},
            idempotency_key,
            lambda c, now: c.set_validation_bypass(active, now=now),
            lambda: super(CountingClient, self).set_validation_bypass(
                active, idempotency_key=idempotency_key
            ),
        )

    async def set_emergency_override(self, active: bool, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            "set_emergency_override",
            {"active": active},
            idempotency_key,
            lambda c, now: c.set_emergency_override(active, now=now),
            lambda: super(CountingClient, self).set_emergency_override(
                active, idempotency_key=idempotency_key
            ),
        )

    async def rebalance_load(self, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            "rebalance_load",
            {},
            idempotency_key,
            lambda c, now: c.rebalance(now=now),
            lambda: super(CountingClient, self).rebalance_load(idempotency_key=idempotency_key),
        )

    async def update_configuration(
        self, settings: dict[str, Any], *, idempotency_key: str
    ) -> ActionResult:
        return await self._mutate(
            "update_configuration",
            {"settings": dict(settings)},
            idempotency_key,
            lambda c, now: c.update_configuration(settings, now=now),
            lambda: super(CountingClient, self).update_configuration(
                settings, idempotency_key=idempotency_key
            ),
        )

    async def apply_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            "apply_policy",
            {"policy_id": policy_id},
            idempotency_key,
            lambda c, now: c.apply_policy(policy_id, now=now),
            lambda: super(CountingClient, self).apply_policy(
                policy_id, idempotency_key=idempotency_key
            ),
        )

    async def rollback_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            "rollback_policy",
            {"policy_id": policy_id},
            idempotency_key,
            lambda c, now: c.rollback_policy(policy_id, now=now),
            lambda: super(CountingClient, self).rollback_policy(
                policy_id, idempotency_key=idempotency_key
            ),
        )


def make_world(
    *,
    seed: int,
    scenario: Scenario,
    start: float,
    clock: Callable[[], float],
    ledger: Ledger,
) -> tuple[MockCharterWorld, Schedule]:
    committee = Committee(seed, scenario.regime, start=start)
    schedule = Schedule(scenario, start)
    committee.load_shape = schedule.shape
    client = CountingClient(committee, clock=clock, schedule=schedule, ledger=ledger)
    world = MockCharterWorld(
        committee=committee, client=client, metrics=MockMetricSource(committee, clock)
    )
    return world, schedule
