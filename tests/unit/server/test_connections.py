"""The connection guard on a real socket: header, idle and body timeouts, the cap, the refusal.

Each test serves the daemon's app (server.build_app with the guard) through `GuardedSite`
on 127.0.0.1, as app.run does, and talks to it with raw asyncio streams so it controls
every byte and every pause. Timeouts are a few tenths of a second; a test waits for the
server's close (EOF), bounded by a deadline, and checks when it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from server_harness import FakeControl

from mape_k.config import ServerConfig
from mape_k.connections import (
    MIN_CONNECTIONS,
    ConnectionGuard,
    GuardedSite,
    plan_file_limit,
    refusal_bytes,
)
from mape_k.integrations.alertmanager import AlertInbox, AlertMessageRouter
from mape_k.metrics import Metrics
from mape_k.server import build_app

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
SLACK_S = 0.5  # scheduling slack on a shared 2-core machine
DEADLINE_S = 10.0


@dataclass
class Served:
    port: int
    guard: ConnectionGuard
    metrics: Metrics

    def dropped(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "mapek_http_connections_dropped_total", {"reason": reason}
        )
        return 0.0 if value is None else value

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(
        *,
        max_connections: int = 64,
        header_timeout_s: float = 0.3,
        keepalive_timeout_s: float = 0.6,
        body_timeout_s: float = 5.0,
    ) -> Served:
        metrics = Metrics(CollectorRegistry())
        inbox = AlertInbox(max_alerts=100, metrics=metrics)
        router = AlertMessageRouter()
        router.register_default_handler(inbox.offer)
        guard = ConnectionGuard(
            max_connections=max_connections,
            header_timeout_s=header_timeout_s,
            keepalive_timeout_s=keepalive_timeout_s,
            metrics=metrics,
        )
        app = build_app(
            control=FakeControl(),
            router=router,
            metrics=metrics,
            config=ServerConfig(body_timeout_s=body_timeout_s),
            webhook_token=None,
            admin_token=None,
            guard=guard,
        )
        runner = guard.runner(app)
        await runner.setup()
        runners.append(runner)
        await GuardedSite(runner, "127.0.0.1", 0, guard=guard).start()
        return Served(port=int(runner.addresses[0][1]), guard=guard, metrics=metrics)

    yield start
    for runner in runners:
        await runner.cleanup()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    data = b""
    async with asyncio.timeout(DEADLINE_S):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(DEADLINE_S):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def trickle_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, every_s: float = 0.05
) -> float:
    """Send one header byte every `every_s` until the server closes; the time it took."""
    started = time.monotonic()
    for _ in range(int(DEADLINE_S / every_s)):
        try:
            writer.write(b"X")
            await writer.drain()
            chunk = await asyncio.wait_for(reader.read(1), every_s)
        except TimeoutError:
            continue  # still open: the next byte
        except ConnectionError:
            return time.monotonic() - started
        if chunk == b"":
            return time.monotonic() - started
    pytest.fail(f"a client sending a header byte every {every_s} s was never cut off")


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# --- header and idle timeouts --------------------------------------------------------------


async def test_a_slowloris_client_is_cut_off_at_the_header_timeout(serve: Serve) -> None:
    served = await serve(header_timeout_s=0.3, keepalive_timeout_s=5.0)
    reader, writer = await served.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    elapsed = await trickle_until_closed(reader, writer)
    await close(writer)
    assert 0.3 - 0.05 <= elapsed < 0.3 + SLACK_S
    assert served.dropped("header_timeout") == 1
    assert served.guard.open == 0


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(
    serve: Serve,
) -> None:
    served = await serve(header_timeout_s=0.3, keepalive_timeout_s=5.0)
    started = time.monotonic()
    reader, writer = await served.connect()
    assert await read_until_closed(reader) == b""
    elapsed = time.monotonic() - started
    await close(writer)
    assert 0.3 - 0.05 <= elapsed < 0.3 + SLACK_S
    assert served.dropped("header_timeout") == 1


async def test_an_idle_keepalive_connection_is_closed_at_the_keepalive_timeout(
    serve: Serve,
) -> None:
    served = await serve(header_timeout_s=0.3, keepalive_timeout_s=0.8)
    reader, writer = await served.connect()
    writer.write(HEALTHZ)
    status, headers, _ = await read_response(reader)
    answered = time.monotonic()
    assert status == 200
    assert headers.get("connection", "keep-alive").lower() != "close"
    assert await read_until_closed(reader) == b""
    idle = time.monotonic() - answered
    await close(writer)
    # The keep-alive timeout, not the (shorter) header timeout, applies between requests.
    assert 0.8 - 0.05 <= idle < 0.8 + SLACK_S
    assert served.dropped("idle_timeout") == 1
    assert served.dropped("header_timeout") == 0


async def test_a_slow_second_request_is_cut_at_the_header_timeout_not_the_keepalive_one(
    serve: Serve,
) -> None:
    served = await serve(header_timeout_s=0.3, keepalive_timeout_s=5.0)
    reader, writer = await served.connect()
    writer.write(HEALTHZ)
    assert (await read_response(reader))[0] == 200
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    elapsed = await trickle_until_closed(reader, writer)
    await close(writer)
    assert 0.3 - 0.05 <= elapsed < 0.3 + SLACK_S
    assert served.dropped("header_timeout") == 1


async def test_a_request_being_handled_is_not_cut_by_the_header_or_idle_timeout(
    serve: Serve,
) -> None:
    served = await serve(header_timeout_s=0.2, keepalive_timeout_s=0.3, body_timeout_s=5.0)
    reader, writer = await served.connect()
    body = b'{"version": "4"}'
    writer.write(
        b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    started = time.monotonic()
    for byte in body:  # the body over ~0.8 s: past both timeouts, within the body timeout
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.05)  # the slow client itself, not a synchronisation
    assert time.monotonic() - started > 0.3 + 0.2
    status, _, answer = await read_response(reader)
    await close(writer)
    assert status == 422, answer  # handled to the end: the payload lacks fields
    assert served.dropped("header_timeout") == served.dropped("idle_timeout") == 0


# --- the body timeout ----------------------------------------------------------------------


async def test_a_body_slower_than_the_body_timeout_gets_408_and_the_connection_closes(
    serve: Serve,
) -> None:
    served = await serve(header_timeout_s=5.0, keepalive_timeout_s=5.0, body_timeout_s=0.3)
    reader, writer = await served.connect()
    writer.write(
        b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    started = time.monotonic()
    status, headers, body = await read_response(reader)
    elapsed = time.monotonic() - started
    assert status == 408
    assert headers["connection"].lower() == "close"
    assert json.loads(body) == {
        "error": "body not received within server.body_timeout_s (0.3 s)",
        "field": "body",
        "received_bytes": 1,
    }
    assert 0.3 - 0.05 <= elapsed < 0.3 + SLACK_S
    assert await read_until_closed(reader) == b""
    await close(writer)
    value = served.metrics.registry.get_sample_value(
        "mapek_webhook_rejections_total", {"reason": "timeout"}
    )
    assert value == 1


# --- the cap -------------------------------------------------------------------------------


async def test_at_the_cap_a_new_connection_replaces_the_longest_waiting_one(
    serve: Serve,
) -> None:
    served = await serve(max_connections=2, header_timeout_s=5.0, keepalive_timeout_s=5.0)
    with structlog.testing.capture_logs() as logs:
        stalled = [await served.connect() for _ in range(2)]
        for _, writer in stalled:
            writer.write(b"GET /healthz HTTP/1.1\r\nHo")
            await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            while served.guard.open < 2:
                await asyncio.sleep(0.01)  # polling the guard's own count
        reader, writer = await served.connect()
        writer.write(HEALTHZ)
        status, _, _ = await read_response(reader)
        await close(writer)
        # The oldest stalled connection made room; the younger one is still open.
        assert await read_until_closed(stalled[0][0]) == b""
        assert not stalled[1][0].at_eof()
        for _, stalled_writer in stalled:
            await close(stalled_writer)
    assert status == 200
    assert served.dropped("evicted") == 1
    assert served.dropped("refused") == 0
    reached = [e for e in logs if e["event"] == "connection_cap_reached"]
    assert reached == [
        {
            "event": "connection_cap_reached",
            "log_level": "warning",
            "max_connections": 2,
            "hint": "stalled or idle connections make room; busy ones are never cut",
        }
    ]


async def test_when_every_connection_is_busy_a_new_one_gets_503_and_is_closed(
    serve: Serve,
) -> None:
    served = await serve(max_connections=2, header_timeout_s=5.0, body_timeout_s=5.0)
    busy = [await served.connect() for _ in range(2)]
    with structlog.testing.capture_logs() as logs:
        for _, writer in busy:  # headers in, the body pending: the handlers wait for it
            writer.write(
                b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\n\r\n{"
            )
            await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            while served.guard.open < 2 or served.guard.waiting:
                await asyncio.sleep(0.01)  # polling the guard until both are busy
        started = time.monotonic()
        reader, writer = await served.connect()
        refused = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        await close(writer)
        for busy_reader, busy_writer in busy:  # the busy requests finish normally
            busy_writer.write(b"}")
            assert (await read_response(busy_reader))[0] == 422
            await close(busy_writer)
        async with asyncio.timeout(DEADLINE_S):
            while served.guard.open:
                await asyncio.sleep(0.01)
    assert refused == refusal_bytes(2)
    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 1\r\n" in refused
    assert json.loads(refused.partition(b"\r\n\r\n")[2]) == {
        "error": "too many connections",
        "max_connections": 2,
    }
    assert elapsed < SLACK_S
    assert served.dropped("refused") == 1
    assert served.dropped("evicted") == 0
    cleared = [e for e in logs if e["event"] == "connection_cap_cleared"]
    assert len(cleared) == 1
    assert cleared[0]["refused"] == 1
    assert cleared[0]["evicted"] == 0


async def test_the_open_connections_and_the_cap_are_metrics(serve: Serve) -> None:
    served = await serve(max_connections=3, header_timeout_s=5.0)
    reader, writer = await served.connect()
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_response(reader)
    await close(writer)
    assert status == 200
    text = body.decode()
    assert "mapek_http_connections 1.0" in text
    assert "mapek_http_connections_max 3.0" in text
    for reason in ("header_timeout", "idle_timeout", "evicted", "refused"):
        assert f'mapek_http_connections_dropped_total{{reason="{reason}"}} 0.0' in text


# --- fitting the cap under the file limit (pure) -------------------------------------------


def test_a_cap_that_fits_the_soft_limit_is_kept() -> None:
    plan = plan_file_limit(512, soft=1024, hard=1024, reserve=192)
    assert (plan.max_connections, plan.soft_limit, plan.lowered) == (512, 1024, False)


def test_the_soft_limit_is_raised_towards_the_hard_one_when_that_is_enough() -> None:
    plan = plan_file_limit(2000, soft=1024, hard=524288, reserve=192)
    assert (plan.max_connections, plan.soft_limit, plan.lowered) == (2000, 2192, False)


def test_a_cap_above_the_hard_limit_is_lowered_to_what_fits() -> None:
    plan = plan_file_limit(5000, soft=1024, hard=1024, reserve=192)
    assert (plan.max_connections, plan.soft_limit, plan.lowered) == (832, 1024, True)
    assert plan.needed == 5192
    raised = plan_file_limit(5000, soft=1024, hard=4096, reserve=192)
    assert (raised.max_connections, raised.soft_limit, raised.lowered) == (3904, 4096, True)


def test_unlimited_limits_keep_the_cap() -> None:
    assert plan_file_limit(512, soft=-1, hard=-1, reserve=192).max_connections == 512
    plan = plan_file_limit(4000, soft=1024, hard=-1, reserve=192)
    assert (plan.max_connections, plan.soft_limit) == (4000, 4192)


def test_a_file_limit_with_no_room_for_connections_is_an_error_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="raise LimitNOFILE") as caught:
        plan_file_limit(512, soft=150, hard=150, reserve=192)
    assert "leaves room for 0 connections" in str(caught.value)
    assert plan_file_limit(512, soft=200, hard=200, reserve=192).max_connections == MIN_CONNECTIONS
    assert f"needs {192 + MIN_CONNECTIONS} descriptors at least" in str(caught.value)
