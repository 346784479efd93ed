"""Knowledge: outcomes → per-(cause, action) patterns, best action, insights, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import builders
from builders import NOW
from mape_k.config import KnowledgeConfig
from mape_k.loop.knowledge import Knowledge
from mape_k.metrics import Metrics
from mape_k.models import (
    ActionType,
    ExecutionStatus,
    OutcomeType,
    PolicyOutcome,
)
from mape_k.store import Store
from mape_k.storeio import AsyncStore

SCALE = ActionType.SCALE_UP
THROTTLE = ActionType.THROTTLE_REQUESTS
RESTART = ActionType.RESTART_SERVICE


class Outcomes:
    """Makes outcomes with fresh execution ids."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(
        self,
        outcome: OutcomeType = OutcomeType.SUCCESS,
        *,
        cause: str = "overload",
        action: ActionType = SCALE,
        tts: float | None = None,
        execution_id: str | None = None,
    ) -> PolicyOutcome:
        self.n += 1
        return builders.outcome(
            execution_id or f"exec-{self.n}",
            outcome=outcome,
            cause=cause,
            action_type=action,
            recorded_at=NOW + self.n,
            time_to_stabilize_s=tts,
        )


@pytest.fixture
def make() -> Outcomes:
    return Outcomes()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "knowledge.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store.open(path) as opened:
        yield opened


@pytest.fixture
def config() -> KnowledgeConfig:
    return KnowledgeConfig(saturation_samples=30)


@pytest.fixture
def knowledge(store: Store, config: KnowledgeConfig) -> Knowledge:
    return Knowledge(AsyncStore(store, threaded=False), config)


async def record(knowledge: Knowledge, outcomes: list[PolicyOutcome]) -> None:
    for outcome in outcomes:
        await knowledge.record_outcome(outcome)


async def test_confidence_grows_with_samples_and_saturates_at_30(
    knowledge: Knowledge, make: Outcomes
) -> None:
    await record(knowledge, [make() for _ in range(15)])
    assert knowledge.view()[("overload", SCALE)].confidence == pytest.approx(0.5)
    await record(knowledge, [make() for _ in range(15)])
    assert knowledge.view()[("overload", SCALE)].confidence == 1.0
    await record(knowledge, [make() for _ in range(20)])
    pattern = knowledge.view()[("overload", SCALE)]
    assert pattern.confidence == 1.0
    assert pattern.samples == 50


async def test_partial_counts_as_half_a_success(knowledge: Knowledge, make: Outcomes) -> None:
    await record(
        knowledge,
        [
            make(OutcomeType.SUCCESS),
            make(OutcomeType.PARTIAL),
            make(OutcomeType.INEFFECTIVE),
            make(OutcomeType.DEGRADATION),
        ],
    )
    pattern = knowledge.view()[("overload", SCALE)]
    assert pattern.samples == 4
    assert pattern.successes == 1.5
    assert pattern.success_rate == pytest.approx(0.375)


async def test_evidence_counts_time_to_recover_and_degradation_as_side_effect(
    knowledge: Knowledge, make: Outcomes
) -> None:
    await record(knowledge, [make(OutcomeType.SUCCESS, tts=0.0) for _ in range(2)])
    quick = knowledge.view()[("overload", SCALE)]
    assert (quick.wins, quick.losses) == (2.0, 0.0)
    await record(knowledge, [make(OutcomeType.SUCCESS, action=RESTART, tts=300.0)])
    slow = knowledge.view()[("overload", RESTART)]  # recovery_scale_s: half a win
    assert (slow.wins, slow.losses) == (0.5, 0.5)
    await record(knowledge, [make(OutcomeType.INEFFECTIVE, action=THROTTLE)])
    await record(knowledge, [make(OutcomeType.DEGRADATION, action=THROTTLE)])
    harmful = knowledge.view()[("overload", THROTTLE)]
    assert (harmful.wins, harmful.losses) == (0.0, 1.0 + 2.0)  # a degradation counts twice


async def test_unknown_outcomes_are_recorded_but_are_not_samples(
    knowledge: Knowledge, store: Store, make: Outcomes
) -> None:
    assert await knowledge.record_outcome(make(OutcomeType.UNKNOWN, action=THROTTLE)) is True
    await record(knowledge, [make(OutcomeType.SUCCESS), make(OutcomeType.UNKNOWN)])

    assert ("overload", THROTTLE) not in knowledge.view()
    assert knowledge.view()[("overload", SCALE)].samples == 1
    assert len(store.recent_outcomes(10)) == 3
    totals = knowledge.summary()["totals"]
    assert totals["samples"] == 1
    assert totals["unknown"] == 2


async def test_duplicate_outcome_is_reported_and_not_counted(
    knowledge: Knowledge, make: Outcomes
) -> None:
    first = make(execution_id="same")
    assert await knowledge.record_outcome(first) is True
    assert await knowledge.record_outcome(first) is False
    assert knowledge.view()[("overload", SCALE)].samples == 1


async def test_restart_over_the_same_file_forgets_nothing(
    path: Path, config: KnowledgeConfig, make: Outcomes
) -> None:
    with Store.open(path) as store:
        before = Knowledge(AsyncStore(store, threaded=False), config)
        await record(
            before, [make(tts=10.0), make(OutcomeType.PARTIAL, tts=20.0), make(action=RESTART)]
        )
        view, summary = dict(before.view()), before.summary()
    with Store.open(path) as store:
        after = Knowledge(AsyncStore(store, threaded=False), config)
        await after.update_patterns()
        assert dict(after.view()) == view
        assert after.summary() == summary
        assert view[("overload", SCALE)].mean_time_to_stabilize_s == 15.0


def test_best_action_is_none_without_data(knowledge: Knowledge) -> None:
    assert knowledge.get_best_action_for_cause("overload") is None


async def test_best_action_weighs_success_rate_by_confidence(
    knowledge: Knowledge, make: Outcomes
) -> None:
    # throttle: 2/2 successes but confidence 2/30; scale_up: 20 of 24 with confidence 0.8.
    await record(knowledge, [make(action=THROTTLE) for _ in range(2)])
    await record(knowledge, [make(action=SCALE) for _ in range(20)])
    await record(knowledge, [make(OutcomeType.INEFFECTIVE, action=SCALE) for _ in range(4)])
    assert knowledge.get_best_action_for_cause("overload") is SCALE
    assert knowledge.get_best_action_for_cause("high_latency") is None


async def test_best_action_is_none_when_nothing_ever_worked(
    knowledge: Knowledge, make: Outcomes
) -> None:
    await record(knowledge, [make(OutcomeType.INEFFECTIVE) for _ in range(3)])
    assert knowledge.get_best_action_for_cause("overload") is None


async def test_insights_name_preferred_ineffective_and_degrading_actions(
    knowledge: Knowledge, make: Outcomes
) -> None:
    await record(knowledge, [make(action=SCALE, tts=40.0) for _ in range(6)])
    await record(knowledge, [make(OutcomeType.INEFFECTIVE, action=RESTART) for _ in range(5)])
    await record(knowledge, [make(OutcomeType.DEGRADATION, action=THROTTLE)])

    insights = knowledge.generate_insights()
    kinds = {(i.kind, i.action_type) for i in insights}

    assert ("preferred_action", SCALE) in kinds
    assert ("ineffective_action", RESTART) in kinds
    assert ("degrading_action", THROTTLE) in kinds
    assert ("time_to_stabilize", SCALE) in kinds
    preferred = next(i for i in insights if i.kind == "preferred_action")
    assert preferred.cause == "overload"
    assert preferred.confidence == pytest.approx(6 / 30)
    assert "40.0 s" in preferred.message


async def test_ineffective_insight_needs_five_samples(knowledge: Knowledge, make: Outcomes) -> None:
    await record(knowledge, [make(OutcomeType.INEFFECTIVE, action=RESTART) for _ in range(4)])
    assert not [i for i in knowledge.generate_insights() if i.kind == "ineffective_action"]
    await record(knowledge, [make(OutcomeType.INEFFECTIVE, action=RESTART)])
    assert [i.kind for i in knowledge.generate_insights()] == ["ineffective_action"]


async def test_summary_lists_every_pair_with_rates_and_totals(
    knowledge: Knowledge, make: Outcomes
) -> None:
    await record(knowledge, [make(tts=10.0), make(OutcomeType.INEFFECTIVE)])
    await record(knowledge, [make(cause="members_unhealthy", action=RESTART, tts=5.0)])

    summary = knowledge.summary()

    assert summary["saturation_samples"] == 30
    pairs = {(p["cause"], p["action_type"]): p for p in summary["pairs"]}
    overload = pairs[("overload", "scale_up")]
    assert overload["samples"] == 2
    assert overload["success_rate"] == 0.5
    assert overload["confidence"] == pytest.approx(2 / 30)
    assert overload["mean_time_to_stabilize_s"] == 10.0
    assert overload["outcomes"]["ineffective"] == 1
    assert summary["totals"]["pairs"] == 2
    assert summary["totals"]["samples"] == 3
    assert summary["totals"]["success_rate"] == pytest.approx(2 / 3)
    assert summary["totals"]["outcomes"]["success"] == 2


async def test_metrics_count_outcomes_and_expose_rates_per_pair(
    store: Store, config: KnowledgeConfig, make: Outcomes
) -> None:
    registry = CollectorRegistry()
    knowledge = Knowledge(AsyncStore(store, threaded=False), config, metrics=Metrics(registry))
    first = make(OutcomeType.SUCCESS)
    await record(
        knowledge, [first, first, make(OutcomeType.PARTIAL), make(OutcomeType.INEFFECTIVE)]
    )

    labels = {"cause": "overload", "action_type": "scale_up"}
    assert registry.get_sample_value("mapek_knowledge_samples", labels) == 3
    assert registry.get_sample_value("mapek_knowledge_success_rate", labels) == pytest.approx(0.5)
    assert registry.get_sample_value("mapek_outcomes_total", {"outcome": "success"}) == 1
    assert registry.get_sample_value("mapek_outcomes_total", {"outcome": "partial"}) == 1


async def test_metrics_gauges_are_restored_from_the_store_at_start(
    store: Store, config: KnowledgeConfig, make: Outcomes
) -> None:
    await record(
        Knowledge(AsyncStore(store, threaded=False), config),
        [make(), make(OutcomeType.INEFFECTIVE)],
    )
    registry = CollectorRegistry()
    await Knowledge(
        AsyncStore(store, threaded=False), config, metrics=Metrics(registry)
    ).update_patterns()
    labels = {"cause": "overload", "action_type": "scale_up"}
    assert registry.get_sample_value("mapek_knowledge_samples", labels) == 2
    assert registry.get_sample_value("mapek_knowledge_success_rate", labels) == 0.5


async def test_record_outcome_logs_outcome_recorded(knowledge: Knowledge, make: Outcomes) -> None:
    with capture_logs() as logs:
        await knowledge.record_outcome(make(tts=12.0))
    [event] = [e for e in logs if e["event"] == "outcome_recorded"]
    assert event["cause"] == "overload"
    assert event["action_type"] == "scale_up"
    assert event["outcome"] == "success"
    assert event["samples"] == 1


async def test_record_execution_is_journaled_in_the_store(
    knowledge: Knowledge, store: Store
) -> None:
    scale_up = builders.policy(SCALE, cause=builders.cause("overload"))
    execution = builders.execution(policy=scale_up, status=ExecutionStatus.PENDING)
    await knowledge.record_execution(execution)
    assert store.unfinished_executions() == [execution]


async def test_view_is_read_only(knowledge: Knowledge, make: Outcomes) -> None:
    await knowledge.record_outcome(make())
    view = knowledge.view()
    with pytest.raises(TypeError):
        view[("x", SCALE)] = view[("overload", SCALE)]  # type: ignore[index]
