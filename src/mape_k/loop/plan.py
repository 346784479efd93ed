"""Plan: causes + what Knowledge learned -> ranked remediation policies, and approval gating.

PURE: no I/O, no clock, no logging; `now` is passed in. The only state is the small,
bounded set of proposals waiting for an operator's answer (the approvals themselves are the
safety envelope's). Scoring and
identity rules are in the docstring of `Planner`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from mape_k.causes import RETURNS
from mape_k.config import AutonomyLevel, CandidateAction, PlannerConfig
from mape_k.models import (
    ActionName,
    AnalysisResult,
    CandidateScore,
    Cause,
    PolicyPattern,
    Posterior,
    RemediationAction,
    RemediationPolicy,
)

if TYPE_CHECKING:
    from mape_k.loop.changes import Change

KnowledgeView = Mapping[tuple[str, ActionName], PolicyPattern]
TargetKnowledgeView = Mapping[tuple[str, str, ActionName], PolicyPattern]

# A proposal's identity across iterations: cause key + actions with their parameters.
# Policy ids change with `now`; an operator's approval is matched by signature.
Signature = tuple[str, tuple[tuple[str, str], ...]]
# Ranking: score desc, fewer actions, action type names, the cause's rank in the analysis
# (most urgent first), the candidate's position in config.
_RankKey = tuple[float, int, tuple[str, ...], int, int]


@dataclass(frozen=True, slots=True)
class _Candidate:
    """The part of a candidate's score that does not depend on the cause's confidence."""

    position: int  # in the configured list: the last tie-breaker
    actions: tuple[CandidateAction, ...]
    types: tuple[str, ...]
    cost: float
    benefit: float
    posterior: Posterior
    exploration: float  # the optimism bonus: planner.exploration x the posterior's sd
    # A recent change on the target (changes.rollback_causes): this candidate is its
    # rollback (`rollback`), or a configured one planned after it.
    change: Change | None = None
    rollback: bool = False

    def expected(self, confidence: float) -> float:
        """What it is expected to give: confidence x posterior mean - cost."""
        return confidence * self.posterior.mean - self.cost

    def bound(self, confidence: float) -> float:
        """Its upper confidence bound, what it is ranked by: the expected score plus
        confidence x the exploration bonus."""
        return self.expected(confidence) + confidence * self.exploration

    def score(self, confidence: float) -> CandidateScore:
        return CandidateScore(
            cost=self.cost,
            benefit=self.benefit,
            confidence=confidence,
            score=self.bound(confidence),
            posterior=self.posterior,
            exploration=self.exploration,
        )


@dataclass(frozen=True, slots=True)
class CandidatePosterior:
    """One configured candidate's belief, for /stats and the metrics."""

    cause: str
    actions: tuple[str, ...]
    cost: float
    benefit: float
    posterior: Posterior
    exploration: float

    def as_dict(self) -> dict[str, object]:
        return {
            "cause": self.cause,
            "actions": list(self.actions),
            "cost": round(self.cost, 3),
            "benefit": round(self.benefit, 3),
            "posterior": self.posterior.as_dict(),
            "exploration": round(self.exploration, 3),
            "upper_bound": round(self.posterior.mean + self.exploration, 3),
        }


def posterior(
    benefit: float,
    *,
    prior_strength: float,
    pooled: PolicyPattern | None = None,
    own: PolicyPattern | None = None,
    pool_weight: float = 1.0,
) -> Posterior:
    """Beta(benefit x s + wins, (1 - benefit) x s + losses), s the prior strength.

    The evidence is the target's own outcomes (`own`) plus `pool_weight` x the rest of the
    pooled record of every target (`pooled` less `own`): a new target starts from what
    worked elsewhere, and its own record soon outweighs it. With the default weight of 1
    (no per-target view) the pooled record counts in full."""
    alpha = benefit * prior_strength
    beta = (1.0 - benefit) * prior_strength
    samples = 0.0
    if own is not None:
        alpha, beta, samples = alpha + own.wins, beta + own.losses, float(own.samples)
    if pooled is not None:
        alpha += pool_weight * max(pooled.wins - (own.wins if own else 0.0), 0.0)
        beta += pool_weight * max(pooled.losses - (own.losses if own else 0.0), 0.0)
        samples += pool_weight * max(pooled.samples - (own.samples if own else 0), 0)
    # A benefit of exactly 0 or 1 with no evidence would be a degenerate Beta.
    return Posterior(alpha=max(alpha, 1e-6), beta=max(beta, 1e-6), samples=samples)


def _eligible(
    scored: list[tuple[float, float, _Candidate]], min_score: float, *, returning: bool
) -> list[tuple[float, float, _Candidate]]:
    """The candidates of one cause that may be proposed, from (mean score, upper bound,
    candidate): those whose posterior mean clears `min_score`, and those whose upper bound
    clears both `min_score` and the best of those means — a doubtful action is worth a try
    only when its optimistic value beats what the credible ones are expected to give, not
    as a bet while a credible action waits for its cooldown. A return to baseline is never
    priced out: its back-off is its own window, which doubles after each premature return
    (loop/baseline.py)."""
    if returning:
        return scored
    credible = [mean for mean, _, _ in scored if mean >= min_score]
    bar = max([min_score, *credible])
    return [entry for entry in scored if entry[0] >= min_score or entry[1] >= bar]


def _params_json(parameters: Mapping[str, object]) -> str:
    return json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str)


def _candidate_actions(candidate: Sequence[CandidateAction]) -> tuple[tuple[str, str], ...]:
    """A configured candidate's half of a Signature: action types with their parameters."""
    return tuple((action.type, _params_json(action.parameters)) for action in candidate)


def signature(policy: RemediationPolicy) -> Signature:
    return (
        policy.cause.key,
        tuple((a.action_type, _params_json(a.parameters)) for a in policy.actions),
    )


def policy_id(sig: Signature, *, now: float) -> str:
    """Deterministic id: 'pol-' + 16 hex of sha256 over (cause key, actions+params, now)."""
    material = json.dumps([sig[0], [list(a) for a in sig[1]], repr(float(now))])
    return "pol-" + hashlib.sha256(material.encode()).hexdigest()[:16]


class LevelOf(Protocol):
    """Cause, its candidate's action names, now -> the level of autonomy and why
    (loop/autonomy.py); `rollback_of`: the id of the recorded change the candidate rolls
    back (that change's window does not lower it)."""

    def __call__(
        self, cause: Cause, actions: Sequence[str], now: float, /, *, rollback_of: str | None = None
    ) -> tuple[AutonomyLevel, str | None]: ...


class Planner:
    """Turns each cause into candidate policies, scores and ranks them.

    Candidates for a cause: `config.remediations[cause.name]`, else
    `config.default_remediations`; each is a tuple of actions, all aimed at `cause.target`.

    Score (kept in `CandidateScore`):
      cost    = sum of the actions' ActionSpec costs;
      benefit = the first (primary) action's benefit -- the CandidateAction override, else
                its ActionSpec's. Companion actions add cost but no benefit: every
                benefit measures the same thing (the cause's metric back under its
                threshold), so they do not add up; a companion is there because the
                config says the primary needs it;
      posterior = Beta(benefit x prior_strength, (1 - benefit) x prior_strength) updated
                with what Knowledge learned of (cause.name, primary action): on this
                target in full, on others (and outcomes no longer kept) at pool_weight
                (`posterior`); success promotes it above the configured benefit as
                failure demotes it below;
      exploration = config.exploration x the posterior's sd (an upper confidence bound:
                the less tried, the more optimistic);
      score   = cause.confidence * (posterior mean + exploration) - cost.
    Ranking by this bound is the choice: the guards then take the first candidate they
    allow, so among the allowed candidates the highest upper bound is tried (UCB). It is
    deterministic: the same knowledge and inputs give the same choice. `min_score` is a
    floor on the posterior mean's score (confidence x mean - cost): a candidate below it
    is proposed only when its upper bound clears the floor and the best mean score of its
    cause's credible candidates (`_eligible`: explore when it may beat what exploiting is
    expected to give, not while a credible action only waits for a cooldown).
    Policies below `min_score` are dropped; the rest ranked by score desc, then fewer
    actions, then action type names, then the cause's rank in the analysis (causes come
    most urgent first) and the candidate's position in config; the top `max_policies`
    over all causes are returned. Only those get an id and a rationale, so planning
    stays ~O(candidates + log(max_policies) * candidates).

    Ids (when `id_factory` is None): `policy_id(signature, now=now)`, a short sha256 of
    (cause key, action types + parameters, now): the same inputs give the same id.

    Proposals: a returned policy `requires_approval` when `config.require_approval` and any
    of its actions' ActionSpec requires it. Such a policy is registered as pending (keyed by
    id; a proposal with the same signature already pending, approved (`approved`, the
    safety envelope's answer) or recently rejected is not registered again) instead of
    being eligible. `take_pending` hands it to the envelope when an operator approves it:
    the approval itself, and its TTL (`guards.approval_ttl_s`), are the envelope's. Pending
    and rejected proposals expire `approval_ttl_s` after the policy was created; at most
    `max_pending_approvals` of each are kept, the oldest dropped first.
    """

    def __init__(
        self,
        config: PlannerConfig,
        *,
        approved: Callable[[RemediationPolicy], RemediationPolicy | None] = lambda _: None,
        autonomy: LevelOf | None = None,
    ) -> None:
        self._config = config
        self._approved = approved
        self._level_of = autonomy  # None: approve for risky actions, auto for the rest
        self._pending: dict[str, RemediationPolicy] = {}  # id -> policy, oldest first
        self._pending_ids: dict[Signature, str] = {}
        self._rejected: dict[Signature, float] = {}  # signature -> suppressed until

    @property
    def config(self) -> PlannerConfig:
        return self._config

    def reconfigure(self, config: PlannerConfig) -> list[str]:
        """Plan with a reloaded configuration from now on; returns the ids of dropped proposals.

        A pending proposal survives while the new configuration still offers its actions
        (with their parameters) for its cause and still gates them behind an approval; the
        others are dropped, and the new bounds apply. Rejections are kept.
        """
        self._config = config
        dropped: list[str] = []
        for pid, policy in list(self._pending.items()):
            if not self.still_gated(policy):
                del self._pending[pid]
                self._pending_ids.pop(signature(policy), None)
                dropped.append(pid)
        dropped += self._trim_pending()
        self._trim(self._rejected)
        return dropped

    def still_gated(self, policy: RemediationPolicy) -> bool:
        """The configuration proposes this policy's actions for its cause, behind an approval."""
        cfg = self._config
        actions = signature(policy)[1]
        candidates = cfg.remediations.get(policy.cause.name, cfg.default_remediations)
        offered = any(_candidate_actions(candidate) == actions for candidate in candidates)
        level, _ = self.level(
            policy.cause,
            [a.action_type for a in policy.actions],
            policy.created_at,
            rollback_of=policy.rollback_of,
        )
        return offered and level == "approve"

    def level(
        self, cause: Cause, actions: Sequence[str], now: float, *, rollback_of: str | None = None
    ) -> tuple[AutonomyLevel, str | None]:
        """A candidate's level of autonomy (loop/autonomy.py), and why it is below auto;
        `rollback_of`: the change whose rollback it is (its window does not lower it)."""
        if self._level_of is not None:
            return self._level_of(cause, actions, now, rollback_of=rollback_of)
        cfg = self._config
        risky = cfg.require_approval and any(cfg.actions[a].requires_approval for a in actions)
        return ("approve", None) if risky else ("auto", None)

    # --- planning ------------------------------------------------------------------------

    def score(
        self,
        cause: Cause,
        candidate: Sequence[CandidateAction],
        *,
        knowledge: KnowledgeView,
    ) -> CandidateScore:
        """The score of one candidate for one cause (see the class docstring)."""
        static = self._static(0, tuple(candidate), cause_name=cause.name, knowledge=knowledge)
        return static.score(cause.confidence)

    def _static(
        self,
        position: int,
        candidate: tuple[CandidateAction, ...],
        *,
        cause_name: str,
        knowledge: KnowledgeView,
    ) -> _Candidate:
        cfg = self._config
        specs = cfg.actions
        primary = candidate[0]
        benefit = primary.benefit if primary.benefit is not None else specs[primary.type].benefit
        belief = posterior(
            benefit,
            prior_strength=cfg.prior_strength,
            pooled=knowledge.get((cause_name, primary.type)),
        )
        return _Candidate(
            position=position,
            actions=candidate,
            types=tuple(action.type for action in candidate),
            cost=sum(specs[action.type].cost for action in candidate),
            benefit=benefit,
            posterior=belief,
            exploration=cfg.exploration * belief.sd,
        )

    def _on_target(
        self,
        pooled: _Candidate,
        own: PolicyPattern | None,
        knowledge: KnowledgeView,
        cause_name: str,
    ) -> _Candidate:
        """`pooled` with its posterior moved to one target's own record."""
        cfg = self._config
        belief = posterior(
            pooled.benefit,
            prior_strength=cfg.prior_strength,
            pooled=knowledge.get((cause_name, pooled.actions[0].type)),
            own=own,
            pool_weight=cfg.pool_weight,
        )
        return replace(pooled, posterior=belief, exploration=cfg.exploration * belief.sd)

    def posteriors(self, knowledge: KnowledgeView) -> list[CandidatePosterior]:
        """Every configured candidate's pooled posterior, cause by cause (what /stats and
        the metrics show; a decision record has each proposed candidate's, on its target)."""
        rows: list[CandidatePosterior] = []
        for cause_name, candidates in sorted(self._config.remediations.items()):
            for position, candidate in enumerate(candidates):
                if candidate:
                    static = self._static(
                        position, tuple(candidate), cause_name=cause_name, knowledge=knowledge
                    )
                    rows.append(
                        CandidatePosterior(
                            cause=cause_name,
                            actions=static.types,
                            cost=static.cost,
                            benefit=static.benefit,
                            posterior=static.posterior,
                            exploration=static.exploration,
                        )
                    )
        return rows

    def generate_policies(
        self,
        analysis: AnalysisResult,
        *,
        knowledge: KnowledgeView,
        now: float,
        id_factory: Callable[[], str] | None = None,
        target_knowledge: TargetKnowledgeView | None = None,
        max_cost: float | None = None,
        changes: Mapping[tuple[str, str], Change] | None = None,
    ) -> list[RemediationPolicy]:
        """`max_cost`: only candidates costing at most this (a predicted cause's).
        `changes`: (cause name, target) -> the recent change that cause may come from
        (changes.rollback_causes; loop/changes.py): its rollback, when it names one, is
        that cause's first candidate (`_after_change`)."""
        self._expire(now)
        cfg = self._config
        min_score = cfg.min_score
        # Everything but the cause's confidence depends only on the cause name: computed
        # once per name, so the per-cause work is a multiply-add per candidate.
        by_name: dict[str, list[_Candidate]] = {}
        ranked: list[tuple[_RankKey, Cause, _Candidate]] = []
        for rank, cause in enumerate(analysis.causes):
            statics = by_name.get(cause.name)
            if statics is None:
                candidates = cfg.remediations.get(cause.name, cfg.default_remediations)
                statics = by_name[cause.name] = [
                    self._static(position, candidate, cause_name=cause.name, knowledge=knowledge)
                    for position, candidate in enumerate(candidates)
                    if candidate
                ]
            if max_cost is not None:
                statics = [static for static in statics if static.cost <= max_cost]
            confidence = cause.confidence
            scored: list[tuple[float, float, _Candidate]] = []  # (mean score, bound, ...)
            for pooled in statics:
                static = pooled
                if target_knowledge is not None:
                    own = target_knowledge.get((cause.name, cause.target, pooled.actions[0].type))
                    static = self._on_target(pooled, own, knowledge, cause.name)
                scored.append((static.expected(confidence), static.bound(confidence), static))
            eligible = _eligible(scored, min_score, returning=cause.name in RETURNS)
            change = None if changes is None else changes.get((cause.name, cause.target))
            if change is not None:
                eligible = self._after_change(change, cause, eligible, knowledge, target_knowledge)
            for _, score, static in eligible:
                key = (-score, len(static.types), static.types, rank, static.position)
                ranked.append((key, cause, static))
        best = heapq.nsmallest(cfg.max_policies, ranked, key=lambda item: item[0])
        policies = [
            self._build(cause, static, now=now, id_factory=id_factory) for _, cause, static in best
        ]
        for policy in policies:
            if policy.requires_approval:
                self._register_pending(policy, now=now)
        return policies

    def _after_change(
        self,
        change: Change,
        cause: Cause,
        eligible: list[tuple[float, float, _Candidate]],
        knowledge: KnowledgeView,
        target_knowledge: TargetKnowledgeView | None,
    ) -> list[tuple[float, float, _Candidate]]:
        """A cause that may come from a recent change on its target: the change's rollback
        (when it names one in planner.actions) is ranked just above the cause's best
        candidate, never priced out by min_score (an operator named it), and a configured
        candidate with the same actions gives way to it; the others keep their order. Every
        candidate's rationale names the change."""
        marked = [(m, b, replace(c, change=change)) for m, b, c in eligible]
        action = change.rollback
        if action is None or action.type not in self._config.actions:
            return marked
        static = self._static(-1, (action,), cause_name=cause.name, knowledge=knowledge)
        if target_knowledge is not None:
            own = target_knowledge.get((cause.name, cause.target, action.type))
            static = self._on_target(static, own, knowledge, cause.name)
        static = replace(static, change=change, rollback=True)
        same = _candidate_actions(static.actions)
        others = [entry for entry in marked if _candidate_actions(entry[2].actions) != same]
        confidence = cause.confidence
        top = max([static.bound(confidence), *(bound for _, bound, _ in others)])
        # Ranked by `top` nudged up: first of this cause, where its best would rank overall.
        return [(static.expected(confidence), math.nextafter(top, math.inf), static), *others]

    def _build(
        self,
        cause: Cause,
        static: _Candidate,
        *,
        now: float,
        id_factory: Callable[[], str] | None,
    ) -> RemediationPolicy:
        candidate = static.actions
        scored = static.score(cause.confidence)
        actions = tuple(
            RemediationAction(
                action_type=action.type, target=cause.target, parameters=dict(action.parameters)
            )
            for action in candidate
        )
        change = static.change
        rollback_of = change.id if change is not None and static.rollback else None
        level, lowered = self.level(
            cause, [action.type for action in candidate], now, rollback_of=rollback_of
        )
        requires_approval = level == "approve"
        sig: Signature = (
            cause.key,
            tuple((a.action_type, _params_json(a.parameters)) for a in actions),
        )
        names = "+".join(action.type for action in candidate)
        belief = static.posterior
        predicted = f"predicted in {cause.lead_s:.0f} s, " if cause.lead_s is not None else ""
        rationale = predicted + (
            f"{names} for {cause.key}: (posterior {belief.mean:.2f} + exploration "
            f"{scored.exploration:.2f}) x confidence {scored.confidence:.2f} - cost "
            f"{scored.cost:.2f} = {scored.score:.2f}; posterior Beta({belief.alpha:.2f},"
            f" {belief.beta:.2f}) from benefit {scored.benefit:.2f} and"
            f" {belief.samples:g} outcome(s)" + _level_note(level, lowered)
        )
        if change is not None and static.rollback:
            rationale = f"rollback of change {change.id} ({change.describe(now)}): {rationale}"
        elif change is not None:
            rationale += f"; after change {change.id} ({change.describe(now)})"

        return RemediationPolicy(
            id=id_factory() if id_factory is not None else policy_id(sig, now=now),
            cause=cause,
            actions=actions,
            score=scored,
            requires_approval=requires_approval,
            created_at=now,
            rationale=rationale,
            shadow=level == "shadow",
            rollback_of=rollback_of,
        )

    # --- proposals waiting for an operator --------------------------------------------------

    def take_pending(self, policy_id: str, *, now: float) -> RemediationPolicy | None:
        """An operator approved a pending policy: it leaves the queue (the safety envelope
        holds the approval); None when unknown or expired."""
        self._expire(now)
        policy = self._pending.pop(policy_id, None)
        if policy is not None:
            self._pending_ids.pop(signature(policy), None)
        return policy

    def reject_policy(self, policy_id: str) -> RemediationPolicy | None:
        """Drop a pending policy; the same proposal is not queued again until
        `approval_ttl_s` after the rejected policy was created."""
        policy = self._pending.pop(policy_id, None)
        if policy is None:
            return None
        self.remember_rejection(policy)
        return policy

    def remember_rejection(self, policy: RemediationPolicy) -> None:
        """`policy` was rejected (an operator's no, an approval revoked or expired): the
        same proposal is not queued again until `approval_ttl_s` after it was created."""
        sig = signature(policy)
        if self._pending_ids.get(sig) == policy.id:
            del self._pending_ids[sig]
        self._rejected[sig] = policy.created_at + self._config.approval_ttl_s
        self._trim(self._rejected)

    def pending_approvals(self) -> list[RemediationPolicy]:
        """Policies waiting for an operator, oldest first."""
        return list(self._pending.values())

    def _register_pending(self, policy: RemediationPolicy, *, now: float) -> None:
        sig = signature(policy)
        if sig in self._pending_ids or self._approved(policy) is not None:
            return
        if self._rejected.get(sig, float("-inf")) > now:
            return
        self._pending[policy.id] = policy
        self._pending_ids[sig] = policy.id
        self._trim_pending()

    def _trim_pending(self) -> list[str]:
        """Drop the oldest pending proposals beyond the bound; returns their ids."""
        dropped: list[str] = []
        while len(self._pending) > self._config.max_pending_approvals:
            oldest_id = next(iter(self._pending))
            oldest = self._pending.pop(oldest_id)
            self._pending_ids.pop(signature(oldest), None)
            dropped.append(oldest_id)
        return dropped

    def _expire(self, now: float) -> None:
        ttl = self._config.approval_ttl_s
        for pid in [p for p, pol in self._pending.items() if pol.created_at + ttl < now]:
            self._pending_ids.pop(signature(self._pending.pop(pid)), None)
        for sig in [s for s, until in self._rejected.items() if until <= now]:
            del self._rejected[sig]

    def _trim(self, entries: dict[Signature, float]) -> None:
        while len(entries) > self._config.max_pending_approvals:
            del entries[next(iter(entries))]


def _level_note(level: AutonomyLevel, why: str | None) -> str:
    """What a rationale says of a level below auto: " (needs approval: why)"."""
    if level == "auto":
        return ""
    note = "needs approval" if level == "approve" else "shadow: a would-do, nothing is called"
    return f" ({note}: {why})" if why else f" ({note})"
