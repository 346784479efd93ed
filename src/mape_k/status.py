"""`mape-k status`: fetch the daemon's /stats and render it as a readable terminal summary.

The last decisions come first (one line each: time, result, why), then the pending
approvals, then the holds — freezes, "needs a human" holds, back-offs, an open Charter
breaker, a startup problem — each with its whole reason and its expiry (wrapped, never
cut), then everything else: scalars, guard internals, knowledge... render_status is pure
(no clock, no I/O) and never fails on an unexpected shape: unknown keys are shown
generically. fetch_status is the only I/O (one httpx GET).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from mape_k.errors import MapekError

# The decisions, then what waits for a human, then everything else (guard internals,
# knowledge, ...), by key. These sections come after the holds, in this order.
_DECISION_KEYS = ("iterations", "last_iterations")
_SECTIONS = (
    ("pending_verifications", "Pending verifications"),
    ("knowledge", "Knowledge"),
    ("control_calls", "Control calls"),
)
_MAX_ITEMS = 10
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_TIMES = ("at", "since", "until")  # epoch seconds, like the keys ending in _at / _time
_GONE = object()  # a guards key the holds section showed in full


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, int | float) and (key.endswith(("_at", "_time")) or key in _TIMES):
        return _stamp(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _stamp(value: Any) -> str:
    """An epoch time as `YYYY-MM-DD HH:MM:SSZ`; anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _scalar("", value)
    try:
        stamp = datetime.fromtimestamp(float(value), tz=UTC)
    except (OverflowError, OSError, ValueError):
        return str(value)
    return stamp.strftime("%Y-%m-%d %H:%M:%S") + "Z"


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


def _wrap(text: str, *, first: str, rest: str, width: int) -> list[str]:
    """`text` after `first`, wrapped to `width` on spaces, continued after `rest`; never cut
    (a word longer than the line stays whole)."""
    return textwrap.wrap(
        text,
        width=max(width, len(first) + 20),
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]


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


# --- the last decisions -------------------------------------------------------------------


def _newest_first(records: list[Any]) -> list[Any]:
    """By `started_at`, newest first, when every record has one (/stats sends them so);
    otherwise as given."""
    starts = [r.get("started_at") if isinstance(r, Mapping) else None for r in records]
    times = [t for t in starts if isinstance(t, int | float) and not isinstance(t, bool)]
    if len(times) != len(records):
        return records
    return [r for _, r in sorted(zip(times, records, strict=True), key=lambda p: -p[0])]


def _decision_lines(record: Any, width: int) -> list[str]:
    """One decision as `time  result  why` (wrapped, never cut); other shapes inline."""
    if not isinstance(record, Mapping) or not ({"choice", "result"} & record.keys()):
        return [f"  - {_inline(record, max(width - 4, 20))}"]
    choice = record.get("choice")
    why = choice.get("why") if isinstance(choice, Mapping) else None
    if why is None:
        why = record.get("error") or record.get("why") or ""
    head = f"  {_stamp(record.get('started_at'))}  {_scalar('', record.get('result', '?')):<16} "
    return _wrap(str(why), first=head, rest=" " * 6, width=width)


def _decisions(records: Any, width: int) -> list[str]:
    if not isinstance(records, list | tuple):
        return _block("Last decisions", records, indent=0, width=width)
    if not records:
        return ["Last decisions: none"]
    ordered = _newest_first(list(records))
    lines = [f"Last decisions ({len(records)}, newest first):"]
    for record in ordered[:_MAX_ITEMS]:
        lines += _decision_lines(record, width)
    if len(ordered) > _MAX_ITEMS:
        lines.append(f"  … {len(ordered) - _MAX_ITEMS} older")
    return lines


def _approvals(approvals: Any, width: int) -> list[str]:
    if not isinstance(approvals, list | tuple):
        return _block("Pending approvals", approvals, indent=0, width=width)
    if not approvals:
        return ["Pending approvals: none"]
    lines = [f"Pending approvals ({len(approvals)}):"]
    for item in approvals:
        if not isinstance(item, Mapping):
            lines.append(f"  - {_inline(item, max(width - 4, 20))}")
            continue
        actions = item.get("actions")
        if isinstance(actions, list | tuple):
            actions = ", ".join(str(a) for a in actions)
        head = " ".join(
            str(part)
            for part in (
                item.get("policy_id", "?"),
                item.get("cause", ""),
                f"[{actions}]" if actions else "",
                f"score {_scalar('', item['score'])}" if "score" in item else "",
                f"since {_stamp(item['created_at'])}" if "created_at" in item else "",
            )
            if part
        )
        lines += _wrap(head, first="  - ", rest="    ", width=width)
        if item.get("rationale"):
            lines += _wrap(str(item["rationale"]), first="    ", rest="    ", width=width)
    return lines


# --- holds: what stops the loop acting, in full ---------------------------------------------


def _expiry(hold: Mapping[str, Any]) -> str:
    parts = []
    since = hold.get("since", hold.get("opened_at"))
    if since is not None:
        parts.append(f"since {_stamp(since)}")
    until = hold.get("until")
    parts.append("no expiry" if until is None else f"until {_stamp(until)}")
    return ", ".join(parts)


_Hold = list[str]  # one hold's lines
_Found = tuple[list[_Hold], dict[str, Any]]  # the holds, and what their guards key becomes


def _hold(title: str, hold: Mapping[str, Any], width: int, *, extra: str = "") -> _Hold:
    """`- title (since, until): reason`, the reason whole, wrapped under the title."""
    reason = hold.get("reason") or hold.get("last_error") or hold.get("problem") or "-"
    head = f"  - {title} ({_expiry(hold)}{extra}): "
    return _wrap(f"{head}{reason}", first="", rest="      ", width=width)


def _freezes(guards: Mapping[str, Any], width: int) -> _Found:
    holds, rest = [], {}
    for key, title in (("freeze", "frozen"), ("freeze_window", "freeze window")):
        freeze = guards.get(key)
        if isinstance(freeze, Mapping):
            source = f", by {freeze['source']}" if freeze.get("source") else ""
            holds.append(_hold(title, freeze, width, extra=source))
            rest[key] = _GONE
    return holds, rest


def _needs_human(guards: Mapping[str, Any], width: int) -> _Found:
    humans = guards.get("needs_human")
    if not isinstance(humans, list) or not all(isinstance(h, Mapping) for h in humans):
        return [], {}
    holds = [_hold(f"needs a human: {h.get('target', '?')}", h, width) for h in humans]
    return holds, ({"needs_human": _GONE} if holds else {})


def _backoffs(guards: Mapping[str, Any], width: int) -> _Found:
    backoffs = guards.get("oscillating_targets")
    if not isinstance(backoffs, list):
        return [], {}
    active = [b for b in backoffs if isinstance(b, Mapping) and b.get("active", True)]
    holds = [
        _hold(
            f"back-off: {b.get('target', '?')}",
            b,
            width,
            extra=f", level {b['level']}" if "level" in b else "",
        )
        for b in active
    ]
    if not active:
        return [], {}
    return holds, {"oscillating_targets": [b for b in backoffs if b not in active] or _GONE}


def _breaker(guards: Mapping[str, Any], width: int) -> _Found:
    circuit = guards.get("charter_circuit")
    if not isinstance(circuit, Mapping):
        return [], {}
    phase = circuit.get("phase", circuit.get("state"))
    if phase in (None, "closed"):
        return [], {}
    failures = f", {circuit['failures']} failures" if "failures" in circuit else ""
    hold = _hold(f"Charter breaker {phase}", circuit, width, extra=failures)
    return [hold], {"charter_circuit": _GONE}


def _startup(guards: Mapping[str, Any], width: int) -> _Found:
    startup = guards.get("startup")
    if not isinstance(startup, Mapping) or startup.get("ok") is not False:
        return [], {}
    problem = f"  - startup problem: {startup.get('problem') or '-'}"
    return [_wrap(problem, first="", rest="      ", width=width)], {"startup": _GONE}


def _holds(guards: Any, width: int) -> tuple[list[str], Any]:
    """The holds in `guards` as lines, and `guards` without what they showed in full."""
    if not isinstance(guards, Mapping):
        return ["Holds: none"], guards
    holds: list[_Hold] = []
    rest: dict[str, Any] = dict(guards)
    for extract in (_freezes, _needs_human, _backoffs, _breaker, _startup):
        found, changed = extract(guards, width)
        holds += found
        rest.update(changed)
    if not holds:
        return ["Holds: none"], guards
    lines = [f"Holds ({len(holds)}):"] + [line for hold in holds for line in hold]
    return lines, {k: v for k, v in rest.items() if v is not _GONE}


def _figure(value: Any, digits: int = 2) -> str:
    return "—" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def _autonomy(autonomy: Any, width: int) -> list[str]:
    """Levels with a rule or an override, the targets a change window lowers, and per
    shadowed action its would-dos, estimated precision and the time it would have saved
    (what an operator raises autonomy on)."""
    if not isinstance(autonomy, Mapping):
        return []
    lines = ["", "Autonomy"]
    levels = autonomy.get("levels")
    for key, row in levels.items() if isinstance(levels, Mapping) else ():
        if not isinstance(row, Mapping):
            continue
        note = " (demoted)" if row.get("demoted") else ""
        bounds = f" [{row.get('min')}..{row.get('max')}]" if row.get("configured") else ""
        lines += _wrap(
            f"{key}: {row.get('level')}{bounds}{note}", first="  ", rest="    ", width=width
        )
    lines += _windows(autonomy.get("windows"), width)
    shadow = autonomy.get("shadow")
    for row in shadow if isinstance(shadow, list) else ():
        if not isinstance(row, Mapping):
            continue
        text = (
            f"shadow {row.get('cause')}/{row.get('actions')}: {row.get('would_do')} would-do,"
            f" {row.get('scored')} scored, precision {_figure(row.get('precision'))} (est.),"
            f" would have saved {_figure(row.get('saved_s'), 0)} s; cleared by itself"
            f" {row.get('cleared')}, fixed by someone else {row.get('fixed_by_other')},"
            f" persisted {row.get('persisted')}, worse {row.get('worse')}"
        )
        lines += _wrap(text, first="  ", rest="    ", width=width)
    changes = autonomy.get("changes")
    for change in changes[:3] if isinstance(changes, list) else ():
        if isinstance(change, Mapping):
            key = change.get("key")
            if change.get("target") is not None:  # a change window: every action on a target
                key = f"{'every action' if key == '*' else key} on {change.get('target')}"
            text = (
                f"{_stamp(change.get('at'))} {key}: {change.get('before')} ->"
                f" {change.get('after')} by {change.get('by')}: {change.get('reason')}"
            )
            lines += _wrap(text, first="  ", rest="    ", width=width)
    return lines if len(lines) > 2 else []


def _windows(windows: Any, width: int) -> list[str]:
    """The targets a recorded change's window lowers one level, until when, and why."""
    lines: list[str] = []
    for target, row in windows.items() if isinstance(windows, Mapping) else ():
        if not isinstance(row, Mapping):
            continue
        rollback = row.get("rollback")
        text = (
            f"{target}: every action one level down until {_stamp(row.get('until'))}, after"
            f" change {row.get('change')} ({row.get('kind')} {row.get('description')!r})"
            + (f"; its rollback ({rollback}) keeps its level" if rollback else "")
        )
        lines += _wrap(text, first="  ", rest="    ", width=width)
    return lines


def _predictions(predictions: Any, width: int) -> list[str]:
    """Per rule with a forecast: raised, came true, did not, prevented, precision, recall."""
    rules = predictions.get("rules") if isinstance(predictions, Mapping) else None
    if not isinstance(rules, Mapping) or not rules:
        return []
    lines = ["", "Predictions"]
    for rule, row in rules.items():
        if not isinstance(row, Mapping):
            continue
        text = (
            f"{rule}: raised {row.get('raised')}, came true {row.get('came_true')}, did not"
            f" {row.get('did_not')}, prevented {row.get('prevented')}, open {row.get('open')};"
            f" precision {_figure(row.get('precision'))}, recall {_figure(row.get('recall'))}"
        )
        lines += _wrap(text, first="  ", rest="    ", width=width)
    return lines


def _printable(text: str) -> str:
    """Control characters (alert labels are untrusted: an ESC sequence could clear the
    terminal or forge a line) shown as escapes; newlines are the layout's own."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def render_status(stats: Mapping[str, Any], *, width: int = 100) -> str:
    """A readable summary of a /stats document: the last decisions, pending approvals and
    holds (reasons never cut), then scalars, guard internals and the other sections."""
    return _printable(_render(stats, width))


def _render(stats: Mapping[str, Any], width: int) -> str:
    if not isinstance(stats, Mapping):
        return _inline(stats, width)
    lines = ["mape-k status", "============="]
    ha = stats.get("ha")
    if isinstance(ha, Mapping) and ha.get("mode") == "replicas":
        # Replicas: first, whether this one acts (a follower's decisions are not acted on).
        role = f"leader (epoch {ha.get('epoch')})" if ha.get("role") == "leader" else ha.get("why")
        lines += _wrap(f"{ha.get('replica')}: {role}", first="replica ", rest="  ", width=width)
    for key in _DECISION_KEYS:
        if key in stats:
            lines += ["", *_decisions(stats[key], width)]
    if "pending_approvals" in stats:
        lines += ["", *_approvals(stats["pending_approvals"], width)]
    lines += _autonomy(stats.get("autonomy"), width)
    lines += _predictions(stats.get("predictions"), width)
    holds, guards = _holds(stats.get("guards"), width)
    lines += ["", *holds]
    lines += _rest(stats, guards, width)
    return "\n".join(lines)


def _rest(stats: Mapping[str, Any], guards: Any, width: int) -> list[str]:
    """Scalars, the guard internals (what the holds did not show), the other keys, then
    the known trailing sections."""
    shown = {*_DECISION_KEYS, "pending_approvals", "guards", "autonomy", "predictions"}
    shown |= {key for key, _ in _SECTIONS}
    scalars = {k: v for k, v in stats.items() if not isinstance(v, Mapping | list | tuple)}
    lines: list[str] = []
    if scalars:
        lines.append("")
        lines += [f"{key}: {_scalar(str(key), value)}" for key, value in scalars.items()]
    if "guards" in stats:
        lines += ["", *_block("Guards", guards, indent=0, width=width)]
    for key, value in stats.items():
        if key not in scalars and key not in shown:
            lines += ["", *_block(str(key), value, indent=0, width=width)]
    for key, title in _SECTIONS:
        if key in stats:
            lines += ["", *_block(title, stats[key], indent=0, width=width)]
    return lines


async def fetch_status(
    url: str, *, token: str | None = None, timeout_s: float = 5.0
) -> dict[str, Any]:
    """GET <url>/stats (url is the daemon's base URL, or the /stats URL itself), with the
    viewer or admin token as a bearer token when the daemon has server.viewer_token."""
    target = url.rstrip("/")
    if not target.endswith("/stats"):
        target += "/stats"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await client.get(target, headers=headers)
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
