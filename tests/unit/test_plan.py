"""Planner: scoring with and without knowledge, ranking, approval gating, determinism."""

from __future__ import annotations

import functools
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import builders
from mape_k.config import ActionSpec, CandidateAction, PlannerConfig
from mape_k.loop.plan import Planner, posterior
from mape_k.models import (
    ActionType,
    AnalysisResult,
    Cause,
    PolicyPattern,
    RemediationPolicy,
)

NOW = 5_000.0
A = ActionType


def act(kind: ActionType, benefit: float | None = None, **parameters) -> CandidateAction:
    return CandidateAction(type=kind, parameters=parameters, benefit=benefit)


cause = functools.partial(builders.cause, confidence=0.85)


def analysis(*causes: Cause) -> AnalysisResult:
    return AnalysisResult(at=NOW, violations=len(causes), patterns=(), causes=causes)


def planner(remediations=None, **config) -> Planner:
    """Scores here are the posterior mean's unless a test asks for exploration."""
    config.setdefault("exploration", 0.0)
    return Planner(PlannerConfig(remediations=remediations or {}, **config))


def pattern(cause_name: str, kind: ActionType, *, samples: int, successes: int) -> PolicyPattern:
    return PolicyPattern(
        cause=cause_name,
        action_type=kind,
        samples=samples,
        successes=successes,
        mean_time_to_stabilize_s=None,
        confidence=min(samples / 30, 1.0),
        wins=successes,
        losses=samples - successes,
    )


def plan(p: Planner, *causes: Cause, knowledge=None, now: float = NOW) -> list[RemediationPolicy]:
    return p.generate_policies(analysis(*causes), knowledge=knowledge or {}, now=now)


# --- scoring -------------------------------------------------------------------------------


def test_score_without_knowledge_is_confidence_times_benefit_minus_cost():
    [policy] = plan(planner({"high_failure_rate": ((act(A.RESTART_SERVICE),),)}), cause())
    assert policy.score.benefit == 0.75
    assert policy.score.cost == 0.30
    assert policy.score.posterior == posterior(0.75, prior_strength=2.0)
    assert policy.score.posterior.mean == pytest.approx(0.75)
    assert policy.score.confidence == 0.85
    assert policy.score.score == pytest.approx(0.85 * 0.75 - 0.30)
    assert policy.rationale == (
        "restart_service for high_failure_rate/charter: (posterior 0.75 + exploration 0.00)"
        " x confidence 0.85 - cost 0.30 = 0.34; posterior Beta(1.50, 0.50) from benefit 0.75"
        " and 0 outcome(s)"
    )


def test_the_prior_is_the_benefit_as_pseudo_counts_and_outcomes_add_to_it():
    prior = posterior(0.75, prior_strength=4.0)
    assert (prior.alpha, prior.beta, prior.samples) == (3.0, 1.0, 0.0)
    learned = pattern("x", A.SCALE_UP, samples=10, successes=2)
    after = posterior(0.75, prior_strength=4.0, pooled=learned)
    assert (after.alpha, after.beta, after.samples) == (5.0, 9.0, 10.0)
    assert after.sd < prior.sd  # more evidence, less doubt


def test_exploration_adds_the_posteriors_sd_to_an_untried_candidate():
    p = planner({"high_failure_rate": ((act(A.RESTART_SERVICE),),)}, exploration=0.5)
    [policy] = plan(p, cause())
    sd = posterior(0.75, prior_strength=2.0).sd
    assert policy.score.exploration == pytest.approx(0.5 * sd)
    assert policy.score.score == pytest.approx(0.85 * (0.75 + 0.5 * sd) - 0.30)


def test_exploration_proposes_a_candidate_its_mean_prices_out():
    remediations = {"high_failure_rate": ((act(A.RESTART_SERVICE, 0.3),),)}
    # 1.0 x 0.3 - 0.3 = 0: below a min_score of 0.01 on its mean ...
    assert plan(planner(remediations, min_score=0.01), cause(confidence=1.0)) == []
    # ... but the upper bound of so uncertain a belief is worth a try
    [policy] = plan(planner(remediations, min_score=0.01, exploration=0.5), cause(confidence=1.0))
    assert policy.score.score > 0.01


def test_a_doubtful_candidate_waits_while_a_credible_one_exists():
    # throttling's mean scores 0.6 x 0.65 - 0.4 < 0, its upper bound > 0: while scaling up
    # is credible (held by a cooldown, say) throttling is not proposed at all ...
    remediations = {
        "overload": ((act(A.SCALE_UP, 0.85),), (act(A.THROTTLE_REQUESTS, fraction=0.8),))
    }
    p = planner(remediations, exploration=0.5)
    assert [x.primary_action for x in plan(p, cause("overload", confidence=0.6))] == [A.SCALE_UP]
    # ... and once scaling up has failed enough to be priced out itself, it is explored.
    key = ("overload", A.SCALE_UP)
    failed = {key: pattern(*key, samples=6, successes=0)}
    ranked = plan(p, cause("overload", confidence=0.6), knowledge=failed)
    assert A.THROTTLE_REQUESTS in [x.primary_action for x in ranked]


def test_success_promotes_above_the_configured_benefit_and_failure_demotes():
    p = planner({"high_failure_rate": ((act(A.RESTART_SERVICE),),)}, min_score=-1)
    key = ("high_failure_rate", A.RESTART_SERVICE)
    [prior] = plan(p, cause())
    [won] = plan(p, cause(), knowledge={key: pattern(*key, samples=15, successes=15)})
    [lost] = plan(p, cause(), knowledge={key: pattern(*key, samples=3, successes=0)})
    assert won.score.posterior.mean > 0.75 > lost.score.posterior.mean
    assert won.score.score > prior.score.score > lost.score.score
    assert won.score.posterior.mean == pytest.approx((1.5 + 15) / 17)


def test_a_wrong_prior_is_overturned_within_three_failures():
    # wrong_prior's candidates: throttling configured far above restarting.
    remediations = {
        "high_failure_rate": (
            (act(A.THROTTLE_REQUESTS, 0.95, fraction=0.7),),
            (act(A.RESTART_SERVICE, 0.6),),
        )
    }
    key = ("high_failure_rate", A.THROTTLE_REQUESTS)
    p = Planner(PlannerConfig(remediations=remediations))  # the shipped exploration
    firsts = []
    for failures in range(4):
        knowledge = {key: pattern(*key, samples=failures, successes=0)} if failures else {}
        firsts.append(plan(p, cause(confidence=0.9), knowledge=knowledge)[0].primary_action)
    assert firsts[0] is A.THROTTLE_REQUESTS
    assert A.RESTART_SERVICE in firsts[1:]
    assert firsts[firsts.index(A.RESTART_SERVICE) :] == [A.RESTART_SERVICE] * (
        4 - firsts.index(A.RESTART_SERVICE)
    )


def test_knowledge_enters_the_score_of_the_primary_action():
    p = planner({"high_failure_rate": ((act(A.RESTART_SERVICE),),)}, min_score=-1)
    learned = {
        ("high_failure_rate", A.RESTART_SERVICE): pattern(
            "high_failure_rate", A.RESTART_SERVICE, samples=15, successes=12
        )
    }
    [policy] = plan(p, cause(), knowledge=learned)
    assert policy.score.posterior.mean == pytest.approx(13.5 / 17)
    assert policy.score.score == pytest.approx(0.85 * 13.5 / 17 - 0.30)


def test_knowledge_of_another_cause_does_not_apply():
    p = planner({"high_failure_rate": ((act(A.RESTART_SERVICE),),)})
    learned = {
        ("overload", A.RESTART_SERVICE): pattern(
            "overload", A.RESTART_SERVICE, samples=30, successes=0
        )
    }
    [policy] = plan(p, cause(), knowledge=learned)
    assert policy.score.posterior == posterior(0.75, prior_strength=2.0)


def test_an_action_that_always_failed_loses_to_an_untried_one():
    remediations = {
        "high_failure_rate": ((act(A.RESTART_SERVICE),), (act(A.APPLY_POLICY),)),
    }
    failed = {
        ("high_failure_rate", A.RESTART_SERVICE): pattern(
            "high_failure_rate", A.RESTART_SERVICE, samples=30, successes=0
        )
    }
    # with its default benefit restart (0.34) already trails apply_policy (0.41): give it
    # a higher benefit so that, untried, it ranks first
    remediations["high_failure_rate"] = (
        (act(A.RESTART_SERVICE, 0.95),),
        (act(A.APPLY_POLICY),),
    )
    p = planner(remediations, min_score=-1)
    assert [x.primary_action for x in plan(p, cause())] == [A.RESTART_SERVICE, A.APPLY_POLICY]
    ranked = plan(p, cause(), knowledge=failed)
    assert [x.primary_action for x in ranked] == [A.APPLY_POLICY, A.RESTART_SERVICE]
    assert ranked[1].score.score == pytest.approx(0.85 * 1.9 / 32 - 0.30)
    # with the default min_score (0) the failed action is not proposed at all
    p0 = planner(remediations)
    assert [x.primary_action for x in plan(p0, cause(), knowledge=failed)] == [A.APPLY_POLICY]


def test_multi_action_policy_sums_costs_and_takes_the_primary_benefit():
    candidate = (act(A.THROTTLE_REQUESTS, fraction=0.5), act(A.RESTART_SERVICE))
    [policy] = plan(planner({"high_failure_rate": (candidate,)}, min_score=-1), cause())
    assert policy.score.cost == pytest.approx(0.40 + 0.30)
    assert policy.score.benefit == 0.65
    assert [a.action_type for a in policy.actions] == [A.THROTTLE_REQUESTS, A.RESTART_SERVICE]
    assert all(a.target == "charter" for a in policy.actions)
    assert policy.actions[0].parameters == {"fraction": 0.5}
    assert policy.rationale.startswith("throttle_requests+restart_service for ")


def test_candidate_benefit_override_and_configured_action_costs_are_used():
    p = planner(
        {"high_failure_rate": ((act(A.SCALE_UP, 0.5),),)},
        actions={A.SCALE_UP: ActionSpec(cost=0.05, benefit=0.9, settle_s=1)},
    )
    [policy] = plan(p, cause(confidence=1.0))
    assert (policy.score.benefit, policy.score.cost) == (0.5, 0.05)


def test_parameters_are_copied_not_shared_with_config():
    p = planner({"high_failure_rate": ((act(A.APPLY_POLICY, policy_id="lkg"),),)})
    [policy] = plan(p, cause())
    policy.actions[0].parameters["policy_id"] = "mutated"
    [again] = plan(p, cause())
    assert again.actions[0].parameters == {"policy_id": "lkg"}


def test_default_remediations_apply_to_unknown_causes_and_none_means_no_policy():
    p = Planner(PlannerConfig(remediations={}, default_remediations=((act(A.REBALANCE_LOAD),),)))
    [policy] = plan(p, cause("mystery"))
    assert policy.primary_action is A.REBALANCE_LOAD
    assert plan(planner(), cause("mystery")) == []


def test_shipped_remediations_cover_the_shipped_violation_kinds():
    p = Planner(PlannerConfig())
    kinds = [
        "high_failure_rate",
        "policy_regression",
        "members_unhealthy",
        "overload",
        "high_latency",
        "queue_backlog",
    ]
    for kind in kinds:
        assert plan(p, cause(kind, confidence=1.0)), kind


# --- ranking -------------------------------------------------------------------------------


def test_policies_below_min_score_are_dropped():
    remediations = {"high_failure_rate": ((act(A.RESTART_SERVICE),), (act(A.SCALE_UP),))}
    # scores: restart 0.85*0.75-0.3 = 0.3375, scale_up 0.85*0.8-0.2 = 0.48
    assert [x.primary_action for x in plan(planner(remediations, min_score=0.4), cause())] == [
        A.SCALE_UP
    ]


def test_max_policies_caps_the_total_across_causes_keeping_the_best():
    remediations = {k: ((act(A.SCALE_UP),), (act(A.RESTART_SERVICE),)) for k in ("a", "b", "c")}
    p = planner(remediations, max_policies=3)
    policies = plan(
        p, cause("a", confidence=0.5), cause("b", confidence=0.9), cause("c", confidence=0.7)
    )
    assert [(x.cause.name, x.primary_action) for x in policies] == [
        ("b", A.SCALE_UP),
        ("b", A.RESTART_SERVICE),
        ("c", A.SCALE_UP),
    ]
    scores = [x.score.score for x in policies]
    assert scores == sorted(scores, reverse=True)


def test_ties_prefer_fewer_actions_then_action_type_name():
    spec = ActionSpec(cost=0.0, benefit=0.5, settle_s=0)
    p = planner(
        {
            "x": (
                (act(A.SCALE_UP, 0.5), act(A.SCALE_DOWN, 0.5)),
                (act(A.SCALE_UP, 0.5),),
                (act(A.APPLY_POLICY, 0.5),),
            )
        },
        actions={A.SCALE_UP: spec, A.SCALE_DOWN: spec, A.APPLY_POLICY: spec},
    )
    ranked = plan(p, cause("x"))
    assert [tuple(a.action_type for a in x.actions) for x in ranked] == [
        (A.APPLY_POLICY,),
        (A.SCALE_UP,),
        (A.SCALE_UP, A.SCALE_DOWN),
    ]


# --- determinism ---------------------------------------------------------------------------


def test_ids_are_deterministic_and_depend_on_now_cause_and_parameters():
    remediations = {
        "high_failure_rate": ((act(A.RESTART_SERVICE),), (act(A.THROTTLE_REQUESTS, fraction=0.5),))
    }
    first = plan(planner(remediations), cause())
    second = plan(planner(remediations), cause())
    assert [x.id for x in first] == [x.id for x in second]
    assert first == second
    assert all(x.id.startswith("pol-") and len(x.id) == 20 for x in first)
    assert len({x.id for x in first}) == 2
    later = plan(planner(remediations), cause(), now=NOW + 1)
    assert {x.id for x in later}.isdisjoint(x.id for x in first)
    other = plan(planner(remediations), cause(target="other"))
    assert {x.id for x in other}.isdisjoint(x.id for x in first)


def test_id_factory_is_used_when_given():
    counter = itertools.count(1)
    p = planner({"high_failure_rate": ((act(A.RESTART_SERVICE),), (act(A.SCALE_UP),))})
    policies = p.generate_policies(
        analysis(cause()), knowledge={}, now=NOW, id_factory=lambda: f"id-{next(counter)}"
    )
    assert [x.id for x in policies] == ["id-1", "id-2"]


# --- approval ------------------------------------------------------------------------------

RISKY = {
    "policy_regression": (
        (act(A.BYPASS_VALIDATION, 1.0),),
        (act(A.APPLY_POLICY, 0.2, policy_id="last_known_good"),),
    ),
    "overload": ((act(A.ACTIVATE_EMERGENCY_OVERRIDE, 1.0),),),
}


def runnable(policies: list[RemediationPolicy]) -> list[RemediationPolicy]:
    return [x for x in policies if not x.requires_approval]


def test_risky_actions_wait_for_approval_and_the_next_best_runs_meanwhile():
    p = planner(RISKY)
    policies = plan(p, cause("policy_regression", confidence=1.0))
    assert [(x.primary_action, x.requires_approval) for x in policies] == [
        (A.BYPASS_VALIDATION, True),
        (A.APPLY_POLICY, False),
    ]
    assert policies[0].rationale.endswith("(needs approval)")
    assert [x.primary_action for x in runnable(policies)] == [A.APPLY_POLICY]
    assert [x.id for x in p.pending_approvals()] == [policies[0].id]


@pytest.mark.parametrize("kind", ["policy_regression", "overload"])
def test_emergency_override_and_bypass_are_pending_until_taken_for_approval(kind):
    p = planner({kind: RISKY[kind][:1]})
    [risky] = plan(p, cause(kind, confidence=1.0))
    assert risky.requires_approval
    assert p.take_pending(risky.id, now=NOW + 5) == risky
    assert p.pending_approvals() == []
    assert p.take_pending(risky.id, now=NOW + 6) is None  # taken once


def test_an_approved_proposal_is_not_queued_again_while_approved():
    approved: dict[str, RemediationPolicy] = {}
    p = Planner(
        PlannerConfig(remediations=RISKY),
        approved=lambda x: approved.get(x.cause.key),
    )
    [risky] = plan(p, cause("overload", confidence=1.0))
    approved[risky.cause.key] = p.take_pending(risky.id, now=NOW)
    [again] = plan(p, cause("overload", confidence=1.0), now=NOW + 30)
    assert again.id != risky.id
    assert p.pending_approvals() == []  # the envelope holds its approval
    approved.clear()  # spent
    [third] = plan(p, cause("overload", confidence=1.0), now=NOW + 60)
    assert p.pending_approvals() == [third]


def test_require_approval_false_waives_approval():
    p = planner(RISKY, require_approval=False)
    [policy] = plan(p, cause("overload", confidence=1.0))
    assert not policy.requires_approval
    assert p.pending_approvals() == []


def test_action_spec_can_require_approval_for_an_ordinary_action():
    p = planner(
        {"x": ((act(A.SCALE_UP),),)},
        actions={A.SCALE_UP: ActionSpec(cost=0.2, benefit=0.8, settle_s=1, requires_approval=True)},
    )
    [policy] = plan(p, cause("x"))
    assert policy.requires_approval
    assert [x.id for x in p.pending_approvals()] == [policy.id]


def test_the_same_proposal_is_pending_once_across_iterations():
    p = planner(RISKY)
    first = plan(p, cause("overload", confidence=1.0))
    plan(p, cause("overload", confidence=1.0), now=NOW + 30)
    assert [x.id for x in p.pending_approvals()] == [first[0].id]


def test_unknown_or_expired_proposals_cannot_be_taken():
    p = planner(RISKY, approval_ttl_s=60)
    [risky] = plan(p, cause("overload", confidence=1.0))
    assert p.take_pending("pol-unknown", now=NOW) is None
    assert p.take_pending(risky.id, now=NOW + 61) is None
    assert p.pending_approvals() == []


def test_rejected_proposal_is_not_queued_again_until_it_expires():
    p = planner(RISKY, approval_ttl_s=60)
    [risky] = plan(p, cause("overload", confidence=1.0))
    assert p.reject_policy(risky.id) == risky
    assert p.reject_policy(risky.id) is None
    plan(p, cause("overload", confidence=1.0), now=NOW + 30)
    assert p.pending_approvals() == []
    [fresh] = plan(p, cause("overload", confidence=1.0), now=NOW + 61)
    assert p.pending_approvals() == [fresh]


def test_a_revoked_approval_is_remembered_as_a_rejection():
    p = planner(RISKY, approval_ttl_s=60)
    [risky] = plan(p, cause("overload", confidence=1.0))
    p.take_pending(risky.id, now=NOW)
    p.remember_rejection(risky)
    plan(p, cause("overload", confidence=1.0), now=NOW + 30)
    assert p.pending_approvals() == []


def test_pending_set_is_bounded_dropping_the_oldest():
    remediations = {f"k{i}": ((act(A.BYPASS_VALIDATION, 1.0),),) for i in range(4)}
    p = planner(remediations, max_pending_approvals=2)
    ids = [plan(p, cause(f"k{i}", confidence=1.0), now=NOW + i)[0].id for i in range(4)]
    assert [x.id for x in p.pending_approvals()] == ids[2:]


# --- reconfigure (SIGHUP) ------------------------------------------------------------------


def test_a_reload_keeps_pending_proposals_it_still_offers():
    p = planner(RISKY)
    [waiting] = plan(p, cause("overload", confidence=1.0))
    [regression, _] = plan(p, cause("policy_regression", confidence=1.0))
    # new costs and a new cause, the same risky candidates: nothing is lost
    more = {**RISKY, "queue_backlog": ((act(A.SCALE_UP),),)}
    costs = {A.SCALE_UP: ActionSpec(cost=0.5, benefit=0.8, settle_s=1)}
    assert p.reconfigure(PlannerConfig(remediations=more, actions=costs, min_score=-1)) == []
    assert p.config.actions[A.SCALE_UP].cost == 0.5
    assert p.pending_approvals() == [waiting, regression]
    assert p.still_gated(regression)


def test_a_reload_drops_proposals_it_no_longer_offers_or_gates():
    p = planner(RISKY)
    [waiting] = plan(p, cause("overload", confidence=1.0))
    [regression, _] = plan(p, cause("policy_regression", confidence=1.0))
    other_parameters = {
        **RISKY,
        "overload": ((act(A.ACTIVATE_EMERGENCY_OVERRIDE, 1.0, active=False),),),
    }
    assert p.reconfigure(PlannerConfig(remediations=other_parameters)) == [waiting.id]
    assert p.pending_approvals() == [regression]
    assert p.reconfigure(PlannerConfig(remediations=RISKY, require_approval=False)) == [
        regression.id
    ]
    assert p.pending_approvals() == []
    assert not p.still_gated(regression)


def test_a_reload_applies_a_smaller_bound_to_the_pending_set():
    remediations = {f"k{i}": ((act(A.BYPASS_VALIDATION, 1.0),),) for i in range(3)}
    p = planner(remediations)
    ids = [plan(p, cause(f"k{i}", confidence=1.0), now=NOW + i)[0].id for i in range(3)]
    config = PlannerConfig(remediations=remediations, max_pending_approvals=1)
    assert p.reconfigure(config) == ids[:2]
    assert [x.id for x in p.pending_approvals()] == ids[2:]


# --- properties ----------------------------------------------------------------------------

cause_st = st.builds(
    cause,
    name=st.sampled_from(["high_failure_rate", "overload", "high_latency", "queue_backlog"]),
    target=st.sampled_from(["a", "b", "c"]),
    confidence=st.floats(0, 1),
)


@settings(deadline=None)
@given(
    st.lists(cause_st, max_size=12, unique_by=lambda c: c.key),
    st.integers(1, 6),
    st.floats(-0.5, 0.5),
)
def test_output_is_ranked_bounded_deterministic_and_above_min_score(
    causes, max_policies, min_score
):
    p = Planner(PlannerConfig(max_policies=max_policies, min_score=min_score))
    policies = plan(p, *causes)
    assert len(policies) <= max_policies
    scores = [x.score.score for x in policies]
    assert scores == sorted(scores, reverse=True)
    assert all(s >= min_score for s in scores)
    again = plan(Planner(PlannerConfig(max_policies=max_policies, min_score=min_score)), *causes)
    assert again == policies  # deterministic, ids included
    # every dropped candidate scores no better than the last kept one
    if len(policies) == max_policies:
        everyone = plan(Planner(PlannerConfig(max_policies=100, min_score=min_score)), *causes)
        assert all(x.score.score <= scores[-1] for x in everyone[max_policies:])


def test_an_empty_remediation_list_leaves_a_cause_without_candidates():
    p = planner({"overload": ()}, default_remediations=((act(A.SCALE_UP),),))
    assert plan(p, cause("overload")) == []
    [fallback] = plan(p, cause("not_configured"))  # a cause with no entry at all
    assert fallback.primary_action is A.SCALE_UP


def test_a_return_to_baseline_is_never_priced_out_by_its_record():
    # Premature lifts are INEFFECTIVE outcomes; their back-off is the return's window
    # (loop/baseline.py), not silence: the throttle must not stay on forever.
    remediations = {"throttle_unneeded": ((act(A.THROTTLE_REQUESTS, lift=True),),)}
    key = ("throttle_unneeded", A.THROTTLE_REQUESTS)
    failed = {key: pattern(*key, samples=10, successes=0)}
    [policy] = plan(planner(remediations), cause("throttle_unneeded"), knowledge=failed)
    assert policy.score.score < 0  # below min_score, proposed all the same
    # ... while any other cause's candidate with that record is dropped
    other = {"overload": ((act(A.THROTTLE_REQUESTS, fraction=0.8),),)}
    failed = {
        ("overload", A.THROTTLE_REQUESTS): pattern(
            "overload", A.THROTTLE_REQUESTS, samples=10, successes=0
        )
    }
    assert plan(planner(other), cause("overload"), knowledge=failed) == []


def test_a_priced_out_candidate_is_explored_once_the_credible_one_disappoints():
    # wrong_prior_priced_out: restarting is worth 1.0 x 0.3 - 0.3 = 0 on its mean, never
    # above the floor; its upper bound beats throttling's mean once throttling has failed.
    remediations = {
        "high_failure_rate": (
            (act(A.THROTTLE_REQUESTS, 0.95, fraction=0.7),),
            (act(A.RESTART_SERVICE, 0.3),),
        )
    }
    p = Planner(PlannerConfig(remediations=remediations, min_score=0.01))
    key = ("high_failure_rate", A.THROTTLE_REQUESTS)
    fresh = plan(p, cause(confidence=1.0))
    assert [x.primary_action for x in fresh] == [A.THROTTLE_REQUESTS]
    thrice = {key: pattern(*key, samples=3, successes=0)}
    assert plan(p, cause(confidence=1.0), knowledge=thrice)[0].primary_action is A.RESTART_SERVICE
