"""The console's charts: well-formed SVG, gaps, scales, escaping, no inline style, range windows."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pytest
from markupsafe import Markup

from mape_k.console.charts import (
    ChartMark,
    chart_window,
    outcome_strip,
    signal_chart,
    signal_history,
    sparkline,
)
from mape_k.errors import PrometheusQueryError, PrometheusTimeout, PrometheusUnavailable
from mape_k.integrations.prometheus import RangeResult, Series

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert(1)</script>"
START = 1_700_000_000.0


def parse(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    root = ET.fromstring(str(markup))
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.get("viewBox")
    return root


def find(root: ET.Element, tag: str, css: str | None = None) -> list[ET.Element]:
    found = root.iter(f"{SVG}{tag}")
    return [e for e in found if css is None or css in (e.get("class") or "").split()]


def texts(root: ET.Element) -> list[str]:
    return ["".join(e.itertext()) for e in root.iter(f"{SVG}text")]


def series(n: int = 20, step: float = 10.0, value: float = 1.0) -> list[tuple[float, float]]:
    return [(START + i * step, value + i) for i in range(n)]


def chart(points, **kwargs) -> ET.Element:
    kwargs.setdefault("start", START)
    kwargs.setdefault("end", START + 200)
    kwargs.setdefault("title", "failure rate")
    return parse(signal_chart(points, **kwargs))


def polyline_points(element: ET.Element) -> list[tuple[float, float]]:
    pairs = (pair.split(",") for pair in (element.get("points") or "").split())
    return [(float(x), float(y)) for x, y in pairs]


# --- signal_chart ---------------------------------------------------------------------------


def test_a_continuous_series_is_one_polyline_with_every_point_and_a_title():
    root = chart(series(20), title="checkout p99")
    lines = find(root, "polyline", "signal")
    assert len(lines) == 1
    assert len(polyline_points(lines[0])) == 20
    assert root.find(f"{SVG}title").text == "checkout p99"
    assert "no data in this range" not in texts(root)


def test_a_nan_value_breaks_the_line_in_two():
    points = series(20)
    points[10] = (points[10][0], math.nan)
    lines = find(chart(points), "polyline", "signal")
    assert [len(polyline_points(line)) for line in lines] == [10, 9]


def test_a_time_gap_over_three_median_steps_breaks_the_line():
    points = [*series(10), (START + 90 + 31, 5.0), (START + 90 + 41, 6.0)]
    assert len(find(chart(points), "polyline", "signal")) == 2
    # 3x the median step exactly is still one line
    points = [*series(10), (START + 90 + 30, 5.0), (START + 90 + 40, 6.0)]
    assert len(find(chart(points), "polyline", "signal")) == 1


def test_a_lone_point_between_gaps_is_a_dot():
    points = [*series(5), (START + 50, math.nan), (START + 60, 3.0), (START + 70, math.inf)]
    root = chart(points)
    assert len(find(root, "polyline", "signal")) == 1
    assert len(find(root, "circle", "signal-dot")) == 1


def test_points_are_ordered_in_time_and_span_the_plot():
    points = list(reversed(series(20)))
    (line,) = find(chart(points, end=START + 190), "polyline", "signal")
    xs = [x for x, _ in polyline_points(line)]
    assert xs == sorted(xs)
    (frame,) = find(chart(points, end=START + 190), "rect", "frame")
    left = float(frame.get("x"))
    assert xs[0] == pytest.approx(left)
    assert xs[-1] == pytest.approx(left + float(frame.get("width")))


def frame_box(root: ET.Element) -> tuple[float, float]:
    (frame,) = find(root, "rect", "frame")
    return float(frame.get("y")), float(frame.get("height"))


def threshold_y(root: ET.Element) -> float:
    (line,) = find(root, "line", "threshold")
    assert line.get("y1") == line.get("y2")
    assert line.get("stroke-dasharray")
    return float(line.get("y1"))


def test_the_threshold_line_sits_on_the_value_scale_and_shows_its_value():
    # values 0..10 and threshold 5: the axis runs 0..11, the line at 5/11 of the height
    points = [(START + i * 10, float(i)) for i in range(11)]
    root = chart(points, threshold=5, unit="%")
    top, height = frame_box(root)
    assert threshold_y(root) == pytest.approx(top + height * (1 - 5 / 11), abs=0.1)
    # the point whose value is the threshold is drawn at the same height
    (line,) = find(root, "polyline", "signal")
    assert polyline_points(line)[5][1] == pytest.approx(threshold_y(root), abs=0.1)
    assert "5%" in texts(root)
    assert {"0%", "11%"} <= set(texts(root))  # the y axis: bottom and top


def test_a_threshold_above_the_data_sets_the_top_of_the_axis():
    root = chart(series(5, value=1.0), threshold=20)
    top, height = frame_box(root)
    assert threshold_y(root) == pytest.approx(top + height * (1 - 20 / 22), abs=0.1)
    assert "22" in texts(root)


def test_negative_values_put_the_bottom_of_the_axis_at_the_minimum():
    points = [(START, -4.0), (START + 10, 0.0), (START + 20, 10.0)]
    root = chart(points, threshold=0)
    top, height = frame_box(root)
    (line,) = find(root, "polyline", "signal")
    assert polyline_points(line)[0][1] == pytest.approx(top + height, abs=0.1)
    assert threshold_y(root) == pytest.approx(top + height * (1 - 4 / 15), abs=0.1)
    assert "-4" in texts(root)


def test_time_ticks_are_utc_clock_times():
    root = chart(series(20), start=1_700_000_000.0, end=1_700_000_300.0)
    labels = texts(root)
    assert "22:13:20" in labels  # 1_700_000_000 is 2023-11-14 22:13:20 UTC
    assert "22:18:20 UTC" in labels


def test_marks_are_lines_classed_by_outcome_with_their_windows_shaded():
    marks = [
        ChartMark(
            at=START + 50, label="scale up", outcome="success", window=(START + 50, START + 80)
        ),
        ChartMark(at=START + 100, label="restart", outcome="degradation"),
        ChartMark(
            at=START + 120, label="pending one", outcome=None, window=(START + 120, START + 999)
        ),
        ChartMark(at=START + 150, label="odd", outcome="weird value"),
        ChartMark(at=START - 500, label="before the range", outcome="success"),
    ]
    root = chart(series(20), marks=marks)
    groups = find(root, "g", "mark")
    assert [g.get("class") for g in groups] == [
        "mark mark-success",
        "mark mark-degradation",
        "mark mark-pending",
        "mark mark-other",
    ]
    windows = find(root, "rect", "window")
    assert len(windows) == 2
    _, height = frame_box(root)
    (frame,) = find(root, "rect", "frame")
    right_edge = float(frame.get("x")) + float(frame.get("width"))
    # the second window is clipped at the end of the range
    assert float(windows[1].get("x")) + float(windows[1].get("width")) == pytest.approx(right_edge)
    assert all(float(w.get("height")) == height for w in windows)
    # the mark's line is at its time: at START + 50 of 200 s, a quarter of the plot
    line = groups[0].find(f"{SVG}line")
    left, width = float(frame.get("x")), float(frame.get("width"))
    assert float(line.get("x1")) == pytest.approx(left + width / 4, abs=0.1)
    assert "scale up" in texts(root)


def test_hostile_title_label_outcome_and_unit_appear_only_escaped():
    marks = [ChartMark(at=START + 50, label=HOSTILE, outcome=HOSTILE, window=(START, START + 9))]
    markup = signal_chart(
        series(5),
        start=START,
        end=START + 200,
        threshold=3,
        marks=marks,
        title=HOSTILE,
        unit=HOSTILE,
    )
    assert "<script" not in str(markup)
    root = parse(markup)
    assert not list(root.iter("script"))
    assert not list(root.iter(f"{SVG}script"))
    assert root.find(f"{SVG}title").text == HOSTILE  # round-trips as text
    (group,) = find(root, "g", "mark")
    assert group.get("class") == "mark mark-other"
    assert group.find(f"{SVG}title").text == f"{HOSTILE}: {HOSTILE}"
    assert any(text.startswith("<script>alert") for text in texts(root))  # shortened label
    assert f"3{HOSTILE}" in texts(root)


def test_characters_xml_cannot_carry_are_dropped_not_fatal():
    root = parse(signal_chart([], start=START, end=START + 1, title="a\x00b\x1bc"))
    assert root.find(f"{SVG}title").text == "abc"


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(START + 10, math.nan)],
        [(START + 10, math.inf), (START + 20, -math.inf)],
        [(math.nan, 1.0), (math.inf, 2.0)],
        [(START - 100, 1.0)],  # outside the range
    ],
)
def test_no_drawable_data_says_so(points):
    root = chart(points, threshold=math.nan)
    assert "no data in this range" in texts(root)
    assert not find(root, "polyline")
    assert not find(root, "line", "threshold")


@pytest.mark.parametrize(
    ("start", "end"),
    [(START, START), (START + 100, START), (math.nan, START), (START, math.inf)],
)
def test_a_degenerate_range_does_not_raise(start, end):
    root = chart([(START, 1.0), (START + 1, 2.0)], start=start, end=end, threshold=1.5)
    assert "nan" not in ET.tostring(root, encoding="unicode").lower()


@pytest.mark.parametrize("value", [0.0, 7.0, -3.0, 1e308, -1e308, 5e-324])
def test_all_equal_or_extreme_values_do_not_raise(value):
    points = [(START + i * 10, value) for i in range(5)]
    root = chart(points, threshold=value, width=math.nan, height=-5)
    assert len(find(root, "polyline", "signal")) == 1
    markup = ET.tostring(root, encoding="unicode").lower()
    assert "nan" not in markup
    assert "inf" not in markup


def test_mixed_huge_values_do_not_raise():
    root = chart([(START, 1e308), (START + 10, -1e308), (START + 20, math.inf)], threshold=1e308)
    assert find(root, "polyline", "signal")


def test_nothing_emits_a_style_attribute_or_element():
    marks = [ChartMark(at=START + 50, label="x", outcome="success", window=(START, START + 60))]
    outputs = [
        signal_chart(series(20), start=START, end=START + 200, threshold=3, marks=marks, title="t"),
        signal_chart([], start=START, end=START, title="empty"),
        sparkline([1.0, None, 2.0, 3.0], title="s"),
        sparkline([], title="s"),
        outcome_strip(["success", "partial", "x"], title="o"),
        outcome_strip([], title="o"),
    ]
    for markup in outputs:
        for element in parse(markup).iter():
            assert "style" not in element.attrib, element.tag
            assert element.tag not in {f"{SVG}style", f"{SVG}script", f"{SVG}foreignObject"}


# --- sparkline and outcome_strip ------------------------------------------------------------


def test_a_sparkline_breaks_at_none_and_nan_and_keeps_its_title():
    root = parse(sparkline([1.0, 2.0, None, 3.0, 4.0, math.nan, 5.0, 6.0], title=HOSTILE))
    assert len(find(root, "polyline", "spark")) == 3
    assert root.find(f"{SVG}title").text == HOSTILE
    assert (root.get("width"), root.get("height")) == ("120", "24")


def test_a_sparkline_spans_its_box_and_puts_the_highest_value_on_top():
    root = parse(sparkline([0.0, 10.0, 5.0], width=100, height=20, title="t"))
    (line,) = find(root, "polyline", "spark")
    coords = polyline_points(line)
    assert coords[0][0] < 3
    assert coords[-1][0] > 97
    assert min(coords, key=lambda c: c[1]) == coords[1]


@pytest.mark.parametrize(
    "values",
    [[], [None, None], [7.0], [3.0, 3.0, 3.0], [math.inf, 1.0, -math.inf], [1e308, -1e308]],
)
def test_a_sparkline_never_raises(values):
    root = parse(sparkline(values, title="t"))
    assert "nan" not in ET.tostring(root, encoding="unicode").lower()


def test_an_outcome_strip_has_one_classed_rect_per_outcome_oldest_first():
    outcomes = ["success", "partial", "ineffective", "degradation", "timeout", HOSTILE]
    root = parse(outcome_strip(outcomes, title="restart x timeout"))
    rects = find(root, "rect")
    assert [r.get("class") for r in rects] == [
        "o-success",
        "o-partial",
        "o-ineffective",
        "o-degradation",
        "o-other",
        "o-other",
    ]
    xs = [float(r.get("x")) for r in rects]
    assert xs == sorted(xs)
    assert all(r.get("fill") for r in rects)
    assert [r.find(f"{SVG}title").text for r in rects][-1] == HOSTILE
    assert parse(outcome_strip([], title="none")).find(f"{SVG}title").text == "none"


# --- chart_window ---------------------------------------------------------------------------


def points_of(start: float, end: float, step: float) -> int:
    return math.floor((end - start) / step) + 1  # what Prometheus returns


@pytest.mark.parametrize("verify_s", [0.0, 30.0, 120.0, 900.0, 86_400.0])
def test_chart_window_spans_the_action_and_its_verification(verify_s):
    start, end, step = chart_window(START, verify_s=verify_s)
    assert start == START - 600
    assert end == START + verify_s + 300
    assert step >= 1.0
    assert step == int(step)
    assert points_of(start, end, step) <= 240


def test_chart_window_never_asks_for_more_than_240_points():
    # a span of an exact multiple of 240 s is the edge: 2400 s at a 10 s step is 241 points
    for verify_s in range(0, 20_000, 7):
        start, end, step = chart_window(START, verify_s=float(verify_s))
        assert points_of(start, end, step) <= 240, verify_s
        assert points_of(start, end, step - 1) > 240 or step == 1.0  # and no coarser than needed


def test_a_short_window_steps_one_second():
    start, end, step = chart_window(START, verify_s=10, before_s=60, after_s=30)
    assert (start, end, step) == (START - 60, START + 40, 1.0)


def test_chart_window_ignores_negative_or_nan_durations():
    assert chart_window(START, verify_s=-5, before_s=math.nan, after_s=-1) == (START, START, 1.0)
    with pytest.raises(ValueError, match="finite"):
        chart_window(math.nan, verify_s=60)


# --- signal_history (a fake source; the real Prometheus is in tests/integration) -----------


@dataclass
class FakeRange:
    result: RangeResult | None = None
    error: Exception | None = None
    calls: list[dict[str, object]] = field(default_factory=list)

    async def query_range(self, promql, *, start, end, step, timeout_s):
        self.calls.append(
            {"promql": promql, "start": start, "end": end, "step": step, "timeout_s": timeout_s}
        )
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


async def test_signal_history_picks_the_series_with_the_highest_peak():
    low = Series(labels={"target": "a"}, points=((START, 1.0), (START + 1, 2.0)))
    high = Series(labels={"target": "b"}, points=((START, math.nan), (START + 1, 9.0)))
    source = FakeRange(result=RangeResult(query="q", series=(low, high)))
    points, error = await signal_history(
        source, "q", start=START, end=START + 60, step=1, timeout_s=2.0
    )
    assert error is None
    assert points == [(START, pytest.approx(math.nan, nan_ok=True)), (START + 1, 9.0)]
    assert source.calls == [
        {"promql": "q", "start": START, "end": START + 60, "step": 1, "timeout_s": 2.0}
    ]


async def test_signal_history_of_nothing_is_empty_without_an_error():
    source = FakeRange(result=RangeResult(query="q"))
    assert await signal_history(source, "q", start=0, end=1, step=1) == ([], None)


@pytest.mark.parametrize(
    "error",
    [
        PrometheusUnavailable("cannot reach http://x", query="q"),
        PrometheusTimeout("no answer", query="q"),
        PrometheusQueryError(error_type="bad_data", error="parse error", query="q"),
    ],
)
async def test_signal_history_returns_a_prometheus_failure_as_a_message(error):
    points, message = await signal_history(FakeRange(error=error), "q", start=0, end=1, step=1)
    assert points == []
    assert message == f"prometheus: {error}"


async def test_signal_history_does_not_hide_bugs():
    with pytest.raises(RuntimeError):
        await signal_history(FakeRange(error=RuntimeError("bug")), "q", start=0, end=1, step=1)
