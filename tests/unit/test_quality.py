"""The scenario suite's parts: scenario validation, the HPA formula, the static executor's
rising edges, the alert path's timing, the figures, the counterfactual."""

from __future__ import annotations

import copy
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from mape_k.causes import CAUSE, FAULT
from mape_k.cli import main
from mape_k.config import Settings
from mape_k.errors import ConfigError
from mape_k.quality import cli as quality_cli
from mape_k.quality import figures, runner
from mape_k.quality.alerts import AlertPath, load_config
from mape_k.quality.baselines import HPA, rising_edges
from mape_k.quality.figures import Sample
from mape_k.quality.report import records_command, shadow_lines
from mape_k.quality.runner import Episode
from mape_k.quality.scenario import (
    load,
    load_all,
    parse,
    parse_overrides,
    shipped_names,
    split_overrides,
)
from mape_k.quality.suite import Job, run_chain
from mape_k.quality.world import Schedule, apply_plan, counterfactual, lost, verdict
from mape_k.sim.committee import Committee

BASE = {"name": "t", "regime": "calm", "duration_s": 600}


# --- scenarios ------------------------------------------------------------------------------


def test_every_shipped_scenario_loads_and_the_suite_covers_the_issue():
    found = load_all()
    names = {s.name for s in found}
    assert len(found) == len(shipped_names()) == 44
    for kind in FAULT:
        for regime in ("calm", "volatile", "spike"):
            assert {f"{kind}-{regime}-persistent", f"{kind}-{regime}-finite"} <= names
    assert {
        "flapping_load",
        "repeated_bursts",
        "two_faults",
        "slow_ramp",
        "slow_ramp_predicted",
        "slow_ramp_warned",
        "fast_ramp",
        "fast_ramp_predicted",
        "fast_ramp_warned",
        "shadow_mode",
        "wrong_prior",
        "wrong_prior_priced_out",
        "no_good_action",
        "no_fault",
    } <= names
    assert load("wrong_prior").episodes == 40
    assert load("no_fault").expect_no_actions
    # the magnitude comes from causes.FAULTS when the file does not say
    assert load("member_crash-calm-finite").faults[0].magnitude == FAULT["member_crash"].magnitude


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"regime": "stormy"}, "t: regime: 'stormy' is not one of calm, volatile, spike"),
        ({"duration_s": 0}, "t: duration_s: must be > 0, got 0"),
        ({"colour": 1}, "t: scenario: unknown field 'colour'"),
        ({"faults": [{"kind": "meteor"}]}, "t: faults[0].kind: 'meteor' is not one of"),
        (
            {"faults": [{"kind": "load_spike", "magnitude": 2}]},
            "t: faults[0].magnitude: must be in (0, 1], got 2",
        ),
        (
            {"faults": [{"kind": "load_spike", "at_s": 600}]},
            "t: faults[0].at_s: 600 is not before duration_s 600",
        ),
        (
            {"faults": [{"kind": "load_spike", "count": 3}]},
            "t: faults[0].every_s: needed when count > 1",
        ),
        ({"faults": [{"kind": "load_spike", "when": 3}]}, "t: faults[0]: unknown field 'when'"),
        ({"load": {"pulse_every_s": 10, "pulse_width_s": 12}}, "t: load.pulse_width_s: must be"),
        ({"episodes": 0}, "t: episodes: must be a whole number in 1..1000, got 0"),
        ({"settings": ["x"]}, "t: settings: must be a mapping"),
    ],
)
def test_a_bad_scenario_is_one_line_naming_the_field(change, message):
    with pytest.raises(ConfigError) as caught:
        parse({**BASE, **change}, source="t")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_an_unknown_scenario_name_says_what_there_is(tmp_path):
    with pytest.raises(ConfigError, match=r"no scenario 'load_spik' .*load_spike-"):
        load("load_spik")
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nduration_s: 60\nfaults: [{kind: error_burst, at_s: 5}]\n")
    assert load(str(path)).faults[0].kind == "error_burst"


def test_a_repeated_fault_and_a_load_shape_schedule_as_written():
    found = parse(
        {
            **BASE,
            "faults": [
                {"kind": "load_spike", "at_s": 10, "duration_s": 5, "every_s": 100, "count": 3}
            ],
            "load": {"pulse_every_s": 12, "pulse_width_s": 4, "pulse_factor": 2, "start_s": 100},
        },
        source="t",
    )
    assert [i[0] for i in found.injections()] == [10, 110, 210]
    assert found.disturbances() == [10, 100, 110, 210]
    assert found.load is not None
    assert [found.load.factor(t) for t in (99, 100, 103.9, 104, 112)] == [1, 2, 2, 1, 2]
    assert found.fault_over_s() is None  # the pulses never end


# --- baselines --------------------------------------------------------------------------------


def test_hpa_desired_is_ceil_of_current_times_metric_over_target():
    hpa = HPA(target=0.7, min_replicas=1)
    assert hpa.desired(0, 3, 0.95) == 5  # ceil(3 * 0.95 / 0.7) = ceil(4.07)
    assert HPA(target=0.5, min_replicas=1).desired(0, 4, 0.9) == 8  # ceil(7.2), +100 % allowed


def test_hpa_does_nothing_within_the_tolerance():
    hpa = HPA(target=0.7, min_replicas=1)
    assert hpa.desired(0, 10, 0.7 * 1.099) == 10
    assert hpa.desired(15, 10, 0.7 * 0.901) == 10
    assert hpa.desired(30, 10, 0.7 * 1.11) == 12  # outside: ceil(11.1)


def test_hpa_scale_up_is_limited_like_the_default_policy():
    assert HPA(target=0.1, min_replicas=1).desired(0, 2, 1.0) == 6  # max(2 * 2, 2 + 4)


def test_hpa_scale_down_waits_for_the_highest_recommendation_of_300_s():
    hpa = HPA(target=0.7, min_replicas=1)
    assert hpa.desired(0, 10, 0.7) == 10  # recommendation 10
    assert hpa.desired(15, 10, 0.35) == 10  # wants 5, but 10 was recommended 15 s ago
    assert hpa.desired(300, 10, 0.35) == 10  # 10 (at 0) is still in the window
    assert hpa.desired(301, 10, 0.35) == 5  # only 5s in (1, 301]


def test_hpa_stays_within_its_bounds():
    assert HPA(target=0.7, min_replicas=3).desired(0, 3, 0.1) == 3
    assert HPA(target=0.7, min_replicas=1, max_replicas=5).desired(0, 4, 1.4) == 5


def test_the_static_executor_reacts_to_rising_edges_only():
    assert rising_edges(set(), {"a"}) == {"a"}
    assert rising_edges({"a"}, {"a"}) == set()  # still firing: nothing
    assert rising_edges({"a"}, {"a", "b"}) == {"b"}
    assert rising_edges({"a", "b"}, set()) == set()  # resolved: nothing


# --- the alert path ---------------------------------------------------------------------------


def _signals(**over: float) -> dict[str, float]:
    values = {cause.signal: 0.0 for cause in CAUSE.values()}
    values.update(over)
    return values


def test_the_alert_path_reads_the_shipped_rules_and_route():
    config = load_config()
    by_alert = {r.alert: r for r in config.rules}
    assert by_alert["CharterOverloaded"].for_s == 60
    assert by_alert["CharterOverloaded"].threshold == CAUSE["overload"].threshold
    assert by_alert["CharterHighLatencyP99"].for_s == 120
    assert config.scrape_s == config.eval_s == 30
    assert config.timing({"cause": "overload", "severity": "critical"}) == (10, 10)
    assert config.timing({"cause": "throttle_active", "severity": "info"}) == (60, 300)
    assert "CharterErrorBurst" in config.skipped


def test_an_alert_is_delivered_after_for_and_group_wait_once_per_rising_edge():
    config = load_config()
    path = AlertPath(config, start=0.0, scrape_offset=0.0, eval_offset=0.0)
    over = _signals(saturation=0.95)
    rising: list[float] = []
    delivered: list[tuple[float, list[str]]] = []
    for t in range(301):
        signals = over if t < 200 else _signals()
        edges, _, deliveries = path.tick(float(t), signals)
        rising += [e.at for e in edges if e.rising and e.rule.alert == "CharterOverloaded"]
        for batch in deliveries:
            delivered += [(t, [f"{a.labels['alertname']}:{a.status.value}" for a in batch])]
    # true at the evaluations of 0, 30, 60: firing at 60 (for: 1m), delivered group_wait later
    assert rising == [60.0]
    assert delivered[0] == (70, ["CharterOverloaded:firing"])
    # still firing at 90 .. 180: no new delivery; resolved at the evaluation of 210 (+0 s,
    # the group's interval has long passed)
    assert delivered[1:] == [(210, ["CharterOverloaded:resolved"])]


# --- figures ----------------------------------------------------------------------------------


def _samples(normal: list[bool], **extra: object) -> list[Sample]:
    return [
        Sample(
            t=float(t),
            offered=1,
            admitted=1,
            capacity=1,
            failure_rate=0,
            p99_s=0,
            size=int(extra.get("size", 3)),  # type: ignore[call-overload]
            throttle=None,
            normal=ok,
            fault_active=False,
        )
        for t, ok in enumerate(normal)
    ]


def test_oscillations_count_direction_reversals():
    assert figures.direction_reversals([3, 3, 5, 5, 7]) == 0
    assert figures.direction_reversals([3, 5, 3]) == 1
    assert figures.direction_reversals([3, 5, 5, 4, 6, 6, 2]) == 3
    assert figures.direction_reversals([]) == 0


def test_time_to_recover_runs_from_the_onset_to_the_final_60_s_of_all_normal():
    # bad from 10 to 19, normal from 20 on: recovered at 20 (once 80 is reached), 10 s
    # after the onset at 10, however long the disturbance took to show
    samples = _samples([True] * 10 + [False] * 10 + [True] * 70)
    assert figures.time_to_recover(samples, 5.0) == 10.0
    assert figures.time_to_recover(samples, 0.0) == 10.0
    assert figures.time_to_recover(_samples([True] * 10 + [False] * 10 + [True] * 50), 5) is None
    assert figures.time_to_recover(_samples([True] * 90), 5.0) == 0.0  # never went bad
    # a slow disturbance (a ramp): normal for minutes, then bad to the end: not recovered,
    # even after a blip of noise followed by a minute of normal
    assert figures.time_to_recover(_samples([True] * 200 + [False] * 10), 0.0) is None
    blip = [True] * 10 + [False] * 2 + [True] * 100 + [False] * 10
    assert figures.time_to_recover(_samples(blip), 0.0) is None
    # trouble that comes back and goes: recovered after the last stretch, timed from onset
    twice = [True] * 10 + [False] * 5 + [True] * 20 + [False] * 5 + [True] * 61
    assert figures.time_to_recover(_samples(twice), 0.0) == 30.0
    # an onset after the next disturbance started is that one's, not this one's
    assert figures.time_to_recover(samples, 0.0, until=5.0) == 0.0
    assert figures.time_to_recover(samples, 0.0, until=11.0) == 10.0


# --- the counterfactual ---------------------------------------------------------------------


def test_a_copied_committee_advanced_alone_is_deterministic():
    committee = Committee(11, "volatile", start=0.0)
    committee.advance(100)
    first, second = copy.deepcopy(committee), copy.deepcopy(committee)
    first.advance(400)
    second.advance(400)
    assert first.signals() == second.signals()
    assert lost(first) == lost(second)
    committee.advance(400)  # the original, advanced after its copies, agrees too
    assert committee.signals() == first.signals()


def test_the_counterfactual_of_a_call_is_deterministic_and_judges_it():
    found = parse({**BASE, "regime": "volatile"}, source="t")
    committee = Committee(5, "volatile", start=0.0)
    committee.advance(60)
    plan = Schedule(found, 0.0)

    def restart(c: Committee, now: float) -> object:
        return c.restart(now=now)

    once = counterfactual(committee, plan, 60.0, restart)
    again = counterfactual(committee, plan, 60.0, restart)
    assert once == again
    with_call, without, offered = once
    # a restart of a healthy committee drops 3 s of service: harmful
    assert verdict(with_call - without, offered) == "harmed"
    assert committee.now == 60.0  # the original is not advanced by its counterfactual


def test_the_counterfactual_sees_a_scheduled_fault_in_both_branches():
    found = parse({**BASE, "faults": [{"kind": "error_burst", "at_s": 30}]}, source="t")
    committee = Committee(5, "calm", start=0.0)
    committee.advance(20)
    with_call, without, offered = counterfactual(
        committee, Schedule(found, 0.0), 20.0, lambda c, now: c.set_throttle(None, now=now)
    )
    assert without > 0.1 * offered  # the fault at 30 s is injected in the window
    assert verdict(with_call - without, offered) == "no effect"


def test_a_would_do_plan_applies_as_the_executor_would_have_called():
    committee = Committee(5, "calm", start=0.0)
    committee.advance(10)
    plan = [
        {
            "action": "scale_up",
            "parameters": {},
            "sets": [{"knob": "size", "before": 3, "after": 5}],
        },
        {
            "action": "throttle_requests",
            "parameters": {},
            "sets": [{"knob": "throttle", "before": None, "after": 400.0}],
        },
        {"action": "restart_service", "parameters": {"scope": "all"}, "sets": []},
    ]
    apply_plan(plan)(committee, 10.0)
    state = committee.state()
    assert (state.target_size, state.throttle_limit) == (5, 400.0)
    assert committee.counters.restarts == 1


async def test_a_shadow_episode_compares_the_estimate_with_the_counterfactual():
    scenario = parse(
        {
            **BASE,
            "faults": [{"kind": "error_burst", "at_s": 60, "duration_s": 240}],
            "settings": {"autonomy.default": "shadow"},
        },
        source="t",
    )
    episode = await runner.run_episode(scenario, "mape-k", seed=1)
    shadow = episode.figures["shadow"]
    assert episode.figures["actions"] == 0  # nothing was called
    assert shadow["would_do"] == shadow["scored"] == 1
    assert shadow["verdicts"] == {"persisted": 1}
    # a restart during a 4 minute burst helps; the daemon believes its posterior, 0.75
    assert (shadow["estimate"], shadow["truth"]) == (0.75, 1.0)
    [line] = [x for x in shadow_lines([episode]) if x]
    assert "estimated precision 75.0 %, counterfactual 100.0 %" in line
    assert line.endswith("-25.0 points.")


def test_verdict_has_a_margin():
    assert verdict(0.5, 10) == "no effect"
    assert verdict(5, 1000) == "harmed"
    assert verdict(-5, 1000) == "helped"
    assert verdict(5, 10_000) == "no effect"  # within 0.1 % of the offered


def test_the_scenarios_are_package_data():
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"][
        "package-data"
    ]["mape_k"]
    for name in shipped_names():
        assert any(fnmatch(f"scenarios/{name}.yaml", glob) for glob in globs), name


def test_the_records_command_names_a_file_scenario_by_its_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nduration_s: 60\nepisodes: 3\n")
    episode = Episode("mine", "mape-k", 4, 2, 0.0, {}, [], [])
    assert records_command(load(str(path)), episode) == (
        f"mape-k simulate --scenario {path} --seed 4 --episode 2 --policy mape-k --records"
    )
    assert records_command(load("no_fault"), episode).startswith(
        "mape-k simulate --scenario no_fault --seed 4 --policy"
    )


# --- simulate --set -------------------------------------------------------------------------


class _Built(Exception):
    """Raised by the fake `build`: the episode stops once the daemon's settings are known."""


def _capture_build(monkeypatch):
    seen = []

    def fake_build(settings, **_):
        seen.append(settings)
        raise _Built

    monkeypatch.setattr(runner, "build", fake_build)
    return seen


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["orchestrator.interval_s=15"], {"orchestrator.interval_s": 15}),
        (["planner.exploration=0", "a.b = [1, x]"], {"planner.exploration": 0, "a.b": [1, "x"]}),
        (["k=1", "k=2.5"], {"k": 2.5}),
        (["k="], {"k": None}),
    ],
)
def test_set_values_are_yaml(items, expected):
    assert parse_overrides(split_overrides(items)) == expected


async def test_a_set_override_reaches_the_daemon_and_wins_over_the_scenario(monkeypatch):
    scenario = parse({**BASE, "settings": {"orchestrator.interval_s": 600}}, source="t")
    seen = _capture_build(monkeypatch)
    overrides = {"orchestrator.interval_s": 15, "planner.exploration": 0}
    for policy in ("mape-k", "hpa"):
        with pytest.raises(_Built):
            await runner.run_episode(scenario, policy, seed=1, overrides=overrides)
    daemon, baseline = seen
    assert daemon.orchestrator.interval_s == 15  # over the scenario's 600
    assert daemon.planner.exploration == 0
    # the baselines keep the scenario's settings (the static executor's fixed actions)
    assert baseline.orchestrator.interval_s == 600
    assert baseline.planner.exploration == Settings().planner.exploration != 0


async def test_a_job_carries_its_set_overrides_to_the_daemon(monkeypatch):
    seen = _capture_build(monkeypatch)
    job = Job("no_fault", "mape-k", 1, overrides=split_overrides(["orchestrator.interval_s=15"]))
    with pytest.raises(_Built):
        await run_chain(job)
    assert seen[0].orchestrator.interval_s == 15
    assert load("no_fault").settings.get("orchestrator.interval_s") is None


def test_simulate_passes_set_to_every_job_and_the_report_names_it(monkeypatch, tmp_path):
    jobs = []

    def fake_run_jobs(todo, **_):
        jobs.extend(todo)
        return {}

    monkeypatch.setattr(quality_cli, "run_jobs", fake_run_jobs)
    out = tmp_path / "q.md"
    argv = ["simulate", "--scenario", "no_fault", "--scenario", "wrong_prior", "--seeds", "2"]
    assert main([*argv, "--policy", "mape-k", "--set", "orchestrator.interval_s=15",
                 "--report", str(out)]) == 0  # fmt: skip
    assert len(jobs) == 4
    assert {job.overrides for job in jobs} == {(("orchestrator.interval_s", "15"),)}
    run_line = next(line for line in out.read_text().splitlines() if line.startswith("Run: "))
    assert "`orchestrator.interval_s=15`" in run_line


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ("orchestrator.intervl_s=15", "orchestrator.intervl_s"),
        ("orchestrator.interval_s=abc", "orchestrator.interval_s"),
        ("orchestrator.interval_s=-5", "orchestrator.interval_s"),
        ("orchestrator.interval_s=[1,", "orchestrator.interval_s"),
        ("orchestrator", "'orchestrator'"),
        ("knowledge.path=/tmp/x.sqlite3", "knowledge.path"),  # each episode sets its own
        ("server.port=1", "server.port"),
    ],
)
def test_a_bad_set_fails_in_one_line_naming_the_key_before_any_episode(
    monkeypatch, capsys, item, named
):
    def no_run(*_, **__):
        raise AssertionError("no episode may run")

    monkeypatch.setattr(quality_cli, "run_jobs", no_run)
    monkeypatch.setattr(quality_cli, "run_chain", no_run)
    for extra in ([], ["--records", "--seed", "1", "--policy", "mape-k"]):
        code = main(["simulate", "--scenario", "no_fault", *extra, "--set", item])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1
        assert err.startswith("mape-k simulate: --set ")
        assert named in err
        assert "Traceback" not in err


def test_the_records_command_repeats_the_set_overrides():
    episode = Episode("no_fault", "mape-k", 4, 0, 0.0, {}, [], [])
    assert records_command(
        load("no_fault"), episode, (("planner.remediations.overload", "[]"), ("a.b", "x y"))
    ) == (
        "mape-k simulate --scenario no_fault --seed 4 --policy mape-k"
        " --set 'planner.remediations.overload=[]' --set 'a.b=x y' --records"
    )
    assert records_command(load("no_fault"), episode, (("orchestrator.interval_s", "15"),)) == (
        "mape-k simulate --scenario no_fault --seed 4 --policy mape-k"
        " --set orchestrator.interval_s=15 --records"
    )
