"""Scenario: a volatile committee, a load fault flapping on and off for a simulated hour, and
a two-way autoscaler (overload -> scale up, underload -> scale down) that would flap with it.

The guards must keep the committee size from oscillating, keep the actions inside the
velocity bounds, and still remediate the fault. Driven by a fake clock, no sleeping.
"""

from __future__ import annotations

from pathlib import Path

from builders import settings as settings_for
from mape_k.app import build
from mape_k.config import Settings
from mape_k.integrations.charter.mock import MockCharterWorld

STEP_S = 15.0
HOUR_S = 3600.0
FLAP_S = 240.0  # the fault is on for 4 minutes, off for 4 minutes


def two_way_autoscaler(tmp_path: Path) -> Settings:
    defaults = Settings().model_dump(mode="json")
    rules = [
        *defaults["monitor"]["rules"],
        {"name": "underload", "query": "saturation", "comparator": "<", "threshold": 0.45},
    ]
    remediations = {
        **defaults["planner"]["remediations"],
        "underload": [[{"type": "scale_down", "parameters": {"delta": 1}}]],
    }
    return settings_for(tmp_path, **{"monitor.rules": rules, "planner.remediations": remediations})


def size_changes(actions: list) -> list[tuple[float, int]]:
    """(time, new target size) of every scale that changed something, in order."""
    return [
        (entry.time, int(entry.arguments["size"]))
        for entry in actions
        if entry.operation == "scale_committee" and not entry.replayed and entry.error is None
    ]


async def test_a_flapping_fault_in_a_volatile_regime_does_not_make_the_size_oscillate(
    tmp_path, clock
):
    settings = two_way_autoscaler(tmp_path)
    guards = settings.guards
    world = MockCharterWorld.create(clock=clock, seed=11, regime="volatile")
    committee = world.committee
    start = clock()
    records = []
    async with build(settings, world=world, clock=clock) as parts:
        fault_on = False
        while clock() - start < HOUR_S:
            phase_on = int((clock() - start) // FLAP_S) % 2 == 0
            if phase_on and not fault_on:
                committee.inject("load_spike", 0.8, 0, clock())
            elif not phase_on and fault_on:
                committee.clear_faults()
            fault_on = phase_on
            records.append(await parts.orchestrator.run_once())
            clock.advance(STEP_S)
        stats = parts.orchestrator.guard_statistics(clock())
        oscillations = parts.metrics.registry.get_sample_value("mapek_oscillations_total")

    sizes = size_changes(committee.actions)
    acted = [r for r in records if r["result"] == "acted"]
    held = {d["guard"] for r in records for d in r["guard_decisions"] if d["verdict"] != "allow"}

    # 1. No oscillation of the committee size: never up, down and up again (or down, up,
    #    down) inside the oscillation window.
    previous = committee_start = 3
    directions: list[tuple[float, int]] = []
    for at, size in sizes:
        directions.append((at, 1 if size > previous else -1))
        previous = size
    for (t1, d1), (_, d2), (t3, d3) in zip(
        directions, directions[1:], directions[2:], strict=False
    ):
        assert not (d1 == -d2 == d3 and t3 - t1 <= guards.oscillation.window_s), sizes

    # 2. Within the velocity bounds, over every hour-long window.
    for at, _ in sizes:
        window = [s for s in range(len(sizes)) if at - guards.velocity.window_s < sizes[s][0] <= at]
        change = 0
        for i in window:
            before = sizes[i - 1][1] if i > 0 else committee_start
            change += abs(sizes[i][1] - before)
        assert change <= guards.velocity.max_size_change, sizes
    mutations = [a for a in committee.actions if not a.replayed and a.error is None]
    assert len(acted) <= guards.velocity.max_actions
    assert len(mutations) <= guards.velocity.max_actions

    # 3. The fault is still remediated: the overload got a scale-up that fixed it.
    outcomes = [v for r in records for v in r["verifications"]]
    assert any(
        v["cause"] == "overload" and v["outcome"] in {"success", "partial"} for v in outcomes
    ), outcomes
    assert any(size > 3 for _, size in sizes)

    # ...and the guards were what held the autoscaler back.
    assert held & {"stabilization", "cooldown", "velocity", "oscillation", "settle"}, held
    assert stats["velocity"]["actions"] <= guards.velocity.max_actions
    # The oscillations /metrics counts are the ones the envelope detected (and /stats shows).
    assert oscillations == stats["oscillations_detected"]
