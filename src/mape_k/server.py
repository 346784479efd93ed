"""The daemon's HTTP face (aiohttp): Alertmanager webhook, health, stats, metrics, control API.

The API is described by src/mape_k/openapi/daemon-api.yaml, served at GET /openapi.json.

Handlers validate and hand over; they never run an iteration (trigger() returns at once) and
never answer 5xx for bad input. The loop's state is reached only through DaemonControl.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from mape_k import openapi
from mape_k.config import MAX_FREEZE_S, POLICY_ID_PATTERN, ServerConfig, is_loopback
from mape_k.connections import ConnectionGuard
from mape_k.console.data import ConsoleData
from mape_k.console.views import Console
from mape_k.console.views import add_routes as add_console_routes
from mape_k.integrations.alertmanager import (
    WEBHOOK_VERSION,
    AlertMessageRouter,
    AlertStatus,
    WebhookPayload,
)
from mape_k.loop.changes import (
    TARGET_PATTERN,
    ChangeLog,
    ChangeRefused,
    from_alertmanager,
    from_request,
)
from mape_k.metrics import Metrics

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/api/v1/alerts"
REJECTION_REASONS = (
    "unauthorized",
    "not_json",
    "content_type",
    "version",
    "invalid",
    "too_large",
    "timeout",
)
RETRY_AFTER_S = "5"  # seconds, on a 503 of the webhook (Alertmanager retries with backoff)
_REJECTION_HEADERS = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": RETRY_AFTER_S}}
_READ_CHUNK = 64 * 1024
STATS_LIMIT = 10  # decision records on one page of /stats by default
STATS_MAX_LIMIT = 100


class DaemonControl(Protocol):
    """What the HTTP face needs from the running daemon (the lead's orchestrator/app).

    `trigger` is synchronous and returns at once; everything else is a coroutine. `caller`
    is the client's address. Methods may raise only on real bugs (the server answers 500).
    """

    def trigger(self, reason: str) -> None:
        """Wake the loop for an iteration soon (debounced by orchestrator.trigger_debounce_s)."""

    async def health(self) -> tuple[bool, str]:
        """(alive, reason): loop task alive and last iteration started within 3 intervals."""

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, {component: "ok" or the problem}), e.g. prometheus, knowledge, charter."""

    async def statistics(self, *, limit: int, before: float | None) -> dict[str, Any]:
        """The /stats document (JSON-serialisable): at most `limit` decision records,
        newest first, only those started before `before` when given."""

    async def pending_approvals(self) -> list[dict[str, Any]]:
        """Policies waiting for an operator, JSON-serialisable."""

    async def approve(self, policy_id: str, *, caller: str) -> dict[str, Any] | None:
        """Approve a pending policy; None when no such pending policy (404)."""

    async def reject(self, policy_id: str, *, caller: str) -> dict[str, Any] | None:
        """Reject a pending policy; None when no such pending policy (404)."""

    async def freeze(self, reason: str, duration_s: float | None, *, caller: str) -> dict[str, Any]:
        """Stop all mutating actions; duration_s None = until unfreeze (the kill switch)."""

    async def unfreeze(self, *, caller: str) -> dict[str, Any]:
        """Lift a freeze (a no-op when none holds)."""

    async def set_dry_run(self, enabled: bool, *, caller: str) -> dict[str, Any]:
        """Turn dry-run mode on or off."""

    async def clear_hold(self, target: str, *, caller: str) -> dict[str, Any] | None:
        """Clear a target's "needs a human" hold; None when none holds."""

    async def set_autonomy(
        self, key: str, level: str | None, reason: str, *, caller: str
    ) -> dict[str, Any]:
        """Set an action's (or cause/action's) level of autonomy; level None resets it to
        the configured one. A key naming no configured action: {"error", "field"} (422)."""

    async def record_control(self, *, route: str, body: dict[str, Any], caller: str) -> None:
        """Journal an authenticated control call (time, route, body, caller) before it acts."""

    def not_leading(self) -> str | None:
        """Replicas: why this one takes no call that changes state (the leader's state is
        the shared one); None when it leads or runs alone."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FreezeRequest(_Body):
    reason: str = Field(min_length=1, max_length=1000)
    # At most a year: longer is a typo (or an attack on the readable "until"); null is forever.
    duration_s: float | None = Field(None, gt=0, le=MAX_FREEZE_S, allow_inf_nan=False)


class DryRunRequest(_Body):
    enabled: StrictBool


class AutonomyRequest(_Body):
    key: str = Field(pattern=r"^([a-z][a-z0-9_]{0,63}/)?[a-z][a-z0-9_]{0,63}$")
    level: Literal["shadow", "approve", "auto"] | None  # None: back to the configured level
    reason: str = Field(min_length=1, max_length=1000)


class _Rejected(Exception):  # internal control flow, never leaves this module
    def __init__(self, status: int, reason: str, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.reason = reason
        self.body: dict[str, Any] = {"error": error, **extra}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        body, status=status, headers=headers, dumps=lambda obj: json.dumps(obj, default=str)
    )


def warn_if_open(config: ServerConfig, webhook_token: str | None) -> bool:
    """Log a warning at start when the webhook takes alerts without a token, on any address.

    Off loopback this only happens with `server.allow_open_webhook` (the config refuses it
    otherwise).
    """
    if webhook_token is not None:
        return False
    log.warning(
        "webhook_unauthenticated",
        host=config.host,
        port=config.port,
        reachable_from="this machine only" if is_loopback(config.host) else "the network",
        hint="set server.webhook_token or server.webhook_token_file",
    )
    return True


def _bearer_ok(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, provided = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(
        provided.strip().encode("utf-8", "replace"), token.encode("utf-8", "replace")
    )


def _is_json(request: web.Request) -> bool:
    return request.content_type.lower() == "application/json"


def _too_large(limit: int) -> _Rejected:
    return _Rejected(
        413, "too_large", f"body larger than {limit} bytes", limit_bytes=limit, field="body"
    )


async def _read_bounded(request: web.Request, limit: int, timeout_s: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []

    async def read() -> bytes:
        total = 0
        while chunk := await request.content.read(_READ_CHUNK):
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    if request.content.is_eof():  # all of it came with the headers: nothing to wait for
        return await read()
    try:
        async with asyncio.timeout(timeout_s):
            return await read()
    except TimeoutError as exc:
        # A 408 closes the connection (connections.ConnectionGuard.middleware).
        raise _Rejected(
            408,
            "timeout",
            f"body not received within server.body_timeout_s ({timeout_s:g} s)",
            field="body",
            received_bytes=sum(len(chunk) for chunk in chunks),
        ) from exc


def _not_json(problem: str) -> _Rejected:
    return _Rejected(400, "not_json", f"body is not UTF-8 JSON: {problem}", field="body")


def _loads(raw: bytes) -> Any:
    """The JSON document of a body, which must be UTF-8 (RFC 8259); 400 naming the problem."""
    # json.loads(bytes) would guess UTF-16 or UTF-32: decode strictly instead. JSON text
    # never holds a raw NUL, and UTF-16 or UTF-32 text of JSON always does.
    if 0 in raw:
        raise _not_json(f"NUL byte at offset {raw.index(0)} (UTF-16 or UTF-32?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_json(f"byte {raw[exc.start]:#04x} at offset {exc.start} is not UTF-8") from exc
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise _not_json(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:
        raise _not_json(str(exc)) from exc
    except RecursionError as exc:
        raise _not_json("nested too deeply") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _stats_page(query: Mapping[str, str]) -> tuple[int, float | None]:
    """`?limit=N&before=T` of /stats: 1 <= N <= STATS_MAX_LIMIT, T a finite Unix time."""
    raw_limit = query.get("limit")
    limit = STATS_LIMIT
    if raw_limit is not None:
        digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4
        if not digits or not 1 <= int(raw_limit) <= STATS_MAX_LIMIT:
            raise _Rejected(
                400,
                "invalid",
                f"limit must be an integer from 1 to {STATS_MAX_LIMIT}",
                field="limit",
            )
        limit = int(raw_limit)
    raw_before = query.get("before")
    if raw_before is None:
        return limit, None
    try:
        before = float(raw_before)
    except ValueError:
        before = math.nan
    if not math.isfinite(before):
        raise _Rejected(
            400,
            "invalid",
            "before must be a Unix time in seconds (iterations_page.next_before)",
            field="before",
        )
    return limit, before


def _first_error(exc: ValidationError) -> tuple[str, str]:
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        return field or "body", error["msg"]
    return "body", "invalid"


class _Server:
    def __init__(
        self,
        *,
        control: DaemonControl,
        router: AlertMessageRouter,
        metrics: Metrics,
        config: ServerConfig,
        webhook_token: str | None,
        admin_token: str | None,
        viewer_token: str | None = None,
        changes: ChangeLog | None = None,
    ) -> None:
        self.control = control
        self.changes = changes
        self.viewer_token = viewer_token
        self.router = router
        self.metrics = metrics
        self.config = config
        self.webhook_token = webhook_token
        self.admin_token = admin_token
        # The webhook is the hot path: a bound logger and the labelled counters are built
        # once here, not looked up per delivery.
        self._log = log.bind()
        self._received = {s: metrics.alerts_received.labels(status=s.value) for s in AlertStatus}

    # --- webhook -----------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        try:
            payload = await self._payload(request)
        except _Rejected as rejected:
            self.metrics.webhook_rejections.labels(reason=rejected.reason).inc()
            # A 503 is the daemon's capacity, not the sender's mistake: louder.
            (log.warning if rejected.status == 503 else log.info)(
                "webhook_rejected",
                reason=rejected.reason,
                status=rejected.status,
                error=rejected.body["error"],
                field=rejected.body.get("field"),
                peer=request.remote,
            )
            return _json(rejected.body, rejected.status, _REJECTION_HEADERS.get(rejected.status))
        for alert in payload.alerts:
            self._received[alert.status].inc()
        result = await self.router.deliver(payload.alerts)
        all_repeats = bool(payload.alerts) and result.duplicates == len(payload.alerts)
        if payload.truncated_alerts and not all_repeats:
            self.metrics.alerts_truncated.inc(payload.truncated_alerts)
            log.warning(
                "alerts_truncated", truncated=payload.truncated_alerts, group_key=payload.group_key
            )
        if result.new_firing:
            self._trigger()
        summary = {
            "received": len(payload.alerts),
            "new_firing": result.new_firing,
            "resolved": result.resolved,
            "duplicates": result.duplicates,
            "truncated": payload.truncated_alerts,
        }
        # Re-deliveries are Alertmanager's normal retries: logged at debug, counted in metrics.
        emit = self._log.debug if all_repeats else self._log.info
        emit("webhook_received", group_key=payload.group_key, **summary)
        if result.full:
            self.metrics.inbox_full.inc()
            return _json(
                {"error": "alert inbox full", "rejected": result.rejected, **summary},
                503,
                {"Retry-After": RETRY_AFTER_S},
            )
        # Integers only: formatted directly, the delivery's hottest line after validation.
        return web.Response(
            body=(
                '{{"status": "ok", "received": {received}, "new_firing": {new_firing},'
                ' "resolved": {resolved}, "duplicates": {duplicates}, "truncated": {truncated}}}'
            )
            .format(**summary)
            .encode(),
            content_type="application/json",
        )

    def _trigger(self) -> None:
        try:
            self.control.trigger("alert")
        except Exception:
            # The alerts are in the inbox: the next scheduled iteration still sees them.
            log.exception("trigger_failed")

    async def _payload(self, request: web.Request) -> WebhookPayload:
        if self.webhook_token is not None and not _bearer_ok(request, self.webhook_token):
            raise _Rejected(401, "unauthorized", "missing or wrong bearer token")
        if not _is_json(request):
            raise _Rejected(
                415, "content_type", "Content-Type must be application/json", field="Content-Type"
            )
        limit = self.config.max_body_bytes
        try:
            raw = await _read_bounded(request, limit, self.config.body_timeout_s)
        except _Rejected as exc:
            if exc.status != 413:
                raise  # a body that did not arrive in time stays a 408
            # A delivery that only exceeds what the daemon takes is not the sender's error,
            # and Alertmanager retries a 5xx (with backoff) but never a 4xx.
            raise _Rejected(
                503,
                "too_large",
                f"body larger than {limit} bytes (server.max_body_bytes): lower max_alerts in"
                " Alertmanager's webhook_config or raise server.max_body_bytes",
                limit_bytes=limit,
                field="body",
            ) from exc
        try:
            # The common case parses once; only a refused body is parsed again to say why.
            return WebhookPayload.model_validate_json(raw)
        except ValidationError as exc:
            document = _loads(raw)
            if not isinstance(document, dict):
                raise _Rejected(422, "invalid", "body must be a JSON object", field="body") from exc
            version = document.get("version")
            if version != WEBHOOK_VERSION:
                raise _Rejected(
                    422,
                    "version",
                    f"unsupported webhook payload version {version!r};"
                    f" expected {WEBHOOK_VERSION!r}",
                    field="version",
                ) from exc
            field, message = _first_error(exc)
            raise _Rejected(422, "invalid", message, field=field) from exc

    # --- health, stats -----------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        alive, reason = await self.control.health()
        if alive:
            return _json({"status": "ok", "reason": reason})
        return _json({"status": "unhealthy", "reason": reason}, 503)

    async def readyz(self, _request: web.Request) -> web.Response:
        ready, checks = await self.control.readiness()
        if ready:
            return _json({"status": "ready", "checks": checks})
        problems = {name: state for name, state in checks.items() if state != "ok"}
        return _json({"status": "not_ready", "checks": checks, "problems": problems}, 503)

    async def stats(self, request: web.Request) -> web.Response:
        # With a viewer token the reads the console guards are guarded here too.
        readers = [t for t in (self.viewer_token, self.admin_token) if t is not None]
        if self.viewer_token is not None and not any(_bearer_ok(request, t) for t in readers):
            return _json(
                {"error": "missing or wrong bearer token (server.viewer_token is set)"},
                401,
                {"WWW-Authenticate": "Bearer"},
            )
        limit, before = _stats_page(request.query)
        return _json(await self.control.statistics(limit=limit, before=before))

    # --- operator control --------------------------------------------------------------

    async def _admit(self, request: web.Request, body: dict[str, Any]) -> str:
        caller = request.remote or "unknown"
        follower = self.control.not_leading() if request.method != "GET" else None
        if follower is not None:
            log.info("control_refused", route=f"{request.method} {request.path}", why=follower)
            raise _Rejected(409, "follower", f"{follower}; send it to the leader", field=None)
        await self.control.record_control(
            route=f"{request.method} {request.path}", body=body, caller=caller
        )
        log.info("control_call", route=f"{request.method} {request.path}", caller=caller)
        return caller

    async def _json_body(self, request: web.Request, *, invalid: int = 422) -> dict[str, Any]:
        """The request's JSON object; `invalid` is the status of a body that is not one."""
        if not _is_json(request):
            raise _Rejected(
                415, "content_type", "Content-Type must be application/json", field="Content-Type"
            )
        raw = await _read_bounded(request, self.config.max_body_bytes, self.config.body_timeout_s)
        document = _loads(raw)
        if not isinstance(document, dict):
            raise _Rejected(invalid, "invalid", "body must be a JSON object", field="body")
        return document

    async def pending(self, request: web.Request) -> web.Response:
        await self._admit(request, {})
        return _json({"pending": await self.control.pending_approvals()})

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, self.control.approve)

    async def reject(self, request: web.Request) -> web.Response:
        return await self._decide(request, self.control.reject)

    async def _decide(
        self,
        request: web.Request,
        decide: Callable[..., Awaitable[dict[str, Any] | None]],
    ) -> web.Response:
        policy_id = request.match_info["id"]
        caller = await self._admit(request, {"policy_id": policy_id})
        result = await decide(policy_id, caller=caller)
        if result is None:
            return _json({"error": "no pending policy with this id", "policy_id": policy_id}, 404)
        return _json(result)

    async def freeze(self, request: web.Request) -> web.Response:
        body = FreezeRequest.model_validate(await self._json_body(request))
        caller = await self._admit(request, body.model_dump())
        return _json(await self.control.freeze(body.reason, body.duration_s, caller=caller))

    async def unfreeze(self, request: web.Request) -> web.Response:
        caller = await self._admit(request, {})
        return _json(await self.control.unfreeze(caller=caller))

    async def clear_hold(self, request: web.Request) -> web.Response:
        target = request.match_info["target"]
        caller = await self._admit(request, {"target": target})
        result = await self.control.clear_hold(target, caller=caller)
        if result is None:
            return _json({"error": "no hold on this target", "target": target}, 404)
        return _json(result)

    async def autonomy(self, request: web.Request) -> web.Response:
        body = AutonomyRequest.model_validate(await self._json_body(request))
        caller = await self._admit(request, body.model_dump())
        result = await self.control.set_autonomy(body.key, body.level, body.reason, caller=caller)
        return _json(result, 422 if "error" in result else 200)

    async def dry_run(self, request: web.Request) -> web.Response:
        body = DryRunRequest.model_validate(await self._json_body(request))
        caller = await self._admit(request, body.model_dump())
        return _json(await self.control.set_dry_run(body.enabled, caller=caller))

    # --- recorded changes (loop/changes.py) ---------------------------------------------

    async def post_changes(self, request: web.Request) -> web.Response:
        """A change as `{target, kind, ...}`, or an Alertmanager payload whose firing alerts
        are changes (a CI job's or a receiver's): validated, journaled, recorded."""
        changes = self.changes
        assert changes is not None  # the route exists only with a change log
        document = await self._json_body(request, invalid=400)
        webhook = "alerts" in document or "version" in document
        now = changes.now()
        try:
            if webhook:
                parsed = from_alertmanager(
                    document, now=now, config=changes.config, actions=changes.actions
                )
                found, skipped = parsed.changes, parsed.skipped
            else:
                found = (
                    from_request(document, now=now, config=changes.config, actions=changes.actions),
                )
                skipped = ()
        except ChangeRefused as refused:
            log.info(
                "change_refused", field=refused.field, error=refused.message, peer=request.remote
            )
            return _json({"error": refused.message, "field": refused.field}, 400)
        await self._admit(request, {"changes": [c.as_dict() for c in found]})
        recorded = [c for c in found if await changes.record(c)]
        status = 201 if recorded else 200
        if not webhook:
            change = found[0]
            return _json({"change": change.as_dict(), "duplicate": not recorded}, status)
        new = {c.id for c in recorded}
        return _json(
            {
                "recorded": [c.as_dict() for c in recorded],
                "duplicates": [c.id for c in found if c.id not in new],
                "skipped": list(skipped),
            },
            status,
        )

    async def get_changes(self, request: web.Request) -> web.Response:
        """The newest recorded changes (`?target=`, `?limit=` up to STATS_MAX_LIMIT)."""
        changes = self.changes
        assert changes is not None
        target = request.query.get("target")
        if target is not None and not TARGET_PATTERN.fullmatch(target):
            raise _Rejected(400, "invalid", "not a target name", field="target")
        raw = request.query.get("limit", str(STATS_LIMIT))
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not (
            1 <= int(raw) <= STATS_MAX_LIMIT
        ):
            raise _Rejected(
                400,
                "invalid",
                f"limit must be an integer from 1 to {STATS_MAX_LIMIT}",
                field="limit",
            )
        now = changes.now()
        rows = changes.latest(int(raw), target=target)
        return _json(
            {
                "changes": [{**c.as_dict(), "age_s": round(now - c.at, 3)} for c in rows],
                "recent": changes.as_dict(now, limit=0)["recent"],
            }
        )

    # --- middlewares -------------------------------------------------------------------

    @web.middleware
    async def admin_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            self.admin_token is not None
            and request.path.startswith(_CONTROL_PREFIXES)
            and not _bearer_ok(request, self.admin_token)
        ):
            log.warning("control_unauthorized", path=request.path, peer=request.remote)
            return _json(
                {"error": "missing or wrong admin bearer token"},
                401,
                {"WWW-Authenticate": "Bearer"},
            )
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except _Rejected as rejected:
            return _json(rejected.body, rejected.status)
        except ValidationError as exc:
            field, message = _first_error(exc)
            return _json({"error": message, "field": field}, 422)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return _json({"error": exc.reason}, exc.status, headers)
        except Exception:
            log.exception("http_handler_failed", method=request.method, path=request.path)
            return _json({"error": "internal error"}, 500)
        return response


_CONTROL_PREFIXES = (
    "/api/v1/policies",
    "/api/v1/freeze",
    "/api/v1/dry-run",
    "/api/v1/holds",
    "/api/v1/changes",
    "/api/v1/autonomy",
)


def build_app(
    *,
    control: DaemonControl,
    router: AlertMessageRouter,
    metrics: Metrics,
    config: ServerConfig,
    webhook_token: str | None,
    admin_token: str | None,
    guard: ConnectionGuard | None = None,
    console: ConsoleData | None = None,
    viewer_token: str | None = None,
    changes: ChangeLog | None = None,
) -> web.Application:
    """The aiohttp application; the control routes exist only when an admin token is set.

    With `console` (and `server.console.enabled`) the operator console is served at /ui; it
    acts through `control` like the control API does.

    With a `guard` (the daemon's listening socket) its middleware is outermost: it tells the
    guard when a connection is busy with a request.

    With `changes` (and the control API) `POST /api/v1/changes` records deploys and config
    changes and `GET /api/v1/changes` lists them.
    """
    server = _Server(
        control=control,
        router=router,
        metrics=metrics,
        config=config,
        webhook_token=webhook_token,
        admin_token=admin_token,
        viewer_token=viewer_token,
        changes=changes,
    )
    warn_if_open(config, webhook_token)
    for reason in REJECTION_REASONS:
        metrics.webhook_rejections.labels(reason=reason)
    for status in AlertStatus:
        metrics.alerts_received.labels(status=status.value)
    # errors is outermost (inside the guard's, which only marks the connection busy) so even
    # the auth middleware cannot leak an exception; the auth middleware exists only with the
    # control API (no per-request cost otherwise).
    middlewares = [server.errors] + ([server.admin_auth] if admin_token is not None else [])
    ui = None
    if console is not None and config.console.enabled:
        ui = Console(
            control=control,
            data=console,
            config=config,
            admin_token=admin_token,
            viewer_token=viewer_token,
        )
        middlewares.append(ui.middleware)
    if guard is not None:
        middlewares.insert(0, guard.middleware)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    app.router.add_post(WEBHOOK_PATH, server.webhook)
    app.router.add_get("/healthz", server.healthz, allow_head=False)
    app.router.add_get("/readyz", server.readyz, allow_head=False)
    app.router.add_get("/stats", server.stats, allow_head=False)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry), allow_head=False)
    # Open like /healthz: the document describes the routes, not the daemon's state.
    openapi.add_routes(app.router, openapi.DAEMON_API, allow_head=False)
    if admin_token is not None:
        policy = f"/api/v1/policies/{{id:{POLICY_ID_PATTERN}}}"
        app.router.add_get("/api/v1/policies/pending", server.pending, allow_head=False)
        app.router.add_post(f"{policy}/approve", server.approve)
        app.router.add_post(f"{policy}/reject", server.reject)
        app.router.add_post("/api/v1/freeze", server.freeze)
        app.router.add_delete("/api/v1/freeze", server.unfreeze)
        app.router.add_post("/api/v1/dry-run", server.dry_run)
        app.router.add_delete("/api/v1/holds/{target}", server.clear_hold)
        app.router.add_post("/api/v1/autonomy", server.autonomy)
        if changes is not None:
            app.router.add_post("/api/v1/changes", server.post_changes)
            app.router.add_get("/api/v1/changes", server.get_changes, allow_head=False)
    else:
        log.info("control_api_disabled", reason="no server.admin_token")
    if ui is not None:
        add_console_routes(app, ui)
    return app


__all__ = [
    "DaemonControl",
    "DryRunRequest",
    "FreezeRequest",
    "build_app",
    "is_loopback",
    "warn_if_open",
]
