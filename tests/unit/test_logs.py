"""Logging: the standard library and the event loop's own errors come out as one-line JSON
events, rate-limited per kind with the count of what was dropped."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
from typing import Any

from aiohttp.http_exceptions import BadHttpMessage

from fakes import FakeClock
from mape_k import logs


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    return [json.loads(line) for line in text.splitlines()]  # every line is one JSON event


def configured(clock: FakeClock) -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level="info", fmt="json", stream=stream, clock=clock)
    return stream


def test_a_library_error_with_a_traceback_is_one_json_line(clock: FakeClock) -> None:
    stream = configured(clock)
    logging.getLogger("aiohttp.server").error(
        "Error handling request from %s",
        "1.2.3.4",
        exc_info=OSError(errno.EMFILE, "Too many open files"),
    )
    [event] = lines(stream)
    assert event["event"] == "library_log"
    assert event["level"] == "error"
    assert event["logger"] == "aiohttp.server"
    assert event["message"] == "Error handling request from 1.2.3.4"
    assert "OSError: [Errno 24] Too many open files" in event["exception"]


def test_a_malformed_request_aiohttp_answered_400_is_a_warning_without_traceback(
    clock: FakeClock,
) -> None:
    stream = configured(clock)
    logging.getLogger("aiohttp.server").error(
        "Error handling request from %s",
        "127.0.0.1",
        exc_info=BadHttpMessage("Invalid header value char"),
    )
    [event] = lines(stream)
    assert (event["event"], event["level"]) == ("http_bad_request", "warning")
    assert "Invalid header value char" in event["error"]
    assert "exception" not in event


def test_library_info_chatter_stays_out_and_warnings_come_through(clock: FakeClock) -> None:
    stream = configured(clock)
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:9090/api/v1/query")
    logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Handle>", 0.2)
    [event] = lines(stream)
    assert event["logger"] == "asyncio"
    assert event["level"] == "warning"
    assert event["message"] == "Executing <Handle> took 0.200 seconds"


def test_a_flood_is_rate_limited_per_kind_and_the_next_event_counts_the_dropped(
    clock: FakeClock,
) -> None:
    stream = configured(clock)
    server = logging.getLogger("aiohttp.server")
    for i in range(1000):
        server.error("Error handling request from %s", f"10.0.0.{i % 250}")
    logging.getLogger("aiohttp.web").error("another kind")
    events = lines(stream)
    written = [e for e in events if e["event"] == "library_log" and e["logger"] == "aiohttp.server"]
    assert len(written) == logs.RATE_LIMIT
    [notice] = [e for e in events if e["event"] == "log_rate_limited"]
    assert notice["kind"] == "aiohttp.server:Error handling request from %s"
    assert notice["limit"] == logs.RATE_LIMIT
    assert notice["window_s"] == logs.RATE_WINDOW_S
    assert [e["message"] for e in events if e.get("logger") == "aiohttp.web"] == ["another kind"]

    clock.advance(logs.RATE_WINDOW_S)
    server.error("Error handling request from %s", "10.0.0.1")
    last = lines(stream)[-1]
    assert last["event"] == "library_log"
    assert last["suppressed"] == 1000 - logs.RATE_LIMIT


async def test_the_loop_exception_handler_writes_one_json_event(clock: FakeClock) -> None:
    stream = configured(clock)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    logs.route_loop_errors(loop)
    try:
        for _ in range(500):  # what a failing accept() does once per listening-socket wakeup
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                    "socket": "<asyncio.TransportSocket fd=9>",
                }
            )
    finally:
        loop.set_exception_handler(previous)
    events = lines(stream)
    errors = [e for e in events if e["event"] == "asyncio_error"]
    assert len(errors) == logs.RATE_LIMIT
    assert errors[0]["message"] == "socket.accept() out of system resource"
    assert errors[0]["error"] == "OSError: [Errno 24] Too many open files"
    assert errors[0]["socket"] == "<asyncio.TransportSocket fd=9>"
    assert errors[0]["level"] == "error"
    assert [e["event"] for e in events].count("log_rate_limited") == 1
    assert len(events) == logs.RATE_LIMIT + 1


def test_the_rate_limiter_counts_windows_per_kind(clock: FakeClock) -> None:
    limiter = logs.RateLimiter(limit=2, window_s=10.0, clock=clock)
    assert [limiter.admit("a") for _ in range(4)] == [(True, 0), (True, 0), (False, 1), (False, 2)]
    assert limiter.admit("b") == (True, 0)
    clock.advance(9.9)
    assert limiter.admit("a") == (False, 3)
    clock.advance(0.1)
    assert limiter.admit("a") == (True, 3)
    assert limiter.admit("a") == (True, 0)
    assert limiter.admit("a") == (False, 1)


def test_configuring_twice_keeps_one_bridge(clock: FakeClock) -> None:
    configured(clock)
    stream = configured(clock)
    logging.getLogger("aiohttp.server").error("once")
    assert len(lines(stream)) == 1
