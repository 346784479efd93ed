"""The decision record: what one iteration saw, weighed, chose and did, and why.

`DecisionRecord` is built by the iteration (loop/iteration.py) from typed values and
serialised once, by `as_dict`, into the JSON the store journals, /stats and `mape-k
status` show and the listeners receive. Large inputs are summarised, never copied
(`RecordSummary`): a record is bounded whatever fires. "Did nothing, because…" is a
decision too: every record has a `result` and a `choice.why`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mape_k.integrations.charter.base import CommitteeState
from mape_k.loop.analyze import Signal
from mape_k.loop.guards import Freeze
from mape_k.models import (
    AnalysisResult,
    Cause,
    GuardDecision,
    KnobSetting,
    Observation,
    PolicyExecution,
    PolicyOutcome,
    RemediationPolicy,
    Severity,
    Violation,
    ViolationPattern,
    ViolationSource,
)


@dataclass(frozen=True, slots=True)
class DecisionContext:
    """What a decision stood on beyond the observation's violations, journaled under
    `inputs` so that `mape-k replay` (src/mape_k/replay.py) can decide it again: the
    signals the analysis and the return to baseline read (value and trend per (name,
    component)), the one reading of the target (or why there was none) and the switches
    the guards read (dry-run, a freeze, a failed start-up validation)."""

    signals: Mapping[tuple[str, str], Signal] = field(default_factory=dict)
    reading: CommitteeState | None = None
    reading_problem: str | None = None
    dry_run: bool = False
    freeze: Freeze | None = None
    startup_problem: str | None = None

    @property
    def read(self) -> tuple[CommitteeState | None, str | None]:
        """The reading as the pipeline resolves against it: (state, why there is none)."""
        return self.reading, self.reading_problem

    def as_dict(self, *, top_n: int) -> dict[str, Any]:
        """Bounded: the signals of at most `top_n` components (sorted), the Charter's
        config keys at most 64 (sorted)."""
        components = sorted({component for _, component in self.signals})[:top_n]
        reading = None
        if self.reading is not None:
            reading = dataclasses.asdict(self.reading)
            config = self.reading.config
            reading["config"] = {key: config[key] for key in sorted(config)[:64]}
        return {
            "signals": [
                {"name": name, "component": component, "value": s.value, "trend": s.trend}
                for (name, component), s in sorted(self.signals.items())
                if component in components
            ],
            "reading": reading,
            "reading_problem": self.reading_problem,
            "modes": {
                "dry_run": self.dry_run,
                "freeze": None if self.freeze is None else dataclasses.asdict(self.freeze),
                "startup_problem": self.startup_problem,
            },
        }


@dataclass
class DecisionRecord:
    """One iteration's decision, typed; `as_dict` is its one serialisation."""

    id: str
    started_at: float | None
    result: str = "idle"
    why: str = ""
    observation: Observation | None = None
    analysis: AnalysisResult | None = None
    candidates: Sequence[RemediationPolicy] = ()
    guard_decisions: Sequence[GuardDecision] = ()
    chosen: RemediationPolicy | None = None
    execution: PolicyExecution | None = None
    verifications: Sequence[PolicyOutcome] = ()
    panic: dict[str, Any] | None = None
    pending_approvals: Sequence[str] = ()
    phases_s: dict[str, float] = field(default_factory=dict)
    # Replicas: why this one did not act (a follower, no lease); None: it leads or is alone.
    follower: str | None = None
    # Autonomy (loop/autonomy.py): the would-dos of policies at shadow (a str for one still
    # open from an earlier iteration), those scored, and the changes of level made.
    shadow: list[dict[str, Any] | str] = field(default_factory=list)
    shadow_scored: list[dict[str, Any]] = field(default_factory=list)
    autonomy_changes: list[dict[str, Any]] = field(default_factory=list)
    predicted: Sequence[Violation] = ()  # this pass's predicted violations (loop/predict.py)
    # What else the decision stood on, for `mape-k replay` (src/mape_k/replay.py).
    context: DecisionContext | None = None

    @classmethod
    def failed(cls, iteration: int, started_at: float | None, error: str) -> DecisionRecord:
        """A failed iteration is a decision too: nothing was executed, and why."""
        return cls(
            id=f"{iteration}-failed",
            started_at=started_at,
            result="error",
            why=f"iteration failed, nothing executed: {error}",
        )

    def as_dict(self, *, top_n: int) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id, "started_at": self.started_at}
        if self.observation is not None:
            # What the candidates stand on in full, then the top of the rest, then counts
            # and a digest of the tail (`omitted`).
            summary = RecordSummary(self.candidates, top_n)
            record["inputs"] = summary.inputs(self.observation)
            if self.context is not None:
                record["inputs"].update(self.context.as_dict(top_n=top_n))
            record["panic"] = self.panic
            record["verifications"] = [_outcome(o) for o in self.verifications]
            if self.analysis is not None:
                record["patterns"] = summary.patterns(self.analysis.patterns)
                record["causes"] = summary.causes(self.analysis.causes)
                record["inhibited"] = summary.inhibited(self.analysis.inhibited)
            record["omitted"] = summary.omitted
            record["candidates"] = [_candidate(p) for p in self.candidates]
            record["guard_decisions"] = [_guard(d) for d in self.guard_decisions]
        record["choice"] = {"policy_id": self.chosen.id if self.chosen else None, "why": self.why}
        record["execution"] = _execution(self.execution) if self.execution else None
        record["result"] = self.result
        record["pending_approvals"] = list(self.pending_approvals)
        record["phases_s"] = self.phases_s
        if self.follower is not None:
            record["follower"] = self.follower
        if self.shadow:
            record["shadow"] = list(self.shadow)
        if self.shadow_scored:
            record["shadow_scored"] = list(self.shadow_scored)
        if self.autonomy_changes:
            record["autonomy_changes"] = list(self.autonomy_changes)
        if self.predicted:
            record["predicted"] = [_predicted(v) for v in self.predicted[:top_n]]
        return record


def classify(
    observation: Observation,
    chosen: RemediationPolicy | None,
    execution: PolicyExecution | None,
    policies: Sequence[RemediationPolicy],
    decisions: Sequence[GuardDecision],
    *,
    shadow: bool = False,
) -> str:
    """The iteration's result (one of metrics.ITERATION_RESULTS). Pure."""
    if execution is not None:
        return "acted"
    if observation.degraded:
        return "degraded"
    if shadow:
        return "shadow"
    if decisions:
        return "held"
    if policies and chosen is None:
        return "pending_approval"
    return "idle"


def why_nothing(observation: Observation, min_score: float, *, top_n: int = 20) -> str:
    """Why an iteration with no candidate policy did nothing, in words (bounded). Pure."""
    if observation.degraded:
        return f"nothing to do on missing data: {observation.degraded_reason}"
    if observation.violations:
        causes = _some(sorted({v.key for v in observation.violations}), top_n)
        return (
            f"no remediation for {causes}: none configured, or every candidate scored"
            f" below planner.min_score ({min_score:g})"
        )
    if observation.alerts_superseded:
        return (
            f"no violations: firing alert(s) {_some(observation.alerts_superseded, top_n)}"
            " superseded by a fresh reading that finds the target fine (alerts lag their"
            " measurement)"
        )
    return "no violations"


# --- serialisers (plain dicts: JSON for the store and /stats) ----------------------------


def _some(items: Sequence[str], limit: int) -> str:
    """'a, b, c' or, past `limit` items, 'a, b and 998 more': a bounded line of text."""
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


def _digest(parts: Iterable[str]) -> str:
    """Order-independent digest of a set of items: equal tails have equal digests."""
    hasher = hashlib.sha256()
    for part in sorted(parts):
        hasher.update(part.encode("utf-8", "replace"))
        hasher.update(b"\n")
    return f"sha256:{hasher.hexdigest()}"


def _top_counts(counts: Counter[str], limit: int) -> dict[str, int]:
    """The `limit` largest counts; the rest summed under "(other)"."""
    top = dict(counts.most_common(limit))
    rest = sum(counts.values()) - sum(top.values())
    if rest:
        top["(other)"] = rest
    return top


_SEVERITY_RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
_ViolationRow = tuple[str, str, Severity, ViolationSource, float | None, float | None]


class RecordSummary:
    """Bounds the lists of one decision record (pure: built from this iteration's values).

    What the candidates stand on (their causes, the violations and patterns of those causes)
    is kept in full; of the rest, the first `top_n` (most urgent first); the tail becomes
    `omitted[<list>]`: how many items, counts by kind, and a digest of the omitted items.
    Identical violations (many alerts of one kind on one component) are kept once with a
    `count`. A record is then O(top_n + candidates' evidence) whatever fires.
    """

    def __init__(self, policies: Sequence[RemediationPolicy], top_n: int) -> None:
        self.top_n = top_n
        self.keys = frozenset(p.cause.key for p in policies)
        self.kinds = frozenset(p.cause.name for p in policies)
        self.targets = frozenset(p.cause.target for p in policies)
        self.omitted: dict[str, dict[str, Any]] = {}

    def _omit(
        self, name: str, *, total: int, shown: int, by: Counter[str], parts: list[str]
    ) -> None:
        if total > shown:
            self.omitted[name] = {
                "total": total,
                "shown": shown,
                "omitted": total - shown,
                "by": _top_counts(by, self.top_n),
                "digest": _digest(parts),
            }

    def inputs(self, observation: Observation) -> dict[str, Any]:
        rows: Counter[_ViolationRow] = Counter()
        latest: dict[_ViolationRow, Violation] = {}  # each row's latest: its time and query
        for v in observation.violations:
            row = (v.kind, v.component, v.severity, v.source, v.value, v.threshold)
            rows[row] += 1
            if row not in latest or v.timestamp > latest[row].timestamp:
                latest[row] = v
        focus = [row for row in rows if f"{row[0]}/{row[1]}" in self.keys]
        rest = sorted(
            (row for row in rows if f"{row[0]}/{row[1]}" not in self.keys),
            key=lambda row: (_SEVERITY_RANK[row[2]], -rows[row]),
        )
        shown, tail = focus + rest[: self.top_n], rest[self.top_n :]
        by: Counter[str] = Counter()
        for row in tail:
            by[row[0]] += rows[row]
        self._omit(
            "violations",
            total=len(observation.violations),
            shown=sum(rows[row] for row in shown),
            by=by,
            parts=[f"{rows[row]}x{row!r}" for row in tail],
        )
        return {
            "degraded": observation.degraded_reason,
            "queries": [
                {"name": q.name, "ok": q.ok, "samples": q.samples, "error": q.error}
                for q in observation.queries
            ],
            "violations": [_violation(row, rows[row], latest[row]) for row in shown],
            "alerts_firing": observation.alerts_firing,
            "alerts_superseded": list(observation.alerts_superseded),
        }

    def causes(self, causes: Sequence[Cause]) -> list[dict[str, Any]]:
        focus = [c for c in causes if c.key in self.keys]
        rest = [c for c in causes if c.key not in self.keys]  # most urgent first already
        shown, tail = focus + rest[: self.top_n], rest[self.top_n :]
        self._omit(
            "causes",
            total=len(causes),
            shown=len(shown),
            by=Counter(c.name for c in tail),
            parts=[repr(_cause(c)) for c in tail],
        )
        return [_cause(c) for c in shown]

    def _about_focus(self, p: ViolationPattern) -> bool:
        kinds = {p.cause, *p.related}
        return not kinds.isdisjoint(self.kinds) and not self.targets.isdisjoint(p.components)

    def patterns(self, patterns: Sequence[ViolationPattern]) -> list[dict[str, Any]]:
        focus = [p for p in patterns if self._about_focus(p)]
        rest = sorted(
            (p for p in patterns if not self._about_focus(p)),
            key=lambda p: (-p.confidence, -p.count),
        )
        shown, tail = focus + rest[: self.top_n], rest[self.top_n :]
        self._omit(
            "patterns",
            total=len(patterns),
            shown=len(shown),
            by=Counter(p.kind.value for p in tail),
            parts=[f"{p.kind.value}/{p.cause}/{','.join(p.components)}/{p.count}" for p in tail],
        )
        return [self._pattern(p) for p in shown]

    def _pattern(self, p: ViolationPattern) -> dict[str, Any]:
        data = _pattern(p)
        if len(p.components) > self.top_n:
            ours = [c for c in p.components if c in self.targets]
            others = [c for c in p.components if c not in self.targets]
            data["components"] = ours + others[: self.top_n]
            data["components_total"] = len(p.components)
        return data

    def inhibited(self, inhibited: Sequence[str]) -> list[str]:
        shown, tail = list(inhibited[: self.top_n]), list(inhibited[self.top_n :])
        self._omit(
            "inhibited",
            total=len(inhibited),
            shown=len(shown),
            by=Counter(entry.split("/", 1)[0] for entry in tail),
            parts=tail,
        )
        return shown


def _violation(row: _ViolationRow, count: int, latest: Violation) -> dict[str, Any]:
    kind, component, severity, source, value, threshold = row
    data: dict[str, Any] = {
        "kind": kind,
        "component": component,
        "severity": severity.value,
        "source": source.value,
        "value": value,
        "threshold": threshold,
        "at": latest.timestamp,
        "query": latest.query,
    }
    if count > 1:
        data["count"] = count
    return data


def _pattern(p: ViolationPattern) -> dict[str, Any]:
    return {
        "kind": p.kind.value,
        "cause": p.cause,
        "components": list(p.components),
        "count": p.count,
        "confidence": round(p.confidence, 3),
        "description": p.description,
    }


def _cause(c: Cause) -> dict[str, Any]:
    return {
        "name": c.name,
        "target": c.target,
        "severity": c.severity.value,
        "confidence": round(c.confidence, 3),
        "violations": c.violations,
        "patterns": [k.value for k in c.patterns],
    }


def _predicted(v: Violation) -> dict[str, Any]:
    return {
        "kind": v.kind,
        "component": v.component,
        "value": v.value,
        "threshold": v.threshold,
        "lead_s": None if v.lead_s is None else round(v.lead_s, 1),
        "expected_at": None if v.lead_s is None else round(v.timestamp + v.lead_s, 1),
    }


def _candidate(p: RemediationPolicy) -> dict[str, Any]:
    predicted = {"predicted_in_s": round(p.cause.lead_s, 1)} if p.cause.lead_s is not None else {}
    return {
        "policy_id": p.id,
        "cause": p.cause.key,
        "actions": [{"type": a.action_type, "parameters": a.parameters} for a in p.actions],
        "cost": round(p.score.cost, 3),
        "benefit": round(p.score.benefit, 3),
        "posterior": None if p.score.posterior is None else p.score.posterior.as_dict(),
        "exploration": round(p.score.exploration, 3),
        "confidence": round(p.score.confidence, 3),
        "score": round(p.score.score, 3),
        "requires_approval": p.requires_approval,
        "shadow": p.shadow,
    } | predicted


def _guard(d: GuardDecision) -> dict[str, Any]:
    return {
        "guard": d.guard,
        "verdict": d.verdict.value,
        "reason": d.reason,
        "policy_id": d.policy_id,
        "until": d.until,
    }


def _execution(e: PolicyExecution) -> dict[str, Any]:
    return {
        "id": e.id,
        "status": e.status.value,
        "error": e.error,
        "actions": [
            {
                "type": a.action.action_type,
                "sets": _sets(a.action.sets),
                "status": a.status.value,
                "idempotency_key": a.idempotency_key,
                "error": a.error,
            }
            for a in e.actions
        ],
    }


def _sets(sets: tuple[KnobSetting, ...] | None) -> list[dict[str, Any]] | None:
    """What a resolved action set (None: it was not resolved)."""
    if sets is None:
        return None
    return [{"knob": s.knob, "before": s.before, "after": s.after} for s in sets]


def _outcome(o: PolicyOutcome) -> dict[str, Any]:
    return {
        "execution_id": o.execution_id,
        "cause": o.cause,
        "action_type": o.action_type,
        "outcome": o.outcome.value,
        "value_before": o.value_before,
        "value_after": o.value_after,
        "time_to_stabilize_s": o.time_to_stabilize_s,
    }
