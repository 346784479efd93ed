"""Prediction: early warning before a rule's threshold is crossed, and its track record.

For each violation rule with a `predict` block (config.PredictConfig) a trend is fitted
over the last `window_s` of the rule's query — least squares (Prometheus' `predict_linear`)
or Holt's linear trend — and extrapolated: when it crosses the threshold in the rule's
direction within `horizon_s`, and the signal is not over it yet, a *predicted* violation
is raised with its lead time. It is never one of the Observation's violations (it
inhibits nothing and clears nothing); the pipeline may plan for it (`plan_causes`: only
where the rule says `act`, only the low-cost candidates).

Where the series comes from: a range query over the window when the metric source has
them (`PrometheusClient.query_range`), else the loop's own readings (`SeriesHistory`,
bounded) — the simulator's mock source has no range queries. Either way the same pure
`forecast` fits it.

`Predictions` is the one owner of the track record: one open prediction per (rule,
target) until it resolves as `came_true` (the real violation appeared by the expected
crossing plus `tolerance_s`), `did_not` (the deadline passed with no violation and no
action) or `prevented` (the daemon acted on it and the violation did not come).
Precision = came_true / (came_true + did_not); recall = violation onsets of the rule that
had an open prediction / all its onsets.

The track record and `Predictor._since` survive a restart and a takeover: the leader saves
them under `STATE_KEY` after an iteration that changed them; a start loads them, a takeover
strictly (the shared store is the truth).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from mape_k.config import Comparator, MonitorConfig, PredictConfig, ViolationRule
from mape_k.errors import MapekError
from mape_k.models import (
    SEVERITY_WEIGHT,
    Cause,
    ExecutionStatus,
    Observation,
    PolicyExecution,
    Violation,
    ViolationSource,
)
from mape_k.storeio import BAD_STATE, AsyncStore, read_state

if TYPE_CHECKING:
    from mape_k.integrations.prometheus import RangeResult
    from mape_k.metrics import Metrics

log = structlog.get_logger(__name__)

Point = tuple[float, float]  # (unix seconds, value)
Outcome = Literal["came_true", "did_not", "prevented"]
OUTCOMES: tuple[Outcome, ...] = ("came_true", "did_not", "prevented")
STATE_KEY = "predictions"  # the track record, in the store's state


# --- the forecast (pure) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forecast:
    """A trend fitted to one series at `now`."""

    level: float  # the fitted value now
    slope: float  # change per second (Holt's trend with method holt)
    t_stat: float  # the least-squares slope over its standard error (inf: a perfect line)
    points: int
    lead_s: float | None  # seconds until the fitted trend crosses the threshold; None: never


def least_squares(points: Sequence[Point]) -> tuple[float, float, float, float] | None:
    """(mean t, mean v, slope, t statistic of the slope); None when all t are equal."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread <= 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    residual = sum((v - (mean_v + slope * (t - mean_t))) ** 2 for t, v in points)
    if slope == 0:
        return mean_t, mean_v, 0.0, 0.0
    # A residual within rounding of zero is a perfect line (a synthetic ramp).
    scale = max(1.0, sum(v * v for _, v in points))
    if n <= 2 or residual <= 1e-18 * scale:
        return mean_t, mean_v, slope, math.inf
    error = math.sqrt(residual / (n - 2) / spread)
    return mean_t, mean_v, slope, abs(slope) / error


def _holt(points: Sequence[Point], alpha: float, beta: float) -> tuple[float, float]:
    """Holt's linear trend on irregular times: (level at the last point, trend per second)."""
    (t0, v0), (t1, v1) = points[0], points[1]
    level, trend = v1, (v1 - v0) / (t1 - t0)
    last = t1
    for t, v in points[2:]:
        dt = t - last
        expected = level + trend * dt
        new_level = alpha * v + (1 - alpha) * expected
        trend = beta * (new_level - level) / dt + (1 - beta) * trend
        level, last = new_level, t
    return level, trend


def forecast(
    points: Iterable[Point],
    *,
    now: float,
    threshold: float,
    comparator: Comparator,
    config: PredictConfig,
) -> Forecast | None:
    """The trend of `points` (those in the window, finite) and when it crosses `threshold`
    in the rule's direction; None with fewer than `min_points`. Pure.

    The least-squares slope must be `significance` standard errors from zero, and (with
    Holt) Holt's trend must point the same way: noise on a flat signal predicts nothing."""
    # one value per instant (the last given), in the window, finite
    kept = {t: v for t, v in points if now - config.window_s <= t <= now and math.isfinite(v)}
    series = sorted(kept.items())
    if len(series) < config.min_points:
        return None
    fitted = least_squares(series)
    if fitted is None:
        return None
    mean_t, mean_v, ls_slope, t_stat = fitted
    if config.method == "holt":
        level, slope = _holt(series, config.holt_alpha, config.holt_beta)
        level += slope * (now - series[-1][0])
    else:
        level, slope = mean_v + ls_slope * (now - mean_t), ls_slope
    rising = comparator in {Comparator.GT, Comparator.GE}
    toward = (slope > 0 and ls_slope > 0) if rising else (slope < 0 and ls_slope < 0)
    lead = (threshold - level) / slope if toward and t_stat >= config.significance else None
    return Forecast(level=level, slope=slope, t_stat=t_stat, points=len(series), lead_s=lead)


def predicts(result: Forecast | None, config: PredictConfig) -> bool:
    """A predicted violation: the crossing is ahead, within the horizon."""
    return (
        result is not None and result.lead_s is not None and 0 < result.lead_s <= config.horizon_s
    )


# --- the loop's own readings, for sources without range queries ---------------------------


class SeriesHistory:
    """The recent readings of each (query, target), bounded by age and count."""

    MAX_POINTS = 512

    def __init__(self) -> None:
        self._points: dict[tuple[str, str], deque[Point]] = {}

    def add(self, observation: Observation, *, queries: set[str], keep_s: float) -> None:
        for metric in observation.metrics:
            if metric.name not in queries:
                continue
            points = self._points.setdefault(
                (metric.name, metric.component), deque(maxlen=self.MAX_POINTS)
            )
            if not points or metric.timestamp > points[-1][0]:
                points.append((metric.timestamp, metric.value))
        for key, points in list(self._points.items()):
            while points and points[0][0] < observation.at - keep_s:
                points.popleft()
            if not points or key[0] not in queries:
                del self._points[key]

    def series(self, query: str) -> dict[str, list[Point]]:
        """Target -> its points, for one query."""
        return {target: list(p) for (name, target), p in self._points.items() if name == query}


# --- the track record --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prediction:
    rule: str
    target: str
    at: float  # when it was raised
    lead_s: float
    expected_at: float  # the expected crossing
    deadline: float  # expected_at + tolerance_s
    value: float | None
    threshold: float | None
    acted_at: float | None = None  # the daemon acted on it (a completed execution)
    outcome: Outcome | None = None
    resolved_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "target": self.target,
            "at": self.at,
            "lead_s": round(self.lead_s, 1),
            "expected_at": round(self.expected_at, 1),
            "deadline": round(self.deadline, 1),
            "value": self.value,
            "threshold": self.threshold,
            "acted_at": self.acted_at,
            "outcome": self.outcome,
            "resolved_at": self.resolved_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        """A saved one (`asdict`, unrounded); raises ValueError/KeyError/TypeError."""
        outcome = data["outcome"]
        if outcome is not None and outcome not in OUTCOMES:
            raise ValueError(f"{outcome!r} is not an outcome")
        return cls(
            rule=str(data["rule"]),
            target=str(data["target"]),
            at=float(data["at"]),
            lead_s=float(data["lead_s"]),
            expected_at=float(data["expected_at"]),
            deadline=float(data["deadline"]),
            value=_optional(data["value"]),
            threshold=_optional(data["threshold"]),
            acted_at=_optional(data["acted_at"]),
            outcome=outcome,
            resolved_at=_optional(data["resolved_at"]),
        )


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(slots=True)
class _RuleRecord:
    counts: Counter[str] = field(default_factory=Counter)  # raised and each outcome
    onsets: int = 0
    foreseen: int = 0  # onsets with an open prediction

    def precision(self) -> float | None:
        judged = self.counts["came_true"] + self.counts["did_not"]
        return self.counts["came_true"] / judged if judged else None

    def recall(self) -> float | None:
        return self.foreseen / self.onsets if self.onsets else None


class Predictions:
    """Every prediction from raised to resolved; precision and recall per rule. No I/O:
    `update` returns what changed (raised and resolved), the caller logs and counts it."""

    RECENT = 50

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], Prediction] = {}
        self._rules: dict[str, _RuleRecord] = {}
        self._violating: set[tuple[str, str]] | None = None  # None: nothing seen yet
        self._recent: deque[Prediction] = deque(maxlen=self.RECENT)

    def update(
        self,
        now: float,
        *,
        tolerance: Mapping[str, float],
        violating: Iterable[tuple[str, str]],
        predicted: Sequence[Violation],
    ) -> list[Prediction]:
        """One usable observation: `tolerance` (rule -> tolerance_s) names the rules that
        predict, `violating` the (rule, target) pairs really violating now, `predicted`
        this pass's predicted violations. Returns the predictions raised and resolved."""
        changes: list[Prediction] = []
        for key in [k for k in self._open if k[0] not in tolerance]:
            del self._open[key]  # its rule no longer predicts (a reload)
        for key, prediction in list(self._open.items()):
            if now > prediction.deadline:
                outcome: Outcome = "did_not" if prediction.acted_at is None else "prevented"
                changes.append(self._resolve(key, outcome, now))
        current = {key for key in violating if key[0] in tolerance}
        if self._violating is not None:
            for key in sorted(current - self._violating):
                record = self._record(key[0])
                record.onsets += 1
                if key in self._open:
                    record.foreseen += 1
                    changes.append(self._resolve(key, "came_true", now))
        self._violating = current
        for violation in predicted:
            key = (violation.kind, violation.component)
            if key in self._open or key in current or violation.lead_s is None:
                continue
            if violation.kind not in tolerance:
                continue
            expected = now + violation.lead_s
            prediction = Prediction(
                rule=violation.kind,
                target=violation.component,
                at=now,
                lead_s=violation.lead_s,
                expected_at=expected,
                deadline=expected + tolerance[violation.kind],
                value=violation.value,
                threshold=violation.threshold,
            )
            self._open[key] = prediction
            self._record(violation.kind).counts["raised"] += 1
            changes.append(prediction)
        return changes

    def acted(self, rule: str, target: str, *, now: float) -> bool:
        """The daemon acted on the open prediction of (rule, target); False if none is open."""
        prediction = self._open.get((rule, target))
        if prediction is None:
            return False
        if prediction.acted_at is None:
            self._open[(rule, target)] = replace(prediction, acted_at=now)
        return True

    def open(self) -> list[Prediction]:
        return list(self._open.values())

    def rules(self) -> list[str]:
        """The rules with a record."""
        return sorted(self._rules)

    def counts(self, rule: str) -> Counter[str]:
        return Counter(self._record(rule).counts) if rule in self._rules else Counter()

    def precision(self, rule: str) -> float | None:
        return self._rules[rule].precision() if rule in self._rules else None

    def recall(self, rule: str) -> float | None:
        return self._rules[rule].recall() if rule in self._rules else None

    def summary(self) -> dict[str, Any]:
        """Per rule: counts, onsets, precision, recall; the open and recent predictions."""
        rules: dict[str, Any] = {}
        for rule, record in sorted(self._rules.items()):
            precision, recall = record.precision(), record.recall()
            rules[rule] = {
                "raised": record.counts["raised"],
                **{outcome: record.counts[outcome] for outcome in OUTCOMES},
                "open": sum(1 for key in self._open if key[0] == rule),
                "onsets": record.onsets,
                "foreseen": record.foreseen,
                "precision": None if precision is None else round(precision, 4),
                "recall": None if recall is None else round(recall, 4),
            }
        return {
            "rules": rules,
            "open": [p.as_dict() for p in self._open.values()],
            "recent": [p.as_dict() for p in self._recent],
        }

    def dump(self) -> dict[str, Any]:
        """The whole record, JSON-able (see `restore`)."""
        return {
            "open": [asdict(p) for p in self._open.values()],
            "rules": {
                rule: {"counts": dict(r.counts), "onsets": r.onsets, "foreseen": r.foreseen}
                for rule, r in self._rules.items()
            },
            "violating": None
            if self._violating is None
            else [list(k) for k in sorted(self._violating)],
            "recent": [asdict(p) for p in self._recent],
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """What `dump` gave (all or nothing); raises ValueError/KeyError/TypeError on a bad
        one. An empty mapping is an empty record."""
        open_ = [Prediction.from_dict(row) for row in saved.get("open", [])]
        rules = {
            str(rule): _RuleRecord(
                counts=Counter({str(k): int(v) for k, v in dict(row["counts"]).items()}),
                onsets=int(row["onsets"]),
                foreseen=int(row["foreseen"]),
            )
            for rule, row in dict(saved.get("rules", {})).items()
        }
        violating = saved.get("violating")
        pairs = None if violating is None else {(str(r), str(t)) for r, t in violating}
        recent = [Prediction.from_dict(row) for row in saved.get("recent", [])]
        self._open = {(p.rule, p.target): p for p in open_}
        self._rules = rules
        self._violating = pairs
        self._recent = deque(recent, maxlen=self.RECENT)

    def _record(self, rule: str) -> _RuleRecord:
        return self._rules.setdefault(rule, _RuleRecord())

    def _resolve(self, key: tuple[str, str], outcome: Outcome, now: float) -> Prediction:
        done = replace(self._open.pop(key), outcome=outcome, resolved_at=now)
        self._record(key[0]).counts[outcome] += 1
        self._recent.append(done)
        return done


# --- planning for a prediction (pure) ------------------------------------------------------


def cause_of(violation: Violation, *, confidence: float) -> Cause:
    """The cause a predicted violation stands for, marked predicted, with its lead."""
    return Cause(
        name=violation.kind,
        target=violation.component,
        severity=violation.severity,
        confidence=confidence,
        violations=1,
        query=violation.query,
        value=violation.value,
        threshold=violation.threshold,
        source=ViolationSource.RULE,
        labels=dict(violation.labels),
        predicted=True,
        lead_s=violation.lead_s,
    )


def plan_causes(
    predicted: Sequence[Violation],
    rules: Sequence[ViolationRule],
    *,
    real: Iterable[str],
    base_confidence: float,
) -> list[tuple[Cause, float]]:
    """(cause, max_cost) for each predicted violation the planner may act on: its rule
    says `act`, and no real cause with the same key is planned already (that one is the
    fix). The confidence is a lone real violation's (analyzer.base_confidence x severity)."""
    configs = {rule.name: rule.predict for rule in rules if rule.predict is not None}
    taken = set(real)
    out: list[tuple[Cause, float]] = []
    for violation in predicted:
        config = configs.get(violation.kind)
        if config is None or not config.act or violation.key in taken:
            continue
        taken.add(violation.key)
        confidence = base_confidence * SEVERITY_WEIGHT[violation.severity]
        out.append((cause_of(violation, confidence=confidence), config.max_cost))
    return out


def describe(violation: Violation) -> str:
    """`predicted overload/charter in 240 s (0.84 -> 0.9)`."""
    lead = 0.0 if violation.lead_s is None else violation.lead_s
    value = "?" if violation.value is None else f"{violation.value:.4g}"
    return f"predicted {violation.key} in {lead:.0f} s ({value} -> {violation.threshold:g})"


# --- the predictor: series in, predicted violations out -----------------------------------


class RangeReader(Protocol):
    """A metric source with range queries (PrometheusClient)."""

    async def query_range(
        self, promql: str, *, start: float, end: float, step: float, timeout_s: float | None = None
    ) -> RangeResult: ...


# A step in one of these moved the target, whatever became of its execution.
_APPLIED = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.ROLLED_BACK})


class Predictor:
    """Reads each predicting rule's series, forecasts, and keeps the track record
    (`ledger`), saved in `store` under STATE_KEY. `ranges` None: the series are the loop's
    own readings."""

    def __init__(
        self,
        *,
        ranges: RangeReader | None = None,
        metrics: Metrics | None = None,
        store: AsyncStore | None = None,
    ) -> None:
        self._ranges = ranges
        self._metrics = metrics
        self._store = store
        self._saved: dict[str, Any] | None = None  # what the store holds, as far as known
        self._history = SeriesHistory()
        self._failing: set[str] = set()
        # target -> when an action last moved it: a forecast is fitted on the readings
        # since, not across the step that action made in the series
        self._since: dict[str, float] = {}
        self.ledger = Predictions()

    async def predict(
        self, observation: Observation, config: MonitorConfig, *, now: float
    ) -> list[Violation]:
        """This pass's predicted violations (none on degraded data), the ledger updated."""
        rules = [rule for rule in config.rules if rule.predict is not None]
        if not rules or observation.degraded:
            return []
        if self._ranges is None:
            keep = max(rule.predict.window_s for rule in rules if rule.predict is not None)
            self._history.add(observation, queries={r.query for r in rules}, keep_s=keep)
        violating = {(v.kind, v.component) for v in observation.violations}
        predicted: list[Violation] = []
        for rule in rules:
            series = await self._series(rule, config, now=now)
            for target, read in sorted(series.items()):
                since = self._since.get(target)
                points = read if since is None else [p for p in read if p[0] >= since]
                violation = _predicted(rule, target, points, observation, violating, now=now)
                if violation is not None:
                    predicted.append(violation)
        tolerance = {rule.name: rule.predict.tolerance_s for rule in rules if rule.predict}
        changes = self.ledger.update(
            now, tolerance=tolerance, violating=violating, predicted=predicted
        )
        self._report(changes, predicted)
        return predicted

    def note_execution(self, execution: PolicyExecution, *, now: float) -> None:
        """An execution that applied a step (not a dry run; a failed one whose first
        steps landed too): its target's series starts again (the readings before it are
        another regime: a scale-up steps the saturation down). One that completed, for a
        predicted cause: the prediction was acted on."""
        if execution.dry_run:
            return
        if any(step.status in _APPLIED for step in execution.actions):
            self._since[execution.policy.target] = execution.finished_at or now
        cause = execution.policy.cause
        if cause.predicted and execution.status is ExecutionStatus.COMPLETED:
            self.ledger.acted(cause.name, cause.target, now=now)

    def summary(self) -> dict[str, Any]:
        return self.ledger.summary()

    # --- persistence -----------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The track record and `_since`, JSON-able (the readings are not kept)."""
        return {**self.ledger.dump(), "since": dict(self._since)}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """What `dump` gave (all or nothing); raises ValueError/KeyError/TypeError on a bad one."""
        since = {str(k): float(v) for k, v in dict(saved.get("since", {})).items()}
        self.ledger.restore(saved)
        self._since = since

    async def load(self, *, strict: bool = False) -> None:
        """What an earlier run (or the previous leader) saved. `strict` (a takeover): a read
        that fails raises. A bad saved state is logged and the record starts empty."""
        if self._store is None:
            return
        event = "predictions_unreadable"
        saved = await read_state(self._store, STATE_KEY, strict=strict, event=event)
        if saved is None:
            return
        try:
            self.restore(saved)
        except BAD_STATE as exc:
            log.error(event, error=f"bad saved state: {exc}; starting an empty record")
            self.ledger, self._since = Predictions(), {}
            self._saved = None  # the next save writes a good state over the bad one
            return
        self._saved = self.dump()
        self._export(set(self.ledger.rules()))

    async def save(self, now: float) -> None:
        """The state into the store if it changed since it was last saved or loaded."""
        if self._store is None:
            return
        state = self.dump()
        if state == self._saved:
            return
        try:
            await self._store.set_state(STATE_KEY, state, at=now)
        except MapekError as exc:  # memory stays the truth; the next iteration writes again
            log.error("predictions_save_failed", error=str(exc))
            return
        self._saved = state

    async def _series(
        self, rule: ViolationRule, config: MonitorConfig, *, now: float
    ) -> dict[str, list[Point]]:
        predict = rule.predict
        if predict is None:
            return {}
        if self._ranges is None:
            return self._history.series(rule.query)
        promql = config.queries[rule.query]
        try:
            result = await self._ranges.query_range(
                promql,
                start=now - predict.window_s,
                end=now,
                step=predict.step_s,
                timeout_s=config.query_timeout_s,
            )
        except (MapekError, TimeoutError) as exc:
            if rule.name not in self._failing:
                log.warning("prediction_range_failed", rule=rule.name, error=str(exc) or "timeout")
            self._failing.add(rule.name)
            return {}
        if rule.name in self._failing:
            log.info("prediction_range_recovered", rule=rule.name)
            self._failing.discard(rule.name)
        out: dict[str, list[Point]] = {}
        for series in result.series:
            target = series.labels.get(rule.component_label) or rule.default_component
            out.setdefault(target, []).extend(series.points)
        return out

    def _report(self, changes: list[Prediction], predicted: list[Violation]) -> None:
        by_key = {(v.kind, v.component): v for v in predicted}
        for change in changes:
            if change.outcome is None:
                violation = by_key[(change.rule, change.target)]
                log.info(
                    "prediction_raised",
                    rule=change.rule,
                    target=change.target,
                    lead_s=round(change.lead_s, 1),
                    expected_at=round(change.expected_at, 1),
                    value=change.value,
                    threshold=change.threshold,
                    what=describe(violation),
                )
            else:
                log.info(
                    "prediction_resolved",
                    rule=change.rule,
                    target=change.target,
                    outcome=change.outcome,
                    raised_at=change.at,
                    expected_at=round(change.expected_at, 1),
                    acted_at=change.acted_at,
                )
            if self._metrics is not None:
                self._metrics.predictions.labels(
                    rule=change.rule, outcome=change.outcome or "raised"
                ).inc()
        self._export({change.rule for change in changes})

    def _export(self, rules: set[str]) -> None:
        """The precision and recall gauges of `rules`."""
        if self._metrics is None:
            return
        for rule in rules:
            precision, recall = self.ledger.precision(rule), self.ledger.recall(rule)
            if precision is not None:
                self._metrics.prediction_precision.labels(rule=rule).set(precision)
            if recall is not None:
                self._metrics.prediction_recall.labels(rule=rule).set(recall)


def _predicted(
    rule: ViolationRule,
    target: str,
    points: list[Point],
    observation: Observation,
    violating: set[tuple[str, str]],
    *,
    now: float,
) -> Violation | None:
    """The rule's predicted violation on `target`, if its forecast says so and the target
    is read fine now (a current reading, not over the threshold, no violation of the kind)."""
    config = rule.predict
    current = observation.value(rule.query, target)
    if config is None or current is None or (rule.name, target) in violating:
        return None
    if math.isnan(current) or rule.comparator.holds(current, rule.threshold):
        return None
    result = forecast(
        points, now=now, threshold=rule.threshold, comparator=rule.comparator, config=config
    )
    if result is None or not predicts(result, config):
        return None
    labels = next(
        (m.labels for m in observation.metrics if m.name == rule.query and m.component == target),
        {},
    )
    return Violation(
        kind=rule.name,
        component=target,
        severity=rule.severity,
        source=ViolationSource.RULE,
        timestamp=now,
        value=current,
        threshold=rule.threshold,
        query=rule.query,
        labels=dict(labels),
        predicted=True,
        lead_s=result.lead_s,
    )
