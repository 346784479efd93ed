"""The change log: deploys and config changes recorded on a target, the one owner of them.

A change comes in through `POST /api/v1/changes` (server.py), as a plain JSON body
(`from_request`) or as an Alertmanager webhook payload whose firing alerts are changes
(`from_alertmanager`); both are validated here, every refusal a `ChangeRefused` naming the
field. For `changes.window_s` after it (or the change's own `window_s`) a change is
*recent* (`ChangeLog.recent`): the planner ranks its rollback first for the causes in
`changes.rollback_causes` (loop/plan.py), and graded autonomy drops the target's level
one step (`open_windows`; the rollback of that change excepted, loop/autonomy.py).
`ChangeLog.since` tells a scorer that someone else changed a target.

The newest `changes.max_kept` changes are kept in memory and in the store's state table
(key `changes`), written by the leader only; `load` reads them back at start and at a
takeover. Descriptions are untrusted text: bounded, whitespace collapsed, control
characters refused (or, in an alert, replaced).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError

from mape_k.config import MAX_CHANGE_WINDOW_S, CandidateAction, ChangesConfig
from mape_k.errors import MapekError
from mape_k.integrations.alertmanager import (
    WEBHOOK_VERSION,
    Alert,
    AlertStatus,
    WebhookPayload,
)
from mape_k.models import Cause
from mape_k.storeio import BAD_STATE, AsyncStore, read_state

log = structlog.get_logger(__name__)

STATE_KEY = "changes"
TARGET_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
KIND_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
SOURCE_PATTERN = re.compile(r"[A-Za-z0-9_.:@/-]{1,64}")
MAX_DESCRIPTION = 500  # characters
SHOWN_DESCRIPTION = 80  # characters of it in a rationale
REQUEST_FIELDS = frozenset(
    {"target", "kind", "description", "at", "rollback", "window_s", "source"}
)
_WHITESPACE = frozenset("\t\n\r")


def _unprintable(char: str) -> bool:
    """A control, format (bidi overrides, zero-width), private-use or surrogate character:
    none belongs in a one-line description a terminal or a page shows."""
    return char not in _WHITESPACE and unicodedata.category(char)[0] == "C"


class ChangeRefused(ValueError):
    """A change that is not taken: `field` names what is wrong (a 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Change:
    id: str
    target: str
    kind: str  # deploy | config | another short word
    at: float  # when it happened (epoch s)
    description: str = ""
    source: str = "api"  # api | webhook | who posted it
    rollback: CandidateAction | None = None  # the action that undoes it, if known
    window_s: float | None = None  # its own window (None: changes.window_s)

    def describe(self, now: float) -> str:
        """`deploy 'v42 to prod' 120 s ago`, for a rationale (the description shortened)."""
        text = self.description
        if len(text) > SHOWN_DESCRIPTION:
            text = text[: SHOWN_DESCRIPTION - 1] + "…"
        return f"{self.kind} {text!r} {max(now - self.at, 0.0):.0f} s ago"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "kind": self.kind,
            "at": self.at,
            "description": self.description,
            "source": self.source,
            "rollback": None if self.rollback is None else _rollback_dict(self.rollback),
            "window_s": self.window_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        rollback = data.get("rollback")
        window = data.get("window_s")
        return cls(
            id=str(data["id"]),
            target=str(data["target"]),
            kind=str(data["kind"]),
            at=float(data["at"]),
            description=str(data.get("description", "")),
            source=str(data.get("source", "api")),
            rollback=None if rollback is None else CandidateAction.model_validate(rollback),
            window_s=None if window is None else float(window),
        )


def _rollback_dict(action: CandidateAction) -> dict[str, Any]:
    return action.model_dump(mode="json", exclude_none=True)


def change_id(*parts: object) -> str:
    """'chg-' + 16 hex of sha256 over the parts: the same change gets the same id (an
    Alertmanager re-delivery is a duplicate, not a second change)."""
    material = json.dumps([repr(p) if isinstance(p, float) else p for p in parts])
    return "chg-" + hashlib.sha256(material.encode()).hexdigest()[:16]


# --- validation at the edge -----------------------------------------------------------


def _word(value: Any, field: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = value if isinstance(value, str) else type(value).__name__
        raise ChangeRefused(field, f"{str(shown)[:40]!r} is not {what} ({pattern.pattern})")
    return value


def _description(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ChangeRefused(field, "must be a string")
    if len(value) > MAX_DESCRIPTION:
        raise ChangeRefused(field, f"longer than {MAX_DESCRIPTION} characters")
    if any(_unprintable(char) for char in value):
        raise ChangeRefused(field, "contains control or format characters")
    return " ".join(value.split())


def _alert_text(value: str) -> str:
    """An alert's annotation as a description: control characters replaced, bounded."""
    text = " ".join("".join(" " if _unprintable(c) else c for c in value).split())
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ChangeRefused(field, "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ChangeRefused(field, "must be finite")
    return number


def _at(value: Any, field: str, *, now: float, config: ChangesConfig) -> float:
    at = _number(value, field)
    if at > now + config.clock_skew_s:
        raise ChangeRefused(
            field,
            f"{at:.0f} is {at - now:.0f} s in the future (more than changes.clock_skew_s,"
            f" {config.clock_skew_s:g} s)",
        )
    if at < now - config.max_age_s:
        raise ChangeRefused(
            field, f"{at:.0f} is older than changes.max_age_s ({config.max_age_s:g} s)"
        )
    return at


def _window(value: Any, field: str) -> float | None:
    if value is None:
        return None
    window = _number(value, field)
    if not 0 < window <= MAX_CHANGE_WINDOW_S:
        raise ChangeRefused(field, f"must be > 0 and <= {MAX_CHANGE_WINDOW_S:g} s")
    return window


def _rollback(value: Any, field: str, actions: Collection[str]) -> CandidateAction | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ChangeRefused(field, 'must be an object {"type": ..., "parameters": {...}}')
    try:
        action = CandidateAction.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ChangeRefused(f"{field}.{where}" if where else field, error["msg"]) from exc
    if action.type not in actions:
        raise ChangeRefused(f"{field}.type", f"{action.type!r} is not in planner.actions")
    return action


def from_request(
    document: Mapping[str, Any],
    *,
    now: float,
    config: ChangesConfig,
    actions: Collection[str],
) -> Change:
    """A change from the JSON body `{target, kind, description?, at?, rollback?, window_s?,
    source?}` of POST /api/v1/changes; `at` defaults to `now`."""
    for name in document:
        if name not in REQUEST_FIELDS:
            raise ChangeRefused(
                str(name)[:64], f"unknown field (expected {sorted(REQUEST_FIELDS)})"
            )
    if "target" not in document:
        raise ChangeRefused("target", "required")
    if "kind" not in document:
        raise ChangeRefused("kind", "required (deploy, config or another short word)")
    target = _word(document["target"], "target", TARGET_PATTERN, "a target name")
    kind = _word(document["kind"], "kind", KIND_PATTERN, "a kind")
    description = _description(document.get("description", ""), "description")
    source = _word(document.get("source", "api"), "source", SOURCE_PATTERN, "a source")
    at = now if document.get("at") is None else _at(document["at"], "at", now=now, config=config)
    window = _window(document.get("window_s"), "window_s")
    rollback = _rollback(document.get("rollback"), "rollback", actions)
    return Change(
        id=change_id(target, kind, at, description, source),
        target=target,
        kind=kind,
        at=at,
        description=description,
        source=source,
        rollback=rollback,
        window_s=window,
    )


@dataclass(frozen=True, slots=True)
class AlertChanges:
    """What one Alertmanager payload gave: the changes, and the alerts that are none."""

    changes: tuple[Change, ...]
    skipped: tuple[str, ...]  # why each alert that is no change was skipped


def from_alertmanager(
    document: Mapping[str, Any],
    *,
    now: float,
    config: ChangesConfig,
    actions: Collection[str],
) -> AlertChanges:
    """The changes of an Alertmanager webhook payload (version 4): each firing alert is one,
    on the target its label `target` (else `component`) names, of the kind its label
    `change_kind` (else `kind`, default deploy) says, described by its annotation
    `description` (else `summary`), at its `startsAt`. Optional annotations: `rollback`
    (JSON: {"type", "parameters"}) and `window_s`. Resolved alerts and alerts older than
    changes.max_age_s (re-sent ones) are skipped; a bad label refuses the payload."""
    if document.get("version") != WEBHOOK_VERSION:
        shown = repr(document.get("version"))[:20]
        raise ChangeRefused("version", f"{shown} is not the webhook version {WEBHOOK_VERSION!r}")
    try:
        payload = WebhookPayload.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise ChangeRefused(where, error["msg"]) from exc
    changes: list[Change] = []
    skipped: list[str] = []
    for i, alert in enumerate(payload.alerts):
        where = f"alerts[{i}]"
        if alert.status is not AlertStatus.FIRING:
            skipped.append(f"{where}: resolved")
            continue
        change = _alert_change(alert, where, now=now, config=config, actions=actions)
        if change is None:
            skipped.append(f"{where}: older than changes.max_age_s")
        else:
            changes.append(change)
    return AlertChanges(changes=tuple(changes), skipped=tuple(skipped))


def _alert_change(
    alert: Alert, where: str, *, now: float, config: ChangesConfig, actions: Collection[str]
) -> Change | None:
    """One firing alert as a change; None when it is older than changes.max_age_s."""
    labels, notes = alert.labels, alert.annotations
    label = "target" if "target" in labels else "component"
    if label not in labels:
        raise ChangeRefused(f"{where}.labels.target", "no target (or component) label")
    target = _word(labels[label], f"{where}.labels.{label}", TARGET_PATTERN, "a target name")
    kind_label = "change_kind" if "change_kind" in labels else "kind"
    kind = _word(
        labels.get(kind_label, "deploy"), f"{where}.labels.{kind_label}", KIND_PATTERN, "a kind"
    )
    at = alert.starts_at.timestamp()
    if at > now + config.clock_skew_s:
        raise ChangeRefused(
            f"{where}.startsAt", f"{at - now:.0f} s in the future (changes.clock_skew_s)"
        )
    if at < now - config.max_age_s:
        return None
    rollback = None
    if "rollback" in notes:
        try:
            raw = json.loads(notes["rollback"])
        except (ValueError, RecursionError) as exc:
            raise ChangeRefused(f"{where}.annotations.rollback", "not JSON") from exc
        rollback = _rollback(raw, f"{where}.annotations.rollback", actions)
    window = None
    if "window_s" in notes:
        try:
            seconds = float(notes["window_s"])
        except ValueError as exc:
            raise ChangeRefused(f"{where}.annotations.window_s", "not a number") from exc
        window = _window(seconds, f"{where}.annotations.window_s")
    return Change(
        id=change_id(alert.fingerprint, at),
        target=target,
        kind=kind,
        at=at,
        description=_alert_text(notes.get("description", notes.get("summary", ""))),
        source="webhook",
        rollback=rollback,
        window_s=window,
    )


# --- the log ---------------------------------------------------------------------------


def _always_leading() -> str | None:
    return None


class ChangeLog:
    """The recorded changes, newest `max_kept`, ordered by `at`."""

    def __init__(
        self,
        config: ChangesConfig,
        *,
        actions: Collection[str] = (),
        store: AsyncStore | None = None,
        not_leading: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.actions = frozenset(actions)  # planner.actions: what a rollback may name
        self._store = store
        self._not_leading = not_leading or _always_leading
        self._clock = clock
        self._changes: list[Change] = []  # sorted by (at, id)
        self._ids: set[str] = set()

    def reconfigure(self, config: ChangesConfig, actions: Collection[str]) -> None:
        self.config = config
        self.actions = frozenset(actions)
        self._trim()

    def now(self) -> float:
        """The daemon's clock (what a change's default `at` and its age are read on)."""
        return self._clock()

    def __len__(self) -> int:
        return len(self._changes)

    def window_s(self, change: Change) -> float:
        return self.config.window_s if change.window_s is None else change.window_s

    # --- writing -------------------------------------------------------------------------

    def add(self, change: Change) -> bool:
        """Keep `change` in memory; False when one with its id is kept already."""
        if change.id in self._ids:
            return False
        bisect.insort(self._changes, change, key=lambda c: (c.at, c.id))
        self._ids.add(change.id)
        self._trim()
        return change.id in self._ids

    async def record(self, change: Change) -> bool:
        """Record `change` (kept, then saved); False when it was recorded already."""
        if not self.add(change):
            return False
        log.info(
            "change_recorded",
            change_id=change.id,
            target=change.target,
            kind=change.kind,
            at=change.at,
            source=change.source,
            rollback=None if change.rollback is None else change.rollback.type,
        )
        await self.save(now=self._clock())
        return True

    def _trim(self) -> None:
        while len(self._changes) > self.config.max_kept:
            self._ids.discard(self._changes.pop(0).id)

    # --- reading -------------------------------------------------------------------------

    def recent(self, target: str, now: float) -> Change | None:
        """The newest change on `target` (at or before `now`) still inside its window."""
        for change in reversed(self._changes):
            if change.target != target or change.at > now:
                continue
            if now < change.at + self.window_s(change):
                return change
        return None

    def until(self, change: Change) -> float:
        """When `change`'s window ends."""
        return change.at + self.window_s(change)

    def open_windows(self, now: float) -> dict[str, Change]:
        """Target -> its newest change still inside its window (`recent`), for every target
        with one: what graded autonomy lowers the level of (loop/autonomy.py)."""
        targets = dict.fromkeys(c.target for c in reversed(self._changes))
        return {t: c for t in targets if (c := self.recent(t, now)) is not None}

    def since(self, target: str, t: float) -> list[Change]:
        """The changes on `target` after `t`, oldest first."""
        start = bisect.bisect_right(self._changes, t, key=lambda c: c.at)
        return [c for c in self._changes[start:] if c.target == target]

    def latest(self, limit: int, *, target: str | None = None) -> list[Change]:
        """The newest `limit` changes (on `target` when given), newest first."""
        rows: list[Change] = []
        for change in reversed(self._changes):
            if target is None or change.target == target:
                rows.append(change)
                if len(rows) >= limit:
                    break
        return rows

    def as_dict(self, now: float, *, limit: int = 20) -> dict[str, Any]:
        """/stats `changes`: the window, what is kept, the targets with a recent change and
        the newest changes."""
        recent = {t: c.id for t, c in self.open_windows(now).items()}
        return {
            "window_s": self.config.window_s,
            "kept": len(self._changes),
            "max_kept": self.config.max_kept,
            "rollback_causes": list(self.config.rollback_causes),
            "recent": recent,
            "latest": [{**c.as_dict(), "age_s": round(now - c.at, 3)} for c in self.latest(limit)],
        }

    # --- persistence ---------------------------------------------------------------------

    async def load(self, *, strict: bool = False) -> None:
        """The changes as the store has them. `strict` (a takeover: the shared store is the
        truth): a failed read raises, and nothing saved means none."""
        if self._store is None:
            return
        event = "changes_unreadable"
        saved = await read_state(self._store, STATE_KEY, strict=strict, event=event)
        if saved is None:
            return
        try:
            changes = [Change.from_dict(entry) for entry in saved.get("changes", [])]
        except BAD_STATE as exc:
            log.error("changes_unreadable", error=f"bad saved state: {exc}")
            return
        self._changes, self._ids = [], set()
        for change in changes:
            self.add(change)
        if changes:
            log.info("changes_restored", changes=len(self._changes))

    async def save(self, *, now: float) -> bool:
        """Write the kept changes (the leader only); False when not written."""
        if self._store is None:
            return False
        if (why := self._not_leading()) is not None:
            log.info("changes_not_saved", why=why)
            return False
        data = {"changes": [c.as_dict() for c in self._changes]}
        try:
            await self._store.set_state(STATE_KEY, data, at=now)
        except MapekError as exc:  # memory stays the truth; the next change writes again
            log.error("changes_save_failed", error=str(exc))
            return False
        return True


def rollback_changes(
    changes: ChangeLog,
    causes: Iterable[Cause],
    *,
    rollback_causes: Collection[str],
    now: float,
) -> dict[tuple[str, str], Change]:
    """(cause, target) -> the recent change on the target, for the causes a change may have
    brought (`changes.rollback_causes`): the planner ranks its rollback first. The daemon's
    (loop/iteration.py) and `mape-k replay`'s, at the iteration's time."""
    found: dict[tuple[str, str], Change] = {}
    for cause in causes:
        if cause.name in rollback_causes and (change := changes.recent(cause.target, now)):
            found[(cause.name, cause.target)] = change
    return found
