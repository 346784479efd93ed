"""One HTTP request with bounded, jittered retries where they are safe: the behaviour of the
Charter client (integrations/charter/http.py), shared with the `http` and `alertmanager`
actuators. httpx errors never leave: they become the `timeout` / `unavailable` error
classes the caller names (CharterTimeout / CharterUnavailable, ActuatorTimeout / ...).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx
import structlog

log = structlog.get_logger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
MAX_BACKOFF_S = 5.0
Sleep = Callable[[float], Awaitable[None]]


class _Error(Protocol):
    def __call__(self, message: str, *, operation: str = ...) -> Exception: ...


def backoff(attempt: int, base_s: float, rng: random.Random) -> float:
    """Equal-jitter exponential backoff before retry number `attempt` (0-based)."""
    ceiling = min(MAX_BACKOFF_S, base_s * 2.0**attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    operation: str,
    where: str,
    attempts: int,
    delay: Callable[[int], float],
    sleep: Sleep,
    timeout_error: _Error,
    unavailable_error: _Error,
    json: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    event: str = "http_call_retry",
) -> httpx.Response:
    """The response (any status but a retried 502/503/504 before the last attempt); a
    timeout or transport error on the last attempt raises the caller's error class."""
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            response = await client.request(
                method, url, json=json, content=content, headers=headers
            )
        except httpx.TimeoutException as exc:
            if last:
                raise timeout_error(f"timed out: {exc}", operation=operation) from exc
            reason = "timeout"
        except httpx.TransportError as exc:
            if last:
                raise unavailable_error(
                    f"cannot reach {where}: {type(exc).__name__}: {exc}", operation=operation
                ) from exc
            reason = type(exc).__name__
        else:
            if response.status_code in RETRY_STATUSES and not last:
                reason = f"http_{response.status_code}"
            else:
                return response
        wait = delay(attempt)
        log.info(
            event, operation=operation, attempt=attempt + 1, reason=reason, delay_s=round(wait, 3)
        )
        await sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
