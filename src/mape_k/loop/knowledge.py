"""Knowledge: verified outcomes in, per-(cause, action) statistics and insights out.

Backed by store.py, so a restart forgets nothing. Scoring choices: SUCCESS counts as one
success, PARTIAL as half a success (it helped but did not clear the violation), INEFFECTIVE
and DEGRADATION as none; UNKNOWN outcomes (could not verify) are journaled but are not
samples. Confidence = min(samples / saturation_samples, 1). No network I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import structlog

from mape_k.config import KnowledgeConfig
from mape_k.errors import MapekError
from mape_k.metrics import Metrics
from mape_k.models import (
    ActionName,
    LearningInsight,
    OutcomeType,
    PolicyExecution,
    PolicyOutcome,
    PolicyPattern,
)
from mape_k.store import PairStats
from mape_k.storeio import AsyncStore

log = structlog.get_logger(__name__)

PARTIAL_WEIGHT = 0.5
INEFFECTIVE_MIN_SAMPLES = 5  # "never worked" needs this many samples before it is said

PairKey = tuple[str, ActionName]
TargetKey = tuple[str, str, ActionName]  # (cause, target, action)


def weighted_successes(stats: PairStats) -> float:
    return stats.successes + PARTIAL_WEIGHT * stats.partials


def mean_tts(stats: PairStats) -> float | None:
    return stats.tts_sum / stats.tts_count if stats.tts_count else None


def evidence(stats: PairStats, config: KnowledgeConfig) -> tuple[float, float]:
    """(wins, losses): the outcomes as Beta pseudo-counts, each outcome's reward in [0, 1]
    added to wins and the rest to losses. A success is worth 1 less half its time to
    stabilise over `recovery_scale_s` (capped at half: slow still beats failed); a PARTIAL
    half; INEFFECTIVE nothing; a DEGRADATION nothing, and it counts `degradation_weight`
    times as a loss (its side effect is the worst thing an action can do)."""
    tts = mean_tts(stats)
    slow = 0.0 if tts is None else 0.5 * min(1.0, tts / config.recovery_scale_s)
    wins = stats.successes * (1.0 - slow) + PARTIAL_WEIGHT * stats.partials
    losses = (
        stats.successes * slow
        + (1.0 - PARTIAL_WEIGHT) * stats.partials
        + stats.ineffective
        + config.degradation_weight * stats.degradations
    )
    return wins, losses


def pattern(stats: PairStats, config: KnowledgeConfig) -> PolicyPattern:
    """What the Planner weighs a pair with: its counters as evidence (`mape-k replay`
    builds the view of a past moment with it too)."""
    wins, losses = evidence(stats, config)
    return PolicyPattern(
        cause=stats.cause,
        action_type=stats.action_type,
        samples=stats.samples,
        successes=weighted_successes(stats),
        mean_time_to_stabilize_s=mean_tts(stats),
        confidence=min(stats.samples / config.saturation_samples, 1.0),
        wins=wins,
        losses=losses,
    )


class Knowledge:
    def __init__(
        self, store: AsyncStore, config: KnowledgeConfig, *, metrics: Metrics | None = None
    ) -> None:
        """Empty until `update_patterns()` has read the store (app.build awaits it)."""
        self._store = store
        self._config = config
        self._metrics = metrics
        self._stats: dict[PairKey, PairStats] = {}
        self._target_stats: list[tuple[str, PairStats]] = []
        # Outcomes the store could not take (an outage): written again by `flush()`.
        self._unrecorded: dict[str, PolicyOutcome] = {}
        self._view: dict[PairKey, PolicyPattern] = {}
        # Per target (cause, target, action): what the Planner blends over the pooled view.
        self._target_view: dict[TargetKey, PolicyPattern] = {}

    def reconfigure(self, config: KnowledgeConfig) -> None:
        """A reloaded configuration (the store stays: `path` needs a restart): the view is
        recomputed from the statistics last read."""
        self._config = config
        self._refresh()

    # --- recording -------------------------------------------------------------------

    async def record_execution(self, execution: PolicyExecution) -> None:
        """Journal an execution (before it runs, and again when it ends)."""
        await self._store.upsert_execution(execution)

    async def record_outcome(self, outcome: PolicyOutcome) -> bool:
        """Store a verified outcome and learn from it; False if it was already recorded.

        A store that cannot take it (PostgreSQL restarting, a full disk) does not lose it:
        it is kept and written again by the next `flush()` (an outcome is written once:
        the insert ignores a repeat).
        """
        try:
            inserted = await self._store.record_outcome(outcome)
        except MapekError as exc:
            first = not self._unrecorded
            self._unrecorded[outcome.execution_id] = outcome
            (log.error if first else log.info)(
                "outcome_record_failed",
                execution_id=outcome.execution_id,
                error=str(exc),
                kept=len(self._unrecorded),
            )
            return True
        self._unrecorded.pop(outcome.execution_id, None)
        if not inserted:
            log.info(
                "outcome_duplicate",
                execution_id=outcome.execution_id,
                outcome=outcome.outcome.value,
            )
            return False
        if self._metrics is not None:
            self._metrics.outcomes.labels(outcome=outcome.outcome.value).inc()
        try:
            await self.update_patterns()
        except MapekError as exc:  # recorded; the view catches up at the next outcome
            log.warning("knowledge_view_stale", error=str(exc))
        pattern = self._view.get((outcome.cause, outcome.action_type))
        log.info(
            "outcome_recorded",
            execution_id=outcome.execution_id,
            policy_id=outcome.policy_id,
            cause=outcome.cause,
            action_type=outcome.action_type,
            target=outcome.target,
            outcome=outcome.outcome.value,
            time_to_stabilize_s=outcome.time_to_stabilize_s,
            samples=pattern.samples if pattern else 0,
            success_rate=round(pattern.success_rate, 4) if pattern else None,
        )
        return True

    async def flush(self) -> None:
        """Write the outcomes an outage kept (oldest first); what fails again stays kept."""
        for outcome in list(self._unrecorded.values()):
            await self.record_outcome(outcome)
            if outcome.execution_id in self._unrecorded:
                return  # the store is still down: the rest waits too

    def forget_unrecorded(self) -> None:
        """Replicas: a new leader re-measures what the journal says is unverified."""
        self._unrecorded.clear()

    # --- learned view ----------------------------------------------------------------

    def _pattern(self, stats: PairStats) -> PolicyPattern:
        return pattern(stats, self._config)

    async def update_patterns(self) -> None:
        """Reload the statistics from the store and refresh the view and the gauges."""
        stats = {(row.cause, row.action_type): row for row in await self._store.stats()}
        self._target_stats = await self._store.target_stats()
        self._stats = stats
        self._refresh()

    def _refresh(self) -> None:
        self._view = {key: self._pattern(row) for key, row in self._stats.items() if row.samples}
        self._target_view = {
            (row.cause, target, row.action_type): self._pattern(row)
            for target, row in self._target_stats
            if row.samples > 0
        }
        if self._metrics is not None:
            for (cause, action), pattern in self._view.items():
                labels = {"cause": cause, "action_type": action}
                self._metrics.success_rate.labels(**labels).set(pattern.success_rate)
                self._metrics.knowledge_samples.labels(**labels).set(pattern.samples)

    def target_view(self) -> Mapping[TargetKey, PolicyPattern]:
        """Per (cause, target, action): each target's own record (the outcomes kept)."""
        return MappingProxyType(dict(self._target_view))

    def view(self) -> Mapping[PairKey, PolicyPattern]:
        """What the Planner weighs candidates with: pairs with at least one sample."""
        return MappingProxyType(dict(self._view))

    def get_best_action_for_cause(self, cause: str) -> ActionName | None:
        """The action with the highest success rate * confidence for `cause`.

        None without data, or when no action has ever (even partly) worked for it.
        Ties go to more samples, then to the action name (deterministic).
        """
        candidates = [p for (c, _), p in self._view.items() if c == cause]
        if not candidates:
            return None
        best = max(
            candidates,
            key=lambda p: (p.success_rate * p.confidence, p.samples, p.action_type),
        )
        return best.action_type if best.success_rate > 0 else None

    # --- insights and summary --------------------------------------------------------

    def generate_insights(self) -> list[LearningInsight]:
        """Statements an operator can act on, ordered by cause."""
        insights: list[LearningInsight] = []
        for cause in sorted({c for c, _ in self._view}):
            best = self.get_best_action_for_cause(cause)
            if best is not None:
                pattern = self._view[(cause, best)]
                tts = pattern.mean_time_to_stabilize_s
                after = f", stabilizing in {tts:.1f} s on average" if tts is not None else ""
                insights.append(
                    LearningInsight(
                        cause=cause,
                        action_type=best,
                        kind="preferred_action",
                        message=(
                            f"{best} works best for {cause}: "
                            f"{pattern.success_rate:.0%} success over {pattern.samples} "
                            f"samples{after}"
                        ),
                        confidence=pattern.confidence,
                    )
                )
            for (c, action), pattern in sorted(self._view.items()):
                if c != cause:
                    continue
                stats = self._stats[(c, action)]
                insights.extend(self._pair_insights(stats, pattern))
        return insights

    def _pair_insights(self, stats: PairStats, pattern: PolicyPattern) -> list[LearningInsight]:
        out: list[LearningInsight] = []
        cause, action = stats.cause, stats.action_type
        if stats.samples >= INEFFECTIVE_MIN_SAMPLES and weighted_successes(stats) == 0:
            out.append(
                LearningInsight(
                    cause=cause,
                    action_type=action,
                    kind="ineffective_action",
                    message=(
                        f"{action} never fixed {cause} in {stats.samples} attempts;"
                        " consider removing it from the remediations of this cause"
                    ),
                    confidence=pattern.confidence,
                )
            )
        if stats.degradations > 0:
            out.append(
                LearningInsight(
                    cause=cause,
                    action_type=action,
                    kind="degrading_action",
                    message=(
                        f"{action} made {cause} worse {stats.degradations} time(s)"
                        f" out of {stats.samples}"
                    ),
                    confidence=pattern.confidence,
                )
            )
        tts = mean_tts(stats)
        if tts is not None:
            out.append(
                LearningInsight(
                    cause=cause,
                    action_type=action,
                    kind="time_to_stabilize",
                    message=(
                        f"{action} stabilizes {cause} in {tts:.1f} s on average"
                        f" ({stats.tts_count} measured)"
                    ),
                    confidence=min(stats.tts_count / self._config.saturation_samples, 1.0),
                )
            )
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready statistics for /stats: every pair, and totals."""
        pairs: list[dict[str, Any]] = []
        totals = dict.fromkeys(("samples", "successes", "unknown"), 0.0)
        by_outcome = dict.fromkeys((o.value for o in OutcomeType), 0)
        for (cause, action), stats in sorted(self._stats.items()):
            pattern = self._pattern(stats)
            counts = {
                OutcomeType.SUCCESS.value: stats.successes,
                OutcomeType.PARTIAL.value: stats.partials,
                OutcomeType.INEFFECTIVE.value: stats.ineffective,
                OutcomeType.DEGRADATION.value: stats.degradations,
                OutcomeType.UNKNOWN.value: stats.unknowns,
            }
            for name, count in counts.items():
                by_outcome[name] += count
            totals["samples"] += stats.samples
            totals["successes"] += pattern.successes
            totals["unknown"] += stats.unknowns
            pairs.append(
                {
                    "cause": cause,
                    "action_type": action,
                    "samples": stats.samples,
                    "successes": pattern.successes,
                    "success_rate": pattern.success_rate,
                    "confidence": pattern.confidence,
                    "mean_time_to_stabilize_s": pattern.mean_time_to_stabilize_s,
                    "evidence": {
                        "wins": round(pattern.wins, 3),
                        "losses": round(pattern.losses, 3),
                    },
                    "outcomes": counts,
                }
            )
        samples = int(totals["samples"])
        return {
            "saturation_samples": self._config.saturation_samples,
            "pairs": pairs,
            "totals": {
                "pairs": len(pairs),
                "samples": samples,
                "successes": totals["successes"],
                "success_rate": totals["successes"] / samples if samples else 0.0,
                "unknown": int(totals["unknown"]),
                "outcomes": by_outcome,
            },
        }
