"""`mape-k replay`: the recorded period decided again with another configuration.

The stores are real ones, written by real simulated episodes (an error burst the daemon
fixes with a restart, ~2 s; a slow ramp it scales ahead of on a prediction; a bad policy
after a recorded deploy, whose rollback it ranks first and waits for an operator on); the
replay reads them through a read-only copy."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mape_k import replay as rp
from mape_k.cli import main
from mape_k.config import CandidateAction, Settings, load_settings
from mape_k.loop.analyze import Signal
from mape_k.loop.changes import Change
from mape_k.loop.guards import Freeze
from mape_k.loop.record import DecisionContext
from mape_k.quality import scenario as scenarios
from mape_k.quality.runner import SIM_START, run_episode, settings_for
from mape_k.store import SCHEMA_VERSION, Store

# The restart for high_failure_rate scores 0.75 x 1 - cost: a floor of 0.7 prices it out.
PRICED_OUT = "planner:\n  min_score: 0.7\n"
THROTTLE_ONLY = (
    "planner:\n  remediations:\n    high_failure_rate:\n"
    "      - [{type: throttle_requests, parameters: {fraction: 0.7}}]\n"
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by one real simulated episode: an error burst at 120 s, fixed."""
    path = tmp_path_factory.mktemp("replay") / "knowledge.sqlite3"
    scenario = replace(scenarios.load("error_burst-calm-finite"), duration_s=600.0)
    asyncio.run(run_episode(scenario, "mape-k", 1, knowledge=path, counterfactual=False))
    return path


@pytest.fixture(scope="module")
def journal(recorded: Path) -> rp.Journal:
    with rp.open_copy(str(recorded)) as store:
        return rp.read_journal(store)


def settings(tmp_path: Path, text: str = "{}\n"):
    path = tmp_path / "new.yaml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, {})[0], path


def acted(journal: rp.Journal) -> list[dict[str, Any]]:
    return [dict(r) for r in journal.iterations if r.get("execution")]


def test_the_episode_recorded_a_verified_restart(journal):
    # What the tests below stand on: one executed restart, verified SUCCESS.
    [record] = acted(journal)
    assert record["execution"]["actions"][0]["type"] == "restart_service"
    assert [o.outcome.value for o in journal.outcomes] == ["success"]
    assert record["inputs"]["reading"]["target_size"] >= 1
    assert {s["name"] for s in record["inputs"]["signals"]} == {"saturation", "offered_load"}


def test_the_same_config_decides_every_iteration_the_same(journal, tmp_path):
    new, _ = settings(tmp_path)
    report = rp.replay(journal, new)
    assert report.replayed == len(journal.iterations) > 20
    assert report.same == report.replayed
    assert report.differences == []
    assert report.as_dict()["summary"]["guard_verdicts"] == {}


def test_a_floor_that_prices_the_restart_out_drops_it_with_its_outcome(journal, tmp_path):
    new, _ = settings(tmp_path, PRICED_OUT)
    report = rp.replay(journal, new)
    [diff] = report.differences
    [record] = acted(journal)
    assert diff.iteration == record["id"]
    assert diff.cause == "high_failure_rate/charter"
    assert diff.recorded.describe() == "restart_service on charter"
    assert diff.new.describe() == (
        "nothing: no candidate (none configured, or below planner.min_score 0.7)"
    )
    assert diff.new.why.startswith("no remediation for high_failure_rate/charter")
    assert diff.recorded_outcome == "success"
    assert diff.evidence is None
    assert report.dropped == {"success": 1}
    assert report.added == 0
    assert report.same == report.replayed - 1


def test_another_action_is_shown_with_the_knowledge_behind_it(journal, tmp_path):
    new, _ = settings(tmp_path, THROTTLE_ONLY)
    report = rp.replay(journal, new)
    [diff] = report.differences
    assert diff.new.describe().startswith("throttle_requests on charter (throttle None -> ")
    assert diff.recorded_outcome == "success"
    # Nothing learned of throttling yet: the prior alone (the configured benefit 0.65).
    assert diff.evidence == "posterior 0.65 from 0 outcome(s)"
    assert report.added == 1
    assert report.dropped == {"success": 1}


def test_dry_run_in_the_new_config_holds_the_restart(journal, tmp_path):
    new, _ = settings(tmp_path, "executor:\n  dry_run: true\n")
    report = rp.replay(journal, new)
    [diff] = report.differences
    assert "dry_run: dry-run: would execute" in diff.new.why
    assert diff.new.describe() == "nothing: held by dry_run"
    assert report.as_dict()["summary"]["guard_verdicts"] == {
        "dry_run block": {"recorded": 0, "new": 1}
    }


def test_an_action_at_shadow_in_the_new_config_is_a_would_do_not_an_action(journal, tmp_path):
    new, _ = settings(tmp_path, "autonomy:\n  levels:\n    restart_service: shadow\n")
    report = rp.replay(journal, new)
    [diff] = report.differences
    assert diff.recorded.acts
    assert not diff.new.acts
    assert "shadow: would do restart_service on charter" in diff.new.why


def strip_replay_inputs(journal: rp.Journal) -> rp.Journal:
    """The journal as a mape-k before replay inputs wrote it."""
    old = []
    for kept in journal.iterations:
        record = copy.deepcopy(dict(kept))
        inputs = record.get("inputs")
        if inputs is not None:
            for key in ("signals", "reading", "reading_problem", "modes"):
                inputs.pop(key)
            for v in inputs["violations"]:
                v.pop("at")
                v.pop("query")
        old.append(record)
    return replace(journal, iterations=old)


def test_old_records_without_replay_inputs_still_replay(journal, tmp_path):
    old = strip_replay_inputs(journal)
    same, _ = settings(tmp_path)
    report = rp.replay(old, same)
    assert report.same == report.replayed == len(journal.iterations)
    assert sum(report.assumed.values()) == report.replayed
    priced_out, _ = settings(tmp_path, PRICED_OUT)
    [diff] = rp.replay(old, priced_out).differences
    assert diff.recorded_outcome == "success"


def test_an_old_record_gives_its_switches_back_from_its_guard_decisions():
    record = {
        "started_at": 1.0,
        "inputs": {"violations": []},
        "guard_decisions": [
            {"guard": "dry_run", "verdict": "block", "reason": "dry-run: ...", "until": None},
            {"guard": "freeze", "verdict": "block", "reason": "frozen (operator)", "until": 9.0},
            {"guard": "cooldown", "verdict": "allow", "reason": "ok", "until": None},
        ],
    }
    switches = rp.switches_of(record)
    assert (switches.has_reading, switches.dry_run) == (False, True)
    assert switches.freeze is not None
    assert (switches.freeze.reason, switches.freeze.until) == ("frozen (operator)", 9.0)
    assert switches.startup_problem is None


def test_a_recorded_operator_freeze_holds_the_replayed_action(journal, tmp_path):
    frozen = copy.deepcopy([dict(r) for r in journal.iterations])
    for record in frozen:
        if "inputs" in record:
            record["inputs"]["modes"]["freeze"] = {
                "reason": "change window",
                "since": 0.0,
                "until": None,
                "source": "operator",
            }
    new, _ = settings(tmp_path)
    [diff] = rp.replay(replace(journal, iterations=frozen), new).differences
    assert "freeze: frozen (operator) until lifted: change window" in diff.new.why


def test_since_and_until_bound_what_is_compared(journal, tmp_path):
    new, _ = settings(tmp_path, PRICED_OUT)
    [record] = acted(journal)
    at = record["started_at"]
    after = rp.replay(journal, new, since=at + 1)
    assert after.differences == []
    assert after.replayed == sum(1 for r in journal.iterations if r["started_at"] >= at + 1)
    before = rp.replay(journal, new, until=at - 1)
    assert (before.differences, before.replayed) == (
        [],
        sum(1 for r in journal.iterations if r["started_at"] <= at - 1),
    )
    assert len(rp.replay(journal, new, since=at, until=at).differences) == 1


def test_knowledge_is_what_was_recorded_before_the_iteration(journal, tmp_path):
    new, _ = settings(tmp_path)
    knowledge = rp.KnowledgeAt(journal, new)
    [outcome] = journal.outcomes
    assert knowledge.view() == {}  # before the outcome: nothing learned
    knowledge.advance(outcome.recorded_at - 0.1)
    assert knowledge.view() == {}
    knowledge.advance(outcome.recorded_at)
    pattern = knowledge.view()[("high_failure_rate", "restart_service")]
    assert (pattern.samples, pattern.successes) == (1, 1.0)
    assert ("high_failure_rate", "charter", "restart_service") in knowledge.target_view()


# --- the record keeps the inputs, bounded -------------------------------------------------


def test_the_context_is_bounded_by_top_n():
    signals = {("saturation", f"c{i:02d}"): Signal(0.5, 0.001) for i in range(30)}
    context = DecisionContext(
        signals=signals,
        dry_run=True,
        freeze=Freeze(reason="r", since=1.0, until=None, source="operator"),
        reading_problem="no Charter client",
    )
    data = context.as_dict(top_n=5)
    assert [s["component"] for s in data["signals"]] == ["c00", "c01", "c02", "c03", "c04"]
    assert data["reading"] is None
    assert data["reading_problem"] == "no Charter client"
    assert data["modes"]["dry_run"] is True
    assert data["modes"]["freeze"]["source"] == "operator"
    json.dumps(data)


# --- the command: read-only, one-line errors, exit 2 ---------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_command_prints_the_table_and_never_writes_the_store(recorded, tmp_path, capsys):
    before = digest(recorded)
    config = tmp_path / "new.yaml"
    config.write_text(PRICED_OUT, encoding="utf-8")
    assert main(["replay", "--store", str(recorded), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "restart_service on charter" in out
    assert "recorded action's outcome: SUCCESS" in out
    assert "recorded actions dropped: 1 (success 1)" in out
    assert digest(recorded) == before
    assert main(["replay", "--store", str(recorded), "--config", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["different"] == 1
    assert data["differences"][0]["recorded_outcome"] == "success"
    assert digest(recorded) == before


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.sqlite3", "no such file"),
        (lambda d: write(d / "text.sqlite3", b"not a database at all\n" * 10), "not a SQLite"),
        (lambda d: foreign_db(d / "other.sqlite3"), "not a mape-k knowledge store"),
        (lambda d: newer_store(d / "newer.sqlite3"), "written by a newer mape-k"),
    ],
)
def test_a_bad_store_is_one_line_and_exit_2(make, expected, tmp_path, capsys):
    config = tmp_path / "new.yaml"
    config.write_text("{}\n", encoding="utf-8")
    store = make(tmp_path)
    assert main(["replay", "--store", str(store), "--config", str(config)]) == 2
    err = one_line(capsys)
    assert expected in err
    assert str(store) in err  # the file given, never the private copy
    assert "mape-k-replay-" not in err


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def foreign_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    return path


def newer_store(path: Path) -> Path:
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    return path


def test_another_url_is_refused_in_one_line(tmp_path, capsys):
    config = tmp_path / "new.yaml"
    config.write_text("{}\n", encoding="utf-8")
    assert main(["replay", "--store", "mysql://u:pw@db/x", "--config", str(config)]) == 2
    err = one_line(capsys)
    assert "a SQLite file or a postgresql:// URL" in err
    assert "pw" not in err


def test_a_postgresql_store_is_read_in_read_only_sessions():
    url = rp.read_only_url("postgresql://u:pw@db:5432/mapek?options=-c%20search_path%3Dm&x=1")
    assert url.startswith("postgresql://u:pw@db:5432/mapek?x=1&options=")
    assert "options=-c%20search_path%3Dm%20-c%20default_transaction_read_only%3Don" in url


def test_a_bad_config_is_one_line_naming_the_key_and_exit_2(recorded, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("planner:\n  min_scor: 0.7\n", encoding="utf-8")
    assert main(["replay", "--store", str(recorded), "--config", str(bad)]) == 2
    err = one_line(capsys)
    assert err.startswith("mape-k: invalid configuration: planner.min_scor")
    assert main(["replay", "--store", str(recorded), "--config", str(tmp_path / "no.yaml")]) == 2
    assert "no such file" in one_line(capsys)


def test_a_bad_time_is_one_line_and_exit_2(recorded, tmp_path, capsys):
    config = tmp_path / "new.yaml"
    config.write_text("{}\n", encoding="utf-8")
    args = ["replay", "--store", str(recorded), "--config", str(config), "--since", "yesterday"]
    assert main(args) == 2
    assert "--since 'yesterday': not a time" in one_line(capsys)


def test_times_are_iso_8601_utc_or_unix_seconds():
    assert rp.parse_time("--since", "2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert rp.parse_time("--since", "2023-11-14T22:13:20") == 1_700_000_000.0
    assert rp.parse_time("--since", "1700000000") == 1_700_000_000.0
    assert rp.parse_time("--since", None) is None


def test_simulate_keeps_the_store_only_in_a_new_file(tmp_path, capsys):
    existing = tmp_path / "kept.sqlite3"
    existing.write_bytes(b"")
    base = ["simulate", "--scenario", "no_fault", "--policy", "mape-k", "--seed", "1"]
    assert main([*base, "--records", "--store", str(existing)]) == 1
    assert "exists; give a new file" in capsys.readouterr().err
    assert main([*base, "--store", str(tmp_path / "new.sqlite3")]) == 2
    assert "--store needs --records" in capsys.readouterr().err


def test_an_approved_execution_is_recognised_by_its_journaled_policy(journal):
    # An approved policy runs under the proposal's id, which is none of the iteration's
    # candidates: the journal's execution says what it was.
    [record] = acted(journal)
    approved = {**record, "choice": {**record["choice"], "policy_id": "pol-approved"}}
    approved["candidates"] = []
    by_id = {e.id: e for e in journal.executions}
    decision = rp.recorded_decision(approved, by_id)
    assert decision.describe() == "restart_service on charter"
    assert decision.cause == "high_failure_rate/charter"
    assert not rp.recorded_decision(approved).acts


def test_a_restart_in_the_journal_starts_the_daemons_memory_again(journal, tmp_path):
    new, _ = settings(tmp_path)
    replayer = rp._Replayer(journal, new)
    [first] = [r for r in journal.iterations if r["inputs"]["violations"]]
    second = journal.iterations[journal.iterations.index(first) + 1]
    replayer.follow(first)
    replayer.decide(first)
    assert replayer.analyzer.history_size > 0
    grown = f"{int(first['id'].split('-')[0]) + 1}-abcdef01"
    assert not replayer.follow({**second, "id": grown})  # the count grows: no restart
    assert replayer.analyzer.history_size > 0
    assert replayer.follow({**second, "id": "1-abcdef01"})  # back to 1: a new process
    assert replayer.analyzer.history_size == 0
    assert replayer.watching_since is None
    # the whole journal as two processes: counted, and decided the same
    renumbered = [
        {**r, "id": f"{i % 10 + 1}-{r['id'].split('-', 1)[1]}"}
        for i, r in enumerate(journal.iterations)
    ]
    report = rp.replay(replace(journal, iterations=renumbered), new)
    assert report.restarts == (len(renumbered) - 1) // 10
    assert report.as_dict()["summary"]["restarts"] == report.restarts


# --- a maintenance window in the new config ------------------------------------------------

# The episodes start on a Tuesday (SIM_START, 2023-11-14): a window all day holds the target.
TUESDAY_ALL_DAY = """
maintenance:
  - name: patch-tuesday
    targets: [charter]
    time_intervals: [{weekdays: [tuesday]}]
"""


def test_a_maintenance_window_in_the_new_config_holds_the_restart_that_ran(journal, tmp_path):
    new, _ = settings(tmp_path, TUESDAY_ALL_DAY)
    report = rp.replay(journal, new)
    [diff] = report.differences
    [record] = acted(journal)
    assert diff.iteration == record["id"]
    assert diff.recorded.describe() == "restart_service on charter"
    assert diff.new.describe() == "nothing: held by maintenance"
    assert "maintenance: maintenance window patch-tuesday until " in diff.new.why
    assert diff.recorded_outcome == "success"
    assert report.as_dict()["summary"]["guard_verdicts"] == {
        "maintenance delay": {"recorded": 0, "new": 1}
    }
    # a window on another target holds nothing
    other, _ = settings(tmp_path, TUESDAY_ALL_DAY.replace("[charter]", "[db]"))
    assert rp.replay(journal, other).differences == []


# --- predicted violations ----------------------------------------------------------------------

# The ramp crosses the overload threshold after about 50 minutes; the daemon scales on the
# prediction at about 36 (2190 s), 45 minutes of it are enough.
RAMP_S = 2700.0


def ramp_journal(tmp_path_factory: pytest.TempPathFactory, name: str) -> rp.Journal:
    path = tmp_path_factory.mktemp(name) / "knowledge.sqlite3"
    scenario = replace(scenarios.load(name), duration_s=RAMP_S)
    asyncio.run(run_episode(scenario, "mape-k", 1, knowledge=path, counterfactual=False))
    with rp.open_copy(str(path)) as store:
        return rp.read_journal(store)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> rp.Journal:
    """slow_ramp_predicted: the daemon scales up on a predicted overload, before any rule
    is violated."""
    return ramp_journal(tmp_path_factory, "slow_ramp_predicted")


@pytest.fixture(scope="module")
def warned(tmp_path_factory: pytest.TempPathFactory) -> rp.Journal:
    """slow_ramp_warned: the same forecast, `act: false`: the daemon never acts on it."""
    return ramp_journal(tmp_path_factory, "slow_ramp_warned")


def episode_settings(name: str, tmp_path: Path, **predict: Any) -> Settings:
    """The settings the scenario's episode ran with, its overload rule's `predict` changed."""
    scenario = scenarios.load(name)
    rules = copy.deepcopy(scenario.settings["monitor.rules"])
    for rule in rules:
        if rule["name"] == "overload":
            rule["predict"].update(predict)
    return settings_for(scenario, tmp_path / "unused.sqlite3", {"monitor.rules": rules})


def test_the_ramp_episode_scaled_on_a_prediction(predicted):
    # What the tests below stand on: one execution, for a predicted cause, no real one.
    [record] = acted(predicted)
    assert record["execution"]["actions"][0]["type"] == "scale_up"
    assert record["causes"] == []
    assert record["inputs"]["violations"] == []
    assert [p["kind"] for p in record["predicted"]] == ["overload"]
    assert record["candidates"][0]["predicted_in_s"] > 0


def test_the_same_config_replays_the_prediction_driven_action(predicted, tmp_path):
    report = rp.replay(predicted, episode_settings("slow_ramp_predicted", tmp_path))
    assert report.replayed == len(predicted.iterations) > 50
    assert report.differences == []
    assert report.same == report.replayed
    assert report.as_dict()["summary"]["guard_verdicts"] == {}


@pytest.mark.parametrize("predict", [{"act": False}, {"max_cost": 0.1}])
def test_a_rule_that_no_longer_acts_on_the_prediction_drops_the_action(
    predicted, tmp_path, predict
):
    # act off, or a max_cost under scale_up's cost (0.2): the prediction is not planned.
    report = rp.replay(predicted, episode_settings("slow_ramp_predicted", tmp_path, **predict))
    [diff] = report.differences
    [record] = acted(predicted)
    assert diff.iteration == record["id"]
    assert diff.cause == "overload/charter"
    assert diff.recorded.describe().startswith("scale_up on charter (size ")
    assert diff.new.describe() == (
        "nothing: predicted overload/charter not acted on (predict.act, predict.max_cost)"
    )
    assert diff.recorded_outcome == "success"
    assert report.dropped == {"success": 1}
    assert report.added == 0


def test_a_rule_that_acts_on_its_predictions_shows_the_early_action(warned, tmp_path):
    # The episode ran with act: false (it never acted); with act: true the first usable
    # prediction is a scale-up, with the knowledge behind it.
    assert acted(warned) == []
    same = rp.replay(warned, episode_settings("slow_ramp_warned", tmp_path))
    assert same.differences == []
    report = rp.replay(warned, episode_settings("slow_ramp_warned", tmp_path, act=True))
    first = report.differences[0]
    assert first.recorded.describe() == "nothing: no violations"
    assert first.new.describe().startswith("scale_up on charter (size ")
    assert first.new.why.startswith("scale_up on charter: predicted in ")
    assert first.evidence == "posterior 0.85 from 0 outcome(s)"
    [record] = [r for r in warned.iterations if r["id"] == first.iteration]
    assert record["predicted"][0]["kind"] == "overload"
    assert report.dropped == {}


def test_a_recorded_prediction_is_rebuilt_as_the_rule_raises_it(predicted, tmp_path):
    [record] = acted(predicted)
    new = episode_settings("slow_ramp_predicted", tmp_path)
    [violation] = rp.predicted_of(record, new)
    kept = record["predicted"][0]
    assert (violation.kind, violation.component) == ("overload", "charter")
    assert (violation.severity.value, violation.query) == ("critical", "saturation")
    assert violation.predicted
    assert (violation.timestamp, violation.lead_s) == (record["started_at"], kept["lead_s"])
    # a rule that does not predict in the new config raises nothing
    assert rp.predicted_of(record, settings(tmp_path)[0]) == []


# --- recorded changes --------------------------------------------------------------------------

CHANGE_AT = SIM_START + 60.0  # a minute before the bad policy (at 120 s)
ROLLBACK = {"type": "apply_policy", "parameters": {"policy_id": "baseline-v1"}}


def changed_episode(tmp_path_factory: pytest.TempPathFactory, *, rollback: bool) -> rp.Journal:
    """A bad policy 60 s after a deploy recorded on charter: the change log is in the store
    when the daemon starts (as after a restart); the change's window (changes.window_s,
    30 minutes) is the whole episode."""
    path = tmp_path_factory.mktemp("changed") / "knowledge.sqlite3"
    change = Change(
        id="chg-0123456789abcdef",
        target="charter",
        kind="deploy",
        at=CHANGE_AT,
        description="policy bad-v4",
        rollback=CandidateAction.model_validate(ROLLBACK) if rollback else None,
    )
    with Store.open(path) as store:
        store.set_state("changes", {"changes": [change.as_dict()]}, at=SIM_START)
    scenario = replace(scenarios.load("bad_policy-calm-finite"), duration_s=900.0)
    asyncio.run(run_episode(scenario, "mape-k", 1, knowledge=path, counterfactual=False))
    with rp.open_copy(str(path)) as store:
        return rp.read_journal(store)


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> rp.Journal:
    """The change names its rollback: ranked first, it keeps its level and runs at once."""
    return changed_episode(tmp_path_factory, rollback=True)


@pytest.fixture(scope="module")
def changed_plain(tmp_path_factory: pytest.TempPathFactory) -> rp.Journal:
    """No rollback named: one level down, the configured fix waits for an operator."""
    return changed_episode(tmp_path_factory, rollback=False)


def waiting(journal: rp.Journal) -> list[Mapping[str, Any]]:
    return [r for r in journal.iterations if r.get("result") == "pending_approval"]


def test_the_changed_episodes_rolled_back_at_once_or_waited_for_an_operator(changed, changed_plain):
    # What the tests below stand on.
    [(known, change)] = changed.changes
    assert (known, change.at, change.rollback is not None) == (CHANGE_AT, CHANGE_AT, True)
    [first] = acted(changed)[:1]
    assert first["candidates"][0]["actions"] == [ROLLBACK]
    assert not first["candidates"][0]["requires_approval"]
    assert waiting(changed) == []
    assert acted(changed_plain) == []
    records = waiting(changed_plain)
    assert len(records) > 3
    assert records[0]["candidates"][0]["requires_approval"]


def decided_at(
    journal: rp.Journal, record: Mapping[str, Any], new: Settings
) -> tuple[Any, rp._Replayer]:
    """The replayed decision of `record`, every record before it followed and decided."""
    replayer = rp._Replayer(journal, new)
    for earlier in journal.iterations[: journal.iterations.index(record)]:
        replayer.follow(earlier)
        replayer.decide(earlier)
    replayer.follow(record)
    decision, _, _ = replayer.decide(record)
    return decision, replayer


def test_a_recorded_change_is_replayed_as_the_daemon_decided_with_it(
    changed, changed_plain, tmp_path
):
    new = settings_for(scenarios.load("bad_policy-calm-finite"), tmp_path / "unused.sqlite3")
    for journal in (changed, changed_plain):
        report = rp.replay(journal, new)
        assert report.differences == []
        assert report.same == report.replayed == len(journal.iterations)
    # the rollback first, at its own level, as the daemon ran it
    record = acted(changed)[0]
    decision, _ = decided_at(changed, record, new)
    assert decision.why == record["choice"]["why"]
    assert "rollback of change chg-0123456789abcdef (deploy" in decision.why
    # without a rollback, one level down: the same proposal the daemon waited on
    record = waiting(changed_plain)[0]
    decision, replayer = decided_at(changed_plain, record, new)
    assert decision.why == record["choice"]["why"]
    assert decision.why.startswith("waiting for operator approval of ")
    [configured] = replayer.planner.pending_approvals()
    assert "one level down after change chg-0123456789abcdef" in configured.rationale
    assert configured.actions[0].parameters == {"policy_id": "last_known_good"}


def test_a_shorter_change_window_in_the_new_config_acts_after_it(changed_plain, tmp_path):
    scenario = scenarios.load("bad_policy-calm-finite")
    new = settings_for(scenario, tmp_path / "unused.sqlite3", {"changes.window_s": 240})
    report = rp.replay(changed_plain, new)
    ends = CHANGE_AT + 240
    assert (
        [d.iteration for d in report.differences]
        == [r["id"] for r in waiting(changed_plain) if r["started_at"] >= ends]
        != []
    )
    for diff in report.differences:
        assert diff.recorded.describe().startswith("nothing: waiting for operator approval")
        assert diff.new.describe().startswith("apply_policy on charter (policy ")
        assert diff.new.why.startswith("apply_policy on charter: apply_policy for policy_regr")


def test_a_change_counts_from_when_the_daemon_knew_of_it(changed_plain, tmp_path):
    # Posted (the control log's time) after the episode: no iteration knew of it, the
    # replay acts where the daemon waited.
    [(_, change)] = changed_plain.changes
    late = replace(changed_plain, changes=[(SIM_START + 10_000, change)])
    new = settings_for(scenarios.load("bad_policy-calm-finite"), tmp_path / "unused.sqlite3")
    report = rp.replay(late, new)
    assert [d.iteration for d in report.differences] == [r["id"] for r in waiting(changed_plain)]


def test_recorded_changes_come_from_the_state_and_the_control_log():
    def entry(change_id: str, at: float) -> dict[str, Any]:
        return {"id": change_id, "target": "charter", "kind": "deploy", "at": at}

    control = [
        {"at": 500.0, "route": "POST /api/v1/changes", "body": {"changes": [entry("b", 400.0)]}},
        {"at": 300.0, "route": "POST /api/v1/changes", "body": {"changes": [entry("b", 400.0)]}},
        {"at": 350.0, "route": "POST /api/v1/freeze", "body": {"changes": [entry("x", 1.0)]}},
        {"at": 900.0, "route": "POST /api/v1/changes", "body": {"changes": [entry("c", 850.0)]}},
    ]
    saved = {"changes": [entry("a", 100.0), entry("b", 400.0), {"id": "bad"}]}
    got = rp.recorded_changes(saved, control)
    # a: no control call (older than the log): its own time; b: its first post; c: only
    # in the control log (the change log no longer keeps it); x: not a change route.
    assert [(known, c.id) for known, c in got] == [(100.0, "a"), (300.0, "b"), (900.0, "c")]
    assert rp.recorded_changes(None) == []
