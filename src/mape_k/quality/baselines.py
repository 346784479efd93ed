"""The baselines mape-k is compared with, acting through the same (counting) mock client.

- `nothing`: no action at all.
- `static`: what prometheus-am-executor does: each alert rule's rising edge, as delivered
  by the simulated Alertmanager, runs one fixed action — the first candidate the planner
  is configured with for the rule's cause — with no inhibition, cooldown or verification.
- `static-refire`: the same action at every rule evaluation while the rule fires.
- `hpa`: a proportional autoscaler with Kubernetes HPA semantics on the committee's
  utilisation (saturation): every 15 s desired = ceil(current * utilisation / target),
  no change within a 10 % tolerance, scale-down stabilised over 300 s (the max of the
  recommendations in the window), scale-up limited like the HPA's default policy
  (max of +100 % and +4 per period), bounded by min (the starting size) and max replicas.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mape_k.config import CandidateAction, Settings
from mape_k.errors import CharterError
from mape_k.integrations.charter.base import CommitteeState
from mape_k.loop.actions import EFFECTS
from mape_k.models import RESTART_SCOPES, ActionType, RestartScope
from mape_k.quality import POLICIES
from mape_k.quality.world import CountingClient

__all__ = ["HPA", "POLICIES", "StaticExecutor", "fixed_actions", "rising_edges", "run_action"]


def fixed_actions(settings: Settings) -> dict[str, tuple[CandidateAction, ...]]:
    """Cause -> the one fixed action list a static executor runs (the first candidate)."""
    return {
        cause: candidates[0]
        for cause, candidates in settings.planner.remediations.items()
        if candidates
    }


async def run_action(  # noqa: C901 - one branch per action type
    client: CountingClient, action: CandidateAction, state: CommitteeState, key: str
) -> bool:
    """Send one candidate action, resolved against `state` like the daemon resolves it
    (defaults from the action-effect model). False if the Charter refused it."""
    params: dict[str, Any] = {**EFFECTS[action.type].defaults, **action.parameters}
    kind = action.type
    try:
        if kind in {ActionType.SCALE_UP, ActionType.SCALE_DOWN}:
            sign = 1 if kind is ActionType.SCALE_UP else -1
            size = int(params.get("to_size", state.target_size + sign * int(params["delta"])))
            size = max(1, min(size, client.committee.max_size))
            if size == state.target_size:
                return False
            await client.scale_committee(size, idempotency_key=key)
        elif kind is ActionType.RESTART_SERVICE:
            scope: RestartScope = next(s for s in RESTART_SCOPES if s == params["scope"])
            await client.restart_committee(idempotency_key=key, scope=scope)
        elif kind is ActionType.REBALANCE_LOAD:
            await client.rebalance_load(idempotency_key=key)
        elif kind is ActionType.APPLY_POLICY:
            await client.apply_policy(str(params["policy_id"]), idempotency_key=key)
        elif kind is ActionType.THROTTLE_REQUESTS:
            limit = params.get("limit_ops_per_sec")
            if limit is None:
                limit = state.offered_load * float(params["fraction"])
            await client.set_throttle(float(limit), idempotency_key=key)
        elif kind is ActionType.BYPASS_VALIDATION:
            await client.set_validation_bypass(bool(params["active"]), idempotency_key=key)
        elif kind is ActionType.ACTIVATE_EMERGENCY_OVERRIDE:
            await client.set_emergency_override(bool(params["active"]), idempotency_key=key)
        else:
            await client.update_configuration(dict(params["settings"]), idempotency_key=key)
    except CharterError:
        return False
    return True


@dataclass(slots=True)
class StaticExecutor:
    """Alert -> command, no memory: `on_alert` for each rising edge (or every evaluation)."""

    client: CountingClient
    actions: Mapping[str, tuple[CandidateAction, ...]]
    runs: int = 0

    async def on_alert(self, cause: str) -> int:
        """Run the cause's fixed action list; how many calls were sent."""
        sent = 0
        for action in self.actions.get(cause, ()):
            state = await self.client.get_committee_state()
            self.runs += 1
            if await run_action(self.client, action, state, key=f"static-{self.runs}"):
                sent += 1
        return sent


def rising_edges(previous: set[str], firing: set[str]) -> set[str]:
    """The alerts firing now that were not firing before (what am-executor reacts to)."""
    return firing - previous


@dataclass(slots=True)
class HPA:
    """Kubernetes' HPA algorithm on one metric (see the module docstring)."""

    target: float = 0.7
    tolerance: float = 0.1
    period_s: float = 15.0
    stabilization_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int = 50
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def desired(self, now: float, current: int, metric: float) -> int:
        """The replica count the HPA asks for now (current when nothing changes)."""
        ratio = metric / self.target
        raw = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(current * ratio)
        raw = max(self.min_replicas, min(self.max_replicas, raw))
        self._recommendations.append((now, raw))
        while self._recommendations and self._recommendations[0][0] < now - self.stabilization_s:
            self._recommendations.popleft()
        if raw < current:
            # scale down only to the highest recommendation of the window
            return min(current, max(r for _, r in self._recommendations))
        if raw > current:
            return min(raw, max(2 * current, current + 4), self.max_replicas)
        return current
