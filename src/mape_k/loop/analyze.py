"""Analyze: current violations + a bounded memory of past ones -> patterns and ranked causes.

PURE: no I/O, no clock, no logging; `now` is passed in. State: a history of occurrences
bounded by `history_s`/`max_history`. One occurrence = one violation key seen at one
distinct timestamp (an alert re-sent with the same start counts once; a rule re-read each
iteration counts each time). Cost O(H log H + H*k), never pairwise: see `PatternAnalyzer`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from mape_k.config import AnalyzerConfig, LoadReadingConfig
from mape_k.models import (
    SEVERITY_WEIGHT,
    AnalysisResult,
    Cause,
    Metric,
    PatternKind,
    Severity,
    Violation,
    ViolationPattern,
    ViolationSource,
)

# One remembered occurrence: (time, kind, component). Tuples sort by time first, then by
# kind and component, which makes every sweep below independent of the input order.
Occurrence = tuple[float, str, str]

_time = itemgetter(0)
_PATTERN_ORDER = {kind: index for index, kind in enumerate(PatternKind)}

# A cause read from other violations (latency read as load) names them in this annotation.
READ_FROM = "mapek_read_from"


@dataclass(slots=True)
class _Span:
    """Running count and time span of a group of occurrences (fed in time order)."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0
    components: set[str] = field(default_factory=set)

    def add(self, at: float, components: Iterable[str]) -> None:
        if self.count == 0:
            self.first = at
        self.count += 1
        self.last = at
        self.components.update(components)


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal's value on a component now, and its trend (change per second over the
    recent readings; None with too few of them): what the analysis relates symptoms to."""

    value: float
    trend: float | None = None


# (query name, component) -> its Signal: the analysis's view of values that need not violate.
Signals = Mapping[tuple[str, str], Signal]


def signals(
    metrics: Iterable[Metric], names: Collection[str], trend: Callable[[str, str], float | None]
) -> dict[tuple[str, str], Signal]:
    """The Signals of the metrics named `names`, each with its `trend(name, component)`."""
    return {
        (m.name, m.component): Signal(m.value, trend(m.name, m.component))
        for m in metrics
        if m.name in names
    }


# A rising load signal is load when the offered load rises at least this share as fast
# (relative change per second): a load spike moves both alike, a capacity loss only the signal.
LOAD_SHARE = 0.5


def _relative_trend(signal: Signal | None) -> float | None:
    """A signal's trend as a share of its value per second; None unread or not positive."""
    if signal is None or signal.trend is None or signal.value <= 0:
        return None
    return signal.trend / signal.value


def loaded(
    signal: Signal | None, config: LoadReadingConfig, load: Signal | None = None
) -> str | None:
    """Why the load `signal` says its component is loaded, or None: at or above `near`, or
    rising to cross `threshold` within `horizon_s` at its trend -- and, when the offered
    `load` and its trend are read, rising with it (by `LOAD_SHARE`). Low and flat (or
    falling, or unread), or rising while the offered load is flat: None, the symptom stays
    a cause of its own."""
    if signal is None:
        return None
    name, value = config.signal, signal.value
    if value >= config.near:
        return f"{name} {value:.3g} near its threshold {config.threshold:g}"
    trend = signal.trend
    if trend is None or trend <= 0 or value + trend * config.horizon_s < config.threshold:
        return None
    offered, rising = _relative_trend(load), _relative_trend(signal)
    if offered is not None and rising is not None and offered < LOAD_SHARE * rising:
        return None  # the signal rose, the offered load did not: capacity fell
    return (
        f"{name} {value:.3g} rising {trend:.2g}/s, over {config.threshold:g}"
        f" within {config.horizon_s:g} s"
    )


def combine(confidences: Iterable[float]) -> float:
    """Noisy-OR of independent evidence: 1 - prod(1 - c_i), clamped to [0, 1]."""
    miss = 1.0
    for confidence in confidences:
        miss *= 1.0 - min(max(confidence, 0.0), 1.0)
    return min(max(1.0 - miss, 0.0), 1.0)


class PatternAnalyzer:
    """Four detectors over a bounded history of violation occurrences.

    Occurrences. A violation observed at `analyze(..., now)` becomes the occurrence
    `(min(violation.timestamp, now), kind, component)`; the same occurrence seen again is
    not counted twice. So each observation of a violation key at a distinct timestamp is
    one occurrence: a rule re-evaluated every iteration (new sample timestamp each time)
    adds one occurrence per iteration -- a condition that persists for 5 min at a 30 s
    interval is 10 occurrences, i.e. a frequency anomaly -- while a firing alert keeps its
    `startsAt` and counts once per firing, however many times Alertmanager re-sends it.
    Timestamps in the future are clamped to `now`; occurrences older than
    `now - history_s` are forgotten, and only the newest `max_history` are kept.

    Detectors (windows end at `now`; thresholds and confidences from config):
    - temporal burst: >= temporal.min_count occurrences of one kind on one component in
      the last temporal.window_s.
    - spatial: one kind currently violating on >= spatial.min_components components.
    - causal: kind B repeatedly follows kind A. Only the onset of a B episode counts (a B
      occurrence with no earlier B occurrence within causal.window_s), so a condition that
      is re-observed every iteration is one episode, not one event per iteration -- without
      this two persistent kinds would "follow" each other both ways. An onset at t counts
      for every other kind A last seen at t' with 0 < t - t' <= causal.window_s (same-time
      occurrences are not ordered, so they never count). >= causal.min_occurrences onsets
      -> a pattern with cause A, related (B,). Looks at the whole history.
    - frequency anomaly: >= frequency.min_count occurrences of one kind (any component) in
      the last frequency.window_s.

    Cost per call, with H = remembered occurrences (<= max_history), n = current
    violations and k = distinct kinds (small): O(n + H log H) for the history, and timsort
    is ~O(H) here since the history is kept sorted and new occurrences are mostly newer;
    temporal and frequency are a Counter pass over their window plus, per reported
    pattern, a pass for first/last time (O(H * k) at worst); spatial and causes one pass
    over the current violations grouped by key, O(n log n) with the final ranking; causal
    is one sweep keeping the last-seen time per kind, O(H * k). No pairwise loop over
    violations anywhere. bench/analysis_scaling.py measures it.

    Causes. Every current violation key (kind/component) is one Cause; duplicates (a rule
    and an alert for the same key) aggregate: `violations` counts them, severity is the
    worst, value/threshold/query come from the rule violation (the latest one).
    Confidence = combine(base_confidence * SEVERITY_WEIGHT[severity], patterns touching
    the cause), where a temporal burst touches its own kind and component, spatial and
    frequency patterns touch their kind, and a causal pattern touches its leading kind A
    only. Causes exist only for current violations: a pattern whose kind is not violating
    now raises nothing. Causes are ordered by severity, confidence, violations (all
    descending), then name and target.
    """

    def __init__(self, config: AnalyzerConfig) -> None:
        self._config = config
        self._history: list[Occurrence] = []  # sorted after every analyze()
        self._seen: set[Occurrence] = set()

    @property
    def config(self) -> AnalyzerConfig:
        return self._config

    def reconfigure(self, config: AnalyzerConfig) -> None:
        """A reloaded configuration; the history is trimmed to its bounds on the next pass."""
        self._config = config

    @property
    def history_size(self) -> int:
        return len(self._history)

    @property
    def history(self) -> tuple[Occurrence, ...]:
        """The remembered occurrences, oldest first (a copy)."""
        return tuple(self._history)

    def reset(self) -> None:
        """Forget every remembered occurrence."""
        self._history.clear()
        self._seen.clear()

    @property
    def signal_names(self) -> frozenset[str]:
        """The queries whose values (violating or not) `analyze` relates symptoms to."""
        cfg = self._config.load_reading
        if not cfg.enabled:
            return frozenset()
        return frozenset({cfg.signal} if cfg.load is None else {cfg.signal, cfg.load})

    def analyze(
        self, violations: Sequence[Violation], *, now: float, signals: Signals | None = None
    ) -> AnalysisResult:
        """Patterns and ranked causes of `violations`; `signals` (values that need not
        violate, with their trends) let a symptom of load be named as the load cause."""
        current = tuple(violations)
        self._remember(current, now=now)
        groups: dict[tuple[str, str], list[Violation]] = {}
        for violation in current:
            key = (violation.kind, violation.component)
            group = groups.get(key)
            if group is None:
                groups[key] = [violation]
            else:
                group.append(violation)
        patterns = sorted(
            [
                *self._temporal(now),
                *self._spatial(groups),
                *self._causal(),
                *self._frequency(now),
            ],
            key=_pattern_sort_key,
        )
        # After the patterns: those are about what was observed, a reading is not.
        read_as = self._read_as_load(groups, signals or {})
        for key, (reading, _) in read_as.items():
            groups[key] = [reading]
        inhibited = self._inhibited(groups)
        for key, (_, why) in read_as.items():
            for hidden, by in inhibited.items():
                if (by, hidden[1]) == key:
                    inhibited[hidden] = f"{by}: {why}"
        causes = self._causes(
            {key: group for key, group in groups.items() if key not in inhibited}, patterns
        )
        return AnalysisResult(
            at=now,
            violations=len(current),
            patterns=tuple(patterns),
            causes=causes,
            inhibited=tuple(
                f"{kind}/{component} (by {by})"
                for (kind, component), by in sorted(inhibited.items())
            ),
        )

    def _read_as_load(
        self, groups: Mapping[tuple[str, str], list[Violation]], signals: Signals
    ) -> dict[tuple[str, str], tuple[Violation, str]]:
        """Right reading first (`analyzer.load_reading`): a symptom of load on a component
        whose load signal is near its threshold or rising fast is read as the load cause.
        Returns, per (cause, component) not violating itself, the reading that stands for
        it and why; the load cause then hides its symptoms there like a violating one
        (`analyzer.inhibit`). Its evidence is the signal (value, query); its threshold
        `near`, or the value when below it (rising fast), so the value is never on the
        good side of it; its severity the symptoms' worst: a reading of a warning is no
        more urgent than the warning."""
        cfg = self._config.load_reading
        if not cfg.enabled or not signals:
            return {}
        symptoms: dict[str, list[Violation]] = {}
        for (kind, component), group in groups.items():
            if kind in cfg.symptoms and (cfg.cause, component) not in groups:
                symptoms.setdefault(component, []).extend(group)
        found: dict[tuple[str, str], tuple[Violation, str]] = {}
        for component, seen in symptoms.items():
            signal = signals.get((cfg.signal, component))
            load = None if cfg.load is None else signals.get((cfg.load, component))
            why = loaded(signal, cfg, load)
            if signal is None or why is None:
                continue
            latest = max(seen, key=lambda v: v.timestamp)
            reading = Violation(
                kind=cfg.cause,
                component=component,
                severity=max((v.severity for v in seen), key=SEVERITY_WEIGHT.__getitem__),
                source=ViolationSource.RULE,
                timestamp=latest.timestamp,
                value=signal.value,
                threshold=min(cfg.near, signal.value),
                query=cfg.signal,
                labels=latest.labels,
                # What it stands for: its verification asks whether these cleared too.
                annotations={READ_FROM: ",".join(sorted({v.kind for v in seen}))},
            )
            found[(cfg.cause, component)] = (reading, why)
        return found

    def _inhibited(
        self, groups: Mapping[tuple[str, str], list[Violation]]
    ) -> dict[tuple[str, str], str]:
        """Keys hidden by a root cause present on the same component (`analyzer.inhibit`).

        Like Alertmanager's inhibit rules: a hidden symptom still counts in the patterns, it
        only yields no cause of its own. Linear: one lookup per key and inhibitor.
        """
        by_symptom: dict[str, list[str]] = {}
        for root, symptoms in self._config.inhibit.items():
            for symptom in symptoms:
                by_symptom.setdefault(symptom, []).append(root)
        hidden: dict[tuple[str, str], str] = {}
        for kind, component in groups:
            for root in by_symptom.get(kind, ()):
                if root != kind and (root, component) in groups:
                    hidden[(kind, component)] = root
                    break
        return hidden

    # --- history -------------------------------------------------------------------------

    def _remember(self, current: Sequence[Violation], *, now: float) -> None:
        cutoff = now - self._config.history_s
        history, seen = self._history, self._seen
        for violation in current:
            occurrence = (min(violation.timestamp, now), violation.kind, violation.component)
            if occurrence[0] >= cutoff and occurrence not in seen:
                seen.add(occurrence)
                history.append(occurrence)
        history.sort()
        start = max(
            bisect_left(history, cutoff, key=_time), len(history) - self._config.max_history
        )
        if start > 0:
            for occurrence in history[:start]:
                seen.discard(occurrence)
            del history[:start]

    def _window(self, now: float, window_s: float) -> list[Occurrence]:
        history = self._history
        return history[bisect_left(history, now - window_s, key=_time) :]

    # --- detectors -----------------------------------------------------------------------
    # Counting uses Counter and dict comprehensions over the time-sorted window: first and
    # last times fall out of the order, and the per-occurrence work stays in C.

    def _temporal(self, now: float) -> list[ViolationPattern]:
        cfg = self._config.temporal
        window = self._window(now, cfg.window_s)
        counts = Counter([(kind, component) for _, kind, component in window])
        hits = [key for key, count in counts.items() if count >= cfg.min_count]
        if not hits:
            return []
        first = {(kind, component): at for at, kind, component in reversed(window)}
        last = {(kind, component): at for at, kind, component in window}
        return [
            ViolationPattern(
                kind=PatternKind.TEMPORAL_BURST,
                cause=kind,
                components=(component,),
                count=counts[(kind, component)],
                confidence=cfg.confidence,
                first_seen=first[(kind, component)],
                last_seen=last[(kind, component)],
                description=(
                    f"{counts[(kind, component)]} occurrences of {kind} on {component} "
                    f"within {cfg.window_s:g}s"
                ),
            )
            for kind, component in hits
        ]

    def _spatial(self, groups: Mapping[tuple[str, str], list[Violation]]) -> list[ViolationPattern]:
        cfg = self._config.spatial
        components: dict[str, list[str]] = {}
        for kind, component in groups:
            components.setdefault(kind, []).append(component)
        patterns = []
        for kind, found in components.items():
            if len(found) < cfg.min_components:
                continue
            times = [v.timestamp for component in found for v in groups[(kind, component)]]
            patterns.append(
                ViolationPattern(
                    kind=PatternKind.SPATIAL,
                    cause=kind,
                    components=tuple(sorted(found)),
                    count=len(found),
                    confidence=cfg.confidence,
                    first_seen=min(times),
                    last_seen=max(times),
                    description=f"{kind} on {len(found)} components at once",
                )
            )
        return patterns

    def _causal(self) -> list[ViolationPattern]:
        cfg = self._config.causal
        window = cfg.window_s
        last_seen: dict[str, tuple[float, str]] = {}  # kind -> (time, a component there)
        pairs: dict[tuple[str, str], _Span] = {}  # (A, B) -> onsets of B after A
        # Same-time occurrences form a group; last_seen is only updated when the group ends,
        # so onsets are judged against strictly earlier times. Within a group the history
        # order is (kind, component), so a kind's first component is its smallest.
        group_at: float | None = None
        group: dict[str, str] = {}  # kind -> first component, in the current group
        group_spans: dict[str, list[_Span]] = {}  # kind -> pairs its onset counted for
        for at, kind, component in self._history:
            if at != group_at:
                if group_at is not None:
                    for seen_kind, seen_component in group.items():
                        last_seen[seen_kind] = (group_at, seen_component)
                group.clear()
                group_spans.clear()
                group_at = at
            if kind in group:
                for span in group_spans.get(kind, ()):
                    span.components.add(component)
                continue
            group[kind] = component
            previous = last_seen.get(kind)
            if previous is not None and at - previous[0] <= window:
                continue  # this kind's episode is still going on: not an onset
            spans = _count_onset(
                pairs, last_seen, at=at, kind=kind, component=component, window=window
            )
            if spans:
                group_spans[kind] = spans
        return [
            ViolationPattern(
                kind=PatternKind.CAUSAL,
                cause=kind_a,
                components=tuple(sorted(span.components)),
                count=span.count,
                confidence=cfg.confidence,
                first_seen=span.first,
                last_seen=span.last,
                description=(
                    f"{kind_b} started {span.count} times within {window:g}s after {kind_a}"
                ),
                related=(kind_b,),
            )
            for (kind_a, kind_b), span in pairs.items()
            if span.count >= cfg.min_occurrences
        ]

    def _frequency(self, now: float) -> list[ViolationPattern]:
        cfg = self._config.frequency
        window = self._window(now, cfg.window_s)
        counts: Counter[str] = Counter()
        components: dict[str, list[str]] = {}
        for (kind, component), count in Counter([(k, c) for _, k, c in window]).items():
            counts[kind] += count
            components.setdefault(kind, []).append(component)
        patterns = []
        for kind, count in counts.items():
            if count < cfg.min_count:
                continue
            patterns.append(
                ViolationPattern(
                    kind=PatternKind.FREQUENCY_ANOMALY,
                    cause=kind,
                    components=tuple(sorted(components[kind])),
                    count=count,
                    confidence=cfg.confidence,
                    first_seen=next(at for at, k, _ in window if k == kind),
                    last_seen=next(at for at, k, _ in reversed(window) if k == kind),
                    description=f"{count} occurrences of {kind} within {cfg.window_s:g}s",
                )
            )
        return patterns

    # --- causes --------------------------------------------------------------------------

    def _causes(
        self,
        groups: Mapping[tuple[str, str], list[Violation]],
        patterns: Sequence[ViolationPattern],
    ) -> tuple[Cause, ...]:
        # Evidence is combined per kind once (spatial, causal, frequency), then per key for
        # temporal bursts, so the per-cause work does not depend on the number of patterns.
        kind_miss: dict[str, float] = {}
        kind_patterns: dict[str, set[PatternKind]] = {}
        key_miss: dict[tuple[str, str], float] = {}
        for pattern in patterns:
            miss = 1.0 - pattern.confidence
            if pattern.kind is PatternKind.TEMPORAL_BURST:
                key = (pattern.cause, pattern.components[0])
                key_miss[key] = key_miss.get(key, 1.0) * miss
            else:
                kind_miss[pattern.cause] = kind_miss.get(pattern.cause, 1.0) * miss
                kind_patterns.setdefault(pattern.cause, set()).add(pattern.kind)

        base_confidence = self._config.base_confidence
        # Rows are ranked before the Causes are built, so the Causes sit in memory in the
        # order the Planner walks them (random access over 10^5 objects is slow).
        rows: list[
            tuple[tuple[float, float, int, str, str], Severity, Violation | None, Violation]
        ] = []
        for key, group in groups.items():
            kind, component = key
            if len(group) == 1:
                severity = group[0].severity
                evidence = group[0] if group[0].source is ViolationSource.RULE else None
                latest = group[0]
            else:
                # The labels a user-defined action's templates see: the latest violation's.
                latest = max(group, key=lambda v: v.timestamp)
                severity = max((v.severity for v in group), key=SEVERITY_WEIGHT.__getitem__)
                rules = [v for v in group if v.source is ViolationSource.RULE]
                # The latest rule reading carries value/threshold/query; ties by value.
                evidence = max(rules, key=_rule_rank) if rules else None
            weight = SEVERITY_WEIGHT[severity]
            miss = (1.0 - base_confidence * weight) * kind_miss.get(kind, 1.0)
            miss *= key_miss.get(key, 1.0)
            confidence = min(max(1.0 - miss, 0.0), 1.0)
            rows.append(
                ((-weight, -confidence, -len(group), kind, component), severity, evidence, latest)
            )
        rows.sort(key=itemgetter(0))

        labels: dict[tuple[str, bool], tuple[PatternKind, ...]] = {}
        causes: list[Cause] = []
        for (
            _,
            negative_confidence,
            negative_count,
            kind,
            component,
        ), severity, evidence, latest in rows:
            burst = (kind, component) in key_miss
            label = labels.get((kind, burst))
            if label is None:
                touched = set(kind_patterns.get(kind, ()))
                if burst:
                    touched.add(PatternKind.TEMPORAL_BURST)
                label = labels[(kind, burst)] = tuple(
                    sorted(touched, key=_PATTERN_ORDER.__getitem__)
                )
            causes.append(
                Cause(
                    name=kind,
                    target=component,
                    severity=severity,
                    confidence=-negative_confidence,
                    violations=-negative_count,
                    patterns=label,
                    query=evidence.query if evidence else None,
                    value=evidence.value if evidence else None,
                    threshold=evidence.threshold if evidence else None,
                    source=ViolationSource.RULE if evidence else ViolationSource.ALERT,
                    labels=latest.labels,
                    annotations=latest.annotations,
                )
            )
        return tuple(causes)


def _count_onset(
    pairs: dict[tuple[str, str], _Span],
    last_seen: dict[str, tuple[float, str]],
    *,
    at: float,
    kind: str,
    component: str,
    window: float,
) -> list[_Span]:
    """Count an onset of `kind` at `at` for every other kind seen within `window` before."""
    spans = []
    for kind_a, (at_a, component_a) in last_seen.items():
        if kind_a != kind and at - at_a <= window:
            span = pairs.get((kind_a, kind))
            if span is None:
                span = pairs[(kind_a, kind)] = _Span()
            span.add(at, (component, component_a))
            spans.append(span)
    return spans


def _rule_rank(violation: Violation) -> tuple[float, float, str]:
    value = violation.value if violation.value is not None else float("-inf")
    return (violation.timestamp, value, violation.query or "")


def _pattern_sort_key(
    pattern: ViolationPattern,
) -> tuple[int, str, tuple[str, ...], tuple[str, ...]]:
    return (_PATTERN_ORDER[pattern.kind], pattern.cause, pattern.related, pattern.components)
