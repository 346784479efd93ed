"""The `http` actuator: call a webhook with a rendered URL, headers and JSON body.

The Charter client's transport behaviour (integrations/retry.py): bounded jittered
retries on connect/read errors and 502/503/504, only when a repeat is safe (GET, PUT,
DELETE, or an action marked idempotent, which then sends its `Idempotency-Key`); never on
another status. A status outside `expect` fails the action (ActuatorRejected; 5xx:
ActuatorUnavailable); httpx errors never leave this module. Secrets come from files
(`header_files`), read at each call and never journaled.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from mape_k.config import HttpActuator, read_secret
from mape_k.errors import ActuatorRejected, ActuatorTimeout, ActuatorUnavailable, ConfigError
from mape_k.integrations import retry
from mape_k.integrations.charter.base import ActionResult

IDEMPOTENCY_HEADER = "Idempotency-Key"
SAFE_METHODS = frozenset({"GET", "PUT", "DELETE"})
BODY_KEPT = 2000  # characters of the answer kept in the journal


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)  # rendered (no secrets)
    body: Any = None


def budget_s(config: HttpActuator) -> float:
    """The longest one call may take: every attempt's timeouts and the backoffs between."""
    attempts = config.retries + 1
    per_attempt = config.connect_timeout_s + config.timeout_s
    return attempts * per_attempt + config.retries * retry.MAX_BACKOFF_S + 1.0


def _tls(config: HttpActuator) -> ssl.SSLContext | bool:
    if not config.verify_tls:
        return False
    if config.ca_file is None and config.client_cert is None:
        return True
    context = ssl.create_default_context(
        cafile=str(config.ca_file) if config.ca_file is not None else None
    )
    if config.client_cert is not None:
        context.load_cert_chain(
            str(config.client_cert),
            str(config.client_key) if config.client_key is not None else None,
        )
    return context


def secret_headers(config: HttpActuator) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, path in config.header_files.items():
        value = read_secret(None, path, file_key=f"header_files.{name}")
        if value is not None:
            out[name] = value
    return out


async def call(
    config: HttpActuator,
    request: HttpRequest,
    *,
    operation: str,
    key: str,
    idempotent: bool,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: retry.Sleep = asyncio.sleep,
    rng: random.Random | None = None,
) -> ActionResult:
    safe = request.method in SAFE_METHODS or idempotent
    headers = {"Accept": "application/json", **request.headers}
    if idempotent:
        headers[IDEMPOTENCY_HEADER] = key
    try:
        headers.update(secret_headers(config))
        verify = _tls(config)
    except (ConfigError, OSError, ssl.SSLError) as exc:
        raise ActuatorUnavailable(f"cannot prepare the call: {exc}", operation=operation) from exc
    chooser = rng or random.Random()
    timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
    async with httpx.AsyncClient(
        timeout=timeout, verify=verify, transport=transport, follow_redirects=False
    ) as client:
        response = await retry.request(
            client,
            request.method,
            request.url,
            operation=operation,
            where=_origin(request.url),
            attempts=1 + (config.retries if safe else 0),
            delay=lambda attempt: retry.backoff(attempt, config.backoff_s, chooser),
            sleep=sleep,
            timeout_error=ActuatorTimeout,
            unavailable_error=ActuatorUnavailable,
            json=request.body,
            headers=headers,
            event="actuator_call_retry",
        )
    return _result(response, config.expect, operation=operation, key=key)


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")


def _result(
    response: httpx.Response, expect: tuple[int, ...], *, operation: str, key: str
) -> ActionResult:
    status = response.status_code
    text = response.text[:BODY_KEPT]
    if status not in expect:
        message = f"answered {status}, expected {', '.join(map(str, expect))}: {text[:200]!r}"
        if status >= 500:
            raise ActuatorUnavailable(message, operation=operation, status=status)
        raise ActuatorRejected(message, operation=operation, status=status)
    body: Any = text
    if len(response.content) <= BODY_KEPT:  # a larger answer is kept as its head, as text
        try:
            body = response.json()
        except ValueError:
            body = text
    current: Mapping[str, Any] = {"status": status, "body": body}
    return ActionResult(operation=operation, idempotency_key=key, current=dict(current))
