"""Each fault kind end to end: real Prometheus + Alertmanager, the simulator and the daemon.

One stack per case (free ports, a temporary directory, stack.py): inject through /sim/faults,
then poll the real endpoints (every 0.25 s, bounded) until the alert fired in Prometheus,
Alertmanager delivered it to the daemon, the simulator logged a fitting remediation, the
signals are back under their thresholds and Knowledge recorded SUCCESS for it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mape_k.causes import CAUSES
from mape_k.stack import (
    DEFAULT_MAGNITUDE,
    FAULT_CAUSE,
    FAULT_SIGNALS,
    FITTING_OPERATIONS,
    Stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(100)]

POLL_S = 0.25
DEADLINE_S = 60.0  # from injection to a recorded outcome; a case takes ~20-25 s here
# The alert rule (by its `cause` label) each fault must fire, and the daemon's action for it.
FITTING_ACTIONS = {
    "load_spike": {"scale_up", "throttle_requests"},
    "error_burst": {"restart_service"},
    "member_crash": {"restart_service"},
    "latency_degradation": {"rebalance_load"},
    "bad_policy": {"apply_policy"},
}
WATCHED = {c.signal: c.threshold for c in CAUSES}
_RECEIVED = re.compile(
    r'^mapek_alerts_received_total\{[^}]*status="firing"[^}]*\} (\S+)$', re.MULTILINE
)


@dataclass
class Seen:
    """What the poll loop observed, with the seconds since injection when first seen."""

    alert_fired: float | None = None
    delivered: float | None = None
    first_action: dict[str, Any] | None = None
    recovered: float | None = None
    success: float | None = None
    state: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return None not in (self.alert_fired, self.delivered, self.recovered, self.success) and (
            self.first_action is not None
        )


def alerts_received(metrics_text: str) -> float:
    return sum(float(value) for value in _RECEIVED.findall(metrics_text))


def knowledge_successes(stats: dict[str, Any], *, cause: str, actions: set[str]) -> int:
    return sum(
        pair["outcomes"]["success"]
        for pair in stats["knowledge"]["pairs"]
        if pair["cause"] == cause and pair["action_type"] in actions
    )


def explain(stack: Stack, seen: Seen) -> str:
    """The evidence for a failure message: decision records, actions log, daemon log tail."""
    records = [
        {k: r.get(k) for k in ("result", "choice", "causes", "inhibited", "verifications")}
        for r in seen.stats.get("iterations", [])[:6]
    ]
    return (
        f"\nseen: {seen}\nsim actions: {json.dumps(seen.state.get('actions'), default=str)}"
        f"\nsignals: {seen.state.get('signals')}\nknowledge: {seen.stats.get('knowledge')}"
        f"\ndecision records (newest first): {json.dumps(records, default=str)[:4000]}"
        f"\nmape-k log tail:\n{stack.logs('mape-k', tail=2500)}"
    )


async def observe(stack: Stack, *, fault: str, injected: float) -> Seen:
    """Poll every endpoint until everything asserted below was seen, or the deadline."""
    cause = FAULT_CAUSE[fault]
    signal, threshold = FAULT_SIGNALS[fault]
    seen = Seen()
    deadline = injected + DEADLINE_S
    while time.monotonic() < deadline and not seen.complete:
        now = time.monotonic() - injected
        if seen.alert_fired is None:
            alerts = await stack.prometheus_alerts()
            if any(a["labels"].get("cause") == cause and a["state"] == "firing" for a in alerts):
                seen.alert_fired = now
        if seen.delivered is None and alerts_received(await stack.daemon_metrics()) > 0:
            seen.delivered = now
        seen.state = await stack.sim_state()
        applied = [a for a in seen.state["actions"] if not a["replayed"] and not a["error"]]
        if seen.first_action is None and applied:
            seen.first_action = applied[0]
        signals = seen.state["signals"]
        if seen.first_action is not None and seen.recovered is None:
            under = all(signals[name] <= limit for name, limit in WATCHED.items())
            if under and signals[signal] <= threshold:
                seen.recovered = now
        seen.stats = await stack.daemon_stats()
        if seen.success is None and knowledge_successes(
            seen.stats, cause=cause, actions=FITTING_ACTIONS[fault]
        ):
            seen.success = now
        await asyncio.sleep(POLL_S)  # polling real endpoints of other processes, bounded
    return seen


@pytest.mark.parametrize("fault", sorted(FAULT_CAUSE))
async def test_fault_fires_alert_gets_fitting_remediation_recovers_and_is_learned(
    fault: str, tmp_path: Path
) -> None:
    # A 5 s grid: the alert (webhook trigger) rather than the grid usually starts the action.
    async with Stack.start(tmp_path / "stack", ports="free", orchestrator_interval_s=5.0) as stack:
        injected = time.monotonic()
        await stack.inject(fault, DEFAULT_MAGNITUDE[fault], 0.0)
        seen = await observe(stack, fault=fault, injected=injected)

        why = explain(stack, seen)
        assert seen.alert_fired is not None, f"no {FAULT_CAUSE[fault]} alert fired{why}"
        assert seen.delivered is not None, f"Alertmanager delivered nothing to mape-k{why}"
        assert seen.first_action is not None, f"no remediation reached the simulator{why}"
        assert seen.first_action["operation"] in FITTING_OPERATIONS[fault], (
            f"{fault}: first remediation {seen.first_action['operation']} does not fit{why}"
        )
        assert seen.recovered is not None, f"Charter signals did not recover{why}"
        assert seen.success is not None, f"Knowledge recorded no SUCCESS for the fix{why}"
        outcomes = {
            name: count
            for pair in seen.stats["knowledge"]["pairs"]
            for name, count in pair["outcomes"].items()
            if count
        }
        assert "degradation" not in outcomes, f"an outcome was DEGRADATION{why}"
        if fault == "bad_policy":
            assert not seen.state["active_policy"].startswith("bad-"), why
