"""PatternAnalyzer: each detector at, below and above its threshold; causes; properties."""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import builders
from mape_k.config import AnalyzerConfig
from mape_k.loop.analyze import PatternAnalyzer, Signal, combine, loaded, signals
from mape_k.models import (
    AnalysisResult,
    PatternKind,
    Severity,
    Violation,
    ViolationPattern,
    ViolationSource,
)

NOW = 10_000.0


v = functools.partial(builders.violation, timestamp=NOW)  # a violation observed now


def of_kind(result: AnalysisResult, kind: PatternKind) -> list[ViolationPattern]:
    return [p for p in result.patterns if p.kind is kind]


def analyze_once(violations: list[Violation], *, now: float = NOW, **config: object):
    return PatternAnalyzer(AnalyzerConfig.model_validate(config)).analyze(violations, now=now)


# --- temporal burst ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ages", "expected_count"),
    [
        ((0, 20), None),  # 2 < 3
        ((0, 20, 40), 3),  # exactly at the threshold
        ((0, 10, 20, 30), 4),  # above
        ((0, 30, 60), 3),  # the oldest exactly at the window edge is inside
        ((0, 30, 60.5), None),  # just outside the 60 s window
    ],
)
def test_temporal_burst_needs_three_occurrences_within_sixty_seconds(ages, expected_count):
    result = analyze_once([v(timestamp=NOW - age) for age in ages])
    bursts = of_kind(result, PatternKind.TEMPORAL_BURST)
    if expected_count is None:
        assert bursts == []
    else:
        [burst] = bursts
        assert (burst.cause, burst.components, burst.count) == (
            "high_failure_rate",
            ("charter",),
            expected_count,
        )
        assert burst.confidence == 0.85
        assert burst.last_seen == NOW
        assert burst.first_seen == NOW - max(ages)


def test_temporal_burst_counts_per_component_not_per_kind():
    result = analyze_once(
        [
            v(component="a", timestamp=NOW),
            v(component="b", timestamp=NOW - 1),
            v(component="c", timestamp=NOW - 2),
        ]
    )
    assert of_kind(result, PatternKind.TEMPORAL_BURST) == []


def test_rule_reobserved_at_new_timestamps_accumulates_over_iterations():
    analyzer = PatternAnalyzer(AnalyzerConfig())
    results = [analyzer.analyze([v(timestamp=now)], now=now) for now in (NOW, NOW + 20, NOW + 40)]
    assert [len(of_kind(r, PatternKind.TEMPORAL_BURST)) for r in results] == [0, 0, 1]


def test_alert_resent_with_the_same_start_counts_once():
    analyzer = PatternAnalyzer(AnalyzerConfig())
    alert = v(timestamp=NOW, source=ViolationSource.ALERT)
    for now in (NOW, NOW + 10, NOW + 20, NOW + 30):
        result = analyzer.analyze([alert, alert], now=now)
    assert analyzer.history_size == 1
    assert of_kind(result, PatternKind.TEMPORAL_BURST) == []


def test_future_timestamps_are_clamped_to_now():
    analyzer = PatternAnalyzer(AnalyzerConfig())
    analyzer.analyze([v(timestamp=NOW + 500)], now=NOW)
    assert analyzer.history == ((NOW, "high_failure_rate", "charter"),)


# --- spatial -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("components", "expected"),
    [
        (["a", "b"], None),
        (["a", "b", "b"], None),  # distinct components, not violations
        (["a", "b", "c"], ("a", "b", "c")),
        (["d", "c", "b", "a"], ("a", "b", "c", "d")),
    ],
)
def test_spatial_needs_one_kind_on_three_distinct_components(components, expected):
    result = analyze_once([v(component=c) for c in components])
    spatial = of_kind(result, PatternKind.SPATIAL)
    if expected is None:
        assert spatial == []
    else:
        [pattern] = spatial
        assert (pattern.cause, pattern.components, pattern.count) == (
            "high_failure_rate",
            expected,
            len(expected),
        )
        assert pattern.confidence == 0.80


def test_spatial_only_looks_at_current_violations():
    analyzer = PatternAnalyzer(AnalyzerConfig())
    analyzer.analyze(
        [v(component="a", timestamp=NOW - 10), v(component="b", timestamp=NOW - 10)], now=NOW - 10
    )
    result = analyzer.analyze([v(component="c")], now=NOW)
    assert of_kind(result, PatternKind.SPATIAL) == []


def test_spatial_does_not_mix_kinds():
    result = analyze_once([v("x", "a"), v("y", "b"), v("z", "c")])
    assert of_kind(result, PatternKind.SPATIAL) == []


# --- causal --------------------------------------------------------------------------------


def episodes(pairs: int, *, lag: float, gap: float = 300.0) -> list[Violation]:
    """`pairs` times: kind a, then kind b `lag` seconds later; episodes `gap` apart."""
    out: list[Violation] = []
    for index in range(pairs):
        start = NOW - 800 + index * gap
        out += [v("a", timestamp=start), v("b", timestamp=start + lag)]
    return out


@pytest.mark.parametrize(
    ("pairs", "lag", "expected_count"),
    [
        (2, 10, None),  # below min_occurrences
        (3, 10, 3),  # exactly at it
        (3, 120, 3),  # lag exactly at the 120 s window
        (3, 121, None),  # lag just outside
        (3, 0, None),  # same time: not ordered
    ],
)
def test_causal_counts_onsets_of_b_following_a(pairs, lag, expected_count):
    result = analyze_once(episodes(pairs, lag=lag))
    causal = of_kind(result, PatternKind.CAUSAL)
    if expected_count is None:
        assert causal == []
    else:
        [pattern] = causal
        assert (pattern.cause, pattern.related, pattern.count) == ("a", ("b",), expected_count)
        assert pattern.confidence == 0.75


def test_causal_is_directional_for_flapping_b_under_persistent_a():
    # a persists (every 30 s for 14 min), b flaps: 3 episodes 4 minutes apart.
    violations = [v("a", timestamp=NOW - 840 + 30 * i) for i in range(29)]
    violations += [v("b", timestamp=NOW - 700 + 240 * i) for i in range(3)]
    result = analyze_once(violations)
    assert [(p.cause, p.related) for p in of_kind(result, PatternKind.CAUSAL)] == [("a", ("b",))]


def test_causal_ignores_two_persistent_conditions_reobserved_every_iteration():
    violations = [v(kind, timestamp=NOW - 600 + 30 * i) for i in range(21) for kind in ("a", "b")]
    violations += [v("b", timestamp=NOW - 585 + 30 * i) for i in range(20)]  # b also in between
    result = analyze_once(violations)
    assert of_kind(result, PatternKind.CAUSAL) == []


# --- frequency -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "spacing", "expected"),
    [
        (7, 40.0, None),
        (8, 40.0, 8),  # 8 occurrences over 280 s
        (9, 35.0, 9),
        (8, 300 / 7, 8),  # spread exactly over the 5 min window
        (8, 301 / 7, None),  # oldest just outside
    ],
)
def test_frequency_anomaly_needs_eight_of_a_kind_in_five_minutes(count, spacing, expected):
    # spread over components so that no temporal burst is involved
    result = analyze_once(
        [v(component=f"c{i % 3}", timestamp=NOW - i * spacing) for i in range(count)]
    )
    frequency = of_kind(result, PatternKind.FREQUENCY_ANOMALY)
    if expected is None:
        assert frequency == []
    else:
        [pattern] = frequency
        assert (pattern.cause, pattern.count, pattern.components) == (
            "high_failure_rate",
            expected,
            ("c0", "c1", "c2"),
        )
        assert pattern.confidence == 0.70


# --- causes --------------------------------------------------------------------------------


def test_rule_and_alert_for_one_key_make_one_cause_with_the_rule_evidence():
    rule = v(value=0.2, threshold=0.05, query="failure_rate", severity=Severity.WARNING)
    alert = v(source=ViolationSource.ALERT, severity=Severity.CRITICAL)
    result = analyze_once([alert, rule])
    [cause] = result.causes
    assert (cause.name, cause.target, cause.violations) == ("high_failure_rate", "charter", 2)
    assert (cause.value, cause.threshold, cause.query) == (0.2, 0.05, "failure_rate")
    assert cause.source is ViolationSource.RULE
    assert cause.severity is Severity.CRITICAL  # the worst of the two
    assert result.violations == 2


def test_alert_only_cause_has_alert_source_and_no_value():
    [cause] = analyze_once([v(source=ViolationSource.ALERT)]).causes
    assert (cause.source, cause.value, cause.query) == (ViolationSource.ALERT, None, None)


@pytest.mark.parametrize(
    ("severity", "expected"),
    [(Severity.CRITICAL, 0.6), (Severity.WARNING, 0.42), (Severity.INFO, 0.24)],
)
def test_lone_violation_confidence_is_base_times_severity_weight(severity, expected):
    [cause] = analyze_once([v(severity=severity)]).causes
    assert cause.confidence == pytest.approx(expected)
    assert cause.patterns == ()


def test_temporal_burst_raises_only_its_own_target():
    violations = [v(component="a", timestamp=NOW - age) for age in (0, 10, 20)] + [v(component="b")]
    causes = {c.target: c for c in analyze_once(violations).causes}
    assert causes["a"].confidence == pytest.approx(1 - 0.4 * 0.15)
    assert causes["a"].patterns == (PatternKind.TEMPORAL_BURST,)
    assert causes["b"].confidence == pytest.approx(0.6)


def test_spatial_raises_every_affected_cause():
    causes = analyze_once([v(component=c) for c in "abc"]).causes
    assert [c.confidence for c in causes] == pytest.approx([1 - 0.4 * 0.2] * 3)
    assert all(c.patterns == (PatternKind.SPATIAL,) for c in causes)


def test_causal_raises_the_leading_kind_only():
    violations = [*episodes(3, lag=10), v("a", timestamp=NOW), v("b", timestamp=NOW)]
    causes = {c.name: c for c in analyze_once(violations).causes}
    assert causes["a"].patterns == (PatternKind.CAUSAL,)
    assert causes["a"].confidence == pytest.approx(1 - 0.4 * 0.25)
    assert causes["b"].patterns == ()


def test_pattern_of_a_kind_not_currently_violating_creates_no_cause():
    analyzer = PatternAnalyzer(AnalyzerConfig())
    analyzer.analyze([v(timestamp=NOW - age) for age in (20, 10, 5)], now=NOW - 5)
    result = analyzer.analyze([v("other")], now=NOW)
    assert of_kind(result, PatternKind.TEMPORAL_BURST) != []
    assert [c.name for c in result.causes] == ["other"]


def test_causes_rank_by_severity_then_confidence_then_count_then_name():
    violations = [
        v("w", severity=Severity.WARNING),
        v("c_low"),
        v("c_many"),
        v("c_many", source=ViolationSource.ALERT),
        v("c_burst", timestamp=NOW - 1),
        v("c_burst", timestamp=NOW - 2),
        v("c_burst", timestamp=NOW - 3),
        v("b_same"),
    ]
    names = [c.name for c in analyze_once(violations).causes]
    assert names == ["c_burst", "c_many", "b_same", "c_low", "w"]


def test_combine_is_noisy_or():
    assert combine([]) == 0.0
    assert combine([0.6, 0.85]) == pytest.approx(0.94)
    assert combine([1.0, 0.3]) == 1.0
    assert combine([1.5, -0.2]) == 1.0


# --- history -------------------------------------------------------------------------------


def test_history_forgets_occurrences_older_than_history_s():
    analyzer = PatternAnalyzer(AnalyzerConfig(history_s=100))
    analyzer.analyze(
        [v(timestamp=NOW - 150), v(timestamp=NOW - 100), v(timestamp=NOW - 50)], now=NOW
    )
    assert [t for t, _, _ in analyzer.history] == [NOW - 100, NOW - 50]
    analyzer.analyze([], now=NOW + 60)
    assert analyzer.history_size == 0


def test_history_keeps_only_the_newest_max_history():
    analyzer = PatternAnalyzer(AnalyzerConfig(max_history=1000))
    analyzer.analyze([v(timestamp=NOW - i * 0.1) for i in range(1500)], now=NOW)
    assert analyzer.history_size == 1000
    assert analyzer.history[0][0] == pytest.approx(NOW - 99.9)


def test_reset_forgets_everything():
    analyzer = PatternAnalyzer(AnalyzerConfig())
    analyzer.analyze([v(timestamp=NOW - 1), v(timestamp=NOW - 2), v(timestamp=NOW - 3)], now=NOW)
    analyzer.reset()
    assert of_kind(analyzer.analyze([v()], now=NOW), PatternKind.TEMPORAL_BURST) == []


# --- properties ----------------------------------------------------------------------------

KINDS = ("a", "b", "c")
COMPONENTS = ("x", "y", "z", "w")

violation_st = st.builds(
    v,
    kind=st.sampled_from(KINDS),
    component=st.sampled_from(COMPONENTS),
    timestamp=st.integers(min_value=-700, max_value=0).map(lambda age: NOW + age),
    severity=st.sampled_from(list(Severity)),
    source=st.sampled_from(list(ViolationSource)),
    value=st.one_of(st.none(), st.floats(0, 1)),
)
violations_st = st.lists(violation_st, max_size=60)


@settings(deadline=None)
@given(violations_st, st.randoms(use_true_random=False))
def test_result_does_not_depend_on_input_order(violations, rnd: random.Random):
    shuffled = list(violations)
    rnd.shuffle(shuffled)
    assert analyze_once(violations) == analyze_once(shuffled)


@settings(deadline=None)
@given(violations_st)
def test_confidences_stay_within_zero_and_one(violations):
    result = analyze_once(violations)
    assert all(0.0 <= c.confidence <= 1.0 for c in result.causes)
    assert all(0.0 <= p.confidence <= 1.0 for p in result.patterns)


@settings(deadline=None)
@given(violations_st)
def test_no_pattern_is_reported_below_its_threshold_and_counts_match_a_naive_count(
    violations,
):
    cfg = AnalyzerConfig()
    result = analyze_once(violations)
    occurrences = {(x.timestamp, x.kind, x.component) for x in violations}
    minimum = {
        PatternKind.TEMPORAL_BURST: cfg.temporal.min_count,
        PatternKind.SPATIAL: cfg.spatial.min_components,
        PatternKind.CAUSAL: cfg.causal.min_occurrences,
        PatternKind.FREQUENCY_ANOMALY: cfg.frequency.min_count,
    }
    for pattern in result.patterns:
        assert pattern.count >= minimum[pattern.kind]
    # naive O(n^2)-style reference for the windowed detectors
    temporal = {
        (p.cause, p.components[0]): p.count for p in of_kind(result, PatternKind.TEMPORAL_BURST)
    }
    expected_temporal: dict[tuple[str, str], int] = {}
    for kind in KINDS:
        for component in COMPONENTS:
            n = sum(
                1
                for t, k, c in occurrences
                if (k, c) == (kind, component) and t >= NOW - cfg.temporal.window_s
            )
            if n >= cfg.temporal.min_count:
                expected_temporal[(kind, component)] = n
    assert temporal == expected_temporal
    frequency = {p.cause: p.count for p in of_kind(result, PatternKind.FREQUENCY_ANOMALY)}
    expected_frequency = {}
    for kind in KINDS:
        n = sum(1 for t, k, _ in occurrences if k == kind and t >= NOW - cfg.frequency.window_s)
        if n >= cfg.frequency.min_count:
            expected_frequency[kind] = n
    assert frequency == expected_frequency


def _windowed_identities(result: AnalysisResult) -> set[tuple[PatternKind, str, tuple[str, ...]]]:
    out = set()
    for p in result.patterns:
        if p.kind is PatternKind.TEMPORAL_BURST:
            out.add((p.kind, p.cause, p.components))
        elif p.kind is PatternKind.FREQUENCY_ANOMALY:
            out.add((p.kind, p.cause, ()))
    return out


@settings(deadline=None)
@given(violations_st, violations_st)
def test_adding_violations_never_removes_a_temporal_or_frequency_pattern(base, extra):
    before = _windowed_identities(analyze_once(base))
    after = _windowed_identities(analyze_once(base + extra))
    assert before <= after


@settings(deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 400), st.lists(violation_st, max_size=400)),
        min_size=1,
        max_size=8,
    )
)
def test_history_stays_bounded_by_age_and_size(steps):
    cfg = AnalyzerConfig(history_s=300, max_history=1000)
    analyzer = PatternAnalyzer(cfg)
    now = NOW
    for advance, batch in steps:
        now += advance
        # shift timestamps so batches land around the current time, some in the future
        shifted = [v(x.kind, x.component, timestamp=x.timestamp - NOW + now + 100) for x in batch]
        analyzer.analyze(shifted, now=now)
        assert analyzer.history_size <= cfg.max_history
        assert all(now - cfg.history_s <= t <= now for t, _, _ in analyzer.history)
        assert list(analyzer.history) == sorted(analyzer.history)


def test_a_root_cause_inhibits_its_symptoms_on_the_same_component():
    def v(kind: str, component: str = "charter") -> Violation:
        return builders.violation(kind, component, timestamp=100.0)

    analyzer = PatternAnalyzer(AnalyzerConfig())
    result = analyzer.analyze(
        [v("members_unhealthy"), v("overload"), v("high_failure_rate"), v("overload", "other")],
        now=100.0,
    )
    assert {(c.name, c.target) for c in result.causes} == {
        ("members_unhealthy", "charter"),
        ("overload", "other"),  # no root cause on that component: kept
    }
    assert "overload/charter (by members_unhealthy)" in result.inhibited


# --- right reading first: a symptom of load is named as load -------------------------------


def latency(component: str = "charter", severity: Severity = Severity.WARNING) -> Violation:
    return builders.violation(
        "high_latency",
        component,
        severity=severity,
        timestamp=NOW,
        value=0.8,
        threshold=0.5,
        query="p99_latency_s",
    )


def read(saturation: float, trend: float | None, *more: Violation) -> AnalysisResult:
    signals = {("saturation", "charter"): Signal(saturation, trend)}
    return PatternAnalyzer(AnalyzerConfig()).analyze([latency(), *more], now=NOW, signals=signals)


def test_latency_with_saturation_near_its_threshold_and_rising_is_overload_not_latency():
    result = read(0.85, 0.002)
    [cause] = result.causes
    assert (cause.name, cause.target) == ("overload", "charter")
    # Its evidence is the load signal: what a scale to a target saturation is sized from.
    assert (cause.query, cause.value, cause.threshold) == ("saturation", 0.85, 0.8)
    assert cause.severity is Severity.WARNING  # a reading of a warning, not a critical rule
    [hidden] = result.inhibited
    assert hidden.startswith("high_latency/charter (by overload: saturation 0.85 near")


def test_latency_with_low_flat_saturation_stays_latency():
    for trend in (0.0, None, -0.002):
        [cause] = read(0.4, trend).causes
        assert (cause.name, cause.query) == ("high_latency", "p99_latency_s")
    assert read(0.4, 0.0).inhibited == ()


def test_latency_with_saturation_rising_fast_is_overload_before_saturation_violates():
    # 0.7 is not near 0.9, but at +0.01/s it is over it within 30 s.
    [cause] = read(0.7, 0.01).causes
    assert cause.name == "overload"
    assert cause.threshold == 0.7  # never on the good side of its own threshold
    [hidden] = read(0.7, 0.01).inhibited
    assert "rising" in hidden
    [slow] = read(0.7, 0.001).causes  # 0.73 in 30 s: not fast
    assert slow.name == "high_latency"


def test_a_rising_load_signal_is_load_only_while_the_offered_load_rises_with_it():
    def cause(load: Signal | None) -> str:
        signals = {("saturation", "charter"): Signal(0.72, 0.015)}
        if load is not None:
            signals[("offered_load", "charter")] = load
        analyzer = PatternAnalyzer(AnalyzerConfig())
        assert analyzer.signal_names == {"saturation", "offered_load"}
        [found] = analyzer.analyze([latency()], now=NOW, signals=signals).causes
        return found.name

    # A latency fault that costs capacity: saturation steps up, the offered load stays put.
    assert cause(Signal(187.0, 0.0)) == "high_latency"
    assert cause(Signal(187.0, -0.5)) == "high_latency"
    # A load spike moves both alike (relative change per second 0.021 and 0.019).
    assert cause(Signal(300.0, 5.6)) == "overload"
    # Not read, or too few readings for its trend: the load signal alone decides.
    assert cause(None) == "overload"
    assert cause(Signal(187.0, None)) == "overload"
    # Near its threshold the signal is load whatever the offered load does.
    cfg = AnalyzerConfig().load_reading
    assert loaded(Signal(0.85, 0.0), cfg, Signal(187.0, 0.0)) is not None
    unset = PatternAnalyzer(AnalyzerConfig.model_validate({"load_reading": {"load": None}}))
    assert unset.signal_names == {"saturation"}
    flat = {
        ("saturation", "charter"): Signal(0.72, 0.015),
        ("offered_load", "charter"): Signal(187.0, 0.0),
    }
    [found] = unset.analyze([latency()], now=NOW, signals=flat).causes
    assert found.name == "overload"


def test_the_load_reading_hides_what_overload_hides_and_needs_the_signal():
    failing = builders.violation(
        "high_failure_rate", timestamp=NOW, value=0.1, query="failure_rate"
    )
    assert [c.name for c in read(0.88, None, failing).causes] == ["overload"]
    # A real overload violation: the usual inhibition, no second reading.
    overload = builders.violation("overload", timestamp=NOW, value=0.95, query="saturation")
    result = read(0.95, None, overload)
    assert [(c.name, c.value) for c in result.causes] == [("overload", 0.95)]
    assert result.inhibited == ("high_latency/charter (by overload)",)
    # No reading of the signal, another component's, or the rule off: latency stays latency.
    analyzer = PatternAnalyzer(AnalyzerConfig())
    assert [c.name for c in analyzer.analyze([latency()], now=NOW).causes] == ["high_latency"]
    elsewhere = {("saturation", "other"): Signal(0.95, 0.0)}
    result = analyzer.analyze([latency()], now=NOW, signals=elsewhere)
    assert [c.name for c in result.causes] == ["high_latency"]
    off = PatternAnalyzer(AnalyzerConfig.model_validate({"load_reading": {"enabled": False}}))
    assert off.signal_names == frozenset()
    result = off.analyze([latency()], now=NOW, signals={("saturation", "charter"): Signal(0.95)})
    assert [c.name for c in result.causes] == ["high_latency"]


def test_loaded_says_why_and_signals_carry_each_trend():
    cfg = AnalyzerConfig().load_reading
    assert loaded(None, cfg) is None
    assert loaded(Signal(0.8), cfg) == "saturation 0.8 near its threshold 0.9"
    assert loaded(Signal(0.79, 0.0), cfg) is None
    metrics = [
        builders.metric("saturation", 0.5),
        builders.metric("p99_latency_s", 0.9),
        builders.metric("saturation", 0.7, component="other"),
    ]
    trends = {("saturation", "charter"): 0.001}
    found = signals(metrics, {"saturation"}, lambda q, c: trends.get((q, c)))
    assert found == {
        ("saturation", "charter"): Signal(0.5, 0.001),
        ("saturation", "other"): Signal(0.7, None),
    }
