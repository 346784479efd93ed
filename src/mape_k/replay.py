"""`mape-k replay`: decide a recorded period again with another configuration.

For each journaled iteration, in order, the observation is rebuilt from the record's
`inputs` (violations, the load signals and their trends, the Charter reading, the
switches), a fresh `PatternAnalyzer` and `Planner` of the NEW configuration decide (the
record's predicted violations and the recorded changes planned as the daemon plans them,
through the same functions), the candidates are resolved against the recorded reading and
the guards judge them against what the store says had happened by then: the recorded
executions are the change history, those not yet verified are settling, the outcomes
recorded so far are the knowledge. The new choice is compared with the recorded one.
Each iteration is judged against the recorded past, not against the new configuration's
own (a one-step counterfactual): what the daemon would have done next, had it been
running this configuration at that moment.

Nothing is called (no Charter, no Prometheus, no actuator) and the store is never written:
it is copied (SQLite's online backup, from a read-only connection) to a temporary file
first. The core, `replay`, is a pure function of the journal and the settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from mape_k import logs
from mape_k.actuators.user import prepare as prepare_user_actions
from mape_k.config import Settings, load_settings
from mape_k.errors import ConfigError, MapekError, StoreError
from mape_k.integrations.charter.base import CommitteeState
from mape_k.loop import actions as action_model
from mape_k.loop import baseline as returns_model
from mape_k.loop import guards as guard_rules
from mape_k.loop.analyze import PatternAnalyzer, Signal
from mape_k.loop.autonomy import Autonomy
from mape_k.loop.changes import STATE_KEY as CHANGES_KEY
from mape_k.loop.changes import Change, ChangeLog, rollback_changes
from mape_k.loop.envelope import SafetyEnvelope
from mape_k.loop.iteration import plan_predicted, size_recommendations
from mape_k.loop.knowledge import pattern
from mape_k.loop.plan import Planner
from mape_k.loop.record import why_nothing
from mape_k.models import (
    AnalysisResult,
    ExecutionStatus,
    GuardDecision,
    GuardVerdict,
    KnobSetting,
    Metric,
    Observation,
    OutcomeType,
    PolicyExecution,
    PolicyOutcome,
    PolicyPattern,
    QueryResult,
    RemediationPolicy,
    Severity,
    Violation,
    ViolationSource,
)
from mape_k.store import JournalStore, PairStats, Store, _check_header
from mape_k.storeio import BAD_STATE

# A recorded row of identical violations is rebuilt as at most this many copies.
MAX_COPIES = 100
EXIT_PROBLEM = 2


# --- the journal ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Journal:
    """What a store recorded, oldest first: the decision records, the executions, the
    outcomes, the pooled counters of every outcome ever recorded (`stats`, which
    retention does not prune) and the recorded changes, each with when the daemon knew
    of it (`changes`: (known at, change), see `recorded_changes`)."""

    iterations: Sequence[Mapping[str, Any]]
    executions: Sequence[PolicyExecution] = ()
    outcomes: Sequence[PolicyOutcome] = ()
    stats: Sequence[PairStats] = ()
    changes: Sequence[tuple[float, Change]] = ()


def read_journal(store: JournalStore) -> Journal:
    """Everything replay reads from an open store, oldest first."""
    everything = 2**62
    return Journal(
        iterations=[
            {"id": row["id"], "started_at": row["started_at"], **_as_dict(row["record"])}
            for row in reversed(store.recent_iterations(everything))
        ],
        executions=list(reversed(store.recent_executions(everything))),
        outcomes=list(reversed(store.recent_outcomes(everything))),
        stats=store.stats(),
        changes=recorded_changes(store.get_state(CHANGES_KEY), store.recent_control(everything)),
    )


CHANGES_ROUTE = "POST /api/v1/changes"


def recorded_changes(
    saved: Any, control: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[float, Change]]:
    """The changes the store recorded — the change log's saved state (the newest
    `changes.max_kept`) and every change a journaled `POST /api/v1/changes` took (the
    control log: a change the log no longer keeps, too) — each with the time the daemon
    knew of it: the first control call that posted it, else (posted before the control log
    kept it, or restored without one) its own `at`. Oldest known first. A change that
    cannot be read is skipped (the daemon's `load` would refuse a bad saved state)."""
    entries: list[Any] = []
    known: dict[str, float] = {}
    for row in sorted(control, key=lambda r: float(r["at"])):
        body = _as_dict(row.get("body"))
        if row.get("route") != CHANGES_ROUTE or not isinstance(body.get("changes"), list):
            continue
        for entry in body["changes"]:
            entries.append(entry)
            if isinstance(entry, dict) and "id" in entry:
                known.setdefault(str(entry["id"]), float(row["at"]))
    entries.extend(_as_dict(saved).get("changes") or ())
    found: dict[str, Change] = {}
    for entry in entries:
        try:
            change = Change.from_dict(entry)
        except BAD_STATE:
            continue
        found.setdefault(change.id, change)
    return sorted(
        ((known.get(c.id, c.at), c) for c in found.values()), key=lambda kc: (kc[0], kc[1].id)
    )


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def read_only_url(url: str) -> str:
    """`url` with every transaction of its sessions read only (PostgreSQL refuses a write:
    `default_transaction_read_only`), after the URL's own `options`."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = [value for key, value in query if key == "options"]
    kept = [(key, value) for key, value in query if key != "options"]
    kept.append(("options", " ".join([*options, "-c default_transaction_read_only=on"])))
    return urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote)))


@contextmanager
def _open_postgres(url: str) -> Iterator[JournalStore]:
    try:
        from mape_k.pgstore import PostgresStore  # noqa: PLC0415 - psycopg is an extra
    except ImportError as exc:
        raise StoreError(
            f"--store: a PostgreSQL store needs psycopg ({exc.name} is missing):"
            " pip install 'mape-k[ha]'"
        ) from None
    store = PostgresStore.open(read_only_url(url))
    try:
        yield store
    finally:
        store.close()


@contextmanager
def open_copy(location: str) -> Iterator[JournalStore]:
    """The store at `location` read only: a SQLite file as a private copy (read through a
    read-only connection; the file is never written), a PostgreSQL URL through sessions
    whose transactions are read only. StoreError, one line, naming the problem (never the
    URL: it may hold a password)."""
    if location.startswith(("postgresql://", "postgres://")):
        with _open_postgres(location) as shared:
            yield shared
        return
    if "://" in location:
        raise StoreError("--store: a SQLite file or a postgresql:// URL")
    path = Path(location)
    if not path.is_file():
        raise StoreError(f"--store {path}: no such file")
    _check_header(path)  # not a SQLite file: refused before anything opens it
    with tempfile.TemporaryDirectory(prefix="mape-k-replay-") as scratch:
        copy = Path(scratch) / "replay.sqlite3"
        try:
            source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                target = sqlite3.connect(copy)
                try:
                    source.backup(target)
                finally:
                    target.close()
            finally:
                source.close()
        except sqlite3.Error as exc:
            raise StoreError(f"--store {path}: cannot read it: {exc}") from exc
        try:
            store = Store.open(copy)
        except StoreError as exc:  # it names the copy: name the file given
            raise StoreError(str(exc).replace(str(copy), f"--store {path}")) from None
        try:
            yield store
        finally:
            store.close()


# --- rebuilding what an iteration saw -------------------------------------------------------


def _violations(
    inputs: Mapping[str, Any], now: float, queries: Mapping[str, str]
) -> list[Violation]:
    out: list[Violation] = []
    for row in inputs.get("violations") or ():
        kind = str(row["kind"])
        violation = Violation(
            kind=kind,
            component=str(row["component"]),
            severity=Severity(row["severity"]),
            source=ViolationSource(row["source"]),
            # Records before replay inputs have no time: the iteration's (a rule's reading).
            timestamp=float(row.get("at") or now),
            value=row.get("value"),
            threshold=row.get("threshold"),
            query=row.get("query") or queries.get(kind),
        )
        out.extend([violation] * max(1, min(int(row.get("count", 1)), MAX_COPIES)))
    return out


def predicted_of(record: Mapping[str, Any], settings: Settings) -> list[Violation]:
    """The predicted violations the record kept (its `predicted`: the first
    `knowledge.record_top_n`), as the predictor raised them: at the iteration's time, with
    their lead, of the severity and query of the rule that predicts them in `settings`. A
    prediction whose rule does not predict in `settings` is not one (the planner would not
    act on it: `plan_causes`)."""
    now = float(record["started_at"])
    rules = {rule.name: rule for rule in settings.monitor.rules if rule.predict is not None}
    out: list[Violation] = []
    for row in record.get("predicted") or ():
        rule = rules.get(str(row["kind"]))
        if rule is None:
            continue
        lead = row.get("lead_s")
        out.append(
            Violation(
                kind=rule.name,
                component=str(row["component"]),
                severity=rule.severity,
                source=ViolationSource.RULE,
                timestamp=now,
                value=row.get("value"),
                threshold=row.get("threshold"),
                query=rule.query,
                predicted=True,
                lead_s=None if lead is None else float(lead),
            )
        )
    return out


def _signals(inputs: Mapping[str, Any]) -> dict[tuple[str, str], Signal]:
    return {
        (str(s["name"]), str(s["component"])): Signal(float(s["value"]), s.get("trend"))
        for s in inputs.get("signals") or ()
    }


def observation_of(
    record: Mapping[str, Any], settings: Settings
) -> tuple[Observation, dict[tuple[str, str], Signal]]:
    """The observation one record stood on, and the signals its analysis read."""
    inputs = _as_dict(record.get("inputs"))
    now = float(record["started_at"])
    queries = {rule.name: rule.query for rule in settings.monitor.rules}
    signals = _signals(inputs)
    observation = Observation(
        at=now,
        metrics=tuple(
            Metric(name=name, component=component, value=s.value, timestamp=now)
            for (name, component), s in signals.items()
        ),
        violations=tuple(_violations(inputs, now, queries)),
        queries=tuple(
            QueryResult(
                name=q["name"],
                ok=bool(q["ok"]),
                samples=int(q.get("samples", 0)),
                error=q.get("error"),
            )
            for q in inputs.get("queries") or ()
        ),
        alerts_firing=int(inputs.get("alerts_firing", 0)),
        alerts_superseded=tuple(inputs.get("alerts_superseded") or ()),
        degraded_reason=inputs.get("degraded"),
    )
    return observation, signals


@dataclass(frozen=True, slots=True)
class Switches:
    """The recorded reading and switches of one iteration (assumed for an old record)."""

    reading: CommitteeState | None
    problem: str | None
    has_reading: bool  # False: a record from before the reading was journaled
    dry_run: bool
    freeze: guard_rules.Freeze | None
    startup_problem: str | None


def switches_of(record: Mapping[str, Any]) -> Switches:
    """What the record says of the reading and the switches. A record written before they
    were journaled: the reading is assumed usable (its actions are judged unresolved, no
    knob known), dry-run, a freeze and a start-up problem are read back from its guard
    decisions (a block of that guard), else assumed off."""
    inputs = _as_dict(record.get("inputs"))
    if "reading" not in inputs:
        decisions = [d for d in record.get("guard_decisions") or () if d.get("verdict") == "block"]
        by = {d["guard"]: d for d in decisions}
        freeze = by.get("freeze")
        return Switches(
            reading=None,
            problem=None,
            has_reading=False,
            dry_run="dry_run" in by,
            freeze=None
            if freeze is None
            else guard_rules.Freeze(
                reason=str(freeze["reason"]), since=0.0, until=freeze.get("until"), source="record"
            ),
            startup_problem=None if "startup" not in by else str(by["startup"]["reason"]),
        )
    raw = inputs.get("reading")
    modes = _as_dict(inputs.get("modes"))
    frozen = modes.get("freeze")
    return Switches(
        reading=None if raw is None else CommitteeState(**raw),
        problem=inputs.get("reading_problem"),
        has_reading=True,
        dry_run=bool(modes.get("dry_run", False)),
        freeze=None if frozen is None else guard_rules.Freeze(**frozen),
        startup_problem=modes.get("startup_problem"),
    )


# --- knowledge as of a moment ----------------------------------------------------------------


_COUNTERS = {
    OutcomeType.SUCCESS: "successes",
    OutcomeType.PARTIAL: "partials",
    OutcomeType.INEFFECTIVE: "ineffective",
    OutcomeType.DEGRADATION: "degradations",
    OutcomeType.UNKNOWN: "unknowns",
}


def _fold(stats: PairStats | None, outcome: PolicyOutcome, sign: int) -> PairStats:
    """`stats` with `outcome` added (sign 1) or taken out (sign -1), as the store counts."""
    base = stats or PairStats(outcome.cause, outcome.action_type, 0, 0, 0, 0, 0, 0, 0.0, 0)
    counted = outcome.outcome is not OutcomeType.UNKNOWN
    tts = outcome.time_to_stabilize_s if counted else None
    name = _COUNTERS[outcome.outcome]
    return replace(
        base,
        samples=base.samples + sign * int(counted),
        tts_sum=base.tts_sum + sign * (tts or 0.0),
        tts_count=base.tts_count + sign * int(tts is not None),
        **{name: getattr(base, name) + sign},
    )


class KnowledgeAt:
    """The Knowledge view the daemon had at a moment: the pooled counters (every outcome
    ever recorded, less those recorded later) and each target's own (the outcomes kept,
    recorded by then)."""

    def __init__(self, journal: Journal, settings: Settings) -> None:
        self._config = settings.knowledge
        self._pooled = {(s.cause, s.action_type): s for s in journal.stats}
        for outcome in journal.outcomes:  # start from before the first kept outcome
            key = (outcome.cause, outcome.action_type)
            self._pooled[key] = _fold(self._pooled.get(key), outcome, -1)
        self._own: dict[tuple[str, str, str], PairStats] = {}
        self._pending = list(journal.outcomes)  # oldest first
        self._taken = 0  # _pending[:taken] are in

    def advance(self, now: float) -> list[PolicyOutcome]:
        """Take in the outcomes recorded by `now`; returns them."""
        taken: list[PolicyOutcome] = []
        pending = self._pending
        while self._taken < len(pending) and pending[self._taken].recorded_at <= now:
            outcome = pending[self._taken]
            self._taken += 1
            key = (outcome.cause, outcome.action_type)
            self._pooled[key] = _fold(self._pooled.get(key), outcome, 1)
            own = (outcome.cause, outcome.target, outcome.action_type)
            self._own[own] = _fold(self._own.get(own), outcome, 1)
            taken.append(outcome)
        return taken

    def view(self) -> dict[tuple[str, str], PolicyPattern]:
        return {k: pattern(s, self._config) for k, s in self._pooled.items() if s.samples > 0}

    def target_view(self) -> dict[tuple[str, str, str], PolicyPattern]:
        return {k: pattern(s, self._config) for k, s in self._own.items() if s.samples > 0}


# --- the decision, again ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What one iteration did (or would do): a policy, or nothing with why."""

    cause: str | None  # cause key ("high_failure_rate/charter")
    target: str | None
    actions: tuple[tuple[str, str], ...] = ()  # (type, parameters JSON) as configured
    why: str = ""
    policy_id: str | None = None
    posterior: dict[str, Any] | None = None
    # What it set, per action: ((knob, before, after), ...); None where not resolved.
    sets: tuple[tuple[tuple[str, Any, Any], ...] | None, ...] = ()
    held_by: tuple[str, ...] = ()  # nothing done: the guards that held the candidates
    short: str = ""  # nothing done: why, in a few words (the table's; `why` in full)

    @property
    def acts(self) -> bool:
        return bool(self.actions)

    def same_as(self, other: Decision) -> bool:
        """The same cause, actions and parameters, and where both were resolved the same
        settings (a stabilized scale-down to another size is another decision)."""
        if (self.cause, self.actions) != (other.cause, other.actions):
            return False
        return all(
            mine is None or theirs is None or mine == theirs
            for mine, theirs in zip(self.sets, other.sets, strict=False)
        )

    def describe(self) -> str:
        """One short line: the action and what it set, or nothing and why (the guards that
        held it back, by name; `why` has their reasons)."""
        if not self.acts:
            if self.held_by:
                return f"nothing: held by {', '.join(self.held_by)}"
            return f"nothing: {self.short or self.why}"
        moves = [
            f"{knob} {_value(before)} -> {_value(after)}"
            for sets in self.sets
            for knob, before, after in sets or ()
            if before != after
        ]
        names = "+".join(t for t, _ in self.actions)
        return f"{names} on {self.target}" + (f" ({', '.join(moves)})" if moves else "")


@dataclass(frozen=True, slots=True)
class Difference:
    at: float
    iteration: str
    cause: str | None
    recorded: Decision
    new: Decision
    recorded_outcome: str | None  # the recorded execution's verified outcome (or "unverified")
    evidence: str | None  # the knowledge behind a new action that was not taken

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "iteration": self.iteration,
            "cause": self.cause,
            "target": self.new.target or self.recorded.target,
            "recorded": self.recorded.describe(),
            "new": self.new.describe(),
            "recorded_why": self.recorded.why,
            "new_why": self.new.why,
            "recorded_outcome": self.recorded_outcome,
            "new_evidence": self.evidence,
        }


@dataclass
class Report:
    store: str
    config: str
    since: float | None
    until: float | None
    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    same: int = 0
    differences: list[Difference] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)  # outcome -> recorded actions dropped
    added: int = 0
    verdicts: dict[str, list[int]] = field(default_factory=dict)  # "guard verdict" -> [rec, new]
    assumed: Counter[str] = field(default_factory=Counter)
    restarts: int = 0  # daemon restarts seen in the journal (its memory started again)

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "config": self.config,
            "since": None if self.since is None else _iso(self.since),
            "until": None if self.until is None else _iso(self.until),
            "summary": {
                "replayed": self.replayed,
                "same": self.same,
                "different": len(self.differences),
                "recorded_actions_dropped": sum(self.dropped.values()),
                "dropped_outcomes": dict(sorted(self.dropped.items())),
                "new_actions": self.added,
                "skipped": dict(sorted(self.skipped.items())),
                "restarts": self.restarts,
                "assumed": dict(sorted(self.assumed.items())),
                "guard_verdicts": {
                    kind: {"recorded": rec, "new": new}
                    for kind, (rec, new) in sorted(self.verdicts.items())
                    if rec != new
                },
            },
            "differences": [d.as_dict() for d in self.differences],
        }


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _params(parameters: Mapping[str, Any]) -> str:
    return json.dumps(dict(parameters), sort_keys=True, separators=(",", ":"), default=str)


def recorded_decision(
    record: Mapping[str, Any], executions: Mapping[str, PolicyExecution] | None = None
) -> Decision:
    """What the record says the iteration did: its execution as the journal has it (the
    policy with its cause and parameters: an approved one too, whose id is the proposal's),
    else the candidate chosen."""
    choice = _as_dict(record.get("choice"))
    execution = record.get("execution")
    policy_id = choice.get("policy_id")
    journaled = None
    if isinstance(execution, dict) and executions is not None:
        journaled = executions.get(str(execution.get("id")))
    if journaled is not None:
        policy = journaled.policy
        return Decision(
            cause=policy.cause.key,
            target=policy.target,
            actions=tuple((a.action_type, _params(a.parameters)) for a in policy.actions),
            why=str(choice.get("why", "")),
            policy_id=policy.id,
            sets=tuple(_sets(a.action.sets) for a in journaled.actions),
        )
    # The chosen id is a candidate's, or one stabilized from it ("<id>-s<size>").
    candidate = next(
        (
            c
            for c in record.get("candidates") or ()
            if policy_id is not None
            and (policy_id == c.get("policy_id") or policy_id.startswith(f"{c.get('policy_id')}-s"))
        ),
        None,
    )
    if not isinstance(execution, dict) or candidate is None:
        return Decision(
            cause=None,
            target=None,
            why=str(choice.get("why", "")),
            held_by=tuple(
                dict.fromkeys(
                    str(d["guard"])
                    for d in record.get("guard_decisions") or ()
                    if d.get("verdict") != GuardVerdict.ALLOW.value
                )
            ),
        )
    cause = str(candidate["cause"])
    return Decision(
        sets=tuple(_recorded_sets(a.get("sets")) for a in execution.get("actions") or ()),
        cause=cause,
        target=cause.split("/", 1)[1] if "/" in cause else None,
        actions=tuple(
            (str(a["type"]), _params(a.get("parameters") or {})) for a in candidate["actions"]
        ),
        why=str(choice.get("why", "")),
        policy_id=policy_id,
    )


def _sets(sets: tuple[KnobSetting, ...] | None) -> tuple[tuple[str, Any, Any], ...] | None:
    return None if sets is None else tuple((s.knob, s.before, s.after) for s in sets)


def _recorded_sets(sets: Any) -> tuple[tuple[str, Any, Any], ...] | None:
    if not isinstance(sets, list):
        return None
    return tuple((str(s["knob"]), s.get("before"), s.get("after")) for s in sets)


def _decision(policy: RemediationPolicy, why: str) -> Decision:
    return Decision(
        sets=tuple(_sets(a.sets) for a in policy.actions),
        cause=policy.cause.key,
        target=policy.target,
        actions=tuple((a.action_type, _params(a.parameters)) for a in policy.actions),
        why=why,
        policy_id=policy.id,
        posterior=None if policy.score.posterior is None else policy.score.posterior.as_dict(),
    )


class _Replayer:
    """The daemon's decision path over recorded inputs, with its state rebuilt from the
    journal: the analyzer's history, the guards' memory (the envelope), the knowledge."""

    def __init__(self, journal: Journal, settings: Settings) -> None:
        self.settings = settings
        self.analyzer = PatternAnalyzer(settings.analyzer)
        # The recorded changes, each taken in once the daemon knew of it: a recent one
        # ranks its rollback first and drops the target's level, on the record's time.
        self.changes = ChangeLog(settings.changes, actions=settings.planner.actions)
        self._changes = list(journal.changes)  # (known at, change), oldest first
        self._changes_in = 0  # _changes[:in] are in the log
        # Autonomy as configured (levels an operator or promotion changed later are not
        # replayed): a shadow policy decides nothing, as in the daemon; inside a recent
        # change's window a target is one level down, as in the daemon (app.build).
        self.autonomy = Autonomy(settings, changes=self.changes)
        self.planner = Planner(settings.planner, autonomy=self.autonomy.level_of)
        self.envelope = SafetyEnvelope(settings.guards, dry_run=settings.executor.dry_run)
        self.knowledge = KnowledgeAt(journal, settings)
        # When each execution ran: the iteration that journaled it (else its own start).
        ran_at = {
            str(r["execution"]["id"]): float(r["started_at"])
            for r in journal.iterations
            if isinstance(r.get("execution"), dict) and "id" in r["execution"]
        }
        self.executions = sorted(
            ((ran_at.get(e.id, e.started_at), e) for e in journal.executions if not e.dry_run),
            key=lambda item: item[0],
        )
        self._applied = 0  # executions[:applied] are in the envelope's history
        self._unverified: list[tuple[float, PolicyExecution]] = []  # applied, maybe settling
        self.by_id = {e.id: e for e in journal.executions}
        self.verified_at = {o.execution_id: o.recorded_at for o in journal.outcomes}
        self.outcome = {o.execution_id: o.outcome.value for o in journal.outcomes}
        self.watching_since: float | None = None
        self.last_violation: dict[str, float] = {}
        self.signals_seen: list[tuple[str, str]] = []
        self._last_number = 0

    def follow(self, record: Mapping[str, Any]) -> bool:
        """True (and `restart`) when the record's iteration number did not grow: the count
        starts at 1 in each process, so the daemon restarted before it."""
        number = _number(record)
        if number is None:
            return False
        restarted = number <= self._last_number
        self._last_number = number
        if restarted:
            self.restart()
        return restarted

    def restart(self) -> None:
        """The daemon restarted here: what it keeps in memory starts again (the analyzer's
        history, the planner's proposals, the return to baseline's quiet windows); the
        guards' memory and the knowledge are the store's, and go on."""
        self.analyzer.reset()
        self.planner = Planner(self.settings.planner, autonomy=self.autonomy.level_of)
        self.watching_since = None
        self.last_violation = {}

    # The facts before the iteration at `now`: what had run, what had been verified.
    def catch_up(self, now: float) -> None:
        while self._changes_in < len(self._changes) and self._changes[self._changes_in][0] <= now:
            self.changes.add(self._changes[self._changes_in][1])
            self._changes_in += 1
        self.autonomy.note_windows(now, leading=False)  # the windows open then, as planned
        for outcome in self.knowledge.advance(now):
            if not returns_model.is_return(outcome.cause):
                self.envelope.note_outcome(outcome, now=outcome.recorded_at)
        while self._applied < len(self.executions) and self.executions[self._applied][0] < now:
            at, execution = self.executions[self._applied]
            self._applied += 1
            changes = guard_rules.executed_changes(
                execution, at=at, load_normalised=self.settings.executor.load_normalised
            )
            self.envelope.record_changes(changes, now=at)
            self.envelope.note_failed_execution(execution, now=at)
            if execution.status is ExecutionStatus.COMPLETED:
                self._unverified.append((at, execution))

    def settling(self, now: float) -> dict[str, tuple[guard_rules.Settling, ...]]:
        """The executions that had run and were not verified by `now` (nor past the time
        their verification would have given up)."""
        cfg = self.settings.executor
        out: dict[str, tuple[guard_rules.Settling, ...]] = {}
        still: list[tuple[float, PolicyExecution]] = []
        for at, execution in self._unverified:
            verified = self.verified_at.get(execution.id)
            if verified is not None and verified <= now:
                continue
            if verified is None:
                specs = self.settings.planner.actions
                settle = cfg.verify_delay_s
                if settle is None:
                    settle = max(
                        (
                            specs[a.action_type].settle_s
                            for a in execution.policy.actions
                            if a.action_type in specs
                        ),
                        default=0.0,
                    )
                if now > (execution.finished_at or at) + settle + cfg.verify_deadline_s:
                    continue
            still.append((at, execution))
            policy = execution.policy
            entry = guard_rules.Settling(
                execution_id=execution.id,
                knobs=action_model.knobs(policy.actions),
                actions=tuple(a.action_type for a in policy.actions),
                cause=policy.cause.name,
            )
            out[policy.target] = (*out.get(policy.target, ()), entry)
        self._unverified = still  # what is verified or given up stays so: time only grows
        return out

    def resolve(
        self, policy: RemediationPolicy, switches: Switches
    ) -> tuple[RemediationPolicy, str | None]:
        """As the pipeline resolves it (IterationPipeline._resolve), against the record's
        reading; a record without one: as planned, assumed resolvable."""
        try:
            prepared = prepare_user_actions(policy, self.settings.planner.actions)
        except action_model.Unresolvable as exc:
            return policy, str(exc)
        if not switches.has_reading:
            return prepared, None
        state = switches.reading
        if state is None and action_model.needs_reading(prepared):
            return policy, switches.problem
        try:
            return action_model.resolve(prepared, state), None
        except action_model.Unresolvable as exc:
            return policy, str(exc)

    def decide(self, record: Mapping[str, Any]) -> tuple[Decision, list[GuardDecision], bool]:
        """The new configuration's decision at this record; the guard decisions; whether
        something had to be assumed (an old record)."""
        now = float(record["started_at"])
        self.catch_up(now)
        observation, signals = observation_of(record, self.settings)
        self.signals_seen = list(signals)
        switches = switches_of(record)
        if not observation.degraded:
            violating = {v.component for v in observation.violations}
            self.envelope.note_quiet(violating, now=now)
            if self.watching_since is None:
                self.watching_since = now
            self.last_violation.update(dict.fromkeys(violating, now))
        analysis = self.analyzer.analyze(observation.violations, now=now, signals=signals)
        view, target_view = self.knowledge.view(), self.knowledge.target_view()
        # As IterationPipeline.run plans: the causes (a recent change's rollback first),
        # then the recorded predictions the new rules act on, then the returns due.
        policies = self.planner.generate_policies(
            analysis,
            knowledge=view,
            now=now,
            target_knowledge=target_view,
            changes=rollback_changes(
                self.changes,
                analysis.causes,
                rollback_causes=self.settings.changes.rollback_causes,
                now=now,
            ),
        ) + plan_predicted(
            self.planner,
            predicted_of(record, self.settings),
            self.settings,
            analysis=analysis,
            knowledge=view,
            target_knowledge=target_view,
            now=now,
        )
        settling = self.settling(now)
        returns = self._returns(observation, switches, settling, now)
        if returns.proposals:
            policies += self.planner.generate_policies(
                AnalysisResult(
                    at=now,
                    violations=0,
                    patterns=(),
                    causes=tuple(p.cause for p in returns.proposals),
                ),
                knowledge=view,
                now=now,
                target_knowledge=target_view,
            )
        plans = {}
        for p in policies:
            plan, problem = self.resolve(p, switches)
            plans[p.id] = (returns_model.fit(plan, returns), problem)
        self._recommend(plans, switches, observation, now, returns.fits)
        decision, decisions = self._choose(
            record,
            policies,
            plans,
            observation=observation,
            switches=switches,
            settling=settling,
            now=now,
        )
        if not decision.acts and returns.held:
            decision = replace(
                decision, why=decision.why + "; return to baseline: " + "; ".join(returns.held)
            )
        self.envelope.prune(now=now)
        return decision, decisions, not switches.has_reading

    def _returns(
        self,
        observation: Observation,
        switches: Switches,
        settling: Mapping[str, tuple[guard_rules.Settling, ...]],
        now: float,
    ) -> returns_model.Returns:
        if self.watching_since is None:
            return returns_model.Returns()
        return returns_model.propose(
            state=switches.reading,
            observation=observation,
            history=tuple(self.envelope.history),
            last_violation=self.last_violation,
            watching_since=self.watching_since,
            settling={
                t: ", ".join(e.execution_id for e in entries) for t, entries in settling.items()
            },
            config=self.settings.planner.return_to_baseline,
            velocity=self.settings.guards.velocity,
            now=now,
            fix_loads={c.execution_id: c.load for c in self.envelope.history if c.load is not None},
        )

    def _recommend(
        self,
        plans: Mapping[str, tuple[RemediationPolicy, str | None]],
        switches: Switches,
        observation: Observation,
        now: float,
        fits: Mapping[str, int],
    ) -> None:
        """As IterationPipeline._recommend: each target's recommended size this iteration."""
        state = switches.reading
        if observation.degraded or state is None:
            return
        seen = [component for _, component in self.signals_seen]
        for target, size in size_recommendations(
            plans.values(), state, observation, fits, also=seen
        ).items():
            self.envelope.recommend(target, size, now=now)

    def _choose(
        self,
        record: Mapping[str, Any],
        policies: list[RemediationPolicy],
        plans: Mapping[str, tuple[RemediationPolicy, str | None]],
        *,
        observation: Observation,
        switches: Switches,
        settling: Mapping[str, tuple[guard_rules.Settling, ...]],
        now: float,
    ) -> tuple[Decision, list[GuardDecision]]:
        """As IterationPipeline._choose. An operator's approval is taken as given for the
        policy the record executed (same cause, actions and parameters)."""
        if not policies:
            return self._nothing_planned(record, observation), []
        recorded = recorded_decision(record, self.by_id)
        freeze = switches.freeze
        if freeze is not None and freeze.source == "config":
            freeze = None  # the configuration's kill switch is the new configuration's
        ctx = guard_rules.GuardContext(
            now=now,
            dry_run=switches.dry_run or self.settings.executor.dry_run,
            freeze=freeze or self.envelope.config_freeze(self.settings.guards),
            degraded_reason=observation.degraded_reason,
            settling=settling,
            config=self.settings.guards,
            history=tuple(self.envelope.history),
            recommendations=tuple(self.envelope.recommendations),
            backoffs=dict(self.envelope.backoffs),
            needs_human=dict(self.envelope.needs_human),
            startup_problem=switches.startup_problem,
            maintenance=self.settings.maintenance,
        )
        decisions: list[GuardDecision] = []
        held: list[str] = []
        approved = [
            p
            for p in policies
            if p.requires_approval
            and recorded.acts
            and (p.cause.key, tuple((a.action_type, _params(a.parameters)) for a in p.actions))
            == (recorded.cause, recorded.actions)
        ]
        runnable = approved[:1] + [p for p in policies if not p.requires_approval]
        ctx = replace(ctx, approvals={p.id: now for p in approved[:1]})  # taken as given
        for candidate in runnable:
            plan, unresolved = plans[candidate.id]
            target_ctx = replace(ctx, unresolved=unresolved)
            policy = guard_rules.fitted(plan, target_ctx)
            verdicts = _assumed(guard_rules.evaluate(policy, target_ctx), switches, observation)
            decisions.extend(verdicts)
            for d in verdicts:
                if (
                    d.guard == "oscillation"
                    and d.verdict is not GuardVerdict.ALLOW
                    and not returns_model.is_return(policy.cause.name)
                ):
                    self.envelope.start_backoff(policy.target, d.reason, now=now)
            if guard_rules.allowed(verdicts) and policy.shadow:
                names = "+".join(a.action_type for a in policy.actions)
                held.append(f"shadow: would do {names} on {policy.target}")
                continue  # nothing is called: a policy below it may still run
            if guard_rules.allowed(verdicts):
                why = f"{policy.primary_action} on {policy.target}: {policy.rationale}"
                return _decision(policy, why), decisions
            held.extend(f"{d.guard}: {d.reason}" for d in guard_rules.holding(verdicts))
        if not runnable:
            waiting = ", ".join(p.id for p in policies if p.requires_approval)
            return Decision(
                cause=None, target=None, why=f"waiting for operator approval of {waiting}"
            ), decisions
        why = "held back by guards: " + "; ".join(dict.fromkeys(held))
        held_by = tuple(dict.fromkeys(d.guard for d in guard_rules.holding(tuple(decisions))))
        return Decision(cause=None, target=None, why=why, held_by=held_by), decisions

    def _nothing_planned(self, record: Mapping[str, Any], observation: Observation) -> Decision:
        """No candidate: why, as the daemon says it, and in a few words (a violation
        nothing is configured or scores enough for; a recorded prediction not acted on)."""
        min_score = self.settings.planner.min_score
        why = why_nothing(observation, min_score, top_n=self.settings.knowledge.record_top_n)
        short = ""
        if observation.violations and not observation.degraded:
            short = f"no candidate (none configured, or below planner.min_score {min_score:g})"
        elif record.get("predicted") and not observation.degraded:
            keys = ", ".join(
                dict.fromkeys(f"{p['kind']}/{p['component']}" for p in record["predicted"])
            )
            short = f"predicted {keys} not acted on (predict.act, predict.max_cost)"
        return Decision(cause=None, target=None, why=why, short=short)


def _assumed(
    verdicts: tuple[GuardDecision, ...], switches: Switches, observation: Observation
) -> tuple[GuardDecision, ...]:
    """An old record: the reading is assumed; the data guard judges the data only."""
    if switches.has_reading:
        return verdicts
    return tuple(
        replace(d, verdict=GuardVerdict.ALLOW, reason="reading assumed (old record)")
        if d.guard == "data" and observation.degraded_reason is None
        else d
        for d in verdicts
    )


def _verdict_counts(
    decisions: Sequence[Mapping[str, Any]] | Sequence[GuardDecision],
) -> Counter[str]:
    counts: Counter[str] = Counter()
    for d in decisions:
        guard, verdict = (
            (d.guard, d.verdict.value)
            if isinstance(d, GuardDecision)
            else (d["guard"], d["verdict"])
        )
        if verdict != GuardVerdict.ALLOW.value:
            counts[f"{guard} {verdict}"] += 1
    return counts


def replay(
    journal: Journal,
    settings: Settings,
    *,
    since: float | None = None,
    until: float | None = None,
    store: str = "",
    config: str = "",
) -> Report:
    """Decide every recorded iteration in [since, until] again with `settings`; the ones
    before `since` still feed the analyzer's history and the guards' memory. Pure."""
    report = Report(store=store, config=config, since=since, until=until)
    replayer = _Replayer(journal, settings)
    recorded_counts: Counter[str] = Counter()
    new_counts: Counter[str] = Counter()
    for record in journal.iterations:
        now = float(record["started_at"])
        if until is not None and now > until:
            break
        report.restarts += replayer.follow(record)
        compared = since is None or now >= since
        skip = _skipped(record)
        if skip is not None:
            report.skipped[skip] += int(compared)
            continue
        new, decisions, assumed = replayer.decide(record)
        if not compared:
            continue
        report.replayed += 1
        if assumed:
            report.assumed["old record: reading assumed usable, no load signal"] += 1
        recorded_counts += _verdict_counts(record.get("guard_decisions") or ())
        new_counts += _verdict_counts(decisions)
        difference = _difference(record, new, replayer)
        if difference is None:
            report.same += 1
            continue
        report.differences.append(difference)
        if difference.recorded_outcome is not None:
            report.dropped[difference.recorded_outcome] += 1
        report.added += int(new.acts)
    for kind in recorded_counts.keys() | new_counts.keys():
        report.verdicts[kind] = [recorded_counts[kind], new_counts[kind]]
    return report


def _number(record: Mapping[str, Any]) -> int | None:
    """The iteration's number in its process ("17-ab12cd34": 17), None if unreadable."""
    head = str(record.get("id", "")).split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _skipped(record: Mapping[str, Any]) -> str | None:
    """Why a record is not replayed (None: it is)."""
    if "inputs" not in record:
        return "failed iteration (no inputs)"
    if record.get("follower") is not None:
        return "follower (decided nothing)"
    return None


def _difference(record: Mapping[str, Any], new: Decision, replayer: _Replayer) -> Difference | None:
    """How the new decision differs from the recorded one (None: it does not): the
    recorded action's verified outcome when it is not repeated, the knowledge behind a
    new action (its posterior for the cause)."""
    recorded = recorded_decision(record, replayer.by_id)
    if recorded.same_as(new):
        return None
    outcome = None
    if recorded.acts:
        execution = _as_dict(record.get("execution")).get("id")
        outcome = replayer.outcome.get(str(execution), "unverified")
    evidence = None
    belief = new.posterior if new.acts else None
    if belief is not None:
        mean = belief["alpha"] / (belief["alpha"] + belief["beta"])
        evidence = f"posterior {mean:.2f} from {belief.get('samples', 0):g} outcome(s)"
    return Difference(
        at=float(record["started_at"]),
        iteration=str(record["id"]),
        cause=new.cause or recorded.cause or _top_cause(record),
        recorded=recorded,
        new=new,
        recorded_outcome=outcome,
        evidence=evidence,
    )


def _top_cause(record: Mapping[str, Any]) -> str | None:
    causes = record.get("causes") or ()
    if causes:
        return f"{causes[0]['name']}/{causes[0]['target']}"
    return None


# --- output -----------------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render(report: Report) -> str:
    """The differences as a table, then the summary."""
    lines = [f"replay of {report.store} with {report.config}"]
    if report.differences:
        header = ("time", "cause", "recorded", "new config", "what it would have changed")
        rows = [header]
        for d in report.differences:
            changed = []
            if d.recorded_outcome is not None:
                changed.append(f"recorded action's outcome: {d.recorded_outcome.upper()}")
            if d.evidence is not None:
                changed.append(f"new action: {d.evidence}")
            rows.append(
                (
                    _iso(d.at),
                    d.cause or "-",
                    _clip(d.recorded.describe(), 90),
                    _clip(d.new.describe(), 90),
                    "; ".join(changed) or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        lines.extend(
            "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
            for row in rows
        )
    summary = report.as_dict()["summary"]
    lines.append("")
    lines.append(
        f"replayed {report.replayed} iteration(s): {report.same} same,"
        f" {len(report.differences)} different"
    )
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(report.dropped.items()))
    lines.append(
        f"recorded actions dropped: {sum(report.dropped.values())}"
        + (f" ({dropped})" if dropped else "")
    )
    lines.append(f"new actions: {report.added}")
    for kind, counts in summary["guard_verdicts"].items():
        lines.append(f"guard {kind}: {counts['recorded']} recorded -> {counts['new']} new")
    if report.restarts:
        lines.append(f"daemon restarts seen: {report.restarts} (its memory started again)")
    for why, count in sorted(report.skipped.items()):
        lines.append(f"skipped: {count} {why}")
    for what, count in sorted(report.assumed.items()):
        lines.append(f"assumed: {count} {what}")
    return "\n".join(lines)


# --- the command --------------------------------------------------------------------------------


def parse_time(option: str, raw: str | None) -> float | None:
    """ISO 8601 (UTC unless it says otherwise) or Unix seconds; MapekError naming the option."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise MapekError(
                f"{option} {raw!r}: not a time (ISO 8601 such as 2026-12-02T15:00:00Z,"
                " or Unix seconds)"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise MapekError(f"{option} {raw!r}: not a time")
    return value


def _settings(path: Path) -> Settings:
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    return load_settings(path, os.environ)[0]


class _Discard:
    """A stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def command(args: argparse.Namespace) -> tuple[int, str]:
    """Run `mape-k replay`; (exit status, what to print). A problem with the input (times,
    config, store) is one line naming it, and exit 2. The store's own log lines (opened,
    migrated: of the private copy; an unreachable database) are not the answer: they go
    nowhere, the one line says what failed."""
    logs.configure(level="error", fmt="json", stream=_Discard())
    try:
        since = parse_time("--since", args.since)
        until = parse_time("--until", args.until)
        settings = _settings(args.config)
        with open_copy(args.store) as store:
            journal = read_journal(store)
            label = store.location if "://" in args.store else args.store
    except ConfigError as exc:
        return EXIT_PROBLEM, f"invalid configuration: {exc}"
    except MapekError as exc:
        return EXIT_PROBLEM, str(exc)
    try:
        report = replay(
            journal, settings, since=since, until=until, store=label, config=str(args.config)
        )
    except (KeyError, TypeError, ValueError) as exc:
        return EXIT_PROBLEM, f"--store {label}: a decision record could not be read: {exc!r}"
    if args.json:
        return 0, json.dumps(report.as_dict(), indent=2)
    return 0, render(report)


__all__ = [
    "Journal",
    "KnowledgeAt",
    "Report",
    "command",
    "observation_of",
    "open_copy",
    "predicted_of",
    "read_journal",
    "recorded_changes",
    "recorded_decision",
    "render",
    "replay",
    "switches_of",
]
