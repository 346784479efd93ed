"""Posteriors per target: Knowledge keeps each target's own record of (cause, action)
beside the pooled one, and the Planner blends a target's own record over the pool, so
one daemon managing many services learns what works on each."""

from __future__ import annotations

from pathlib import Path

from builders import NOW, cause, outcome
from mape_k.config import CandidateAction, KnowledgeConfig, PlannerConfig
from mape_k.loop.knowledge import Knowledge
from mape_k.loop.plan import Planner, posterior
from mape_k.models import ActionType, AnalysisResult, OutcomeType
from mape_k.store import Store
from mape_k.storeio import AsyncStore

CAUSE = "members_unhealthy"
RESTART, SCALE = ActionType.RESTART_SERVICE, ActionType.SCALE_UP


async def _knowledge(tmp_path: Path) -> Knowledge:
    store = AsyncStore(Store.open(tmp_path / "k.sqlite3"), threaded=False)
    knowledge = Knowledge(store, KnowledgeConfig(path=tmp_path / "k.sqlite3"))
    outcomes = [("a", OutcomeType.INEFFECTIVE)] * 10 + [("b", OutcomeType.SUCCESS)] * 10
    for index, (target, kind) in enumerate(outcomes):
        await knowledge.record_outcome(
            outcome(
                f"e{index}",
                cause=CAUSE,
                action_type=RESTART,
                target=target,
                outcome=kind,
                recorded_at=NOW + index,
            )
        )
    return knowledge


async def test_knowledge_keeps_each_targets_record_beside_the_pooled_one(tmp_path: Path) -> None:
    knowledge = await _knowledge(tmp_path)
    pooled = knowledge.view()[(CAUSE, RESTART)]
    assert (pooled.samples, pooled.success_rate) == (20, 0.5)
    per_target = knowledge.target_view()
    assert per_target[(CAUSE, "a", RESTART)].success_rate == 0.0
    assert per_target[(CAUSE, "b", RESTART)].success_rate == 1.0
    assert per_target[(CAUSE, "b", RESTART)].samples == 10


async def test_the_planner_prefers_what_works_on_this_target(tmp_path: Path) -> None:
    knowledge = await _knowledge(tmp_path)
    candidates = ((CandidateAction(type=RESTART),), (CandidateAction(type=SCALE, benefit=0.4),))
    planner = Planner(PlannerConfig(remediations={CAUSE: candidates}))
    causes = (cause(CAUSE, "a", confidence=0.9), cause(CAUSE, "b", confidence=0.9))
    analysis = AnalysisResult(at=NOW, violations=2, patterns=(), causes=causes)
    policies = planner.generate_policies(
        analysis,
        knowledge=knowledge.view(),
        target_knowledge=knowledge.target_view(),
        now=NOW,
    )
    best = {}
    for policy in policies:  # ranked: the first of each target is its best
        best.setdefault(policy.target, policy.primary_action)
    assert best == {"a": SCALE, "b": RESTART}
    # Without the per-target view both targets get the pooled weight: one choice for both.
    pooled = planner.generate_policies(analysis, knowledge=knowledge.view(), now=NOW + 1)
    first: dict[str, str] = {}
    for policy in pooled:
        first.setdefault(policy.target, policy.primary_action)
    assert first["a"] == first["b"]


async def test_a_targets_posterior_is_its_own_record_over_the_discounted_rest(
    tmp_path: Path,
) -> None:
    knowledge = await _knowledge(tmp_path)
    pooled = knowledge.view()[(CAUSE, RESTART)]
    own = knowledge.target_view()[(CAUSE, "a", RESTART)]
    alone = posterior(0.75, prior_strength=2.0, pooled=pooled)
    on_a = posterior(0.75, prior_strength=2.0, pooled=pooled, own=own, pool_weight=0.5)
    # a's 10 failures in full, b's 10 successes at half
    assert on_a.alpha == 1.5 + 0.5 * 10
    assert on_a.beta == 0.5 + 10
    assert on_a.samples == 10 + 0.5 * 10
    assert on_a.mean < alone.mean
    # a target with no record of its own starts from the others' at half weight
    fresh = posterior(0.75, prior_strength=2.0, pooled=pooled, pool_weight=0.5)
    assert (fresh.alpha, fresh.beta) == (1.5 + 0.5 * 10, 0.5 + 0.5 * 10)
