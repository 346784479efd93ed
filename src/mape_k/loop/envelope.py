"""The safety envelope: everything that may stop, hold or gate an action, in one object.

`SafetyEnvelope` owns the freeze (an operator's, a panic's, the configuration's kill
switch), dry-run, operator approvals (one copy, one TTL: `guards.approval_ttl_s`), the
guards' memory (the action history window, size recommendations, oscillation back-offs,
per-target "needs a human" holds), the Charter circuit breaker, and the reason a running
policy must stop (`hold()`). It persists in the store's state table, in one place: the
freeze under "freeze" at once when it changes, the rest under "safety" at the end of each
iteration; `load()` and `restore_freeze()` bring both back at start. The decisions
themselves are pure functions in guards.py; this module only records. `BreakerCharter`
wraps a CharterClient to feed the circuit breaker from real call results.

Pending verifications are not here: the journal is their one record (executions with no
outcome yet), and the executor restores them from it at start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import structlog

from mape_k.config import GuardsConfig, PanicConfig, Settings
from mape_k.errors import CharterError, CharterRequestError, CharterTimeout, MapekError
from mape_k.integrations.charter.base import (
    ActionResult,
    CharterClient,
    CharterPolicy,
    CharterViolation,
    CommitteeState,
    PolicyValidation,
)
from mape_k.loop.baseline import openings
from mape_k.loop.guards import (
    Backoff,
    Change,
    Circuit,
    Freeze,
    Hold,
    Recommendation,
    active_window,
    cooldown_s,
    oscillation,
    velocity_spent,
)
from mape_k.loop.plan import signature
from mape_k.metrics import Metrics
from mape_k.models import (
    ActionName,
    ExecutionStatus,
    OutcomeType,
    PolicyExecution,
    PolicyOutcome,
    RemediationPolicy,
    RestartScope,
    action_name,
    is_builtin,
)
from mape_k.store import SCHEMA_VERSION, policy_from_record, to_jsonable
from mape_k.storeio import AsyncStore, read_state

log = structlog.get_logger(__name__)

STATE_KEY = "safety"
FREEZE_KEY = "freeze"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Approval:
    """An operator's approval of one proposed policy: it may run once, until `at + ttl`."""

    policy: RemediationPolicy
    at: float


def _always_leading() -> str | None:
    return None


class SafetyEnvelope:
    """The envelope's state. Every mutator takes `now` (or reads the clock); `save()`
    persists what changed."""

    def __init__(
        self,
        config: GuardsConfig,
        *,
        store: AsyncStore | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        dry_run: bool = False,
        not_leading: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        # Replicas: why this one must not act now (Leadership.not_leading); None when alone.
        self.not_leading = not_leading or _always_leading
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self.history: list[Change] = []
        self.recommendations: list[Recommendation] = []
        self.backoffs: dict[str, Backoff] = {}
        self.charter = Circuit()
        self.needs_human: dict[str, Hold] = {}
        self.failures: dict[str, list[float]] = {}  # target -> times of outcomes that failed
        self.approvals: dict[str, Approval] = {}  # policy id -> approval, oldest first
        self.oscillations = 0
        self.panic: tuple[int, float] | None = None  # (level, when) of the last panic
        self.dry_run = dry_run
        self._configured_dry_run = dry_run
        self.freeze: Freeze | None = self.config_freeze(config)
        self.stopping = False
        self._dirty = False

    # --- the switches: freeze, kill switch, dry-run, stopping ----------------------------

    def hold(self) -> str | None:
        """Why a running policy must not take its next action, if it must not."""
        if self.stopping:
            return "the daemon is stopping"
        if (why := self.not_leading()) is not None:
            return why
        if self.dry_run:
            return "dry-run mode was switched on"
        freeze = self.freeze
        if freeze is not None and freeze.active(self._clock()):
            return f"frozen ({freeze.source}): {freeze.reason}"
        return None

    def config_freeze(self, config: GuardsConfig) -> Freeze | None:
        """The configuration's kill switch as a freeze (None when `guards.frozen` is off)."""
        if not config.frozen:
            return None
        return Freeze(
            reason="guards.frozen is set in the configuration",
            since=self._clock(),
            until=None,
            source="config",
        )

    def reconfigure(self, config: GuardsConfig, *, dry_run: bool) -> None:
        """A reloaded configuration. Its switches apply at once, even to a policy running
        now: the config owns only its own kill switch (an active operator or panic freeze
        stays), and dry-run set over the control API stays until the configured value
        changes."""
        self.config = config
        if config.frozen:
            if self.freeze is None or not self.freeze.active(self._clock()):
                self.freeze = self.config_freeze(config)
        elif self.freeze is not None and self.freeze.source == "config":
            self.freeze = None
        if dry_run != self._configured_dry_run:
            self._configured_dry_run = dry_run
            self.dry_run = dry_run

    async def set_freeze(self, freeze: Freeze | None, *, now: float) -> bool:
        """The one writer of the freeze: it applies at once in memory (the guards and a
        running policy read it), then is persisted, best effort (False if that failed).
        The configuration's own kill switch is not persisted: the config says it."""
        self.freeze = freeze
        if self._store is None:
            return True
        try:
            if freeze is None or freeze.source == "config":
                await self._store.delete_state(FREEZE_KEY)
            else:
                await self._store.set_state(FREEZE_KEY, freeze_dict(freeze), at=now)
        except MapekError as exc:
            log.error("freeze_save_failed", error=str(exc))
            return False
        return True

    async def restore_freeze(self, now: float) -> None:
        """A freeze persisted by an operator or a panic survives a restart; one that
        cannot be read fails closed (kept until an operator lifts it)."""
        if self._store is None:
            return
        try:
            saved = await self._store.get_state(FREEZE_KEY)
        except MapekError as exc:
            saved = {"unreadable": str(exc)}
        if saved is None or self.freeze is not None:
            return
        try:
            until = saved["until"]
            freeze = Freeze(
                reason=str(saved["reason"]),
                since=float(saved["since"]),
                until=None if until is None else float(until),
                source=str(saved["source"]),
            )
        except (KeyError, TypeError, ValueError):
            log.error("freeze_unreadable", saved=repr(saved)[:200])
            freeze = Freeze(
                reason="a saved freeze could not be read; lift it with DELETE /api/v1/freeze",
                since=now,
                until=None,
                source="store",
            )
        if freeze.active(now):
            self.freeze = freeze
            log.warning("freeze_restored", reason=freeze.reason, until=freeze.until)

    def active_freeze(self, now: float) -> Freeze | None:
        """The freeze that holds now: an operator's, a panic's or the kill switch, else a
        configured freeze window; None when nothing holds."""
        freeze = self.freeze
        if freeze is not None and freeze.active(now):
            return freeze
        return active_window(self.config.freeze_windows, now)

    def panic_freeze_s(self, cfg: PanicConfig, *, now: float) -> float | None:
        """How long the panic now freezes: `initial_freeze_s` the first time, doubled for
        each panic within `freeze_s` of the previous one, at most `freeze_s` (None: until
        an operator lifts it). A panic that repeats is a controller that keeps being wrong;
        one that does not was likely noise."""
        level = 1
        if self.panic is not None and cfg.freeze_s is not None:
            last_level, last_at = self.panic
            if now - last_at <= cfg.freeze_s:
                level = last_level + 1
        self.panic = (level, now)
        self._dirty = True
        if cfg.freeze_s is None:
            return None
        return float(min(cfg.initial_freeze_s * 2.0 ** (level - 1), cfg.freeze_s))

    # --- approvals -------------------------------------------------------------------------

    def approve(self, policy: RemediationPolicy, *, now: float, keep: int) -> None:
        """An operator approved `policy`: it may run once within `guards.approval_ttl_s`.
        At most `keep` approvals are held, the oldest dropped first."""
        self.approvals[policy.id] = Approval(policy=policy, at=now)
        while len(self.approvals) > keep:
            del self.approvals[next(iter(self.approvals))]
        self._dirty = True

    def approved_for(self, policy: RemediationPolicy) -> RemediationPolicy | None:
        """The approved policy (the id the operator saw) for a proposal like `policy`."""
        wanted = signature(policy)
        for approval in self.approvals.values():
            if signature(approval.policy) == wanted:
                return approval.policy
        return None

    def approval_times(self) -> dict[str, float]:
        """Policy id -> when it was approved: what the approval guard checks."""
        return {pid: a.at for pid, a in self.approvals.items()}

    def revoke(self, policy_id: str) -> RemediationPolicy | None:
        """Drop an approval (spent, rejected, expired, or no longer offered)."""
        approval = self.approvals.pop(policy_id, None)
        if approval is None:
            return None
        self._dirty = True
        return approval.policy

    def expire_approvals(self, now: float) -> list[RemediationPolicy]:
        """Approvals older than `guards.approval_ttl_s` are dropped: default deny."""
        ttl = self.config.approval_ttl_s
        expired = [a.policy for a in self.approvals.values() if now >= a.at + ttl]
        for policy in expired:
            self.revoke(policy.id)
            log.warning("approval_expired", policy_id=policy.id, ttl_s=ttl)
        return expired

    # --- persistence -------------------------------------------------------------------

    async def load(self, *, strict: bool = False) -> None:
        """The guards' memory as the store has it. `strict` (a takeover: the shared store
        is the truth): a read that fails raises, and no saved state means an empty one."""
        if self._store is None:
            return
        saved = await read_state(
            self._store, STATE_KEY, strict=strict, event="safety_state_unreadable"
        )
        if saved is None:
            return
        try:
            # Built whole before assigned: a bad file leaves the fresh (empty) state intact.
            history = [
                replace(Change(**c), action_type=action_name(c["action_type"]))
                for c in saved.get("history", [])
            ]
            recommendations = [Recommendation(**r) for r in saved.get("recommendations", [])]
            backoffs = {t: Backoff(**b) for t, b in saved.get("backoffs", {}).items()}
            charter = Circuit(**saved.get("charter", {}))
            needs_human = {t: Hold(**h) for t, h in saved.get("needs_human", {}).items()}
            failures = {t: list(v) for t, v in saved.get("failures", {}).items()}
            approvals = {
                pid: Approval(policy=policy_from_record(a["policy"]), at=float(a["at"]))
                for pid, a in saved.get("approvals", {}).items()
                if isinstance(a, dict)  # an approval saved without its policy cannot run
            }
            oscillations = int(saved.get("oscillations", 0))
            panic = saved.get("panic")
            panic = None if panic is None else (int(panic[0]), float(panic[1]))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            log.error("safety_state_unreadable", error=f"bad saved state: {exc}")
            return
        self.history, self.recommendations, self.backoffs = history, recommendations, backoffs
        self.charter, self.needs_human, self.failures = charter, needs_human, failures
        self.approvals, self.oscillations, self.panic = approvals, oscillations, panic
        log.info(
            "safety_state_restored",
            changes=len(self.history),
            backoffs=len(self.backoffs),
            charter_circuit=self.charter.state,
            needs_human=sorted(self.needs_human),
            approvals=sorted(self.approvals),
        )

    async def save(self, *, now: float) -> None:
        if self._store is None or not self._dirty:
            return
        # One walk into plain JSON values, here on the loop (a threaded store writes later).
        data = to_jsonable(
            {
                "history": self.history,
                "recommendations": self.recommendations,
                "backoffs": self.backoffs,
                "charter": self.charter,
                "needs_human": self.needs_human,
                "failures": self.failures,
                "approvals": {
                    pid: {"at": a.at, "policy": a.policy} for pid, a in self.approvals.items()
                },
                "oscillations": self.oscillations,
                "panic": None if self.panic is None else list(self.panic),
            }
        )
        try:
            await self._store.set_state(STATE_KEY, data, at=now)
        except MapekError as exc:
            log.error("safety_state_save_failed", error=str(exc))
            return
        self._dirty = False

    # --- upkeep --------------------------------------------------------------------------

    def prune(self, *, now: float) -> None:
        """Forget what no guard can see any more (keeps the state small)."""
        cfg = self.config
        keep = max(cfg.velocity.window_s, cfg.oscillation.window_s, 3 * cfg.cooldown.base_s)
        keep = max(keep, cfg.cooldown.base_s * cfg.cooldown.large_factor)
        before = (
            len(self.history),
            len(self.recommendations),
            len(self.backoffs),
            len(self.needs_human),
        )
        # The change that took a knob away from its baseline stays while the knob is away:
        # the return to baseline (loop/baseline.py) reads the baseline from it.
        kept = openings(self.history)
        self.history = [c for c in self.history if c.at >= now - keep or c in kept]
        window = cfg.stabilization.window_s
        self.recommendations = [r for r in self.recommendations if r.at >= now - window]
        reset = cfg.oscillation.max_backoff_s
        self.backoffs = {t: b for t, b in self.backoffs.items() if now < b.until + reset}
        self.needs_human = {t: h for t, h in self.needs_human.items() if h.active(now)}
        tw = cfg.target_breaker.window_s
        self.failures = {t: [x for x in v if x >= now - tw] for t, v in self.failures.items()}
        self.failures = {t: v for t, v in self.failures.items() if v}
        after = (
            len(self.history),
            len(self.recommendations),
            len(self.backoffs),
            len(self.needs_human),
        )
        if after != before:
            self._dirty = True

    # --- recording -----------------------------------------------------------------------

    def record_changes(self, changes: Iterable[Change], *, now: float) -> Backoff | None:
        """Remember what an execution did; start a back-off if it completed a flip-flop."""
        added = list(changes)
        if not added:
            return None
        self.history.extend(added)
        self.history.sort(key=lambda c: c.at)
        self._dirty = True
        cfg = self.config.oscillation
        if not cfg.enabled:
            return None
        flip = oscillation(self.history, None, window_s=cfg.window_s, now=now)
        if flip is None or not any(c in flip for c in added):
            return None
        steps = " -> ".join(c.action_type for c in flip)
        return self.start_backoff(flip[-1].target, f"{flip[-1].knob}: {steps}", now=now)

    def start_backoff(self, target: str, reason: str, *, now: float) -> Backoff:
        """Block changes to `target` with an exponential back-off (level + 1 if recent)."""
        cfg = self.config.oscillation
        previous = self.backoffs.get(target)
        if previous is not None and now < previous.until:
            return previous
        level = 1
        if previous is not None and now < previous.until + cfg.max_backoff_s:
            level = previous.level + 1
        duration = min(cfg.backoff_s * 2 ** (level - 1), cfg.max_backoff_s)
        backoff = Backoff(
            target=target, since=now, until=now + duration, level=level, reason=reason
        )
        self.backoffs[target] = backoff
        self.oscillations += 1
        self._dirty = True
        if self._metrics is not None:
            self._metrics.oscillations.inc()
        log.error(
            "oscillation_detected",
            target=target,
            reason=reason,
            level=level,
            blocked_until=backoff.until,
        )
        return backoff

    def recommend(self, target: str, size: int, *, now: float) -> None:
        self.recommendations.append(Recommendation(at=now, target=target, size=size))
        self._dirty = True

    def note_outcome(self, outcome: PolicyOutcome, *, now: float) -> Hold | None:
        """Count remediations that did not fix their target; K of them open its breaker."""
        target = outcome.target
        if outcome.outcome is OutcomeType.SUCCESS:
            if self.failures.pop(target, None) is not None:
                self._dirty = True
            return None
        if outcome.outcome is OutcomeType.UNKNOWN:
            return None
        return self._count_failure(
            target,
            f"last: {outcome.action_type} for {outcome.cause}: {outcome.outcome.value}",
            now=now,
        )

    def note_failed_execution(self, execution: PolicyExecution, *, now: float) -> Hold | None:
        """A policy with a user-defined action that failed (its actuator: a non-zero exit, a
        refused webhook) counts like a remediation that did not fix its target: the target
        breaker is per target for every actuator (Charter call failures have the Charter
        circuit breaker as well, so a failed Charter-only policy is not counted here)."""
        if execution.status not in {ExecutionStatus.FAILED, ExecutionStatus.ROLLED_BACK}:
            return None
        if all(is_builtin(step.action.action_type) for step in execution.actions):
            return None
        error = (execution.error or "failed")[:200]
        return self._count_failure(
            execution.policy.target,
            f"last: {execution.policy.primary_action} for {execution.policy.cause.name}"
            f" failed: {error}",
            now=now,
        )

    def _count_failure(self, target: str, last: str, *, now: float) -> Hold | None:
        cfg = self.config.target_breaker
        times = [t for t in self.failures.get(target, []) if t >= now - cfg.window_s]
        times.append(now)
        self.failures[target] = times
        self._dirty = True
        if not cfg.enabled or len(times) < cfg.failures or target in self.needs_human:
            return None
        hold = Hold(
            target=target,
            since=now,
            until=None if cfg.hold_s is None else now + cfg.hold_s,
            reason=f"{len(times)} remediations within {cfg.window_s:.0f} s did not fix it ({last})",
        )
        self.needs_human[target] = hold
        self.failures.pop(target, None)
        log.error("needs_human", target=target, reason=hold.reason, until=hold.until)
        return hold

    def note_quiet(self, violating: set[str], *, now: float) -> list[str]:
        """A usable reading: each held target without a violation is quiet since now (or
        still); one quiet for `target_breaker.clear_after_s` is released. Returns those."""
        released: list[str] = []
        clear_after = self.config.target_breaker.clear_after_s
        for target, hold in list(self.needs_human.items()):
            if target in violating:
                if hold.quiet_since is not None:
                    self.needs_human[target] = replace(hold, quiet_since=None)
                    self._dirty = True
            elif hold.quiet_since is None:
                self.needs_human[target] = replace(hold, quiet_since=now)
                self._dirty = True
            elif now - hold.quiet_since >= clear_after:
                del self.needs_human[target]
                self._dirty = True
                released.append(target)
                log.warning(
                    "needs_human_released",
                    target=target,
                    reason=f"no violation for {now - hold.quiet_since:.0f} s",
                )
        return released

    def clear_needs_human(self, target: str | None = None) -> list[str]:
        targets = list(self.needs_human) if target is None else [target]
        cleared = [t for t in targets if self.needs_human.pop(t, None) is not None]
        if cleared:
            self._dirty = True
        return cleared

    # --- the Charter circuit breaker -----------------------------------------------------

    def guard(self, charter: CharterClient) -> BreakerCharter:
        """`charter` with every call's result fed to the circuit breaker: what the executor
        acts through and the loop reads the target's state through."""
        return BreakerCharter(charter, on_result=self._charter_called)

    def _charter_called(self, ok: bool, error: str | None, mutation: bool) -> None:
        self.charter_result(ok, now=self._clock(), error=error, mutation=mutation)

    def charter_result(
        self, ok: bool, *, now: float, error: str | None = None, mutation: bool = True
    ) -> None:
        """One Charter call's result. A failure of any call counts; only a mutation that
        worked closes the circuit — a read that works says nothing about writes (a Charter
        whose reads answer and whose writes fail must still open it)."""
        cfg = self.config.charter_breaker
        circuit = self.charter
        if ok and not mutation:
            return
        if ok:
            if circuit.state != "closed" or circuit.failures:
                if circuit.state != "closed":
                    log.warning("charter_circuit_closed", after_failures=circuit.failures)
                self.charter = Circuit()
                self._dirty = True
            return
        failures = circuit.failures + 1
        half_open = circuit.phase(now) == "half_open"
        if cfg.enabled and (half_open or failures >= cfg.failures):
            self.charter = Circuit(
                state="open",
                failures=failures,
                opened_at=now,
                until=now + cfg.open_s,
                last_error=error,
            )
            log.error(
                "charter_circuit_open",
                failures=failures,
                until=now + cfg.open_s,
                error=error,
                probe_failed=half_open,
            )
        else:
            self.charter = replace(circuit, failures=failures, last_error=error)
        self._dirty = True

    # --- /stats --------------------------------------------------------------------------

    def snapshot(
        self, *, now: float, committee_size: int | None = None, startup_problem: str | None = None
    ) -> dict[str, Any]:
        """Each guard's state, for /stats."""
        cfg = self.config
        freeze = self.freeze if self.freeze is not None and self.freeze.active(now) else None
        recent = [c for c in self.history if c.at > now - cfg.velocity.window_s]
        spent = velocity_spent(recent)
        cooldowns: list[dict[str, Any]] = []
        last: dict[tuple[str, ActionName], Change] = {}
        for change in self.history:
            last[(change.target, change.action_type)] = change
        for (target, kind), change in sorted(last.items(), key=lambda kv: kv[1].at):
            until = change.at + cooldown_s(change, cfg)
            if cfg.cooldown.enabled and now < until:
                cooldowns.append({"target": target, "action_type": kind, "until": until})
        return {
            "dry_run": self.dry_run,
            "freeze": freeze_dict(freeze),
            "freeze_window": freeze_dict(active_window(cfg.freeze_windows, now)),
            "freeze_windows": [w.model_dump() for w in cfg.freeze_windows],
            "startup": {"ok": startup_problem is None, "problem": startup_problem},
            "approvals": [
                {"policy_id": pid, "approved_at": a.at, "expires_at": a.at + cfg.approval_ttl_s}
                for pid, a in self.approvals.items()
            ],
            "approval_ttl_s": cfg.approval_ttl_s,
            "cooldowns": cooldowns,
            "velocity": {
                "window_s": cfg.velocity.window_s,
                "actions": spent[0],
                "max_actions": cfg.velocity.max_actions,
                "size_change": spent[1],
                "max_size_change": cfg.velocity.max_size_change,
            },
            "stabilization": {
                "window_s": cfg.stabilization.window_s,
                "committee_size": committee_size,
                "recommendations": [asdict(r) for r in self.recommendations[-20:]],
            },
            "oscillating_targets": [
                {**asdict(b), "active": now < b.until} for b in self.backoffs.values()
            ],
            "oscillations_detected": self.oscillations,
            "charter_circuit": {**asdict(self.charter), "phase": self.charter.phase(now)},
            "needs_human": [asdict(h) for h in self.needs_human.values()],
            "failed_remediations": {t: len(v) for t, v in self.failures.items()},
        }


def freeze_dict(freeze: Freeze | None) -> dict[str, Any] | None:
    """A freeze as JSON (the store, /stats), or None."""
    if freeze is None:
        return None
    return {
        "reason": freeze.reason,
        "since": freeze.since,
        "until": freeze.until,
        "source": freeze.source,
    }


# --- the Charter API circuit breaker, fed by real calls -------------------------------------


class BreakerCharter:
    """A CharterClient that reports each call's result to `on_result(ok, error, mutation)`.

    A failure is the API not answering usefully: unavailable, a timeout (`CharterTimeout`,
    or the executor's per-action bound cancelling a mutation — the loop cancels a Charter
    call for nothing else), a 5xx. A 4xx answer (the API answered and refused) is neither
    a failure nor a success. Reads report failures only: their success never closes the
    circuit, a mutation's does.
    """

    def __init__(
        self, inner: CharterClient, *, on_result: Callable[[bool, str | None, bool], None]
    ) -> None:
        self.inner = inner
        self._on_result = on_result

    async def _call(self, awaitable: Awaitable[T], *, mutation: bool = False) -> T:
        try:
            result = await awaitable
        except CharterRequestError:
            raise
        except CharterTimeout as exc:
            self._on_result(False, f"timeout: {exc}", mutation)
            raise
        except CharterError as exc:
            self._on_result(False, str(exc), mutation)
            raise
        except TimeoutError:
            self._on_result(False, "timeout", mutation)
            raise
        except asyncio.CancelledError:
            if mutation:  # the executor's per-action bound; a read may be cancelled by anything
                self._on_result(False, "timeout (the action's time bound)", mutation)
            raise
        self._on_result(True, None, mutation)
        return result

    async def _mutate(self, awaitable: Awaitable[T]) -> T:
        return await self._call(awaitable, mutation=True)

    async def connect(self) -> None:
        await self.inner.connect()

    async def disconnect(self) -> None:
        await self.inner.disconnect()

    async def ping(self) -> None:
        await self._call(self.inner.ping())

    async def get_policies(self) -> list[CharterPolicy]:
        return await self._call(self.inner.get_policies())

    async def find_action(self, idempotency_key: str) -> ActionResult | None:
        return await self._call(self.inner.find_action(idempotency_key))

    async def validate_policy(self, policy_id: str) -> PolicyValidation:
        return await self._call(self.inner.validate_policy(policy_id))

    async def apply_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            self.inner.apply_policy(policy_id, idempotency_key=idempotency_key)
        )

    async def rollback_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            self.inner.rollback_policy(policy_id, idempotency_key=idempotency_key)
        )

    async def get_committee_state(self) -> CommitteeState:
        return await self._call(self.inner.get_committee_state())

    async def get_violations(self) -> list[CharterViolation]:
        return await self._call(self.inner.get_violations())

    async def scale_committee(self, size: int, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(self.inner.scale_committee(size, idempotency_key=idempotency_key))

    async def restart_committee(
        self, *, idempotency_key: str, scope: RestartScope = "all"
    ) -> ActionResult:
        return await self._mutate(
            self.inner.restart_committee(idempotency_key=idempotency_key, scope=scope)
        )

    async def set_throttle(
        self, limit_ops_per_sec: float | None, *, idempotency_key: str
    ) -> ActionResult:
        return await self._mutate(
            self.inner.set_throttle(limit_ops_per_sec, idempotency_key=idempotency_key)
        )

    async def set_validation_bypass(self, active: bool, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            self.inner.set_validation_bypass(active, idempotency_key=idempotency_key)
        )

    async def set_emergency_override(self, active: bool, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(
            self.inner.set_emergency_override(active, idempotency_key=idempotency_key)
        )

    async def rebalance_load(self, *, idempotency_key: str) -> ActionResult:
        return await self._mutate(self.inner.rebalance_load(idempotency_key=idempotency_key))

    async def update_configuration(
        self, settings: dict[str, Any], *, idempotency_key: str
    ) -> ActionResult:
        return await self._mutate(
            self.inner.update_configuration(settings, idempotency_key=idempotency_key)
        )


# --- state validation at start ---------------------------------------------------------------


def config_problems(settings: Settings) -> list[str]:
    """Cross-section sanity the per-field validation cannot see."""
    problems: list[str] = []
    guards = settings.guards
    panic = guards.panic
    if panic.query is not None and panic.query not in settings.monitor.queries:
        problems.append(f"guards.panic.query {panic.query!r} is not in monitor.queries")
    if guards.oscillation.max_backoff_s < guards.oscillation.backoff_s:
        problems.append("guards.oscillation.max_backoff_s is below guards.oscillation.backoff_s")
    load_query = settings.executor.load_query
    if load_query is not None and load_query not in settings.monitor.queries:
        # Not a reason to stop acting: outcomes are then judged without the load.
        log.warning(
            "load_query_missing",
            detail="executor.load_query is not in monitor.queries: outcomes of"
            " load-proportional signals are judged without normalising by the load",
            load_query=load_query,
        )
    return problems


async def store_problems(store: AsyncStore) -> list[str]:
    problems: list[str] = []
    try:
        if not await store.integrity_ok():
            problems.append("knowledge store integrity check failed")
        if store.schema_version != SCHEMA_VERSION:
            problems.append(
                f"knowledge store schema {store.schema_version}, expected {SCHEMA_VERSION}"
            )
    except MapekError as exc:
        problems.append(f"knowledge store unusable: {exc}")
    return problems


def charter_problems(state: CommitteeState) -> list[str]:
    """A Charter state no controller should act on."""
    problems: list[str] = []
    if state.size < 1:
        problems.append(f"committee_size {state.size} < 1")
    if not 0 <= state.healthy_members <= state.size:
        problems.append(f"healthy_members {state.healthy_members} not in 0..{state.size}")
    if state.target_size < 1:
        problems.append(f"target_size {state.target_size} < 1")
    if not 0.0 <= state.failure_rate <= 1.0:
        problems.append(f"failure_rate {state.failure_rate} not in 0..1")
    if state.throttle_limit is not None and state.throttle_limit <= 0:
        problems.append(f"throttle_limit {state.throttle_limit} <= 0")
    if state.offered_load < 0 or state.queue_depth < 0:
        problems.append("negative load or queue depth")
    return problems
