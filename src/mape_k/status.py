"""`mape-k status`: fetch the daemon's /stats and render it as a readable terminal summary.

render_status is pure (no clock, no I/O) and never fails on an unexpected shape: unknown
keys are shown generically. fetch_status is the only I/O (one httpx GET).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from mape_k.errors import MapekError

# Sections shown first, in this order, under these titles; the rest follows by key.
_SECTIONS = (
    ("iterations", "Last iterations"),
    ("last_iterations", "Last iterations"),
    ("pending_approvals", "Pending approvals"),
    ("pending_verifications", "Pending verifications"),
    ("knowledge", "Knowledge"),
    ("control_calls", "Control calls"),
)
_MAX_ITEMS = 10


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, int | float) and (key.endswith(("_at", "_time")) or key == "at"):
        try:
            stamp = datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError):
            return str(value)
        return stamp.strftime("%Y-%m-%d %H:%M:%S") + "Z"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _inline(value: Any, width: int) -> str:
    if isinstance(value, Mapping):
        text = " ".join(f"{k}={_inline_value(str(k), v)}" for k, v in value.items())
    else:
        text = _inline_value("", value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _inline_value(key: str, value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, separators=(",", ":"))
    return _scalar(key, value)


def _block(key: str, value: Any, *, indent: int, width: int) -> list[str]:
    pad = "  " * indent
    if isinstance(value, Mapping):
        if not value:
            return [f"{pad}{key}: -"]
        lines = [f"{pad}{key}:"]
        for sub_key, sub_value in value.items():
            lines += _block(str(sub_key), sub_value, indent=indent + 1, width=width)
        return lines
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if not value:
            return [f"{pad}{key}: none"]
        lines = [f"{pad}{key} ({len(value)}):"]
        shown = list(value)[-_MAX_ITEMS:]
        if len(value) > len(shown):
            lines.append(f"{pad}  … {len(value) - len(shown)} earlier")
        room = max(width - len(pad) - 4, 20)
        lines += [f"{pad}  - {_inline(item, room)}" for item in shown]
        return lines
    return [f"{pad}{key}: {_scalar(key, value)}"]


def _decision_line(record: Any) -> Any:
    """One iteration's decision record as `time  result  why` (others unchanged)."""
    if not isinstance(record, Mapping) or "choice" not in record:
        return record
    choice = record.get("choice") or {}
    why = choice.get("why") if isinstance(choice, Mapping) else None
    started = _scalar("started_at", record.get("started_at"))
    return f"{started}  {record.get('result', '?'):<16} {why or ''}"


def render_status(stats: Mapping[str, Any], *, width: int = 100) -> str:
    """A readable summary of a /stats document: scalars first, then the known sections."""
    if not isinstance(stats, Mapping):
        return _inline(stats, width)
    if isinstance(stats.get("iterations"), list):
        stats = {**stats, "iterations": [_decision_line(r) for r in stats["iterations"]][::-1]}
    section_keys = {key for key, _ in _SECTIONS}
    scalars = {k: v for k, v in stats.items() if not isinstance(v, Mapping | list | tuple)}
    lines = ["mape-k status", "============="]
    lines += [f"{key}: {_scalar(str(key), value)}" for key, value in scalars.items()]
    nested = [(k, v) for k, v in stats.items() if k not in scalars and k not in section_keys]
    for key, value in nested:
        lines.append("")
        lines += _block(str(key), value, indent=0, width=width)
    for key, title in _SECTIONS:
        if key in stats:
            lines.append("")
            lines += _block(title, stats[key], indent=0, width=width)
    return "\n".join(lines)


async def fetch_status(url: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET <url>/stats (url is the daemon's base URL, or the /stats URL itself)."""
    target = url.rstrip("/")
    if not target.endswith("/stats"):
        target += "/stats"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(target)
    except httpx.InvalidURL as exc:
        raise MapekError(f"--url {url!r}: not a valid URL ({exc})") from exc
    except httpx.HTTPError as exc:
        raise MapekError(f"cannot reach the daemon at {target}: {exc}") from exc
    if response.status_code != 200:
        raise MapekError(f"{target} answered HTTP {response.status_code}: {response.text[:200]}")
    try:
        document = response.json()
    except ValueError as exc:
        raise MapekError(f"{target} did not answer JSON") from exc
    if not isinstance(document, dict):
        raise MapekError(f"{target} answered JSON that is not an object")
    return document
