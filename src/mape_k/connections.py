"""The daemon's HTTP connections: a cap, header and idle timeouts, a clear refusal.

aiohttp parses requests but bounds neither how long a client may take to send its headers
nor how many connections are open. `ConnectionGuard` is the protocol factory of the
listening socket (through `GuardedSite`); it wraps each aiohttp `RequestHandler` and owns
the connection's one deadline:

- *waiting* (no request in progress: a new connection, or one between requests):
  a new connection must have sent its request headers within `header_timeout_s`; after a
  response the next request must begin within `keepalive_timeout_s` (idle) and, once its
  first byte arrived, have its headers in within `header_timeout_s`. Past the deadline the
  connection is closed (a slowloris client is cut off however slowly it trickles).
- *busy* (headers in, the handler runs): no deadline here; the handler bounds reading the
  body (`server.body_timeout_s`, answered 408 in server.py; the guard then closes the
  connection instead of letting aiohttp linger over the rest of the body).

At `max_connections` a new connection takes the place of the one that has been waiting
longest (a stalled or idle connection, never one whose request is being handled); when
every connection is busy the newcomer gets a fixed `503` with `Retry-After` and is closed
without reading. The cap must leave file descriptors for everything else the daemon opens:
`plan_file_limit` (pure) sizes it against RLIMIT_NOFILE at start.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web import RequestHandler

from mape_k.metrics import Metrics

log = structlog.get_logger(__name__)

BACKLOG = 128  # listen(2) backlog; also how many connections asyncio accepts per loop pass
# Descriptors the daemon holds besides its server connections: stdio, the store (file, -wal,
# -shm), epoll, the loop's self-pipe, the listening socket, sd_notify, imports, slack.
RESERVED_FDS = 64
# Under a flood, sockets above the cap are open for a moment: those asyncio accepted in
# this loop pass (the guard has not seen them yet) and those evicted or refused in the last
# one (closed in the next). Measured: about 2 x BACKLOG.
SERVER_RESERVE = RESERVED_FDS + 2 * BACKLOG
MIN_CONNECTIONS = 8
DROP_REASONS = ("header_timeout", "idle_timeout", "evicted", "refused")
RETRY_AFTER_S = 1
_CLEAR_FRACTION = 0.9  # the "at the cap" episode ends below this share of the cap


def refusal_bytes(max_connections: int) -> bytes:
    """The whole answer to a connection over the cap: written at once, nothing is read."""
    body = json.dumps(
        {"error": "too many connections", "max_connections": max_connections}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


@dataclass(frozen=True, slots=True)
class FilePlan:
    """How many connections fit under the file limit, and the soft limit to set."""

    max_connections: int  # the effective cap
    soft_limit: int  # RLIMIT_NOFILE soft value to run with (raised towards hard if needed)
    needed: int  # descriptors the configured cap needs: cap + reserve
    lowered: bool  # the configured cap did not fit and was lowered


def plan_file_limit(configured: int, *, soft: int, hard: int, reserve: int) -> FilePlan:
    """Fit `configured` connections plus `reserve` descriptors under RLIMIT_NOFILE.

    The soft limit is raised (up to the hard one) when that is enough; otherwise the cap
    is lowered to what fits. `hard` < 0 means unlimited (RLIM_INFINITY). Raises ValueError
    when fewer than MIN_CONNECTIONS fit.
    """
    needed = configured + reserve
    if soft < 0 or soft >= needed:  # unlimited, or enough already
        return FilePlan(max_connections=configured, soft_limit=soft, needed=needed, lowered=False)
    soft_limit = needed if hard < 0 else max(soft, min(needed, hard))
    cap = min(configured, soft_limit - reserve)
    if cap < MIN_CONNECTIONS:
        raise ValueError(
            f"the file limit (RLIMIT_NOFILE {soft}/{hard}) leaves room for {max(cap, 0)}"
            f" connections; the daemon needs {reserve + MIN_CONNECTIONS} descriptors at least"
            f" ({needed} for server.max_connections={configured}): raise LimitNOFILE"
        )
    return FilePlan(
        max_connections=cap, soft_limit=soft_limit, needed=needed, lowered=cap < configured
    )


class _Refusal(asyncio.Protocol):
    """A connection over the cap: the fixed 503, then close; its bytes are never read."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._answer)
        transport.close()


class _Connection(asyncio.Protocol):
    """One admitted connection: aiohttp's handler inside, the guard's deadline around it."""

    __slots__ = (
        "_guard",
        "busy",
        "deadline",
        "dropped",
        "handler",
        "reason",
        "receiving",
        "timer",
        "transport",
    )

    def __init__(self, guard: ConnectionGuard, handler: RequestHandler) -> None:
        self._guard = guard
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        # One deadline while waiting; the timer may be set earlier than a deadline that moved
        # later since (it re-arms itself), so a request costs no timer operation.
        self.deadline = 0.0
        self.reason = "header_timeout"
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        self.receiving = False  # waiting, and bytes of the next request arrived
        self.dropped = False  # the guard let go of it (timed out, evicted, closed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.handler.connection_made(transport)
        if self.dropped:  # evicted between the factory and now
            self.close()

    def data_received(self, data: bytes) -> None:
        if data and not self.busy and not self.receiving:
            self.receiving = True
            self._guard.set_deadline(self, "header_timeout")
        self.handler.data_received(data)

    def eof_received(self) -> None:
        self.handler.eof_received()  # None: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def close(self, *, grace: bool = False) -> None:
        """Close; what is still buffered for the client is flushed only with `grace` (a
        client that does not read its answer keeps it open until its next deadline)."""
        transport = self.transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()
        if not grace and transport.get_write_buffer_size():
            transport.abort()


class ConnectionGuard:
    """The protocol factory of the listening socket: admits, times out, evicts, refuses."""

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout_s: float,
        keepalive_timeout_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self._timeouts = {"header_timeout": header_timeout_s, "idle_timeout": keepalive_timeout_s}
        self._clock = clock
        self._answer = refusal_bytes(max_connections)
        self._open: dict[RequestHandler, _Connection] = {}
        # Waiting connections, the longest waiting first: who makes room at the cap.
        self._waiting: OrderedDict[_Connection, None] = OrderedDict()
        self._dropped = {r: metrics.http_connections_dropped.labels(reason=r) for r in DROP_REASONS}
        metrics.http_connections.set_function(lambda: len(self._open))
        metrics.http_connections_max.set(max_connections)
        self._episode: dict[str, Any] | None = None  # set while at the cap

    @property
    def open(self) -> int:
        return len(self._open)

    @property
    def waiting(self) -> int:
        """Open connections with no request in progress."""
        return len(self._waiting)

    def runner(self, app: web.Application) -> web.AppRunner:
        """The AppRunner for `app` (built with `middleware` outermost). The guard owns the
        header and idle deadlines; aiohttp's own keep-alive timer stays a backstop that is
        never earlier than the guard's."""
        backstop = self._timeouts["header_timeout"] + self._timeouts["idle_timeout"]
        return web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=backstop)

    # --- the protocol factory ----------------------------------------------------------

    def factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for a listening socket serving aiohttp's `server`."""

        def protocol() -> asyncio.Protocol:
            # Counted here, not in connection_made: asyncio accepts up to BACKLOG
            # connections and calls this for each before any of them is "made".
            if len(self._open) >= self.max_connections and not self._make_room():
                self._count("refused")
                return _Refusal(self._answer)
            conn = _Connection(self, server())
            self._open[conn.handler] = conn
            # Armed now: a connection asyncio never completes is forgotten at its deadline.
            self._wait(conn, "header_timeout")
            return conn

        return protocol

    def _make_room(self) -> bool:
        if not self._waiting:
            return False
        oldest, _ = self._waiting.popitem(last=False)
        self._forget(oldest)
        oldest.close()
        self._count("evicted")
        return True

    def _count(self, reason: str) -> None:
        self._dropped[reason].inc()
        if reason in {"evicted", "refused"}:
            if self._episode is None:
                self._episode = {"since": self._clock(), "evicted": 0, "refused": 0}
                log.warning(
                    "connection_cap_reached",
                    max_connections=self.max_connections,
                    hint="stalled or idle connections make room; busy ones are never cut",
                )
            self._episode[reason] += 1

    # --- what the connections report ---------------------------------------------------

    def closed(self, conn: _Connection) -> None:
        self._forget(conn)
        episode = self._episode
        if episode is not None and len(self._open) < self.max_connections * _CLEAR_FRACTION:
            self._episode = None
            log.info(
                "connection_cap_cleared",
                open=len(self._open),
                evicted=episode["evicted"],
                refused=episode["refused"],
                duration_s=round(self._clock() - episode["since"], 3),
            )

    def _forget(self, conn: _Connection) -> None:
        conn.dropped = True
        self._open.pop(conn.handler, None)
        self._waiting.pop(conn, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _wait(self, conn: _Connection, reason: str) -> None:
        conn.busy = False
        conn.receiving = reason == "header_timeout"
        self._waiting[conn] = None
        self._waiting.move_to_end(conn)
        self.set_deadline(conn, reason)

    def set_deadline(self, conn: _Connection, reason: str) -> None:
        loop = asyncio.get_running_loop()
        conn.reason = reason
        conn.deadline = loop.time() + self._timeouts[reason]
        timer = conn.timer
        if timer is None or timer.when() > conn.deadline:
            if timer is not None:
                timer.cancel()
            conn.timer = loop.call_at(conn.deadline, self._expire, conn)

    def _expire(self, conn: _Connection) -> None:
        conn.timer = None
        if conn.busy or conn.dropped:
            return  # busy: no deadline (the next wait sets one); dropped: gone
        loop = asyncio.get_running_loop()
        if loop.time() < conn.deadline:  # moved later since the timer was set
            conn.timer = loop.call_at(conn.deadline, self._expire, conn)
            return
        reason = conn.reason
        log.debug("connection_timed_out", reason=reason, timeout_s=self._timeouts[reason])
        self._forget(conn)
        conn.close()
        self._count(reason)

    # --- the request boundary, seen from the application -------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Outermost: marks the connection busy while its request is handled."""
        conn = self._open.get(request.protocol)
        if conn is not None:
            conn.busy = True  # its timer, if it fires meanwhile, does nothing
            self._waiting.pop(conn, None)
        try:
            response: web.StreamResponse = await handler(request)
        finally:
            if conn is not None and not conn.dropped:
                self._wait(conn, "idle_timeout")
        if response.status == HTTPStatus.REQUEST_TIMEOUT and conn is not None:
            # The rest of a request that timed out is not waited for: answer, then close
            # (aiohttp would linger up to 10 s reading it).
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            conn.close(grace=True)
        return response


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a `ConnectionGuard`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard
    ) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # BaseSite refuses a runner that is not set up
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog
        )

    async def serve(self) -> None:
        """Until cancelled (which closes the listener) or the listener is closed: the
        server as a task the daemon supervises, so a server that stops takes it down."""
        if self._server is None:
            raise RuntimeError("the site is not started")
        await self._server.serve_forever()


__all__ = [
    "BACKLOG",
    "DROP_REASONS",
    "RESERVED_FDS",
    "SERVER_RESERVE",
    "ConnectionGuard",
    "FilePlan",
    "GuardedSite",
    "plan_file_limit",
    "refusal_bytes",
]
