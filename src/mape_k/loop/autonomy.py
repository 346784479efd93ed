"""Graded autonomy: every action at `shadow`, `approve` or `auto`, and the evidence to move it.

`Autonomy` is the one owner of the levels in force (the configured ones, `autonomy.levels`,
and what promotion, demotion or an operator changed since), of the shadow ledger and of
the log of level changes. It is persisted in the store's state table under "autonomy".

- **Levels.** The planner asks `level_of(cause, actions, now)` for each candidate: the
  most specific of an override or rule for `cause/action`, then for `action`, then the
  default (auto; approve for a risky action). A policy's level is its lowest action's.
- **Change windows.** For `changes.window_s` after a change recorded on a target
  (loop/changes.py; with or without an `autonomy` section) every action there is one
  level lower — except the rollback of that very change, the remedy the window favours
  (the planner passes `rollback_of`). `note_windows`, once an iteration before planning,
  takes the windows open now from the change log into `windows` (what `level_of`, /stats
  and `mapek_autonomy_level_drop` read) and makes the opening and the closing of each a
  `LevelChange` (`by: change_window`, key `*`, the target named).
- **Shadow.** A policy at shadow that every guard allows is not executed: the pipeline
  records it here as a would-do (`would_do`), at most one open per cause key. `follow`
  watches each open would-do in every usable reading: when the violation cleared, whether
  someone else changed the target meanwhile (a recorded change, another execution, a
  moved knob), and, once its settle time and the margin have passed, scores it:
  `cleared` (it went away by itself: it would not have helped), `fixed_by_other`,
  `persisted` or `worse` (it was needed: it would have helped as likely as the planner's
  posterior says). The estimated precision is the sum of those likelihoods over the
  would-dos scored; the time it would have saved, for a would-do whose violation went on,
  is how much longer than the action's settle time it lasted, times that likelihood.
- **Changes of level** (`promote`, `note_outcome`, `set_level`, `note_windows`): each is a
  `LevelChange`, logged, kept (bounded), counted and handed to the next decision record
  (`unrecorded`); it stays pending, saved with the state, until that record is journaled
  (`recorded`), so a restart or a takeover before then loses none (at worst, a kill between
  the journal and the next save puts it in two records). Promotion (opt-in,
  `autonomy.promotion`) raises a rule's level one step, up to its max, when the evidence
  passes the thresholds — only a key named in `autonomy.levels`: the default has no
  bounds, so an action at it is never promoted; an attributed DEGRADATION drops it one
  step, down to its min; a demotion sticks until an operator sets the level. An operator
  can set any level, and reset a key
  to what is configured.

Every function here but `load`/`save` is pure over this object's state: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mape_k.causes import RETURNS
from mape_k.config import AUTONOMY_LEVELS, AutonomyLevel, Settings
from mape_k.errors import MapekError
from mape_k.loop.changes import Change, ChangeLog
from mape_k.models import Cause, Observation, OutcomeType, PolicyOutcome, RemediationPolicy
from mape_k.storeio import BAD_STATE, AsyncStore, read_state

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

STATE_KEY = "autonomy"
MAX_CHANGES = 100  # level changes kept for /stats (the records keep them all)
MAX_OPEN = 200  # open would-dos at once (the oldest dropped first)
VERDICTS = ("cleared", "fixed_by_other", "persisted", "worse")
BY = ("promotion", "demotion", "operator", "change_window")  # who changes a level
EVERY_ACTION = "*"  # the key of a change window's LevelChange: every action on its target
_RANK = {level: i for i, level in enumerate(AUTONOMY_LEVELS)}


def lower(level: AutonomyLevel) -> AutonomyLevel:
    return AUTONOMY_LEVELS[max(0, _RANK[level] - 1)]


def higher(level: AutonomyLevel) -> AutonomyLevel:
    return AUTONOMY_LEVELS[min(len(AUTONOMY_LEVELS) - 1, _RANK[level] + 1)]


def lowest(levels: Sequence[AutonomyLevel]) -> AutonomyLevel:
    return min(levels, key=_RANK.__getitem__)


def level_value(level: AutonomyLevel) -> int:
    """0 shadow, 1 approve, 2 auto (the gauge's value)."""
    return _RANK[level]


@dataclass(frozen=True, slots=True)
class LevelChange:
    at: float
    key: str  # "action" or "cause/action"
    before: AutonomyLevel
    after: AutonomyLevel
    by: str  # promotion | demotion | operator | change_window
    reason: str
    target: str | None = None  # a change window's target (None: every target)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LevelChange:
        target = data.get("target")
        return cls(
            at=float(data["at"]),
            key=str(data["key"]),
            before=_level(data["before"]),
            after=_level(data["after"]),
            by=str(data["by"]),
            reason=str(data["reason"]),
            target=None if target is None else str(target),
        )


@dataclass(frozen=True, slots=True)
class ChangeWindow:
    """A recorded change's window on its target: every action there one level lower (the
    change's own rollback excepted) until `until`."""

    change: Change
    until: float

    def covers(self, now: float) -> bool:
        return self.change.at <= now < self.until

    def about(self, now: float) -> str:
        """`change chg-1a2b (deploy 'v42' 120 s ago)`, for a rationale."""
        return f"change {self.change.id} ({self.change.describe(now)})"

    def as_dict(self) -> dict[str, Any]:
        return {"change": self.change.as_dict(), "until": self.until}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChangeWindow:
        return cls(change=Change.from_dict(data["change"]), until=float(data["until"]))


@dataclass(slots=True)
class WouldDo:
    """A policy the loop would have run, and what happened without it."""

    id: str
    cause: str
    target: str
    actions: tuple[str, ...]
    plan: tuple[dict[str, Any], ...]  # the resolved plan: {action, parameters, sets}
    at: float
    due_at: float  # settle time + margin: scored then
    query: str | None
    value: float | None
    threshold: float | None
    helps: float  # how likely it would have helped, were it needed (see `likelihood`)
    basis: str = ""  # where `helps` comes from: the capacity model or the posterior
    cleared_at: float | None = None
    other: str | None = None  # what someone else changed on the target meanwhile
    verdict: str | None = None
    worst: float | None = None  # the signal's furthest excess over the threshold

    @property
    def key(self) -> str:
        return f"{self.cause}/{self.target}"

    @property
    def pair(self) -> tuple[str, str]:
        return self.cause, "+".join(self.actions)

    @property
    def would_have_helped(self) -> float:
        """The estimate, once scored: 0 when it cleared by itself, else the posterior's."""
        return 0.0 if self.verdict == "cleared" else self.helps

    def score_dict(self) -> dict[str, Any]:
        """What a decision record says of a would-do scored in its iteration."""
        return {
            "id": self.id,
            "cause": self.key,
            "actions": list(self.actions),
            "at": self.at,
            "verdict": self.verdict,
            "cleared_at": self.cleared_at,
            "other": self.other,
            "would_have_helped": round(self.would_have_helped, 3),
        }

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["actions"] = list(self.actions)
        data["plan"] = list(self.plan)
        return data


@dataclass(slots=True)
class ShadowStats:
    would_do: int = 0
    scored: int = 0
    helped: float = 0.0  # sum of the scored would-dos' likelihood of having helped
    cleared: int = 0
    fixed_by_other: int = 0
    persisted: int = 0
    worse: int = 0
    saved_s: float = 0.0  # estimated time it would have saved, summed

    @property
    def precision(self) -> float | None:
        return self.helped / self.scored if self.scored else None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        data["helped"] = round(self.helped, 3)
        data["saved_s"] = round(self.saved_s, 1)
        precision = self.precision
        data["precision"] = None if precision is None else round(precision, 3)
        return data


# (cause, action) -> the planner's posterior mean and the outcomes behind it.
Beliefs = Mapping[tuple[str, str], tuple[float, float]]
# a would-do -> what someone else changed on its target since (None: nothing seen).
ChangedSince = Callable[["WouldDo"], str | None]


class Autonomy:
    def __init__(
        self,
        settings: Settings,
        *,
        store: AsyncStore | None = None,
        changes: ChangeLog | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._changes = changes  # recorded changes: their windows lower the levels
        self.windows: dict[str, ChangeWindow] = {}  # target -> the window in force there
        self.overrides: dict[str, AutonomyLevel] = {}
        self.demoted: set[str] = set()  # keys demoted: no promotion until an operator acts
        self.open: dict[str, WouldDo] = {}  # cause key -> its open would-do
        self.stats: dict[tuple[str, str], ShadowStats] = {}
        self.changes: deque[LevelChange] = deque(maxlen=MAX_CHANGES)
        self.changes_by: dict[str, int] = {}
        self._unrecorded: list[LevelChange] = []
        self._dirty = False
        _warn_if_nothing_promotable(settings)

    def reconfigure(self, settings: Settings) -> None:
        if settings.autonomy != self._settings.autonomy:
            _warn_if_nothing_promotable(settings)
        self._settings = settings

    # --- levels ----------------------------------------------------------------------------

    def _default(self, action: str) -> AutonomyLevel:
        settings = self._settings
        level: AutonomyLevel = settings.autonomy.default or "auto"
        spec = settings.planner.actions.get(action)
        risky = spec is not None and spec.requires_approval and settings.planner.require_approval
        return lowest([level, "approve"]) if risky else level

    def base_level(self, cause: str, action: str) -> tuple[str, AutonomyLevel]:
        """(the key that decides, its level) before any change window."""
        for key in (f"{cause}/{action}", action):
            if key in self.overrides:
                return key, self.overrides[key]
            rule = self._settings.autonomy.levels.get(key)
            if rule is not None:
                return key, rule.level
        return action, self._default(action)

    def level_of(
        self,
        cause: Cause,
        actions: Sequence[str],
        now: float,
        *,
        rollback_of: str | None = None,
    ) -> tuple[AutonomyLevel, str | None]:
        """A policy's level (its lowest action's) and why it is below auto, if it is.
        Inside a change window on its target it is one level lower, unless it is the
        rollback of that change (`rollback_of`, the change's id)."""
        levels = [self.base_level(cause.name, action) for action in actions]
        level = lowest([lv for _, lv in levels])
        reasons = [f"{key} at {lv}" for key, lv in levels if lv != "auto"]
        window = self.windows.get(cause.target)
        if (
            window is not None
            and window.covers(now)
            and level != "shadow"
            and rollback_of != window.change.id  # the remedy the window favours
        ):
            level = lower(level)
            reasons.append(f"one level down after {window.about(now)}")
        return level, "; ".join(reasons) or None

    def note_windows(self, now: float, *, leading: bool = True) -> list[LevelChange]:
        """The change windows open now (the change log's) become the ones in force; each
        that opened or closed since the last call is a `LevelChange` (the leader's: a
        follower takes them silently, the leader's saved state is what it restores)."""
        if self._changes is None:
            return []
        found = {
            target: ChangeWindow(change=change, until=self._changes.until(change))
            for target, change in self._changes.open_windows(now).items()
        }
        if found == self.windows:
            return []
        before, self.windows = self.windows, found
        self._dirty = True
        if not leading:
            return []
        default: AutonomyLevel = self._settings.autonomy.default or "auto"
        made: list[LevelChange] = []
        for target, window in found.items():
            if target in before:
                continue  # still one level down (a newer change may have taken over)
            change = window.change
            rollback = (
                f"; its rollback ({change.rollback.type}) keeps its level"
                if change.rollback is not None
                else ""
            )
            made.append(
                self._change(
                    EVERY_ACTION,
                    default,
                    lower(default),
                    by="change_window",
                    reason=f"every action on {target} one level down until {_iso(window.until)}"
                    f" after {window.about(now)}{rollback}",
                    now=now,
                    target=target,
                )
            )
        for target, window in before.items():
            if target not in found:
                made.append(
                    self._change(
                        EVERY_ACTION,
                        lower(default),
                        default,
                        by="change_window",
                        reason=f"the window of change {window.change.id} on {target} closed:"
                        " every action back to its level",
                        now=now,
                        target=target,
                    )
                )
        return made

    def levels(self) -> dict[str, dict[str, Any]]:
        """Every key with a rule or an override: its level, configured level and bounds."""
        rules = self._settings.autonomy.levels
        rows: dict[str, dict[str, Any]] = {}
        for key in sorted({*rules, *self.overrides}):
            rule = rules.get(key)
            rows[key] = {
                "level": self.overrides.get(key, rule.level if rule else None),
                "configured": rule.level if rule else None,
                "min": rule.min if rule else None,
                "max": (rule.max or rule.level) if rule else None,
                "demoted": key in self.demoted,
            }
        return rows

    def _change(
        self,
        key: str,
        before: AutonomyLevel,
        after: AutonomyLevel,
        *,
        by: str,
        reason: str,
        now: float,
        target: str | None = None,
    ) -> LevelChange:
        change = LevelChange(
            at=now, key=key, before=before, after=after, by=by, reason=reason, target=target
        )
        self.changes.append(change)
        self._unrecorded.append(change)
        self.changes_by[by] = self.changes_by.get(by, 0) + 1
        self._dirty = True
        log.warning(
            "autonomy_changed",
            key=key,
            before=before,
            after=after,
            by=by,
            reason=reason,
            **({} if target is None else {"target": target}),
        )
        return change

    def set_level(
        self, key: str, level: AutonomyLevel | None, *, now: float, reason: str
    ) -> LevelChange:
        """An operator's change: `level` None resets `key` to its configured level. Any
        demotion of the key is forgotten (promotion may move it again)."""
        cause, _, action = key.rpartition("/")
        current = self.base_level(cause, action)[1]
        if level is None:
            self.overrides.pop(key, None)
            level = self.base_level(cause, action)[1]  # what is in force without it
        else:
            self.overrides[key] = level
        self.demoted.discard(key)
        return self._change(key, current, level, by="operator", reason=reason, now=now)

    def note_outcome(self, outcome: PolicyOutcome, now: float) -> LevelChange | None:
        """An attributed DEGRADATION drops the level of the action's rule one step."""
        if outcome.outcome is not OutcomeType.DEGRADATION:
            return None
        if not self._settings.autonomy.demote_on_degradation:
            return None
        action = str(outcome.action_type)
        key = next(
            (
                k
                for k in (f"{outcome.cause}/{action}", action)
                if k in self.overrides or k in self._settings.autonomy.levels
            ),
            None,
        )
        if key is None:
            return None  # an action not named: today's behaviour
        rule = self._settings.autonomy.levels.get(key)
        current = self.overrides.get(key) or (rule.level if rule else "auto")
        floor = _RANK[rule.min] if rule is not None else 0
        after = AUTONOMY_LEVELS[max(floor, _RANK[current] - 1)]
        if _RANK[after] >= _RANK[current]:
            return None  # at its min already (or an operator put it lower): never up
        self.overrides[key] = after
        self.demoted.add(key)
        return self._change(
            key,
            current,
            after,
            by="demotion",
            reason=f"{outcome.action_type} degraded {outcome.cause} on {outcome.target}"
            f" ({outcome.execution_id})",
            now=now,
        )

    def promote(self, beliefs: Beliefs, now: float) -> list[LevelChange]:
        """Promotion (autonomy.promotion): each rule below its max whose evidence passes —
        to leave shadow, its scored would-dos, their precision and the posterior; to leave
        approve, the verified outcomes behind the posterior and its mean."""
        promotion = self._settings.autonomy.promotion
        if not promotion.enabled:
            return []
        changes: list[LevelChange] = []
        for key, rule in self._settings.autonomy.levels.items():
            current = self.overrides.get(key, rule.level)
            top = rule.max or rule.level
            if key in self.demoted or _RANK[current] >= _RANK[top]:
                continue
            cause, _, action = key.rpartition("/")
            pairs = [
                (c, a)
                for (c, a) in self.stats
                if a.split("+")[0] == action and (not cause or c == cause)
            ]
            if current == "shadow":  # the causes it was shadowed on
                found = [beliefs[(c, action)] for c, _ in pairs if (c, action) in beliefs]
            else:  # the causes it has verified outcomes on
                found = [
                    (mean, n)
                    for (c, a), (mean, n) in beliefs.items()
                    if a == action and (not cause or c == cause) and n > 0
                ]
            if not found or min(mean for mean, _ in found) < promotion.min_posterior:
                continue
            if current == "shadow":
                stats = self._sum(pairs)
                precision = stats.precision
                if stats.scored < promotion.min_samples or precision is None:
                    continue
                if precision < promotion.min_precision:
                    continue
                why = (
                    f"shadow precision {precision:.2f} over {stats.scored} would-dos,"
                    f" posterior {min(m for m, _ in found):.2f}"
                )
            else:
                samples = min(n for _, n in found)
                if samples < promotion.min_samples:
                    continue
                why = f"posterior {min(m for m, _ in found):.2f} over {samples:g} verified outcomes"
            after = higher(current)
            self.overrides[key] = after
            changes.append(self._change(key, current, after, by="promotion", reason=why, now=now))
        return changes

    def unrecorded(self) -> list[LevelChange]:
        """The level changes no journaled decision record has yet: the next record's."""
        return list(self._unrecorded)

    def recorded(self, changes: Iterable[LevelChange]) -> None:
        """`changes` are in a journaled record: no longer pending (the next save says so)."""
        done = {id(c) for c in changes}
        if done:
            self._unrecorded = [c for c in self._unrecorded if id(c) not in done]
            self._dirty = True

    # --- shadow ----------------------------------------------------------------------------

    def open_for(self, cause_key: str) -> WouldDo | None:
        return self.open.get(cause_key)

    def would_do(
        self,
        policy: RemediationPolicy,
        *,
        now: float,
        settle_s: float,
        value: float | None,
    ) -> WouldDo:
        """Record a would-do for `policy` (resolved, allowed by every guard)."""
        margin = self._settings.executor.ineffective_margin_s
        helps, basis = likelihood(policy, value, self._settings.executor.load_normalised)
        wd = WouldDo(
            id=policy.id,
            cause=policy.cause.name,
            target=policy.target,
            actions=tuple(str(a.action_type) for a in policy.actions),
            plan=tuple(
                {
                    "action": str(a.action_type),
                    "parameters": dict(a.parameters),
                    "sets": [
                        {"knob": s.knob, "before": s.before, "after": s.after} for s in a.sets or ()
                    ],
                }
                for a in policy.actions
            ),
            at=now,
            due_at=now + settle_s + margin,
            query=policy.cause.query,
            value=value,
            threshold=policy.cause.threshold,
            helps=helps,
            basis=basis,
        )
        self.stats.setdefault(wd.pair, ShadowStats()).would_do += 1
        self._dirty = True
        if policy.cause.name in RETURNS or policy.cause.predicted:
            # A return to baseline, a predicted violation: no violation to watch clear
            # (a prediction's own track record is loop/predict.py's): counted, not scored.
            log.info("shadow_would_do", policy_id=wd.id, cause=wd.key, actions=list(wd.actions))
            return wd
        self.open[wd.key] = wd
        while len(self.open) > MAX_OPEN:
            self.open.pop(next(iter(self.open)))
        log.info(
            "shadow_would_do",
            policy_id=wd.id,
            cause=wd.key,
            actions=list(wd.actions),
            due_at=wd.due_at,
            helps=round(wd.helps, 3),
        )
        return wd

    def follow(
        self,
        observation: Observation,
        now: float,
        changed: ChangedSince,
    ) -> list[WouldDo]:
        """Watch the open would-dos in a usable reading; returns those scored now. A
        would-do's violation has cleared when its target has no violation left (a load
        spike read as latency in the next reading has not cleared)."""
        if observation.degraded or not self.open:
            return []
        targets = {v.component for v in observation.violations}
        scored: list[WouldDo] = []
        track_s = self._settings.autonomy.shadow_track_s
        for key, wd in list(self.open.items()):
            violating = wd.target in targets
            excess = _excess(observation, wd)
            if excess is not None and (wd.worst is None or excess > wd.worst):
                wd.worst = excess
            if wd.other is None and wd.cleared_at is None:
                wd.other = changed(wd)  # what changed before it cleared, not after
            if not violating and wd.cleared_at is None:
                wd.cleared_at = now
                self._dirty = True
            if wd.verdict is None and now >= wd.due_at:
                self._score(wd, observation, now)
                scored.append(wd)
            if wd.verdict is not None and (wd.cleared_at is not None or now - wd.at >= track_s):
                self._finish(wd, now)
                del self.open[key]
        if scored:
            self._dirty = True
        return scored

    def _score(self, wd: WouldDo, observation: Observation, now: float) -> None:
        stats = self.stats.setdefault(wd.pair, ShadowStats())
        if wd.cleared_at is not None:
            wd.verdict = "fixed_by_other" if wd.other is not None else "cleared"
        else:
            wd.verdict = (
                "worse" if _worse(wd, _excess(observation, wd), self._settings) else ("persisted")
            )
        helps = wd.would_have_helped
        stats.scored += 1
        stats.helped += helps
        setattr(stats, wd.verdict, getattr(stats, wd.verdict) + 1)
        log.info(
            "shadow_scored",
            policy_id=wd.id,
            cause=wd.key,
            verdict=wd.verdict,
            cleared_at=wd.cleared_at,
            other=wd.other,
            would_have_helped=round(helps, 3),
            at=now,
        )

    def _finish(self, wd: WouldDo, now: float) -> None:
        """A would-do whose violation went on: the time the action would have saved."""
        if wd.verdict not in ("persisted", "worse"):
            return
        lasted = (wd.cleared_at or now) - wd.at
        settle = wd.due_at - wd.at
        saved = max(0.0, lasted - settle) * wd.helps
        self.stats.setdefault(wd.pair, ShadowStats()).saved_s += saved

    def _sum(self, pairs: Sequence[tuple[str, str]]) -> ShadowStats:
        total = ShadowStats()
        for pair in pairs:
            s = self.stats[pair]
            total.scored += s.scored
            total.helped += s.helped
        return total

    # --- what is shown ---------------------------------------------------------------------

    def windows_dict(self) -> dict[str, dict[str, Any]]:
        """Per target with a change window in force: the change, when the window ends, and
        the levels in force there (an action not named, each key with a rule or an
        override); the change's rollback keeps its own level."""
        default: AutonomyLevel = self._settings.autonomy.default or "auto"
        levels = self.levels()
        rows: dict[str, dict[str, Any]] = {}
        for target, window in sorted(self.windows.items()):
            change = window.change
            rows[target] = {
                "change": change.id,
                "kind": change.kind,
                "description": change.description,
                "at": change.at,
                "until": window.until,
                "default": lower(default),
                "levels": {k: lower(r["level"]) for k, r in levels.items() if r["level"]},
                "rollback": None if change.rollback is None else change.rollback.type,
            }
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "levels": self.levels(),
            "windows": self.windows_dict(),
            "shadow": [
                {"cause": cause, "actions": actions, **stats.as_dict()}
                for (cause, actions), stats in sorted(self.stats.items())
            ],
            "open_would_dos": [wd.as_dict() for wd in self.open.values()],
            "changes": [c.as_dict() for c in reversed(self.changes)],
        }

    def families(self) -> Iterator[Metric]:
        """/metrics, read at scrape time (metrics.FamiliesCollector)."""
        level = GaugeMetricFamily(
            "mapek_autonomy_level",
            "Level of autonomy per action or cause/action with a rule or an override:"
            " 0 shadow, 1 approve, 2 auto.",
            labels=["key"],
        )
        for key, row in self.levels().items():
            if row["level"] is not None:
                level.add_metric([key], level_value(row["level"]))
        yield level
        drop = GaugeMetricFamily(
            "mapek_autonomy_level_drop",
            "Levels every action on the target is lowered by: 1 inside a recorded change's"
            " window (changes.window_s; the change's rollback excepted).",
            labels=["target"],
        )
        for target in sorted(self.windows):
            drop.add_metric([target], 1)
        yield drop
        changes = CounterMetricFamily(
            "mapek_autonomy_changes",
            "Changes of an autonomy level, by who made them (change_window: a change window"
            " opened or closed).",
            labels=["by"],
        )
        for by in BY:
            changes.add_metric([by], self.changes_by.get(by, 0))
        yield changes
        would = CounterMetricFamily(
            "mapek_shadow_would_do",
            "Policies at shadow the guards allowed: recorded, not executed.",
            labels=["cause", "action_type"],
        )
        scored = CounterMetricFamily(
            "mapek_shadow_scored",
            "Would-dos scored after their settle time, by verdict.",
            labels=["cause", "action_type", "verdict"],
        )
        precision = GaugeMetricFamily(
            "mapek_shadow_precision",
            "Estimated shadow precision: would have helped / would-dos scored.",
            labels=["cause", "action_type"],
        )
        saved = CounterMetricFamily(
            "mapek_shadow_saved_seconds",
            "Estimated violation time the would-dos would have saved.",
            labels=["cause", "action_type"],
        )
        for (cause, actions), stats in sorted(self.stats.items()):
            would.add_metric([cause, actions], stats.would_do)
            for verdict in VERDICTS:
                scored.add_metric([cause, actions, verdict], getattr(stats, verdict))
            if stats.precision is not None:
                precision.add_metric([cause, actions], stats.precision)
            saved.add_metric([cause, actions], stats.saved_s)
        yield from (would, scored, precision, saved)

    # --- persistence -----------------------------------------------------------------------

    def _dump(self) -> dict[str, Any]:
        return {
            "overrides": dict(self.overrides),
            "demoted": sorted(self.demoted),
            "stats": [{"cause": c, "actions": a, **asdict(s)} for (c, a), s in self.stats.items()],
            "open": [wd.as_dict() for wd in self.open.values()],
            "changes": [c.as_dict() for c in self.changes],
            "changes_by": dict(self.changes_by),
            "pending": [c.as_dict() for c in self._unrecorded],  # not in a record yet
            "windows": [w.as_dict() for w in self.windows.values()],
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """The state an earlier run saved; raises ValueError/KeyError/TypeError on a bad one."""
        overrides = {str(k): _level(v) for k, v in dict(saved.get("overrides", {})).items()}
        stats: dict[tuple[str, str], ShadowStats] = {}
        for row in saved.get("stats", []):
            fields = {k: row[k] for k in ShadowStats.__dataclass_fields__}
            stats[(str(row["cause"]), str(row["actions"]))] = ShadowStats(**fields)
        open_: dict[str, WouldDo] = {}
        for row in saved.get("open", []):
            data = dict(row)
            data["actions"] = tuple(str(a) for a in data["actions"])
            data["plan"] = tuple(dict(p) for p in data["plan"])
            wd = WouldDo(**data)
            open_[wd.key] = wd
        changes = [LevelChange.from_dict(c) for c in saved.get("changes", [])]
        # Windows are derived (the change log's) and pending changes are notes for the
        # records: a bad one is skipped, never costing the operator's overrides with it.
        pending = _each(saved.get("pending", []), LevelChange.from_dict, "pending level change")
        windows = _each(saved.get("windows", []), ChangeWindow.from_dict, "change window")
        self.overrides = overrides
        self.demoted = {str(k) for k in saved.get("demoted", [])}
        self.stats = stats
        self.open = open_
        self.changes = deque(changes, maxlen=MAX_CHANGES)
        self.changes_by = {str(k): int(v) for k, v in dict(saved.get("changes_by", {})).items()}
        self._unrecorded = pending
        self.windows = {w.change.target: w for w in windows}

    async def load(self, *, strict: bool = False) -> None:
        """What an earlier run (or the previous leader) saved. `strict` (a takeover): a read
        that fails raises. A bad saved state is logged and ignored: levels fall back to the
        configuration, which is the safe direction only if the configuration is; say so."""
        if self._store is None:
            return
        event = "autonomy_unreadable"
        saved = await read_state(self._store, STATE_KEY, strict=strict, event=event)
        if saved is None:
            return
        try:
            self.restore(saved)
        except BAD_STATE as exc:
            log.error("autonomy_unreadable", error=f"bad saved state: {exc}; using the config")
            return
        if self.overrides or self.open or self._unrecorded:
            log.info(
                "autonomy_restored",
                overrides=self.overrides,
                open=sorted(self.open),
                pending=len(self._unrecorded),
            )

    async def save(self, now: float) -> None:
        if self._store is None or not self._dirty:
            return
        try:
            await self._store.set_state(STATE_KEY, self._dump(), at=now)
        except MapekError as exc:  # memory stays the truth; the next change writes again
            log.error("autonomy_save_failed", error=str(exc))
            return
        self._dirty = False


def _each(rows: Any, parse: Callable[[Any], _T], what: str) -> list[_T]:
    """Every row `parse` takes; a bad one is logged (`autonomy_entry_skipped`) and left out."""
    parsed: list[_T] = []
    for row in rows if isinstance(rows, list) else []:
        try:
            parsed.append(parse(row))
        except BAD_STATE as exc:
            log.error("autonomy_entry_skipped", what=what, error=str(exc))
    return parsed


def likelihood(
    policy: RemediationPolicy, value: float | None, load_normalised: Sequence[str]
) -> tuple[float, str]:
    """How likely the policy would have helped, were its violation to persist; and why.

    Capacity for a load-proportional signal (executor.load_normalised) is modelled, as an
    HPA does: `size before -> after` takes the signal to value x before / after, a fix
    (1) when that is past the threshold, half when it only narrows the excess. Any other
    action: the planner's posterior mean (the configured benefit until outcomes exist)."""
    cause = policy.cause
    sizes = [
        s
        for a in policy.actions
        for s in a.sets or ()
        if s.knob == "size" and isinstance(s.before, int) and isinstance(s.after, int)
    ]
    if (
        sizes
        and value is not None
        and cause.threshold is not None
        and cause.query in load_normalised
        and sizes[-1].after > sizes[0].before > 0
        and value > cause.threshold
    ):
        projected = value * sizes[0].before / sizes[-1].after
        basis = f"capacity: {value:.3g} x {sizes[0].before}/{sizes[-1].after} = {projected:.3g}"
        if projected <= cause.threshold:
            return 1.0, f"{basis}, under {cause.threshold:g}"
        return 0.5, f"{basis}, still over {cause.threshold:g}"
    posterior = policy.score.posterior
    mean = posterior.mean if posterior is not None else policy.score.benefit
    return mean, f"posterior {mean:.2f}"


def _warn_if_nothing_promotable(settings: Settings) -> None:
    """Promotion on, and no rule it could raise: say so once (an action at autonomy.default
    has no bounds, so it is never promoted)."""
    cfg = settings.autonomy
    if not cfg.promotion.enabled:
        return
    if any(
        rule.max is not None and _RANK[rule.max] > _RANK[rule.level] for rule in cfg.levels.values()
    ):
        return
    log.warning(
        "autonomy_promotion_idle",
        why="autonomy.promotion is enabled but no rule in autonomy.levels has a max above its"
        " level: promotion only raises a key named there (an action at autonomy.default never);"
        " name it, e.g. scale_up: {level: shadow, max: auto}",
    )


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _level(value: Any) -> AutonomyLevel:
    if value not in _RANK:
        raise ValueError(f"{value!r} is not a level")
    return cast("AutonomyLevel", value)


def _excess(observation: Observation, wd: WouldDo) -> float | None:
    """How far the signal is past the threshold, in the direction it was at the would-do."""
    if wd.query is None or wd.threshold is None or wd.value is None:
        return None
    now = observation.value(wd.query, wd.target)
    if now is None:
        return None
    direction = 1.0 if wd.value >= wd.threshold else -1.0
    return direction * (now - wd.threshold)


def _worse(wd: WouldDo, excess: float | None, settings: Settings) -> bool:
    """Still violating and further past the threshold than at the would-do, by more than
    the significance floor (executor.significance of the threshold)."""
    if excess is None or wd.value is None or wd.threshold is None:
        return False
    then = abs(wd.value - wd.threshold)
    return excess - then > settings.executor.significance * abs(wd.threshold)
