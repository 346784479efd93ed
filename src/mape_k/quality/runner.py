"""The episode driver: one scenario, one policy, one seed, on a simulated clock.

Time advances in TICK_S steps; nothing sleeps. At each step the scenario's faults are
injected, the committee advances, the trajectory is sampled, the simulated Prometheus and
Alertmanager (quality/alerts.py) evaluate and deliver, and the policy acts:

- mape-k: the real daemon from `app.build(settings, world=..., clock=...)`: deliveries go
  to its router (as the webhook hands them over), and `orchestrator.run_once(now)` runs at
  every grid slot (orchestrator.interval_s), on a delivery and when a watch pass
  (`orchestrator.watch(now)`, every orchestrator.watch_interval_s) finds a new violation,
  debounced by orchestrator.trigger_debounce_s — the loop's own pure `schedule` /
  `advance_grid` / `next_watch` decide, as in `Scheduler.run`, which this driver replaces
  (it waits on wall time);
- the baselines of quality/baselines.py.

Every mutating call goes through world.CountingClient (counterfactual per call).
"""

from __future__ import annotations

import functools
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from mape_k.app import build, reconcile, restore_freeze
from mape_k.config import Settings, load_settings
from mape_k.errors import ConfigError
from mape_k.loop.scheduler import advance_grid, next_watch, schedule
from mape_k.quality import POLICIES, figures
from mape_k.quality.alerts import AlertConfig, AlertPath, load_config
from mape_k.quality.baselines import HPA, StaticExecutor, fixed_actions, rising_edges
from mape_k.quality.figures import Sample
from mape_k.quality.scenario import Scenario
from mape_k.quality.world import (
    CallRecord,
    Ledger,
    Schedule,
    apply_plan,
    counterfactual,
    lost,
    make_world,
    verdict,
)
from mape_k.sim.committee import Committee

SIM_START = 1_700_000_000.0  # a fixed epoch: episodes do not depend on the wall clock
TICK_S = 1.0
EPISODE_GAP_S = 3600.0  # between the episodes of a learning scenario (one store)
OUTCOMES = ("success", "partial", "ineffective", "degradation", "unknown")
TRUTHS = ("helped", "no effect", "harmed")


class SimClock:
    """The simulated clock given to the daemon: only the driver moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True)
class Episode:
    scenario: str
    policy: str
    seed: int
    index: int  # in a learning chain
    start: float
    figures: dict[str, Any]
    calls: list[CallRecord]
    verifications: list[dict[str, Any]]  # the daemon's outcomes, with the counterfactual truth
    records: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        every = max(1, len(self.samples) // 400)
        return {
            "scenario": self.scenario,
            "policy": self.policy,
            "seed": self.seed,
            "episode": self.index,
            "figures": self.figures,
            "calls": [{**c.as_dict(), "at": round(c.at - self.start, 1)} for c in self.calls],
            "verifications": self.verifications,
            "trajectory": [
                {
                    "t": s.t,
                    "offered": round(s.offered, 2),
                    "capacity": round(s.capacity, 2),
                    "failure_rate": round(s.failure_rate, 4),
                    "p99_s": round(s.p99_s, 4),
                    "size": s.size,
                    "throttle": s.throttle,
                }
                for s in self.samples[::every]
            ],
        }


# What every episode sets itself (settings_for): a --set of these would be silently ignored.
EPISODE_FIXED = ("knowledge.path", "charter.mode", "server")


def settings_for(
    scenario: Scenario, knowledge: Path, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """The daemon's settings in an episode: the scenario's, then `overrides` (`--set`)."""
    cli = {
        **scenario.settings,
        **(overrides or {}),
        "knowledge.path": str(knowledge),
        "charter.mode": "mock",
        "server.enabled": False,
    }
    return load_settings(None, {}, cli)[0]


def check_overrides(overrides: Mapping[str, Any], selected: Iterable[Scenario]) -> None:
    """ConfigError (one line, naming the key) unless every override is a known daemon
    setting with a valid value, alone and over each selected scenario's own settings."""
    scratch = Path(tempfile.gettempdir()) / "mape-k-check.sqlite3"  # validated, not opened
    for key, value in overrides.items():
        if any(key == fixed or key.startswith(f"{fixed}.") for fixed in EPISODE_FIXED):
            raise ConfigError(f"--set {key}: an episode sets this itself (its own store, the mock)")
        try:
            settings_for(
                Scenario(name="--set", description="", regime="calm", duration_s=1.0),
                scratch,
                {key: value},
            )
        except ConfigError as exc:
            raise ConfigError(f"--set {key}={value!r}: {exc}") from None
    for scenario in selected:
        try:
            settings_for(scenario, scratch, overrides)
        except ConfigError as exc:
            raise ConfigError(f"--set over scenario {scenario.name}: {exc}") from None


def _sample(committee: Committee, offset: float, shape_active: bool) -> Sample:
    state = committee.state()
    signals = committee.signals()
    admitted = (
        state.offered_load
        if state.throttle_limit is None
        else min(state.offered_load, state.throttle_limit)
    )
    return Sample(
        t=offset,
        offered=state.offered_load,
        admitted=admitted,
        capacity=committee.capacity,
        failure_rate=state.failure_rate,
        p99_s=state.p99_latency_s,
        size=state.target_size,
        throttle=state.throttle_limit,
        normal=figures.all_normal(signals),
        fault_active=bool(committee.active_faults) or shape_active,
    )


def _shape_active(scenario: Scenario, offset: float) -> bool:
    load = scenario.load
    return (
        load is not None and offset >= load.start_s and (load.end_s is None or offset < load.end_s)
    )


async def run_episode(  # noqa: C901, PLR0912, PLR0915 - one loop over the episode, in order
    scenario: Scenario,
    policy: str,
    seed: int,
    *,
    index: int = 0,
    knowledge: Path | None = None,
    keep_records: bool = False,
    keep_samples: bool = False,
    counterfactual: bool = True,
    alert_config: AlertConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Episode:
    """One episode; `overrides` (dotted settings, `--set`) apply to the mape-k policy only:
    the baselines keep the scenario's settings (the static executor's fixed actions)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    config = alert_config or load_config()
    start = SIM_START + index * (scenario.duration_s + EPISODE_GAP_S)
    clock = SimClock(start)
    ledger = Ledger(counterfactual=counterfactual)
    committee_seed = seed if index == 0 else seed * 100_003 + index
    world, plan = make_world(
        seed=committee_seed, scenario=scenario, start=start, clock=clock, ledger=ledger
    )
    committee = world.committee
    client = world.client
    rng = random.Random(f"alerts-{seed}-{index}")
    alerts = AlertPath(
        config,
        start=start,
        scrape_offset=float(rng.randrange(int(config.scrape_s))),
        eval_offset=float(rng.randrange(int(config.eval_s))),
    )
    samples: list[Sample] = []
    records: list[dict[str, Any]] = []
    results: Counter[str] = Counter()  # iteration results (acted, held, idle, ...)
    held_by: Counter[str] = Counter()  # guard -> candidates it did not allow
    start_size = committee.state().size
    shadow_truth: dict[str, str] = {}  # would-do id -> its counterfactual verdict
    shadow_scored: list[dict[str, Any]] = []  # the daemon's scores of its would-dos
    predictions: dict[str, Any] = {}  # mape-k's track record of predicted violations

    with tempfile.TemporaryDirectory(prefix="mape-k-sim-") as scratch:
        path = knowledge or Path(scratch) / "knowledge.sqlite3"
        settings = settings_for(scenario, path, overrides if policy == "mape-k" else None)
        static = StaticExecutor(client, fixed_actions(settings))  # type: ignore[arg-type]
        hpa = HPA(min_replicas=start_size, max_replicas=committee.max_size)
        delivered_firing: set[str] = set()
        async with build(settings, registry=CollectorRegistry(), world=world, clock=clock) as parts:
            if policy == "mape-k":
                # as `run()` starts: a freeze and interrupted executions of the previous
                # episode on this store (a learning chain) carry over, like a restart
                await restore_freeze(parts, start)
                await reconcile(parts, start)
            interval = settings.orchestrator.interval_s
            debounce = settings.orchestrator.trigger_debounce_s
            next_at, last_start, triggered = start, float("-inf"), False
            watched_at = float("inf")  # as the scheduler: the last iteration or watch pass
            steps = int(scenario.duration_s / TICK_S)
            previous = start
            for step in range(steps + 1):
                now = start + step * TICK_S
                clock.now = now
                plan.advance(committee, previous, now)
                previous = now
                offset = now - start
                samples.append(_sample(committee, offset, _shape_active(scenario, offset)))
                _, firing_now, deliveries = alerts.tick(now, committee.signals())
                for delivery in deliveries:
                    if policy == "mape-k":
                        parts.router.route_alerts(delivery)
                        triggered = True
                    elif policy == "static":
                        firing = {a.fingerprint for a in delivery if a.status.value == "firing"}
                        resolved = {a.fingerprint for a in delivery} - firing
                        new = rising_edges(delivered_firing, firing)
                        for alert in delivery:
                            if alert.fingerprint in new:
                                await static.on_alert(alert.labels.get("cause", ""))
                        delivered_firing = (delivered_firing | firing) - resolved
                if policy == "static-refire":
                    for rule in firing_now:
                        await static.on_alert(rule.cause)
                elif policy == "hpa" and step % int(hpa.period_s / TICK_S) == 0:
                    state = committee.state()
                    desired = hpa.desired(now, state.target_size, committee.signals()["saturation"])
                    if desired != state.target_size:
                        await client.scale_committee(desired, idempotency_key=f"hpa-{step}")
                elif policy == "mape-k":
                    due = functools.partial(
                        schedule,
                        now=now,
                        next_at=next_at,
                        last_start=last_start,
                        debounce_s=debounce,
                    )
                    run_now, _ = due(triggered=triggered)
                    if not run_now and now >= next_watch(watched_at, settings.orchestrator):
                        triggered = bool(await parts.orchestrator.watch(now)) or triggered
                        watched_at = now
                        run_now, _ = due(triggered=triggered)
                    if run_now:
                        triggered, last_start = False, now
                        record = await parts.orchestrator.run_once(now)
                        next_at = advance_grid(next_at, now, interval)
                        watched_at = now
                        results[str(record.get("result"))] += 1
                        for decision in record.get("guard_decisions") or []:
                            if decision.get("verdict") != "allow":
                                held_by[str(decision.get("guard"))] += 1
                        for wd in record.get("shadow") or []:
                            if isinstance(wd, dict):  # a new would-do: its counterfactual
                                shadow_truth[wd["id"]] = _would_do_truth(committee, plan, wd, now)
                        shadow_scored.extend(record.get("shadow_scored") or [])
                        if keep_records or record.get("execution") or record.get("verifications"):
                            records.append(record)
            if policy == "mape-k":
                predictions = parts.orchestrator.pipeline.predictor.summary()["rules"]

    return _episode(
        scenario,
        policy,
        seed,
        index,
        start,
        samples,
        ledger,
        records,
        lost_pct=100 * lost(committee) / max(1e-9, committee.counters.offered),
        deliveries=alerts.deliveries,
        iterations={"results": dict(results), "held_by": dict(held_by)},
        start_size=start_size,
        keep_records=keep_records,
        keep_samples=keep_samples,
        shadow=_shadow_figures(shadow_truth, shadow_scored),
        predictions=predictions,
    )


def _would_do_truth(
    committee: Committee, schedule: Schedule, wd: dict[str, Any], now: float
) -> str:
    """A would-do's counterfactual: its plan applied now against nothing, over the window."""
    with_call, without, offered = counterfactual(committee, schedule, now, apply_plan(wd["plan"]))
    return verdict(with_call - without, offered)


def _shadow_figures(
    truth: Mapping[str, str], scored: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The daemon's estimated shadow precision against the counterfactual, over the
    would-dos it scored."""
    if not truth:
        return None
    judged = [s for s in scored if s["id"] in truth]
    n = len(judged)
    helped = sum(1 for s in judged if truth[s["id"]] == "helped")
    estimate = sum(float(s["would_have_helped"]) for s in judged)
    return {
        "would_do": len(truth),
        "scored": n,
        "estimate": round(estimate / n, 4) if n else None,
        "truth": round(helped / n, 4) if n else None,
        "verdicts": dict(Counter(str(s["verdict"]) for s in judged)),
    }


def _episode(  # noqa: PLR0917 - the pieces of one finished episode
    scenario: Scenario,
    policy: str,
    seed: int,
    index: int,
    start: float,
    samples: list[Sample],
    ledger: Ledger,
    records: list[dict[str, Any]],
    *,
    lost_pct: float,
    deliveries: int,
    iterations: dict[str, dict[str, int]],
    start_size: int,
    keep_records: bool,
    keep_samples: bool,
    shadow: dict[str, Any] | None = None,
    predictions: dict[str, Any] | None = None,
) -> Episode:
    calls = [c for c in ledger.calls if c.error is None]
    starts = scenario.disturbances()
    ttrs = [
        figures.time_to_recover(samples, d, starts[i + 1] if i + 1 < len(starts) else None)
        for i, d in enumerate(starts)
    ]
    recovered = all(t is not None for t in ttrs)
    ttr = max((t for t in ttrs if t is not None), default=0.0) if recovered else None
    over_at = figures.faults_over_at(samples) if samples else None
    keys: dict[str, list[str]] = {}
    for record in records:
        execution = record.get("execution")
        if execution:
            keys[execution["id"]] = [a["idempotency_key"] for a in execution["actions"]]
    by_key = {c.idempotency_key: c for c in calls}
    verifications: list[dict[str, Any]] = []
    for record in records:
        for outcome in record.get("verifications") or []:
            made = [by_key[k] for k in keys.get(outcome["execution_id"], []) if k in by_key]
            delta = sum(c.delta for c in made)
            window = max((c.offered for c in made), default=0.0)
            verifications.append(
                {
                    "execution_id": outcome["execution_id"],
                    "cause": outcome["cause"],
                    "action_type": outcome["action_type"],
                    "outcome": outcome["outcome"],
                    "truth": verdict(delta, window) if made else "no call",
                    "delta_lost": round(delta, 3),
                }
            )
    result = {
        "recovered": recovered,
        "ttr_s": ttr,
        "lost_pct": round(lost_pct, 4),
        "actions": len(calls),
        "refused": len(ledger.calls) - len(calls),
        "oscillations": figures.oscillations(samples),
        "left_over_s": figures.left_over_s(samples, over_at, start_size),
        "back_s": figures.back_s(samples, over_at, start_size),
        "harmful": sum(1 for c in calls if c.verdict == "harmed"),
        "helpful": sum(1 for c in calls if c.verdict == "helped"),
        "alert_deliveries": deliveries,
        "iterations": iterations,
        # when the first call reached the committee, when a rule signal first went over
        "first_action_s": round(calls[0].at - start, 1) if calls else None,
        "first_over_s": next((s.t for s in samples if not s.normal), None),
    }
    if shadow is not None:
        result["shadow"] = shadow
    if predictions:
        result["predictions"] = predictions
    return Episode(
        scenario=scenario.name,
        policy=policy,
        seed=seed,
        index=index,
        start=start,
        figures=result,
        calls=calls,
        verifications=verifications,
        records=records if keep_records else [],
        samples=samples if keep_samples else [],
    )
