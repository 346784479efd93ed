"""The orchestrator: scheduling, triggers, degraded iterations, the decision record, and the
closed loop against the mock committee (detect → plan → execute → verify → learn)."""

from __future__ import annotations

import asyncio
import functools
import json

import pytest
from prometheus_client import CollectorRegistry

import builders
from builders import observation
from builders import settings as settings_for
from mape_k.app import Daemon, build, reconcile
from mape_k.errors import PrometheusUnavailable
from mape_k.integrations.alertmanager import Alert
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop.record import why_nothing
from mape_k.loop.scheduler import advance_grid, schedule
from mape_k.models import ActionType, OutcomeType, Severity
from mape_k.store import Store


@pytest.mark.parametrize(
    ("now", "next_at", "triggered", "last_start", "expected"),
    [
        (0.0, 0.0, False, -1e9, (True, 0.0)),  # first slot
        (5.0, 30.0, False, 0.0, (False, 30.0)),  # sleep until the slot
        (5.0, 30.0, True, 0.0, (True, 5.0)),  # a trigger wakes at once (leading edge)
        (0.5, 30.0, True, 0.0, (False, 1.0)),  # ...but not twice within the debounce
        (1.0, 30.0, True, 0.0, (True, 1.0)),  # the trailing run when the debounce ends
    ],
)
def test_schedule_runs_on_the_grid_and_debounces_triggers(
    now, next_at, triggered, last_start, expected
):
    assert (
        schedule(
            now=now, next_at=next_at, triggered=triggered, last_start=last_start, debounce_s=1.0
        )
        == expected
    )


def test_the_grid_does_not_drift_and_skips_missed_slots():
    assert advance_grid(0.0, 0.2, 30.0) == 30.0
    assert advance_grid(30.0, 95.0, 30.0) == 120.0


async def test_error_burst_is_detected_remediated_verified_and_learned(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    records = []
    async with build(settings, world=world, clock=clock) as parts:
        for _ in range(12):
            clock.advance(5)
            records.append(await parts.orchestrator.run_once())
        view = parts.knowledge.view()
    acted = [r for r in records if r["result"] == "acted"]
    assert len(acted) == 1, [r["choice"] for r in records]
    assert acted[0]["execution"]["actions"][0]["type"] == "restart_service"
    verified = [v for r in records for v in r["verifications"]]
    assert [v["outcome"] for v in verified] == ["success"]
    pattern = view[("high_failure_rate", ActionType.RESTART_SERVICE)]
    assert (pattern.samples, pattern.successes) == (1, 1)
    # A restart forgets nothing: a new store over the same file has the statistics.
    with Store.open(settings.knowledge.path) as store:
        stats = {(s.cause, s.action_type): s for s in store.stats()}
    assert stats[("high_failure_rate", ActionType.RESTART_SERVICE)].samples == 1


async def test_no_second_action_on_a_target_until_the_first_is_measured(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(5)
        first = await parts.orchestrator.run_once()
        second = await parts.orchestrator.run_once()  # same instant: effect not measurable yet
    assert first["result"] == "acted"
    assert second["result"] == "held"
    held = {d["guard"] for d in second["guard_decisions"] if d["verdict"] != "allow"}
    assert "settle" in held


class _DownSource:
    async def read(self, name, promql, *, timeout_s):
        raise PrometheusUnavailable("connection refused", query=promql)


async def test_nothing_is_executed_when_prometheus_cannot_be_read(tmp_path, clock):
    settings = settings_for(tmp_path)
    real = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    world = MockCharterWorld(committee=real.committee, client=real.client, metrics=_DownSource())
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(5)
        record = await parts.orchestrator.run_once()
    assert record["result"] == "degraded"
    assert record["execution"] is None
    assert "failure_rate" in record["inputs"]["degraded"]
    assert real.committee.actions == []


class _GatedSource:
    """Reads wait for the test to open the gate: an iteration held in its Monitor phase."""

    def __init__(self, inner):
        self.inner = inner
        self.reading = asyncio.Event()
        self.gate = asyncio.Event()

    async def read(self, name, promql, *, timeout_s):
        self.reading.set()
        await self.gate.wait()
        return await self.inner.read(name, promql, timeout_s=timeout_s)


async def test_a_reload_during_an_iteration_applies_when_it_ends(tmp_path, clock):
    settings = settings_for(tmp_path)
    real = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    source = _GatedSource(real.metrics)
    world = MockCharterWorld(committee=real.committee, client=real.client, metrics=source)
    no_candidates = settings_for(tmp_path, **{"planner.remediations.high_failure_rate": []})
    async with build(settings, world=world, clock=clock) as parts:
        orchestrator = parts.orchestrator
        clock.advance(5)
        iteration = asyncio.create_task(orchestrator.run_once())
        await source.reading.wait()
        orchestrator.reconfigure(no_candidates)
        assert orchestrator.planner.config is settings.planner  # not half-way through
        source.gate.set()
        record = await iteration
        assert record["result"] == "acted"  # planned on the configuration it started with
        assert orchestrator.planner.config is no_candidates.planner
        orchestrator.reconfigure(settings)  # idle: applies at once
        assert orchestrator.planner.config is settings.planner


async def test_a_reloaded_kill_switch_applies_at_once_even_during_an_iteration(tmp_path, clock):
    settings = settings_for(tmp_path)
    real = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    source = _GatedSource(real.metrics)
    world = MockCharterWorld(committee=real.committee, client=real.client, metrics=source)
    async with build(settings, world=world, clock=clock) as parts:
        orchestrator = parts.orchestrator
        clock.advance(5)
        iteration = asyncio.create_task(orchestrator.run_once())
        await source.reading.wait()
        orchestrator.reconfigure(settings_for(tmp_path, **{"guards.frozen": True}))
        assert orchestrator.envelope.freeze is not None
        assert orchestrator.envelope.freeze.source == "config"
        source.gate.set()
        record = await iteration
    assert record["execution"] is None
    assert "freeze" in {d["guard"] for d in record["guard_decisions"] if d["verdict"] != "allow"}
    assert real.committee.actions == []


async def test_the_decision_record_says_why_nothing_was_done(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(5)
        record = await parts.orchestrator.run_once()
        with Store.open(settings.knowledge.path) as store:
            stored = store.recent_iterations(1)
    assert record["result"] == "idle"
    assert record["choice"] == {"policy_id": None, "why": "no violations"}
    assert stored[0]["record"]["id"] == record["id"]
    assert set(record["phases_s"]) >= {"monitor", "analyze", "plan", "guard", "total"}


async def test_candidates_carry_cost_benefit_posterior_and_score(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(5)
        record = await parts.orchestrator.run_once()
    candidate = record["candidates"][0]
    assert set(candidate) >= {"cost", "benefit", "posterior", "exploration", "score", "actions"}
    assert set(candidate["posterior"]) == {"alpha", "beta", "mean", "sd", "samples"}
    assert record["choice"]["policy_id"] == candidate["policy_id"]


async def test_the_posterior_a_success_promotes_shows_in_records_stats_and_metrics(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    key = {"cause": "high_failure_rate", "action_type": "restart_service"}

    def in_stats(stats):
        [row] = [
            r
            for r in stats["posteriors"]
            if r["cause"] == key["cause"] and r["actions"] == [key["action_type"]]
        ]
        return row["posterior"]["mean"]

    async with build(settings, world=world, clock=clock, registry=CollectorRegistry()) as parts:
        daemon = Daemon(parts, clock=clock)
        gauge = functools.partial(
            parts.metrics.registry.get_sample_value, "mapek_posterior_mean", key
        )
        clock.advance(5)
        first = await parts.orchestrator.run_once()
        assert first["result"] == "acted"
        assert first["candidates"][0]["posterior"]["mean"] == 0.75  # the prior: its benefit
        assert in_stats(await daemon.statistics()) == 0.75 == gauge()
        outcomes: list = []
        while not outcomes:
            clock.advance(30)
            record = await parts.orchestrator.run_once()
            outcomes = record["verifications"]
        assert outcomes[0]["outcome"] == "success"
        promoted = in_stats(await daemon.statistics())
    assert promoted > 0.75
    assert gauge() == pytest.approx(promoted, abs=1e-3)


async def test_trigger_wakes_the_loop_before_its_interval(tmp_path):
    settings = settings_for(tmp_path, **{"orchestrator.interval_s": 3600})
    async with build(settings, registry=CollectorRegistry()) as parts:
        done = asyncio.Queue()
        parts.orchestrator.listeners.append(done.put_nowait)
        parts.orchestrator.start()
        await asyncio.wait_for(done.get(), 5)  # the first slot runs at start
        parts.orchestrator.trigger("test")
        record = await asyncio.wait_for(done.get(), 5)  # not 3600 s later
        await parts.orchestrator.stop()
    assert record["result"] == "idle"
    assert not parts.orchestrator.running


async def test_a_crashing_iteration_does_not_stop_the_loop(tmp_path):
    settings = settings_for(tmp_path, **{"orchestrator.interval_s": 3600})
    async with build(settings) as parts:
        crashed = asyncio.Event()
        original = parts.monitor.observe

        async def flaky(now):
            if not crashed.is_set():
                crashed.set()
                raise RuntimeError("bug")
            return await original(now)

        parts.monitor.observe = flaky
        done = asyncio.Queue()
        parts.orchestrator.listeners.append(done.put_nowait)
        parts.orchestrator.start()
        await asyncio.wait_for(crashed.wait(), 5)
        parts.orchestrator.trigger("again")
        record = await asyncio.wait_for(done.get(), 5)
        await parts.orchestrator.stop()
    assert record["result"] == "idle"
    assert (
        parts.metrics.registry.get_sample_value("mapek_iterations_total", {"result": "error"}) == 1
    )


async def test_statistics_count_iterations_and_executions(tmp_path, clock):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        for _ in range(3):
            clock.advance(5)
            await parts.orchestrator.run_once()
        stats = parts.orchestrator.get_statistics()
    assert stats["iteration"] == 3
    assert stats["policies_applied"] == 1
    assert stats["successful_executions"] == 1
    assert stats["violations_seen"] >= 1
    assert stats["mean_cycle_s"] > 0


def test_outcome_types_cover_the_spec():
    assert {o.value for o in OutcomeType} == {
        "success",
        "partial",
        "ineffective",
        "degradation",
        "unknown",
    }


def test_nothing_done_because_a_fresh_reading_superseded_an_alert_names_the_alert():
    superseded = observation(
        alerts_firing=1,
        alerts_superseded=("CharterHighFailureRate (high_failure_rate/charter)",),
    )
    why = why_nothing(superseded, 0.0)
    assert why.startswith("no violations: firing alert(s) CharterHighFailureRate")
    assert why_nothing(observation(), 0.0) == "no violations"


async def test_a_half_open_circuit_probes_with_a_read_and_risks_no_policy_when_it_fails(
    tmp_path, clock
):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        safety = parts.orchestrator.envelope
        for _ in range(3):
            safety.charter_result(False, now=clock(), error="503", mutation=True)
        assert safety.charter.phase(clock()) == "open"
        clock.advance(61)  # open_s 60: half-open
        world.client.fail_next("ping")
        record = await parts.orchestrator.run_once()
        assert record["result"] != "acted", record["choice"]
        assert safety.charter.phase(clock()) == "open"  # the probe failed: open again
        assert world.committee.actions == []  # and nothing was tried on the Charter
        clock.advance(61)
        record = await parts.orchestrator.run_once()  # the probe works: a policy is the trial
        assert record["result"] == "acted", record["choice"]
        assert safety.charter.phase(clock()) == "closed"  # its mutation worked


async def test_a_restart_forgets_no_verification_and_no_guard_history(tmp_path, clock):
    """Act, stop (as a crash: nothing saved at shutdown matters), start again on the same
    store: the outcome is still measured and recorded once, and the guards still know the
    target was acted on."""
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        clock.advance(5)
        acted = await parts.orchestrator.run_once()
        assert acted["result"] == "acted"
        execution_id = acted["execution"]["id"]
        parts.orchestrator.envelope.history.clear()  # as if the crash came before the save
        parts.orchestrator.envelope._dirty = False
    async with build(settings, world=world, clock=clock) as parts:
        await reconcile(parts, clock())
        orchestrator = parts.orchestrator
        assert [p.execution.id for p in orchestrator.executor.pending_verifications()] == [
            execution_id
        ]
        assert execution_id in {c.execution_id for c in orchestrator.envelope.history}
        records = []
        for _ in range(8):
            clock.advance(5)
            records.append(await orchestrator.run_once())
        assert not [r for r in records if r["result"] == "acted"]  # no second restart
    verified = [v["execution_id"] for r in records for v in r["verifications"]]
    assert verified == [execution_id]
    with Store.open(settings.knowledge.path) as store:
        assert [o.execution_id for o in store.recent_outcomes(10)] == [execution_id]


def _alerts(count: int, *, components: int, kind: str = "high_failure_rate") -> list[Alert]:
    return [
        Alert.model_validate(
            {
                "status": "firing",
                "labels": {
                    "alertname": "CharterHighFailureRate",
                    "cause": kind,
                    "component": f"member-{i % components}",
                    "severity": "critical",
                },
                "startsAt": "2026-11-22T04:17:10.023Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"{kind}-{i:08x}",
            }
        )
        for i in range(count)
    ]


async def test_a_record_summarises_10000_alerts_and_keeps_what_the_choice_stands_on(
    tmp_path, clock
):
    settings = settings_for(tmp_path, **{"knowledge.record_top_n": 5})
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts:
        result = parts.inbox.offer(
            _alerts(9_500, components=950) + _alerts(500, components=50, kind="odd_kind")
        )
        assert result.new_firing == 10_000
        clock.advance(5)
        record = await parts.orchestrator.run_once()
        [stored] = await parts.store.recent_iterations(1)
        for _ in range(9):
            clock.advance(30)
            await parts.orchestrator.run_once()
        stats = await Daemon(parts, clock=clock).statistics()
    assert len(stats["iterations"]) == 10
    stats_size = len(json.dumps(stats, default=str))
    assert stats_size < 640_000, f"/stats is {stats_size} bytes"
    size = len(json.dumps(record))
    assert size < 64_000, f"a decision record of {size} bytes"
    assert stored["record"] == json.loads(json.dumps(record))
    assert record["result"] == "acted"
    # What the chosen policy stands on is there in full: its cause and all its violations.
    chosen = next(
        c for c in record["candidates"] if c["policy_id"] == record["choice"]["policy_id"]
    )
    name, target = chosen["cause"].split("/")
    assert {"name": name, "target": target} in [
        {"name": c["name"], "target": c["target"]} for c in record["causes"]
    ]
    [evidence] = [
        v for v in record["inputs"]["violations"] if (v["kind"], v["component"]) == (name, target)
    ]
    assert evidence["count"] == 10  # ten alerts of that kind on that member, counted once
    # Every candidate's cause is kept; of the rest, record_top_n; the tail is summarised.
    candidate_causes = {c["cause"] for c in record["candidates"]}
    assert {f"{c['name']}/{c['target']}" for c in record["causes"]} >= candidate_causes
    assert len(record["causes"]) == len(candidate_causes) + 5
    omitted = record["omitted"]
    assert set(omitted) >= {"violations", "causes"}
    violations = omitted["violations"]
    assert violations["total"] == 10_000
    shown = sum(v.get("count", 1) for v in record["inputs"]["violations"])
    assert violations["shown"] == shown
    assert violations["omitted"] == 10_000 - shown
    assert sum(violations["by"].values()) == violations["omitted"]
    assert set(violations["by"]) == {"high_failure_rate", "odd_kind"}
    assert violations["digest"].startswith("sha256:")
    assert omitted["causes"]["total"] == 1000  # 950 + 50 (kind, member) pairs
    assert omitted["causes"]["omitted"] == 1000 - len(record["causes"])


async def test_a_decision_about_many_unhandled_violations_names_a_bounded_few(tmp_path, clock):
    settings = settings_for(tmp_path, **{"knowledge.record_top_n": 5})
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts:
        parts.inbox.offer(_alerts(1000, components=1000, kind="nobody_handles_this"))
        clock.advance(5)
        record = await parts.orchestrator.run_once()
    why = record["choice"]["why"]
    assert why.startswith("no remediation for nobody_handles_this/member-")
    assert " and 995 more: none configured" in why
    assert len(why) < 400


@pytest.mark.parametrize(
    ("saturation", "cause", "action"),
    [
        (0.85, "overload", "scale_up"),  # latency on a loaded committee: load, scaled for
        (0.4, "high_latency", "rebalance_load"),  # latency with headroom: its own fix
    ],
)
async def test_the_iteration_reads_latency_against_saturation_before_naming_a_cause(
    tmp_path, clock, saturation, cause, action
):
    settings = settings_for(tmp_path)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")

    async def observe(now: float):
        return observation(
            at=now,
            metrics=(
                builders.metric("saturation", saturation, timestamp=now),
                builders.metric("p99_latency_s", 0.9, timestamp=now),
            ),
            violations=(
                builders.violation(
                    "high_latency",
                    severity=Severity.WARNING,
                    timestamp=now,
                    value=0.9,
                    threshold=0.5,
                    query="p99_latency_s",
                ),
            ),
        )

    async with build(settings, world=world, clock=clock) as parts:
        parts.orchestrator.pipeline.monitor.observe = observe  # type: ignore[method-assign]
        clock.advance(5)
        record = await parts.orchestrator.run_once()
    assert [c["name"] for c in record["causes"]] == [cause]
    assert record["execution"]["actions"][0]["type"] == action
