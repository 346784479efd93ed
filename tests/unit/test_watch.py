"""The watch between iterations (orchestrator.watch_interval_s): the rule queries read
alone, an iteration started at once on a violation the last iteration did not see."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from builders import settings as settings_for
from mape_k.app import build
from mape_k.config import OrchestratorConfig
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop.scheduler import Scheduler, next_watch
from mape_k.quality import runner
from mape_k.quality.scenario import parse


class _Recording:
    """A metric source that remembers which queries were read."""

    def __init__(self, inner):
        self.inner = inner
        self.names: list[str] = []

    async def read(self, name, promql, *, timeout_s):
        self.names.append(name)
        return await self.inner.read(name, promql, timeout_s=timeout_s)


def test_the_watch_is_due_an_interval_after_and_never_when_not_shorter_than_the_grid():
    config = OrchestratorConfig(interval_s=30.0, watch_interval_s=10.0)
    assert next_watch(100.0, config) == 110.0
    assert next_watch(100.0, OrchestratorConfig(interval_s=30.0, watch_interval_s=0.0)) == float(
        "inf"
    )
    assert next_watch(100.0, OrchestratorConfig(interval_s=30.0, watch_interval_s=30.0)) == float(
        "inf"
    )


async def test_the_watch_triggers_on_a_violation_the_last_iteration_did_not_see(tmp_path, clock):
    real = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    source = _Recording(real.metrics)
    world = MockCharterWorld(committee=real.committee, client=real.client, metrics=source)
    registry = CollectorRegistry()
    async with build(settings_for(tmp_path), world=world, clock=clock, registry=registry) as parts:
        orchestrator = parts.orchestrator
        clock.advance(5)
        calm = await orchestrator.run_once()
        assert calm["inputs"]["violations"] == []
        last = parts.monitor.last_observation
        source.names.clear()
        assert await orchestrator.watch() == []  # nothing new: no iteration
        rules = {rule.query for rule in parts.settings.monitor.rules}
        assert set(source.names) == rules  # the rule queries only, each once
        assert len(source.names) == len(rules) < len(parts.settings.monitor.queries)

        real.committee.inject("load_spike", 1.0, 0, clock())
        clock.advance(20)
        new = await orchestrator.watch()
        assert "overload" in {v.kind for v in new}
        assert parts.monitor.last_observation is last  # the iteration's, untouched
        assert orchestrator.watch_stats["triggered"] == 1
        assert any(
            "overload/charter" in v for v in orchestrator.watch_stats["last_trigger"]["violations"]
        )
        assert orchestrator.scheduler._triggered  # the loop runs at once
        # once per violation: until an iteration has read it (one that fails before
        # reading, say), the next pass does not trigger again
        assert await orchestrator.watch() == []

        seen = await orchestrator.run_once()
        assert "overload" in {v["kind"] for v in seen["inputs"]["violations"]}
        assert await orchestrator.watch() == []  # it goes on: the grid's, not a trigger
        stats = orchestrator.get_statistics()["watch"]
        assert (stats["interval_s"], stats["on"], stats["passes"], stats["triggered"]) == (
            10.0,
            True,
            4,
            1,
        )

    def passes(result):
        return registry.get_sample_value("mapek_watch_passes_total", {"result": result})

    assert (passes("quiet"), passes("triggered")) == (3, 1)


async def test_the_scheduler_watches_between_iterations_and_a_finding_runs_one_at_once():
    iterations = 0
    second = asyncio.Event()
    config = OrchestratorConfig(interval_s=3600.0, watch_interval_s=0.01, trigger_debounce_s=0)

    async def iterate():
        nonlocal iterations
        iterations += 1
        if iterations == 2:
            second.set()

    async def watch():
        scheduler.trigger("watch")  # what the orchestrator's watch does on a finding

    scheduler = Scheduler(iterate, config, watch=watch)
    scheduler.start()
    try:
        async with asyncio.timeout(10):  # the grid's next slot is an hour away
            await second.wait()
    finally:
        await scheduler.stop()
    assert iterations >= 2


async def test_a_reload_turns_the_watch_on_without_waiting_for_an_iteration():
    watched = asyncio.Event()
    off = OrchestratorConfig(interval_s=3600.0, watch_interval_s=0)
    ran = asyncio.Event()

    async def iterate():
        ran.set()

    async def watch():
        watched.set()

    scheduler = Scheduler(iterate, off, watch=watch)
    scheduler.start()
    try:
        async with asyncio.timeout(10):
            await ran.wait()  # the first iteration, at once; the next is an hour away
            assert not watched.is_set()
            scheduler.config = OrchestratorConfig(interval_s=3600.0, watch_interval_s=0.01)
            scheduler.wake()  # what a reload does
            await watched.wait()
    finally:
        await scheduler.stop()


async def test_an_episode_acts_on_a_load_step_before_the_next_grid_slot():
    # load_spike at 120 s: the grid's next slot is 150 s; a watch pass every 10 s sees it
    # at 130 s (the HPA baseline's 15 s grid at 135 s).
    scenario = parse(
        {
            "name": "t",
            "regime": "calm",
            "duration_s": 300,
            "faults": [{"kind": "load_spike", "at_s": 120}],
        },
        source="t",
    )
    watched = await runner.run_episode(scenario, "mape-k", seed=1, counterfactual=False)
    grid = await runner.run_episode(
        scenario,
        "mape-k",
        seed=1,
        counterfactual=False,
        overrides={"orchestrator.watch_interval_s": 0},
    )
    assert grid.figures["first_action_s"] == 150.0  # the next slot after the step
    assert watched.figures["first_action_s"] < 150.0
    assert watched.figures["lost_pct"] < grid.figures["lost_pct"]
