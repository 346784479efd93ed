"""structlog setup: one event per line, JSON in production, readable console on a terminal.

Iteration ids are bound with `structlog.contextvars.bound_contextvars` by the orchestrator
and merged into every event here. No other module configures logging.

What does not come from our own loggers comes through here too, as the same one-line
events: records of the standard `logging` module (aiohttp's server logger, asyncio's,
any library's; warning and above) as `library_log`, and the event loop's exception
handler (`route_loop_errors`) as `asyncio_error`. Both are rate-limited per kind (at most
`RATE_LIMIT` per `RATE_WINDOW_S`): the first one dropped says so in a `log_rate_limited`
event, and the next one written carries `suppressed`, the count dropped before it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from aiohttp.http_exceptions import HttpProcessingError

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LIBRARY_MIN_LEVEL = logging.WARNING  # libraries' info chatter (httpx per request) stays out
RATE_LIMIT = 10
RATE_WINDOW_S = 60.0
_MAX_KINDS = 1024
_FIELD_CHARS = 500
_CONTEXT_KEYS = ("task", "future", "handle", "protocol", "transport", "socket")


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    dropped: int = 0  # since the last event of this kind that was written


class RateLimiter:
    """At most `limit` events per kind in each `window_s`; counts the ones it drops."""

    def __init__(
        self,
        limit: int = RATE_LIMIT,
        window_s: float = RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, kind: str) -> tuple[bool, int]:
        """(write it?, dropped): when written, `dropped` is how many were dropped before it;
        when not, how many have been dropped so far (1 = the first: time to say so)."""
        now = self._clock()
        window = self._windows.get(kind)
        if window is None:
            if len(self._windows) >= _MAX_KINDS:
                self._expire(now)
            window = self._windows[kind] = _Window(start=now)
        elif now - window.start >= self.window_s:
            window.start, window.count = now, 0
        if window.count < self.limit:
            window.count += 1
            dropped, window.dropped = window.dropped, 0
            return True, dropped
        window.dropped += 1
        return False, window.dropped

    def _expire(self, now: float) -> None:
        for kind in [k for k, w in self._windows.items() if now - w.start >= self.window_s]:
            del self._windows[kind]
        if len(self._windows) >= _MAX_KINDS:  # all current: forget the oldest window
            del self._windows[min(self._windows, key=lambda k: self._windows[k].start)]


_limiter = RateLimiter()


def _emit(kind: str, level: str, event: str, **fields: Any) -> None:
    write, dropped = _limiter.admit(kind)
    logger = structlog.get_logger(__name__)
    if write:
        if dropped:
            fields["suppressed"] = dropped
        getattr(logger, level)(event, **fields)
    elif dropped == 1:
        logger.warning(
            "log_rate_limited",
            kind=kind[:_FIELD_CHARS],
            limit=_limiter.limit,
            window_s=_limiter.window_s,
            hint="more events of this kind are counted, not written; the next one written"
            " says how many (suppressed)",
        )


def _short(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _FIELD_CHARS else text[:_FIELD_CHARS] + "..."


def _level_name(levelno: int) -> str:
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


class _Bridge(logging.Handler):
    """Standard-library records as structlog events (library_log), rate-limited per kind."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {
                "logger": record.name,
                "message": _short(record.getMessage()),
            }
            error = record.exc_info[1] if record.exc_info else None
            kind = f"{record.name}:{_short(record.msg)}"
            if isinstance(error, HttpProcessingError):
                # A malformed request (aiohttp answered it 400): the client's fault, not a
                # failure of ours; no traceback.
                fields["error"] = _short(str(error))
                _emit(kind, "warning", "http_bad_request", **fields)
                return
            if error is not None:
                fields["exc_info"] = record.exc_info
            _emit(kind, _level_name(record.levelno), "library_log", **fields)
        except Exception:
            self.handleError(record)


def loop_exception_handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: one `asyncio_error` event, rate-limited."""
    message = str(context.get("message") or "unhandled exception in the event loop")
    exc = context.get("exception")
    fields: dict[str, Any] = {"message": _short(message)}
    if isinstance(exc, BaseException):
        fields["error"] = _short(f"{type(exc).__name__}: {exc}")
        fields["exc_info"] = exc
    for key in _CONTEXT_KEYS:
        if key in context:
            fields[key] = _short(context[key])
    kind = f"asyncio:{message}:{type(exc).__name__ if exc is not None else '-'}"
    _emit(kind, "error", "asyncio_error", **fields)


def route_loop_errors(loop: asyncio.AbstractEventLoop) -> None:
    """`loop`'s own errors (a failed accept, an exception in a callback, a task exception
    never retrieved) become `asyncio_error` events instead of multi-line tracebacks."""
    loop.set_exception_handler(loop_exception_handler)


def configure(
    *,
    level: Literal["debug", "info", "warning", "error"] = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: object = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    global _limiter  # noqa: PLW0603 - the one limiter of the process, owned here
    out = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and getattr(out, "isatty", lambda: False)())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    threshold = _LEVELS.get(level, logging.ERROR)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _limiter = RateLimiter(clock=clock)
    reset()
    root = logging.getLogger()
    root.addHandler(_Bridge())
    root.setLevel(max(LIBRARY_MIN_LEVEL, threshold))


def reset() -> None:
    """Take the standard-library bridge off the root logger (tests; a second configure)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Bridge)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
