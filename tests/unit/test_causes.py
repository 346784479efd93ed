"""The one table of causes and faults (mape_k.causes) is what everything else says.

The default monitor rules and queries, the simulator's violations and fault kinds, and
the shipped Prometheus alert rules are checked against it here: a threshold changed in one
place and not the others fails.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mape_k.causes import CAUSE, CAUSES, FAULT, FAULTS
from mape_k.config import DEFAULT_QUERIES, Settings
from mape_k.sim.committee import Committee

RULES = Path(__file__).resolve().parents[2] / "src/mape_k/staging/prometheus/rules"


def alert_rules() -> list[dict[str, object]]:
    document = yaml.safe_load((RULES / "charter.rules.yml").read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_cause_has_an_alert_rule_comparing_exactly_its_expression() -> None:
    for cause in CAUSES:
        matching = [r for r in alert_rules() if r["labels"].get("cause") == cause.name]
        exprs = {str(r["expr"]).strip() for r in matching}
        assert cause.expr in exprs, (cause.name, exprs)
        [rule] = [r for r in matching if str(r["expr"]).strip() == cause.expr]
        assert rule["labels"]["severity"] == cause.severity.value


def test_the_default_rules_are_the_table_and_read_the_signal_of_the_same_name() -> None:
    rules = Settings().monitor.rules
    assert [(r.name, r.query, r.threshold, r.severity) for r in rules] == [
        (c.name, c.signal, c.threshold, c.severity) for c in CAUSES
    ]
    for cause in CAUSES:
        # the query reads the metric the alert rule compares (max over instances)
        metric_side = cause.expr.rpartition(" > ")[0]
        assert DEFAULT_QUERIES[cause.signal] == f"max({metric_side})"


def test_each_fault_drives_its_causes_signal_over_the_threshold_in_the_simulator() -> None:
    for fault in FAULTS:
        cause = CAUSE[fault.cause]
        committee = Committee(7, "calm", start=0.0)
        committee.inject(fault.kind, fault.magnitude, 0.0, 0.0)
        committee.advance(30.0)
        assert committee.signals()[cause.signal] > cause.threshold, fault.kind
    assert set(FAULT) == {
        "load_spike",
        "error_burst",
        "member_crash",
        "latency_degradation",
        "bad_policy",
    }
