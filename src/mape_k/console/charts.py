"""Charts of the operator console: inline SVG built from data, plus the range query behind them.

Pure functions (no I/O, no clock) return `markupsafe.Markup` ready for a Jinja2 template.
The console runs under a strict Content-Security-Policy, so the SVG carries no `style`
attribute and no script: colours are presentation attributes (fill=, stroke=) and classes
the stylesheet may override. Every text that reaches the markup (titles, mark labels,
units, outcomes) is escaped; a chart never raises on its data (NaN, inf, empty, a zero
time range all draw something). `signal_history` is the one coroutine: a range query that
turns a Prometheus failure into an error message instead of an exception.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Protocol

from markupsafe import Markup, escape

from mape_k.errors import MapekError
from mape_k.integrations.prometheus import RangeResult

Point = tuple[float, float]

_OUTCOMES = ("success", "partial", "ineffective", "degradation")
_COLOURS = {
    "success": "#2e7d32",
    "partial": "#f9a825",
    "ineffective": "#9e9e9e",
    "degradation": "#c62828",
    "other": "#607d8b",
    "pending": "#1565c0",
}
_LINE = "#1565c0"
_MUTED = "#757575"
_GAP_FACTOR = 3.0  # a time step longer than 3x the median step is a gap in the data
_HEADROOM = 1.1
_MAX_POINTS = 240
_LABEL_CHARS = 24
_X_TICKS = 4
# Characters XML 1.0 forbids even as references: dropped so the SVG stays well-formed.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class ChartMark:
    """An action on a signal chart: when, what, how it was judged, and its verification window."""

    at: float
    label: str
    outcome: str | None = None  # "success", "ineffective", "degradation", ...; None = pending
    window: tuple[float, float] | None = None


class RangeSource(Protocol):
    """What `signal_history` needs: `PrometheusClient.query_range`."""

    async def query_range(
        self, promql: str, *, start: float, end: float, step: float, timeout_s: float
    ) -> RangeResult: ...


# --- text and numbers ---------------------------------------------------------------------


def _text(value: object, limit: int | None = None) -> Markup:
    """Escaped text, without the characters XML cannot carry, optionally shortened."""
    text = _NOT_XML.sub("", str(value))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return escape(text)


def _n(value: float) -> str:
    """A coordinate: one decimal, never NaN or inf in the markup."""
    return f"{value:.1f}" if math.isfinite(value) else "0"


def _size(value: float, minimum: float) -> float:
    return float(value) if math.isfinite(value) and value >= minimum else minimum


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if 1000 <= abs(value) < 1e9:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _clock(at: float) -> str:
    try:
        return datetime.fromtimestamp(at, tz=UTC).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return _fmt(at)


def _svg(width: float, height: float, title: str, css: str, body: Iterable[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" role="img" '
        f'viewBox="0 0 {width:g} {height:g}" width="{width:g}" height="{height:g}">'
        f"<title>{_text(title)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 - texts pass _text, numbers _n/_fmt


# --- the signal chart ---------------------------------------------------------------------


def _segments(points: Sequence[Point], start: float, end: float) -> list[list[Point]]:
    """The points inside [start, end] in time order, cut at non-finite values and time gaps."""
    inside = sorted(
        ((float(t), float(v)) for t, v in points if math.isfinite(t) and start <= t <= end),
        key=lambda point: point[0],
    )
    steps = [b[0] - a[0] for a, b in pairwise(inside) if b[0] > a[0]]
    limit = _GAP_FACTOR * statistics.median(steps) if steps else math.inf
    segments: list[list[Point]] = [[]]
    previous: float | None = None
    for t, v in inside:
        if (previous is not None and t - previous > limit) or not math.isfinite(v):
            segments.append([])
        previous = t
        if math.isfinite(v):
            segments[-1].append((t, v))
    return [segment for segment in segments if segment]


def _value_range(values: Iterable[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low = min(0.0, *finite)
    high = max(finite) * _HEADROOM if max(finite) > 0 else 0.0
    if not math.isfinite(high):
        high = max(finite)
    if high <= low:
        high = low + max(1.0, abs(low) * 0.1)
    return low, high


@dataclass(frozen=True, slots=True)
class _Plot:
    """The plot box in SVG units and the data ranges it shows."""

    width: float
    height: float
    start: float
    end: float
    low: float
    high: float
    left: float = 56.0
    top: float = 16.0

    @property
    def right(self) -> float:
        return self.width - 12.0

    @property
    def bottom(self) -> float:
        return self.height - 22.0

    def x(self, t: float) -> float:
        share = (min(max(t, self.start), self.end) - self.start) / (self.end - self.start)
        return self.left + share * (self.right - self.left)

    def y(self, v: float) -> float:
        share = (min(max(v, self.low), self.high) - self.low) / (self.high - self.low)
        return self.bottom - share * (self.bottom - self.top)


def signal_chart(
    points: Sequence[Point],
    *,
    start: float,
    end: float,
    threshold: float | None = None,
    marks: Sequence[ChartMark] = (),
    title: str,
    unit: str = "",
    width: float = 640,
    height: float = 200,
) -> Markup:
    """A line chart of (unix time, value) points from `start` to `end`, as an inline <svg>.

    The y axis runs from 0 (or the lowest value, if negative) to 1.1x the larger of the
    highest value and `threshold`. A NaN or inf value, or a time step over 3x the median
    step, breaks the line. `unit` is appended as given to the y labels ("%", " s").
    Each mark is a vertical line classed by outcome, its window a shaded rect.
    """
    if not (math.isfinite(start) and math.isfinite(end)):
        start, end = 0.0, 1.0
    if end <= start:  # one instant (or a reversed range): show one second from `start`
        end = start + 1.0
    segments = _segments(points, start, end)
    level = threshold if threshold is not None and math.isfinite(threshold) else None
    values = [v for segment in segments for _, v in segment]
    low, high = _value_range(values if level is None else [*values, level])
    plot = _Plot(_size(width, 160), _size(height, 80), start, end, low, high)
    body = [
        _box(plot, "frame", plot.left, plot.right, 'fill="none" stroke="#e0e0e0"'),
        *(_window(plot, mark.window) for mark in marks if mark.window is not None),
        *_axes(plot, unit),
    ]
    if level is not None:
        body.append(_threshold(plot, level, unit))
    body.extend(_line(plot, segment) for segment in segments)
    if not segments:
        body.append(
            f'<text class="no-data" x="{_n((plot.left + plot.right) / 2)}" '
            f'y="{_n((plot.top + plot.bottom) / 2)}" text-anchor="middle" font-size="12" '
            f'fill="{_MUTED}">no data in this range</text>'
        )
    body.extend(
        _mark(plot, mark) for mark in marks if math.isfinite(mark.at) and start <= mark.at <= end
    )
    return _svg(plot.width, plot.height, title, "chart", body)


def _box(plot: _Plot, css: str, left: float, right: float, paint: str) -> str:
    """A rect from `left` to `right`, the plot's full height."""
    return (
        f'<rect class="{css}" x="{_n(left)}" y="{_n(plot.top)}" width="{_n(right - left)}" '
        f'height="{_n(plot.bottom - plot.top)}" {paint}/>'
    )


def _window(plot: _Plot, window: tuple[float, float]) -> str:
    if not all(math.isfinite(edge) for edge in window):
        return ""
    left, right = sorted((plot.x(window[0]), plot.x(window[1])))
    return _box(plot, "window", left, right, f'fill="{_COLOURS["pending"]}" opacity="0.1"')


def _axes(plot: _Plot, unit: str) -> list[str]:
    """Three value ticks (bottom, middle, top) and a few HH:MM:SS UTC time ticks."""
    parts = []
    for value in (plot.low, (plot.low + plot.high) / 2, plot.high):
        at = _n(plot.y(value))
        parts.append(
            f'<line class="grid" x1="{_n(plot.left)}" x2="{_n(plot.right)}" y1="{at}" '
            f'y2="{at}" stroke="#eeeeee"/><text class="tick" x="{_n(plot.left - 4)}" '
            f'y="{_n(plot.y(value) + 3)}" text-anchor="end" font-size="10" fill="{_MUTED}">'
            f"{_text(_fmt(value) + unit)}</text>"
        )
    for i in range(_X_TICKS):
        share = i / (_X_TICKS - 1)
        anchor = "start" if i == 0 else "end" if i == _X_TICKS - 1 else "middle"
        label = _clock(plot.start + share * (plot.end - plot.start))
        parts.append(
            f'<text class="tick" x="{_n(plot.left + share * (plot.right - plot.left))}" '
            f'y="{_n(plot.height - 6)}" text-anchor="{anchor}" font-size="10" fill="{_MUTED}">'
            f"{_text(label + (' UTC' if i == _X_TICKS - 1 else ''))}</text>"
        )
    return parts


def _threshold(plot: _Plot, level: float, unit: str) -> str:
    at = plot.y(level)
    colour = _COLOURS["degradation"]
    return (
        f'<line class="threshold" x1="{_n(plot.left)}" x2="{_n(plot.right)}" y1="{_n(at)}" '
        f'y2="{_n(at)}" stroke="{colour}" stroke-dasharray="4 3"/>'
        f'<text class="threshold-label" x="{_n(plot.right - 2)}" y="{_n(at - 3)}" '
        f'text-anchor="end" font-size="10" fill="{colour}">{_text(_fmt(level) + unit)}</text>'
    )


def _line(plot: _Plot, segment: list[Point]) -> str:
    """A polyline; a lone point (between two gaps) as a dot, since a polyline would not show."""
    if len(segment) == 1:
        ((t, v),) = segment
        return (
            f'<circle class="signal-dot" cx="{_n(plot.x(t))}" cy="{_n(plot.y(v))}" r="2" '
            f'fill="{_LINE}"/>'
        )
    coords = " ".join(f"{_n(plot.x(t))},{_n(plot.y(v))}" for t, v in segment)
    return (
        f'<polyline class="signal" points="{coords}" fill="none" stroke="{_LINE}" '
        f'stroke-width="1.5"/>'
    )


def _mark(plot: _Plot, mark: ChartMark) -> str:
    if mark.outcome is None:
        kind, hover = "pending", mark.label
    else:
        kind = mark.outcome if mark.outcome in _OUTCOMES else "other"
        hover = f"{mark.label}: {mark.outcome}"
    colour, at = _COLOURS[kind], plot.x(mark.at)
    return (
        f'<g class="mark mark-{kind}"><title>{_text(hover)}</title>'
        f'<line x1="{_n(at)}" x2="{_n(at)}" y1="{_n(plot.top)}" y2="{_n(plot.bottom)}" '
        f'stroke="{colour}" stroke-width="1.5"/>'
        f'<text x="{_n(at + 3)}" y="{_n(plot.top - 4)}" font-size="10" fill="{colour}">'
        f"{_text(mark.label, _LABEL_CHARS)}</text></g>"
    )


# --- small charts for tables --------------------------------------------------------------


def sparkline(
    values: Sequence[float | None], *, width: float = 120, height: float = 24, title: str
) -> Markup:
    """A tiny line of a series, evenly spaced, scaled to its own range; None/NaN break it."""
    width, height = _size(width, 8), _size(height, 4)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    pad, count = 1.5, len(values)

    def x(i: int) -> float:
        return width / 2 if count == 1 else pad + i * (width - 2 * pad) / (count - 1)

    def y(v: float) -> float:
        if high - low <= 0 or not math.isfinite(high - low):
            return height / 2
        return height - pad - (v - low) / (high - low) * (height - 2 * pad)

    segments: list[list[str]] = [[]]
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            segments.append([])
        else:
            segments[-1].append(f"{_n(x(i))},{_n(y(v))}")
    body = []
    for segment in segments:
        if len(segment) == 1:
            cx, cy = segment[0].split(",")
            body.append(f'<circle class="spark-dot" cx="{cx}" cy="{cy}" r="1.5" fill="{_LINE}"/>')
        elif segment:
            body.append(
                f'<polyline class="spark" points="{" ".join(segment)}" fill="none" '
                f'stroke="{_LINE}" stroke-width="1"/>'
            )
    return _svg(width, height, title, "sparkline", body)


def outcome_strip(
    outcomes: Sequence[str], *, width: float = 120, height: float = 16, title: str
) -> Markup:
    """One rect per outcome, oldest first, classed `o-success` ... `o-other`."""
    width, height = _size(width, 8), _size(height, 4)
    cell = width / max(len(outcomes), 1)
    body = []
    for i, outcome in enumerate(outcomes):
        kind = outcome if outcome in _OUTCOMES else "other"
        body.append(
            f'<rect class="o-{kind}" x="{_n(i * cell)}" y="0" width="{_n(max(cell - 1, 0.5))}" '
            f'height="{_n(height)}" fill="{_COLOURS[kind]}"><title>{_text(outcome)}</title></rect>'
        )
    return _svg(width, height, title, "outcomes", body)


# --- the data behind a chart --------------------------------------------------------------


def chart_window(
    action_at: float, *, verify_s: float, before_s: float = 600, after_s: float = 300
) -> tuple[float, float, float]:
    """(start, end, step) of the range query around an action: `before_s` ahead of it, its
    verification, then `after_s`; a whole-second step of at least 1 s, at most 240 points."""
    if not math.isfinite(action_at):
        raise ValueError(f"action_at must be a finite time, not {action_at!r}")

    def seconds(value: float) -> float:
        return value if math.isfinite(value) and value > 0 else 0.0

    start = action_at - seconds(before_s)
    end = action_at + seconds(verify_s) + seconds(after_s)
    # Prometheus returns floor((end - start) / step) + 1 points: the smallest whole step
    # keeping that at most _MAX_POINTS is floor(span / _MAX_POINTS) + 1.
    step = float(math.floor((end - start) / _MAX_POINTS) + 1)
    return start, end, step


def _peak(points: Sequence[Point]) -> float:
    return max((v for _, v in points if math.isfinite(v)), default=-math.inf)


async def signal_history(
    source: RangeSource,
    promql: str,
    *,
    start: float,
    end: float,
    step: float,
    timeout_s: float = 5.0,
) -> tuple[list[Point], str | None]:
    """The points of the series with the highest peak, and an error message or None.

    A Prometheus failure is returned as `([], "prometheus: ...")`, never raised.
    """
    try:
        result = await source.query_range(
            promql, start=start, end=end, step=step, timeout_s=timeout_s
        )
    except MapekError as exc:
        return [], f"prometheus: {exc}"
    if not result.series:
        return [], None
    best = max(result.series, key=lambda series: _peak(series.points))
    return list(best.points), None
