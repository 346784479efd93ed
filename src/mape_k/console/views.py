"""The console's routes: pages rendered on the server, a live stream, one-click control.

Every page is a Jinja2 template with autoescaping on: alert labels, targets and reasons
are untrusted and reach the page only as text. Responses carry a strict
Content-Security-Policy (scripts and styles from /ui/static only, nothing inline), so a
label that got through anyway could not run. Reads are open unless `server.viewer_token`
is set; acting needs an admin login (the admin token, once, becomes a session cookie)
and the session's CSRF token on the form. Each act is journaled with who and why
(`record_control`) before it takes effect, exactly as the control API's calls are.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import jinja2
import structlog
from aiohttp import web

from mape_k.config import MAX_FREEZE_S, POLICY_ID_PATTERN, ServerConfig, is_loopback
from mape_k.console.auth import COOKIE, LOGIN_COOKIE, Session, Sessions, token_role
from mape_k.console.charts import outcome_strip, signal_chart, sparkline
from mape_k.console.data import ConsoleData, safe
from mape_k.console.feed import DecisionFeed
from mape_k.errors import MapekError

if TYPE_CHECKING:  # server.py builds the console: a type-only import, no cycle at run time
    from mape_k.server import DaemonControl

log = structlog.get_logger(__name__)

PREFIX = "/ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
HEARTBEAT_S = 15.0
DECISIONS_SHOWN = 25
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 20
MAX_FREEZE_MIN = MAX_FREEZE_S / 60
MAX_TEXT = 1000  # characters kept of a reason or a why
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
_POLICY_ID = re.compile(f"^{POLICY_ID_PATTERN}$")
_TARGET = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")  # printable, bounded


def _when(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    try:
        stamp = datetime.fromtimestamp(float(value), tz=UTC)
    except (OverflowError, OSError, ValueError):
        return str(value)
    return stamp.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _environment() -> jinja2.Environment:
    templates = resources.files("mape_k.console") / "templates"
    loader = jinja2.DictLoader(
        {
            entry.name: entry.read_text(encoding="utf-8")
            for entry in templates.iterdir()
            if entry.name.endswith(".html")
        }
    )
    env = jinja2.Environment(
        loader=loader,
        autoescape=True,  # every template, whatever its name: labels are untrusted
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["segment"] = lambda v: quote(str(v), safe="")  # one URL path segment
    env.filters["num"] = _num
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    return env


class _Forbidden(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Console:
    """The /ui routes, bound to the running daemon."""

    def __init__(
        self,
        *,
        control: DaemonControl,
        data: ConsoleData,
        config: ServerConfig,
        admin_token: str | None,
        viewer_token: str | None,
    ) -> None:
        self.control = control
        self.data = data
        self.config = config
        self.admin_token = admin_token
        self.viewer_token = viewer_token
        self.clock = data.clock  # the daemon's one clock: session expiry on simulated time too
        settings = config.console
        self.sessions = Sessions(ttl_s=settings.session_ttl_s, max_sessions=settings.max_sessions)
        self.feed = DecisionFeed(max_streams=settings.max_streams)
        self.env = _environment()
        self._flashes: dict[str, str] = {}  # session id -> the last act's result, shown once
        static = resources.files("mape_k.console") / "static"
        self._static = {name: (static / name).read_bytes() for name in _STATIC}
        data.subscribe(self.feed.publish)

    # --- plumbing ------------------------------------------------------------------------

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), now=self.clock())

    def _reader(self, request: web.Request) -> Session | None:
        """The session of a read; raises a redirect to the login when reads need one."""
        session = self._session(request)
        if session is None and self.viewer_token is not None:
            raise web.HTTPSeeOther(f"{PREFIX}/login")
        return session

    def _page(
        self,
        request: web.Request,
        template: str,
        session: Session | None,
        status: int = 200,
        *,
        fragment: bool = False,
        **context: Any,
    ) -> web.Response:
        flash = None
        if session is not None and not fragment:  # a fragment (the live refresh) shows none
            flash = self._flashes.pop(session.id, None)
        html = self.env.get_template(template).render(
            session=session,
            can_act=self.admin_token is not None,
            logins=self.admin_token is not None or self.viewer_token is not None,
            flash=flash,
            path=request.path,
            **context,
        )
        return web.Response(
            text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS
        )

    async def _form(self, request: web.Request) -> Mapping[str, str]:
        """The form's fields: urlencoded UTF-8, at most MAX_FORM_BYTES however it is sent
        (read here, bounded, chunked or not), the first value of each name."""
        if request.content_type != "application/x-www-form-urlencoded":
            raise _Forbidden(415, "a console form is application/x-www-form-urlencoded")
        if (request.charset or "utf-8").lower() not in {"utf-8", "utf8"}:
            raise _Forbidden(415, "a console form is UTF-8")
        if (request.content_length or 0) > MAX_FORM_BYTES:
            raise _Forbidden(413, f"a console form is at most {MAX_FORM_BYTES} bytes")
        raw = await request.content.read(MAX_FORM_BYTES + 1)
        if len(raw) > MAX_FORM_BYTES:
            raise _Forbidden(413, f"a console form is at most {MAX_FORM_BYTES} bytes")
        try:
            pairs = parse_qsl(
                raw.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Forbidden(400, f"unreadable form: {exc}") from exc
        form: dict[str, str] = {}
        for name, value in pairs:
            form.setdefault(name, value)
        return form

    def _same_origin(self, request: web.Request) -> bool:
        """A form's Origin, when the browser sends one, is this console's (defence in
        depth beside the CSRF token and SameSite=Strict)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # no Origin (curl, some old browsers): the CSRF token decides
        proto = request.headers.get("X-Forwarded-Proto") or request.scheme
        return origin == f"{proto}://{request.host}"

    async def _admin(self, request: web.Request) -> tuple[Session, Mapping[str, str]]:
        """The admin session of a state-changing form, its CSRF token checked."""
        if self.admin_token is None:
            raise _Forbidden(404, "the console cannot act: no server.admin_token is set")
        session = self._session(request)
        if session is None:
            raise _Forbidden(401, "log in with the admin token first")
        if session.role != "admin":
            raise _Forbidden(403, "a viewer login cannot act; log in with the admin token")
        if not self._same_origin(request):
            raise _Forbidden(403, "cross-origin form refused")
        form = await self._form(request)
        if not session.csrf_ok(form.get("csrf")):
            raise _Forbidden(403, "missing or wrong CSRF token: reload the page and retry")
        return session, form

    def _secure(self, request: web.Request) -> bool:
        configured = self.config.console.secure_cookie
        if configured is not None:
            return configured
        if request.secure:
            return True
        proxied = request.remote is not None and is_loopback(request.remote)
        return proxied and request.headers.get("X-Forwarded-Proto") == "https"

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(PREFIX):
            response: web.StreamResponse = await handler(request)
            return response
        try:
            response = await handler(request)
        except _Forbidden as refused:
            status, message = refused.status, str(refused)
        except MapekError as exc:  # the store or a client could not answer: say so
            log.warning("console_read_failed", path=request.path, error=str(exc))
            status, message = 503, f"the daemon could not answer: {exc}"
        else:
            return response
        return self._page(request, "error.html", self._session(request), status, message=message)

    # --- login -----------------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        nonce = secrets.token_urlsafe(24)
        response = self._page(request, "login.html", self._session(request), nonce=nonce)
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=600,
            path=f"{PREFIX}/login",
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        nonce = request.cookies.get(LOGIN_COOKIE)
        if not nonce or form.get("nonce") != nonce:
            raise _Forbidden(403, "the login form expired: reload it and retry")
        role = token_role(form.get("token", ""), admin=self.admin_token, viewer=self.viewer_token)
        if role is None:
            log.warning("console_login_failed", peer=request.remote)
            return self._page(
                request,
                "login.html",
                None,
                status=401,
                nonce=nonce,
                message="wrong token",
            )
        session = self.sessions.create(role, now=self.clock())
        log.info("console_login", role=role, session=session.id[:8], peer=request.remote)
        response = web.HTTPSeeOther(PREFIX)
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(self.sessions.ttl_s),
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )
        response.del_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is not None:
            form = await self._form(request)
            if not session.csrf_ok(form.get("csrf")):
                raise _Forbidden(403, "missing or wrong CSRF token")
            self.sessions.end(session.id)
        response = web.HTTPSeeOther(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=PREFIX)
        raise response

    # --- pages -----------------------------------------------------------------------------

    async def now(self, request: web.Request) -> web.Response:
        session = self._reader(request)
        return self._page(request, "now.html", session, **await self._now(DECISIONS_SHOWN))

    async def panels(self, request: web.Request) -> web.Response:
        session = self._reader(request)
        return self._page(request, "panels.html", session, fragment=True, **await self._now(1))

    async def _now(self, limit: int) -> dict[str, Any]:
        stats = await self.control.statistics(limit=limit, before=None)
        alive, why = await self.control.health()
        records = [r for r in stats.get("iterations", []) if isinstance(r, Mapping)]
        guards = stats.get("guards", {})
        orchestrator = stats.get("orchestrator", {})
        now = self.clock()
        latest = next((r for r in records if "inputs" in r), None)
        states = []
        if not alive:
            states.append(("down", f"the loop is not running: {why}"))
        if guards.get("freeze"):
            states.append(("frozen", guards["freeze"].get("reason", "")))
        if guards.get("freeze_window"):
            states.append(("frozen", guards["freeze_window"].get("reason", "")))
        if orchestrator.get("dry_run") or guards.get("dry_run"):
            states.append(("dry-run", "actions are decided and journaled, not executed"))
        degraded = latest.get("inputs", {}).get("degraded") if latest else None
        if degraded:
            states.append(("degraded", f"inputs degraded: {degraded}"))
        startup = guards.get("startup", {})
        if startup.get("problem"):
            states.append(("held", f"start-up: {startup['problem']}"))
        if not states:
            states.append(("running", why))
        holds = _holds(guards, now)
        return {
            "states": states,
            "records": records,
            "causes": latest.get("causes", []) if latest else [],
            "inhibited": latest.get("inhibited", []) if latest else [],
            "holds": holds,
            "pending": stats.get("pending_approvals", []),
            "verifications": orchestrator.get("pending_verifications", []),
            "autonomy": stats.get("autonomy") or {},
            "predictions": (stats.get("predictions") or {}).get("rules", {}),
        }

    async def decision(self, request: web.Request) -> web.Response:
        session = self._reader(request)
        record_id = request.match_info["id"]
        record, problem = await safe(self.data.decision(record_id), None)
        if record is None:
            message = problem or f"no decision record {record_id!r} (pruned, or never made)"
            return self._page(request, "error.html", session, status=404, message=message)
        verified, problem = await safe(self.data.verification(record), None)
        return self._page(
            request,
            "decision.html",
            session,
            r=record,
            verified=verified,
            problem=problem,
            target=_chosen_target(record),
        )

    async def knowledge(self, request: web.Request) -> web.Response:
        session = self._reader(request)
        rows, problem = await safe(self.data.knowledge_rows(), [])
        for row in rows:
            title = f"{row['cause']} x {row['action_type']}"
            row["strip_svg"] = outcome_strip(row["strip"], title=f"{title}: last outcomes")
            row["ttr_svg"] = sparkline(row["ttr_series"], title=f"{title}: time to recover")
        return self._page(request, "knowledge.html", session, rows=rows, problem=problem)

    async def targets(self, request: web.Request) -> web.Response:
        session = self._reader(request)
        names, problem = await safe(self.data.targets(), [])
        return self._page(request, "targets.html", session, targets=names, problem=problem)

    async def target(self, request: web.Request) -> web.Response:
        session = self._reader(request)
        target = request.match_info["target"]
        if not _TARGET.match(target):
            raise _Forbidden(400, "a target name is 1-200 of A-Z a-z 0-9 . _ : / -")
        views, problem = await safe(self.data.target_actions(target), [])
        histories = await asyncio.gather(*(self.data.history(v) for v in views))
        charts = []
        for view, (points, error) in zip(views, histories, strict=True):
            title = f"{view.signal or view.execution.policy.cause.name} on {target}"
            charts.append(
                {
                    "view": view,
                    "error": error,
                    "svg": signal_chart(
                        points,
                        start=view.start,
                        end=view.end,
                        threshold=view.threshold,
                        marks=[view.mark],
                        title=title,
                    ),
                }
            )
        return self._page(
            request, "target.html", session, target=target, charts=charts, problem=problem
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound
        return web.Response(
            body=self._static[name],
            content_type=_STATIC[name],
            headers={
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "max-age=300",
            },
        )

    # --- live ------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        self._reader(request)
        queue = self.feed.open()
        if queue is None:
            return web.Response(
                status=503,
                text="too many live streams (server.console.max_streams)",
                headers={"Retry-After": "10"},
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                "X-Content-Type-Options": "nosniff",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 3000\n: connected\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    self._reader(request)  # a login that expired (or ended) ends its stream
                    await response.write(b": ping\n\n")
                    continue
                if self.feed.ended(item):
                    break
                data = json.dumps(item, default=str, allow_nan=False)
                await response.write(f"event: decision\ndata: {data}\n\n".encode())
        except (ConnectionResetError, web.HTTPSeeOther):
            pass  # the browser went away, or its session did: it reconnects and logs in
        finally:
            self.feed.release(queue)
        return response

    # --- acts ------------------------------------------------------------------------------

    async def _act(
        self,
        request: web.Request,
        name: str,
        parse: Callable[[Mapping[str, str]], dict[str, Any]],
        run: Callable[[dict[str, Any], str], Awaitable[str]],
    ) -> web.Response:
        """Check the session and its CSRF token, validate the form (`parse`: the fields the
        act takes, or a 422 naming one), journal them with who and why, then act."""
        session, form = await self._admin(request)
        fields = parse(form)
        fields["why"] = form.get("why", "").strip()[:MAX_TEXT]
        caller = f"{session.label} from {request.remote or 'unknown'}"
        follower = self.control.not_leading()
        if follower is not None:  # replicas: the leader's state is what an act changes
            log.info("console_act_refused", act=name, caller=caller, why=follower)
            self._flashes[session.id] = f"not done: {follower}; act on the leader's console"
        else:
            await self.control.record_control(route=f"console {name}", body=fields, caller=caller)
            log.info("console_act", act=name, caller=caller, why=fields["why"])
            self._flashes[session.id] = await run(fields, caller)
        while len(self._flashes) > self.sessions.max_sessions:
            self._flashes.pop(next(iter(self._flashes)))
        raise web.HTTPSeeOther(PREFIX)

    async def approve(self, request: web.Request) -> web.Response:
        return await self._answer(request, "approve", self.control.approve, "approved")

    async def reject(self, request: web.Request) -> web.Response:
        return await self._answer(request, "reject", self.control.reject, "rejected")

    async def _answer(
        self,
        request: web.Request,
        name: str,
        answer: Callable[..., Awaitable[dict[str, Any] | None]],
        done: str,
    ) -> web.Response:
        """An operator's answer to a pending policy (approve or reject)."""

        async def run(fields: dict[str, Any], caller: str) -> str:
            pid = fields["policy_id"]
            found = await answer(pid, caller=caller)
            return f"{done} {pid}" if found else f"no pending policy {pid} (expired or answered)"

        return await self._act(request, name, _policy_id, run)

    async def freeze(self, request: web.Request) -> web.Response:
        async def run(fields: dict[str, Any], caller: str) -> str:
            duration = fields["duration_s"]
            await self.control.freeze(fields["reason"], duration, caller=caller)
            return "frozen " + (f"for {duration / 60:g} min" if duration else "until unfrozen")

        return await self._act(request, "freeze", _freeze_fields, run)

    async def unfreeze(self, request: web.Request) -> web.Response:
        async def run(_fields: dict[str, Any], caller: str) -> str:
            result = await self.control.unfreeze(caller=caller)
            return str(result.get("reason") or "unfrozen") if result.get("frozen") else "unfrozen"

        return await self._act(request, "unfreeze", lambda _form: {}, run)

    async def dry_run(self, request: web.Request) -> web.Response:
        def parse(form: Mapping[str, str]) -> dict[str, Any]:
            if form.get("enabled") not in {"true", "false"}:
                raise _Forbidden(422, "enabled: true or false")
            return {"enabled": form["enabled"] == "true"}

        async def run(fields: dict[str, Any], caller: str) -> str:
            await self.control.set_dry_run(fields["enabled"], caller=caller)
            return "dry-run on" if fields["enabled"] else "dry-run off: actions run"

        return await self._act(request, "dry-run", parse, run)

    async def clear_hold(self, request: web.Request) -> web.Response:
        def parse(form: Mapping[str, str]) -> dict[str, Any]:
            target = form.get("target", "")
            if not _TARGET.match(target):
                raise _Forbidden(422, "target: 1-200 printable characters")
            return {"target": target}

        async def run(fields: dict[str, Any], caller: str) -> str:
            target = fields["target"]
            done = await self.control.clear_hold(target, caller=caller)
            return f"cleared the hold on {target}" if done else f"no hold on {target}"

        return await self._act(request, "clear-hold", parse, run)


def _policy_id(form: Mapping[str, str]) -> dict[str, Any]:
    policy_id = form.get("policy_id", "")
    if not _POLICY_ID.match(policy_id):
        raise _Forbidden(422, "policy_id: missing or not a policy id")
    return {"policy_id": policy_id}


def _freeze_fields(form: Mapping[str, str]) -> dict[str, Any]:
    reason = form.get("why", "").strip()[:MAX_TEXT]
    if not reason:
        raise _Forbidden(422, "why: a freeze needs a reason")
    minutes = form.get("minutes", "").strip()
    if not minutes:
        return {"reason": reason, "duration_s": None}
    try:
        value = float(minutes)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_FREEZE_MIN:
        raise _Forbidden(422, f"minutes: a number in (0, {MAX_FREEZE_MIN:g}], or empty")
    return {"reason": reason, "duration_s": value * 60}


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    """The mappings in a list read back from a record or /stats (anything else skipped)."""
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _chosen_target(record: Mapping[str, Any]) -> str | None:
    """The target of the policy a record chose (a candidate's cause is "name/target")."""
    choice = record.get("choice")
    chosen = choice.get("policy_id") if isinstance(choice, Mapping) else None
    for candidate in _mappings(record.get("candidates")):
        if chosen is not None and candidate.get("policy_id") == chosen:
            return str(candidate.get("cause", "")).split("/", 1)[-1] or None
    return None


def _hold(
    kind: str,
    target: Any,
    reason: Any,
    until: Any,
    *,
    since: Any = None,
    clearable: bool = False,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "target": target,
        "reason": reason,
        "until": until,
        "since": since,
        "clearable": clearable,
    }


def _holds(guards: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
    """Everything holding actions back, with its reason and expiry (None: until cleared)."""
    holds = [
        _hold(
            "needs a human",
            h.get("target"),
            h.get("reason"),
            h.get("until"),
            since=h.get("since"),
            clearable=True,
        )
        for h in _mappings(guards.get("needs_human"))
        if not isinstance(h.get("until"), int | float) or h["until"] > now
    ]
    holds += [
        _hold(
            "back-off (oscillation)",
            b.get("target"),
            b.get("reason") or "a knob flip-flopped",
            b.get("until"),
            since=b.get("since"),
        )
        for b in _mappings(guards.get("oscillating_targets"))
        if b.get("active")
    ]
    circuit = guards.get("charter_circuit")
    if isinstance(circuit, Mapping) and circuit.get("phase") == "open":
        reason = f"{circuit.get('failures')} failed calls, last: {circuit.get('last_error')}"
        holds.append(_hold("breaker (Charter API)", "charter API", reason, circuit.get("until")))
    holds += [
        _hold(
            "cooldown",
            c.get("target"),
            f"{c.get('action_type')} cooling down",
            c.get("until"),
        )
        for c in _mappings(guards.get("cooldowns"))
    ]
    return holds


def add_routes(app: web.Application, console: Console) -> None:
    """Register /ui on `app`; `console.middleware` must be among the app's middlewares."""
    router = app.router
    router.add_get(PREFIX, console.now, allow_head=False)
    router.add_get(f"{PREFIX}/", console.now, allow_head=False)
    router.add_get(f"{PREFIX}/panels", console.panels, allow_head=False)
    router.add_get(f"{PREFIX}/events", console.events, allow_head=False)
    router.add_get(f"{PREFIX}/decisions/{{id:[A-Za-z0-9_-]{{1,64}}}}", console.decision)
    router.add_get(f"{PREFIX}/knowledge", console.knowledge, allow_head=False)
    router.add_get(f"{PREFIX}/targets", console.targets, allow_head=False)
    router.add_get(f"{PREFIX}/targets/{{target:.+}}", console.target, allow_head=False)
    router.add_get(f"{PREFIX}/static/{{name}}", console.static, allow_head=False)
    router.add_get(f"{PREFIX}/login", console.login_page, allow_head=False)
    router.add_post(f"{PREFIX}/login", console.login)
    router.add_post(f"{PREFIX}/logout", console.logout)
    for name, handler in (
        ("approve", console.approve),
        ("reject", console.reject),
        ("freeze", console.freeze),
        ("unfreeze", console.unfreeze),
        ("dry-run", console.dry_run),
        ("clear-hold", console.clear_hold),
    ):
        router.add_post(f"{PREFIX}/act/{name}", handler)
    app.on_shutdown.append(console.feed.close)
