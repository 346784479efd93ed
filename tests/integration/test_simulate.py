"""The scenario suite's smoke subset (CI, well under 60 s): only what must always hold.

The harness runs every policy against the real daemon's decision path; an episode (and so
its counterfactuals) is deterministic for a seed; with no fault no policy makes a single
mutating call. The quality figures themselves are the report's (make quality), not tests.
No binaries needed: the alert path is simulated.
"""

from __future__ import annotations

import json

import pytest

from mape_k.cli import main
from mape_k.quality import POLICIES
from mape_k.quality.runner import run_episode
from mape_k.quality.scenario import load, parse
from mape_k.quality.suite import Job, run_chain

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("policy", POLICIES)
async def test_no_fault_gets_no_mutating_action_from_any_policy(policy):
    scenario = load("no_fault")
    assert scenario.expect_no_actions
    episode = await run_episode(scenario, policy, seed=1, keep_samples=True)
    assert episode.figures["actions"] == 0
    assert episode.calls == []
    assert episode.figures["lost_pct"] == 0
    assert len(episode.samples) == int(scenario.duration_s) + 1


async def test_an_episode_and_its_counterfactuals_are_deterministic_for_a_seed():
    scenario = load("load_spike-volatile-persistent")
    first = await run_episode(scenario, "mape-k", seed=2)
    second = await run_episode(scenario, "mape-k", seed=2)
    assert first.calls, "the fault must make mape-k act, or this test proves nothing"
    assert [c.as_dict() for c in first.calls] == [c.as_dict() for c in second.calls]
    assert first.figures == second.figures
    other = await run_episode(scenario, "mape-k", seed=3)
    assert [c.as_dict() for c in other.calls] != [c.as_dict() for c in first.calls]


async def test_the_harness_drives_the_daemon_through_the_alert_path_and_measures_it():
    scenario = load("error_burst-calm-persistent")
    mapek = await run_episode(scenario, "mape-k", seed=1, keep_records=True)
    nothing = await run_episode(scenario, "nothing", seed=1)
    static = await run_episode(scenario, "static", seed=1)
    assert nothing.figures["actions"] == 0
    assert not nothing.figures["recovered"]
    # the static executor acts on a delivery: after the rule's `for:` and group_wait
    assert static.calls
    assert static.calls[0].at - static.start >= 120 + 60 + 10
    assert mapek.calls
    # the daemon's decision records and its verifications are there, with their truth
    assert any(r.get("execution") for r in mapek.records)
    assert mapek.verifications
    assert {v["truth"] for v in mapek.verifications} <= {"helped", "no effect", "harmed", "no call"}
    assert static.figures["alert_deliveries"] >= 1


async def test_an_alert_delivery_wakes_the_daemon_between_grid_slots():
    # A 10-minute grid and no watch: only the simulated Alertmanager's delivery can start
    # the action in time (rule evaluation every 30 s, `for: 1m`, group_wait 10 s after the
    # fault).
    scenario = parse(
        {
            "name": "sparse-grid",
            "duration_s": 500,
            "faults": [{"kind": "error_burst", "at_s": 30}],
            "settings": {"orchestrator.interval_s": 600, "orchestrator.watch_interval_s": 0},
        },
        source="test",
    )
    episode = await run_episode(scenario, "mape-k", seed=1, keep_records=True)
    assert episode.figures["alert_deliveries"] >= 1
    assert episode.calls, "the delivery must trigger an iteration that acts"
    acted = episode.calls[0].at - episode.start
    assert 30 + 60 + 10 <= acted <= 30 + 60 + 10 + 30 + 30 + 2  # + scrape and evaluation phase
    record = next(r for r in episode.records if r.get("execution"))
    kinds = {(v["kind"], v["source"]) for v in record["inputs"]["violations"]}
    assert ("high_failure_rate", "alert") in kinds


async def test_the_static_executor_acts_once_per_rising_edge_and_refire_every_evaluation():
    # A bad policy that no candidate fixes: its two rules (failure rate, policy regression)
    # fire once and stay firing for the rest of the episode.
    scenario = load("no_good_action")
    static = await run_episode(scenario, "static", seed=1, counterfactual=False)
    refire = await run_episode(scenario, "static-refire", seed=1, counterfactual=False)
    assert 1 <= len(static.calls) <= 2  # one per rule's rising edge, never again
    assert len({round(c.at) for c in static.calls}) == 1
    assert len(refire.calls) > 10 * len(static.calls)  # every 30 s evaluation while firing


async def test_a_learning_scenario_shares_one_store_across_its_episodes():
    job = Job(scenario="wrong_prior", policy="mape-k", seed=1, last_episode=2)
    episodes = await run_chain(job)
    assert [e.index for e in episodes] == [0, 1, 2]
    assert episodes[1].start > episodes[0].start + load("wrong_prior").duration_s


def test_simulate_writes_a_report_with_a_table_per_scenario(tmp_path, capsys):
    report = tmp_path / "quality.md"
    argv = [
        "simulate",
        "--scenario",
        "no_fault",
        "--scenario",
        "bad_policy-calm-finite",
        "--seeds",
        "1",
        "--jobs",
        "1",
        "--report",
        str(report),
        "--json-dir",
        str(tmp_path / "json"),
    ]
    assert main(argv) == 0
    text = report.read_text()
    assert "## no_fault" in text
    assert "## bad_policy-calm-finite" in text
    for policy in POLICIES:
        assert f"| {policy} |" in text
    assert (
        "mape-k simulate --scenario bad_policy-calm-finite --seed 1 --policy mape-k --records"
        in text
    )
    assert len(list((tmp_path / "json").glob("*.json"))) == 2 * len(POLICIES)


def test_simulate_records_prints_the_decision_records_of_one_episode(capsys):
    argv = ["simulate", "--scenario", "bad_policy-calm-finite", "--seed", "1"]
    assert main([*argv, "--policy", "mape-k", "--records"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any("execution" in line and line["execution"] for line in lines)
    assert "figures" in lines[-1]


def test_a_bad_scenario_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nduration_s: 60\nfaults: [{kind: meteor}]\n")
    assert main(["simulate", "--scenario", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "faults[0].kind: 'meteor' is not one of" in err
