"""The daemon: builds every component in an AsyncExitStack and runs loop + server.

`run()` opens the store, the clients and the aiohttp site (LIFO cleanup), reconciles
executions a crash interrupted, serves, runs the loop, talks to systemd when asked to, and
bounds shutdown. It never touches signals: cli.py turns them into `stop` / `reload`.
`run_once()` builds the same pieces without a server for `mape-k once`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from mape_k import logs
from mape_k.config import (
    AutonomyLevel,
    CharterMode,
    Settings,
    Sources,
    check_store_url,
    read_secret,
    reload_plan,
)
from mape_k.connections import (
    SERVER_RESERVE,
    ConnectionGuard,
    GuardedSite,
    plan_file_limit,
)
from mape_k.console.data import ConsoleData
from mape_k.errors import CharterError, ConfigError, MapekError, StoreError
from mape_k.integrations.alertmanager import AlertInbox, AlertMessageRouter
from mape_k.integrations.charter import get_charter_client
from mape_k.integrations.charter.base import CharterClient
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.integrations.prometheus import PrometheusClient
from mape_k.loop.analyze import PatternAnalyzer
from mape_k.loop.autonomy import Autonomy
from mape_k.loop.changes import ChangeLog
from mape_k.loop.envelope import SafetyEnvelope
from mape_k.loop.escalation import NeedsHumanAlerts
from mape_k.loop.execute import Executor
from mape_k.loop.guards import Freeze
from mape_k.loop.iteration import IterationPipeline
from mape_k.loop.knowledge import Knowledge
from mape_k.loop.leadership import Leadership
from mape_k.loop.maintenance import active_windows
from mape_k.loop.monitor import MetricSource, Monitor
from mape_k.loop.orchestrator import MAPEKOrchestrator
from mape_k.loop.plan import Planner
from mape_k.loop.predict import Predictor
from mape_k.metrics import FamiliesCollector, Metrics
from mape_k.models import ExecutionStatus
from mape_k.server import STATS_LIMIT, build_app
from mape_k.store import Store
from mape_k.storeio import AsyncStore, SharedStore

log = structlog.get_logger(__name__)

INTEGRITY_EVERY_S = 60.0
INTEGRITY_RETRY_S = 5.0  # a failed check (a database unreachable a moment) is redone sooner
CHARTER_POOL = 100  # httpx's default pool size: HttpCharterClient sets no limits of its own


def sd_notify(message: str) -> bool:
    """Send `message` to systemd's $NOTIFY_SOCKET; a no-op (False) outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False
    return True


@dataclass
class Components:
    settings: Settings
    metrics: Metrics
    store: AsyncStore
    knowledge: Knowledge
    charter: CharterClient | None  # None: charter.mode none (user-defined actions only)
    inbox: AlertInbox
    router: AlertMessageRouter
    monitor: Monitor
    orchestrator: MAPEKOrchestrator
    prometheus: PrometheusClient | None
    world: MockCharterWorld | None
    leadership: Leadership
    port: int | None = None  # the server's bound port, once it listens
    changes: ChangeLog | None = None  # recorded deploys and config changes


@contextlib.asynccontextmanager
async def build(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    fault: str | None = None,
    world: MockCharterWorld | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Components]:
    """Every component of the daemon, opened in order and closed in reverse."""
    metrics = Metrics(registry or CollectorRegistry())
    async with AsyncExitStack() as stack:
        store = open_store(settings, metrics)
        stack.callback(store.close)
        leadership = Leadership(
            store if isinstance(store, SharedStore) else None,
            replica_id=settings.ha.replica_id or f"{socket.gethostname()}:{settings.server.port}",
            config=settings.ha,
            metrics=metrics,
        )
        knowledge = Knowledge(store, settings.knowledge, metrics=metrics)
        await knowledge.update_patterns()
        prometheus: PrometheusClient | None = None
        source: MetricSource
        if settings.charter.mode is CharterMode.MOCK:
            if world is None:
                world = MockCharterWorld.create(
                    clock=clock,
                    seed=settings.charter.mock_seed,
                    regime=settings.charter.mock_regime,
                    fault=fault,
                )
            charter: CharterClient | None = world.client
            source = world.metrics
        else:
            if fault is not None:
                raise ConfigError("--fault needs the mock Charter (--mock or charter.mode=mock)")
            charter = (
                None
                if settings.charter.mode is CharterMode.NONE
                else get_charter_client(
                    settings.charter, metrics=metrics, epoch=leadership.call_epoch
                )
            )
            prometheus = PrometheusClient(settings.prometheus)
            await prometheus.connect()
            stack.push_async_callback(prometheus.disconnect)
            source = prometheus
        if charter is not None:
            await charter.connect()
            stack.push_async_callback(charter.disconnect)
        inbox = AlertInbox(
            max_alerts=settings.server.inbox_max_alerts,
            component_label=settings.monitor.alert_component_label,
            metrics=metrics,
            ttl_s=settings.server.alert_ttl_s,
            journal=store,  # firing alerts and remembered resolves survive a restart
            shared=leadership.shared,  # replicas: a delivery to any reaches the leader
            clock=clock,  # the daemon's one clock: TTLs and endsAt on simulated time too
        )
        try:
            inbox.restore(await store.inbox_rows())
        except StoreError as exc:  # a cache of Alertmanager's state: it re-sends in time
            log.warning("alert_inbox_not_restored", error=str(exc))
        await inbox.flush()
        router = AlertMessageRouter(inbox)
        monitor = Monitor(settings.monitor, source=source, alerts=inbox, metrics=metrics)
        # The safety envelope first: the executor acts through its circuit breaker and
        # stops on its hold, the planner asks it what is approved.
        envelope = SafetyEnvelope(
            settings.guards,
            store=store,
            metrics=metrics,
            clock=clock,
            dry_run=settings.executor.dry_run,
            not_leading=leadership.not_leading,
        )
        await envelope.load()
        alerts = NeedsHumanAlerts(store=store, metrics=metrics)
        await alerts.load()  # what an earlier run told Alertmanager: re-sent or resolved next
        changes = ChangeLog(
            settings.changes,
            actions=settings.planner.actions,
            store=store,
            not_leading=leadership.not_leading,
            clock=clock,
        )
        await changes.load()
        # Inside a change's window a target's autonomy is one level down (its rollback not).
        autonomy = Autonomy(settings, store=store, changes=changes)
        await autonomy.load()  # levels changed since the config, the shadow ledger
        metrics.registry.register(FamiliesCollector(autonomy.families))
        guarded = None if charter is None else envelope.guard(charter)
        executor = Executor(
            charter=guarded,
            config=settings.executor,
            actions=settings.planner.actions,
            journal=knowledge.record_execution,
            metrics=metrics,
            clock=clock,
            hold=envelope.hold,
        )
        pipeline = IterationPipeline(
            settings=settings,
            envelope=envelope,
            charter=guarded,
            monitor=monitor,
            analyzer=PatternAnalyzer(settings.analyzer),
            planner=Planner(
                settings.planner, approved=envelope.approved_for, autonomy=autonomy.level_of
            ),
            executor=executor,
            knowledge=knowledge,
            store=store,
            metrics=metrics,
            alerts=alerts,
            autonomy=autonomy,
            # range queries where the source has them; the mock: the loop's own readings
            predictor=Predictor(ranges=prometheus, metrics=metrics, store=store),
            changes=changes,
        )
        await pipeline.predictor.load()  # the track record: open predictions, counts
        orchestrator = MAPEKOrchestrator(
            settings=settings, pipeline=pipeline, store=store, clock=clock, leadership=leadership
        )
        metrics.watch_state(lambda: orchestrator.state_gauges(clock()))
        yield Components(
            settings=settings,
            metrics=metrics,
            store=store,
            knowledge=knowledge,
            charter=charter,
            inbox=inbox,
            router=router,
            monitor=monitor,
            orchestrator=orchestrator,
            prometheus=prometheus,
            world=world,
            leadership=leadership,
            changes=changes,
        )


def open_store(settings: Settings, metrics: Metrics) -> AsyncStore:
    """The SQLite file at knowledge.path, or the shared store at knowledge.url."""
    cfg = settings.knowledge
    url = read_secret(cfg.url, cfg.url_file, file_key="knowledge.url_file")
    if url is None:
        return AsyncStore(
            Store.open(cfg.path, max_bytes=cfg.max_bytes, metrics=metrics), threaded=False
        )
    try:
        check_store_url(url, "knowledge.url_file")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        from mape_k.pgstore import PostgresStore  # noqa: PLC0415 - psycopg is an extra
    except ImportError as exc:
        raise ConfigError(
            f"knowledge.url needs psycopg ({exc.name} is missing): pip install 'mape-k[ha]'"
        ) from None
    return SharedStore(
        PostgresStore.open(
            url,
            max_bytes=cfg.max_bytes,
            metrics=metrics,
            connect_timeout_s=cfg.connect_timeout_s,
            statement_timeout_s=cfg.statement_timeout_s,
            lease_name=settings.ha.lease_name,
        )
    )


async def reconcile(parts: Components, now: float | None = None) -> int:
    """Settle executions a crash left in progress from what the Charter says happened,
    then resume the envelope from the journal (guard history, pending verifications).
    Replicas leave this to whichever becomes leader (its takeover does it)."""
    if parts.leadership.shared:
        return 0
    return await parts.orchestrator.reconcile(time.time() if now is None else now)


class Daemon:
    """The running daemon as the HTTP face sees it (server.DaemonControl)."""

    def __init__(self, parts: Components, *, clock: Callable[[], float] = time.time) -> None:
        self._parts = parts
        self._clock = clock
        self._started = clock()
        self._startup_problem: str | None = None
        self._integrity: tuple[float, str] | None = None

    @property
    def _orch(self) -> MAPEKOrchestrator:
        return self._parts.orchestrator

    @property
    def startup_problem(self) -> str | None:
        """Why the daemon runs but does not act (start-up state validation), if it does not."""
        problems = [p for p in (self._startup_problem, self._orch.startup_problem) if p]
        return "; ".join(problems) or None

    @startup_problem.setter
    def startup_problem(self, value: str | None) -> None:
        self._startup_problem = value

    def trigger(self, reason: str) -> None:
        self._orch.trigger(reason)

    async def _knowledge_check(self) -> str:
        """The store's integrity check, at most once a minute (it reads the whole file);
        a failed one again after a few seconds, so a store that is back reads ready."""
        now = self._clock()
        every = (
            INTEGRITY_EVERY_S
            if self._integrity and self._integrity[1] == "ok"
            else INTEGRITY_RETRY_S
        )
        if self._integrity is None or now - self._integrity[0] >= every:
            try:
                ok = await self._parts.store.integrity_ok()
                state = "ok" if ok else "integrity check failed"
            except StoreError as exc:
                state = str(exc)
            self._integrity = (now, state)
        return self._integrity[1]

    async def health(self) -> tuple[bool, str]:
        if not self._orch.running:
            return False, "the loop task is not running"
        limit = 3 * self._parts.settings.orchestrator.interval_s
        last = self._orch.state.last_started_at or self._started
        age = self._clock() - last
        if age > limit:
            return False, f"last iteration started {age:.0f} s ago (limit {limit:.0f} s)"
        return True, "ok"

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        prom = self._orch.prometheus_ok
        if prom is None:
            checks["prometheus"] = "no observation yet"
        elif not prom:
            last = self._parts.monitor.last_observation
            reason = last.degraded_reason if last is not None else "unknown"
            checks["prometheus"] = f"not answering: {reason}"
        else:
            checks["prometheus"] = "ok"
        # A failed write (a full disk) shows at once; the integrity check once a minute.
        checks["knowledge"] = self._parts.store.write_problem() or await self._knowledge_check()
        charter = self._parts.charter
        try:
            if charter is not None:  # charter.mode none: no Charter to be ready for
                async with asyncio.timeout(2.0):
                    await charter.ping()
                checks["charter"] = "ok"
        except (CharterError, TimeoutError) as exc:
            checks["charter"] = f"unreachable: {exc}" if str(exc) else "unreachable: timeout"
        checks.update(self._guard_readiness(self._clock()))
        leadership = self._parts.leadership
        if leadership.shared:
            # A follower is ready (it takes webhooks into the shared inbox); no lease at all
            # (the database unreachable) is not: then no replica acts.
            checks["lease"] = leadership.lease_problem() or "ok"
        ready = all(v == "ok" for v in checks.values())
        if leadership.shared:
            checks["role"] = (
                f"leader (epoch {leadership.epoch()})"
                if leadership.leading()
                else str(leadership.not_leading())
            )
        if self._parts.metrics is not None:
            self._parts.metrics.ready.set(1 if ready else 0)
        return ready, checks

    def _guard_readiness(self, now: float) -> dict[str, str]:
        """What keeps the loop from acting, each saying why and until when."""
        checks: dict[str, str] = {}
        if self.startup_problem is not None:
            checks["startup"] = self.startup_problem
        freeze = self._orch.envelope.active_freeze(now)
        if freeze is not None:
            until = "until lifted" if freeze.until is None else f"until {freeze.until:.0f}"
            checks["frozen"] = (
                f"{freeze.reason} (since {freeze.since:.0f}, {until}, {freeze.source})"
            )
        envelope = self._orch.envelope
        circuit = envelope.charter
        if circuit.phase(now) == "open":
            checks["charter_circuit"] = (
                f"open until {circuit.until:.0f} after {circuit.failures} failed calls"
                f" (last: {circuit.last_error})"
            )
        for target, hold in sorted(envelope.needs_human.items()):
            if hold.active(now):
                checks[f"needs_human:{target}"] = hold.reason
        return checks

    async def statistics(
        self, *, limit: int = STATS_LIMIT, before: float | None = None
    ) -> dict[str, Any]:
        store = self._parts.store
        now = self._clock()
        iterations, more = await self._orch.recent_records(limit=limit, before=before)
        next_before = iterations[-1].get("started_at") if more and iterations else None
        return {
            "guards": self._orch.guard_statistics(self._clock()),
            "orchestrator": self._orch.get_statistics(),
            "iterations": iterations,
            "iterations_page": {
                "limit": limit,
                "before": before,
                "next_before": next_before,
                "next": None
                if next_before is None
                else f"/stats?limit={limit}&before={next_before!r}",
            },
            "pending_approvals": await self.pending_approvals(),
            "knowledge": self._parts.knowledge.summary(),
            "posteriors": [
                row.as_dict() for row in self._orch.planner.posteriors(self._parts.knowledge.view())
            ],
            "insights": [
                {"cause": i.cause, "kind": i.kind, "message": i.message, "confidence": i.confidence}
                for i in self._parts.knowledge.generate_insights()
            ],
            "guard_decisions": await store.recent_guard_decisions(20),
            "control": await store.recent_control(20),
            "alerts": {"firing": len(self._parts.inbox.firing())},
            "ha": self._parts.leadership.as_dict(),
            "autonomy": self._orch.pipeline.autonomy.as_dict()
            if self._orch.pipeline.autonomy is not None
            else None,
            "predictions": self._orch.pipeline.predictor.summary(),
            "changes": None if self._parts.changes is None else self._parts.changes.as_dict(now),
            "maintenance": active_windows(self._parts.settings.maintenance, now),
        }

    async def pending_approvals(self) -> list[dict[str, Any]]:
        return [
            {
                "policy_id": p.id,
                "cause": p.cause.key,
                "actions": [a.action_type for a in p.actions],
                "score": round(p.score.score, 3),
                "created_at": p.created_at,
                "expires_at": p.created_at + self._parts.settings.planner.approval_ttl_s,
                "rationale": p.rationale,
            }
            for p in self._orch.planner.pending_approvals()
        ]

    async def approve(self, policy_id: str, *, caller: str) -> dict[str, Any] | None:
        policy = await self._orch.approve(policy_id, now=self._clock())
        if policy is None:
            return None
        log.info("policy_approved", policy_id=policy_id, caller=caller)
        self._orch.trigger("approval")
        return {"policy_id": policy_id, "status": "approved"}

    async def reject(self, policy_id: str, *, caller: str) -> dict[str, Any] | None:
        policy = await self._orch.reject(policy_id, now=self._clock())
        if policy is None:
            return None
        log.info("policy_rejected", policy_id=policy_id, caller=caller)
        return {"policy_id": policy_id, "status": "rejected"}

    async def freeze(self, reason: str, duration_s: float | None, *, caller: str) -> dict[str, Any]:
        now = self._clock()
        until = None if duration_s is None else now + duration_s
        freeze = Freeze(reason=reason, since=now, until=until, source=f"operator {caller}")
        persisted = await self._set_freeze(freeze)
        log.warning("frozen", reason=reason, until=until, caller=caller, persisted=persisted)
        return {
            "frozen": True,
            "reason": reason,
            "since": now,
            "until": until,
            "persisted": persisted,
        }

    async def unfreeze(self, *, caller: str) -> dict[str, Any]:
        if self._parts.settings.guards.frozen:
            # The configuration's kill switch is lifted where it was set, not over HTTP.
            config = self._orch.envelope.config_freeze(self._parts.settings.guards)
            persisted = await self._set_freeze(config)
            log.warning("unfreeze_refused", caller=caller, reason="guards.frozen is set")
            return {
                "frozen": True,
                "reason": "guards.frozen is set in the configuration: change it and reload",
                "persisted": persisted,
            }
        persisted = await self._set_freeze(None)
        log.warning("unfrozen", caller=caller, persisted=persisted)
        return {"frozen": False, "persisted": persisted}

    async def _set_freeze(self, freeze: Freeze | None) -> bool:
        return await self._orch.envelope.set_freeze(freeze, now=self._clock())

    async def clear_hold(self, target: str, *, caller: str) -> dict[str, Any] | None:
        if not await self._orch.clear_hold(target, now=self._clock()):
            return None
        log.warning("needs_human_cleared", target=target, caller=caller)
        self._orch.trigger("hold cleared")
        return {"target": target, "cleared": True}

    async def set_autonomy(
        self, key: str, level: str | None, reason: str, *, caller: str
    ) -> dict[str, Any]:
        autonomy = self._orch.pipeline.autonomy
        action = key.rpartition("/")[2]
        if autonomy is None or action not in self._parts.settings.planner.actions:
            return {"error": f"no action {action!r} in planner.actions", "field": "key"}
        now = self._clock()
        change = autonomy.set_level(
            key, cast("AutonomyLevel | None", level), now=now, reason=f"{reason} (by {caller})"
        )
        await autonomy.save(now)
        self._orch.trigger("autonomy changed")  # the next record carries the change
        return {**change.as_dict(), "levels": autonomy.levels()}

    async def set_dry_run(self, enabled: bool, *, caller: str) -> dict[str, Any]:
        self._orch.envelope.dry_run = enabled
        log.warning("dry_run_changed", enabled=enabled, caller=caller)
        return {"dry_run": enabled}

    def not_leading(self) -> str | None:
        return self._parts.leadership.not_leading()

    async def record_control(self, *, route: str, body: dict[str, Any], caller: str) -> None:
        # Best effort: a full disk must not stop an operator's freeze from taking effect.
        try:
            await self._parts.store.record_control(
                at=self._clock(), route=route, body=body, caller=caller
            )
        except StoreError as exc:
            log.error("control_record_failed", route=route, caller=caller, error=str(exc))


async def restore_freeze(parts: Components, now: float) -> None:
    """An operator's or a panic's freeze (the kill switch above all) survives a restart."""
    await parts.orchestrator.envelope.restore_freeze(now)


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event,
    reload: asyncio.Event | None = None,
    reloader: Callable[[], Settings] | None = None,
    fault: str | None = None,
    registry: CollectorRegistry | None = None,
    on_ready: Callable[[Components], None] | None = None,
    configure_logging: bool = True,
) -> int:
    """Run the daemon until `stop` is set. Returns the process exit status.

    `on_ready` is called once the server listens (`parts.port`) and the loop runs: the seam
    tests and benchmarks use to observe a real daemon in-process.
    """
    if configure_logging:
        logs.configure(level=settings.logging.level, fmt=settings.logging.format)
    logs.route_loop_errors(asyncio.get_running_loop())
    server = settings.server
    webhook_token = read_secret(
        server.webhook_token, server.webhook_token_file, file_key="server.webhook_token_file"
    )
    admin_token = read_secret(
        server.admin_token, server.admin_token_file, file_key="server.admin_token_file"
    )
    viewer_token = read_secret(
        server.viewer_token, server.viewer_token_file, file_key="server.viewer_token_file"
    )
    max_connections = fit_file_limit(settings) if settings.server.enabled else 0
    async with build(settings, registry=registry, fault=fault) as parts:
        daemon = Daemon(parts)
        await restore_freeze(parts, time.time())
        await reconcile(parts)
        await prune(parts)
        runner: web.AppRunner | None = None
        guard: ConnectionGuard | None = None
        if settings.server.enabled:
            guard = ConnectionGuard(
                max_connections=max_connections,
                header_timeout_s=settings.server.header_timeout_s,
                keepalive_timeout_s=settings.server.keepalive_timeout_s,
                metrics=parts.metrics,
            )
            app = build_app(
                control=daemon,
                router=parts.router,
                metrics=parts.metrics,
                config=settings.server,
                webhook_token=webhook_token,
                admin_token=admin_token,
                guard=guard,
                console=ConsoleData(parts, clock=time.time),
                viewer_token=viewer_token,
                changes=parts.changes,
            )
            runner = guard.runner(app)
            await runner.setup()
        try:
            roots: dict[str, Coroutine[Any, Any, None]] = {}
            if runner is not None and guard is not None:
                site = await _listen(runner, settings, guard)
                parts.port = int(runner.addresses[0][1])
                log.info("serving", addresses=[str(a) for a in runner.addresses])
                roots["http-server"] = site.serve()
            loop_task = parts.orchestrator.start()
            if parts.leadership.shared:
                orchestrator = parts.orchestrator
                roots["lease"] = parts.leadership.run(
                    on_elected=lambda: orchestrator.trigger("leader elected")
                )
            roots |= {
                "watchdog": _watchdog(parts),
                "pruner": _pruner(parts),
                "reloader": _reloader(parts, reload, reloader, configure_logging),
            }
            sd_notify("READY=1")
            if on_ready is not None:
                on_ready(parts)
            healthy = await _supervise(stop=stop, loop_task=loop_task, roots=roots)
        finally:
            sd_notify("STOPPING=1")
            await _shutdown(parts, runner)
    # A loop that died is a failure: systemd's Restart=on-failure must bring it back.
    return 0 if healthy else 1


def file_reserve(settings: Settings) -> int:
    """Descriptors the daemon needs besides its server connections."""
    pools = 0
    if settings.charter.mode is not CharterMode.MOCK:
        pools = settings.prometheus.max_connections + CHARTER_POOL
    return SERVER_RESERVE + pools


def fit_file_limit(settings: Settings) -> int:
    """The connection cap that fits RLIMIT_NOFILE: the soft limit is raised (up to the hard
    one) when that is enough, else the cap is lowered with a warning."""
    configured = settings.server.max_connections
    reserve = file_reserve(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        plan = plan_file_limit(configured, soft=soft, hard=hard, reserve=reserve)
        if plan.soft_limit != soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft_limit, hard))
            except (ValueError, OSError):
                plan = plan_file_limit(configured, soft=soft, hard=soft, reserve=reserve)
            else:
                log.info("file_limit_raised", soft=plan.soft_limit, was=soft, hard=hard)
    except ValueError as exc:
        raise ConfigError(f"server.max_connections: {exc}") from exc
    if plan.lowered:
        log.warning(
            "connection_cap_lowered",
            configured=configured,
            max_connections=plan.max_connections,
            file_limit=plan.soft_limit,
            reserved=reserve,
            hint=f"raise the file limit (LimitNOFILE) to {plan.needed} for the configured cap",
        )
    return plan.max_connections


async def _listen(runner: web.AppRunner, settings: Settings, guard: ConnectionGuard) -> GuardedSite:
    host, port = settings.server.host, settings.server.port
    site = GuardedSite(runner, host, port, guard=guard)
    try:
        await site.start()
    except OSError as exc:
        raise ConfigError(
            f"server.host/server.port: cannot listen on {host}:{port}:"
            f" {os.strerror(exc.errno) if exc.errno else exc}"
        ) from exc
    return site


PRUNE_EVERY_S = 3600.0


async def prune(parts: Components, now: float | None = None) -> None:
    """Bounded disk use: old journal rows rotate out (learned statistics never do).

    Age and row count, hourly; the byte budget (knowledge.max_bytes) is the store's own,
    checked after every write.
    """
    if parts.leadership.shared and not parts.leadership.leading():
        return  # one pruner for a shared store: the leader
    config = parts.settings.knowledge
    try:
        # The store logs and counts what it pruned (store_pruned, reason=retention).
        await parts.store.prune(
            now=time.time() if now is None else now,
            retention_days=config.retention_days,
            max_rows=config.max_rows,
        )
    except StoreError as exc:
        log.error("prune_failed", error=str(exc))


async def _supervise(
    *,
    stop: asyncio.Event,
    loop_task: asyncio.Task[None],
    roots: dict[str, Coroutine[Any, Any, None]],
) -> bool:
    """Run the root tasks (the HTTP server, the watchdog, the pruner, the reloader) beside
    the loop until `stop`. A root task or the loop that ends by itself is a failure: it is
    logged, the others are cancelled and False is returned (the daemon exits 1 for
    systemd's Restart=on-failure). True on a requested stop; the loop itself is then
    stopped by the caller, gracefully and bounded."""
    tasks = {asyncio.create_task(coro, name=f"mapek-{name}"): name for name, coro in roots.items()}
    tasks[loop_task] = "loop"
    stopping = asyncio.create_task(stop.wait(), name="mapek-stop")
    try:
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [stopping, *tasks]:
            if task is not loop_task and not task.done():
                task.cancel()
        await asyncio.gather(
            stopping, *(t for t in tasks if t is not loop_task), return_exceptions=True
        )
    failed = [(name, task) for task, name in tasks.items() if task in done]
    for name, task in failed:
        error = None if task.cancelled() else task.exception()
        log.error("root_task_ended", task=name, error=repr(error))
    return not failed


async def _watchdog(parts: Components) -> None:
    """Feed systemd's watchdog while iterations keep starting (a stuck loop is restarted)."""
    interval = _watchdog_interval()
    last_seen = parts.orchestrator.state.iteration
    while True:
        await asyncio.sleep(interval)
        current = parts.orchestrator.state.iteration
        limit = parts.settings.orchestrator.iteration_timeout_s + interval
        if current != last_seen or parts.orchestrator.busy_for() < limit:
            sd_notify("WATCHDOG=1")
        last_seen = current


async def _pruner(parts: Components) -> None:
    """Old journal rows rotate out every PRUNE_EVERY_S (at start too, before this runs)."""
    while True:
        await asyncio.sleep(PRUNE_EVERY_S)
        await prune(parts)


async def _reloader(
    parts: Components,
    reload: asyncio.Event | None,
    reloader: Callable[[], Settings] | None,
    configure_logging: bool,
) -> None:
    """SIGHUP: apply the reloaded configuration (each signal once)."""
    if reload is None:
        await asyncio.Event().wait()  # nothing to reload: idle until cancelled
        return
    while True:
        await reload.wait()
        reload.clear()
        reload_config(parts, reloader, configure_logging=configure_logging)


def _watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    if usec and usec.isdigit():
        return max(0.5, int(usec) / 1e6 / 2)
    return 5.0


def reload_config(
    parts: Components, reloader: Callable[[], Settings] | None, *, configure_logging: bool = True
) -> list[str]:
    """SIGHUP: apply what can change at run time; returns what waits for a restart.

    An invalid configuration changes nothing. Otherwise every section applies (the loop's
    parts between two iterations, logging at once) except config.RESTART_REQUIRED, which
    keeps its running values and is named in the log until the daemon restarts.
    """
    if reloader is None:
        return []
    try:
        new = reloader()
    except MapekError as exc:
        log.error("config_reload_failed", error=str(exc), kept="the running configuration")
        return []
    old = parts.settings
    effective, restart = reload_plan(old, new)
    if configure_logging and effective.logging != old.logging:
        logs.configure(level=effective.logging.level, fmt=effective.logging.format)
    parts.orchestrator.reconfigure(effective)
    parts.settings = effective
    applied = [
        name for name in type(old).model_fields if getattr(effective, name) != getattr(old, name)
    ]
    if restart:
        log.warning("config_reload_partial", restart_required_for=restart)
    log.info("config_reloaded", applied=applied, restart_required_for=restart)
    return restart


async def _shutdown(parts: Components, runner: web.AppRunner | None) -> None:
    timeout = parts.settings.orchestrator.shutdown_timeout_s
    try:
        async with asyncio.timeout(timeout):
            await parts.orchestrator.stop()
    except TimeoutError:
        log.error("shutdown_timeout", timeout_s=timeout)
        await parts.orchestrator.cancel()
    await parts.leadership.release()  # replicas: the next leader need not wait out the TTL
    if runner is not None:
        await runner.cleanup()
    log.info("stopped")


async def run_once(
    settings: Settings,
    *,
    fault: str | None = None,
    sources: Sources | None = None,
    configure_logging: bool = True,
) -> dict[str, Any]:
    """One iteration, for `mape-k once`: returns the JSON summary."""
    if configure_logging:
        logs.configure(level=settings.logging.level, fmt=settings.logging.format)
    with tempfile.TemporaryDirectory(prefix="mape-k-once-") as scratch:
        if settings.charter.mode is CharterMode.MOCK and "knowledge.path" not in (sources or {}):
            # A mock run must not leave a knowledge file in the working directory.
            settings = settings.model_copy(
                update={
                    "knowledge": settings.knowledge.model_copy(
                        update={"path": Path(scratch) / "knowledge.sqlite3"}
                    )
                }
            )
        # The mock world stands still during the one pass: every reading sees one instant.
        started = time.time()
        mock = settings.charter.mode is CharterMode.MOCK
        clock: Callable[[], float] = (lambda: started) if mock else time.time
        async with build(settings, fault=fault, clock=clock) as parts:
            await restore_freeze(parts, clock())
            await reconcile(parts, clock())
            record = await parts.orchestrator.run_once()
    executions = [record["execution"]] if record.get("execution") else []
    held = sorted(
        {d["guard"] for d in record.get("guard_decisions", []) if d["verdict"] != "allow"}
    )
    return {
        "result": record["result"],
        "decision": record["choice"]["why"],
        "held_by": held,
        "policy_executions": executions,
        "completed": sum(e["status"] == ExecutionStatus.COMPLETED.value for e in executions),
        "iteration": record,
    }
