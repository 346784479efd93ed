"""The `alertmanager` actuator: silence the alert being remediated, or post an alert.

`silence`: a silence matching the remediated alert's labels (`matchers`, each rendered
from `{labels.NAME}` and checked like every template value) for `duration_s`, created
before the policy's other actions run when it comes first, so on-call is not paged for
what is being fixed; it is expired once the outcome is verified (`expire`), and by an undo.
`alert`: an alert posted to `/api/v2/alerts` with rendered labels and annotations (for
escalation). Alertmanager API v2; the Charter client's retry behaviour (retry.py). `send`
and `post_alerts` are shared with the built-in needs-a-human alert (loop/escalation.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Mapping
from typing import Any

import httpx

from mape_k.actuators import template
from mape_k.config import AlertmanagerActuator
from mape_k.errors import ActuatorRejected, ActuatorTimeout, ActuatorUnavailable
from mape_k.integrations import retry
from mape_k.integrations.charter.base import ActionResult

_RNG = random.Random()


def iso(ts: dt.datetime) -> str:
    """A time as Alertmanager's API takes it: RFC 3339, UTC, "Z"."""
    return ts.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def render(
    config: AlertmanagerActuator, values: Mapping[str, str], patterns: Mapping[str, str]
) -> dict[str, Any]:
    """The request body (without times, which are taken when it is sent)."""
    if config.operation == "silence":
        matchers = [
            {
                "name": name,
                "value": template.render(f"{{labels.{name}}}", values, patterns),
                "isRegex": False,
                "isEqual": True,
            }
            for name in config.matchers
        ]
        # The comment is rendered like any template: the target is an alert's label too.
        comment = template.render(
            "mape-k: {action} for {cause} on {target} ({idempotency_key})", values, patterns
        )
        return {"matchers": matchers, "createdBy": config.created_by, "comment": comment}
    return {
        "labels": {k: template.render(v, values, patterns) for k, v in config.labels.items()},
        "annotations": {
            k: template.render(v, values, patterns) for k, v in config.annotations.items()
        },
    }


async def send(
    url: str,
    method: str,
    path: str,
    *,
    operation: str,
    timeout_s: float,
    body: Any = None,
    attempts: int = 3,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: retry.Sleep = asyncio.sleep,
) -> httpx.Response:
    """One call to Alertmanager's API v2 at `url`, retried like the Charter client's; an
    answer >= 300 raises ActuatorUnavailable (5xx) or ActuatorRejected (4xx). Shared by this
    actuator and the needs-a-human alert (loop/escalation.py)."""
    async with httpx.AsyncClient(
        base_url=url, timeout=httpx.Timeout(timeout_s), transport=transport
    ) as client:
        response = await retry.request(
            client,
            method,
            path,
            operation=operation,
            where=url,
            attempts=attempts,  # a silence or an alert posted twice is one (Alertmanager dedups)
            delay=lambda attempt: retry.backoff(attempt, 0.2, _RNG),
            sleep=sleep,
            timeout_error=ActuatorTimeout,
            unavailable_error=ActuatorUnavailable,
            json=body,
            event="actuator_call_retry",
        )
    if response.status_code >= 300:
        message = f"Alertmanager answered {response.status_code}: {response.text[:200]!r}"
        error = ActuatorUnavailable if response.status_code >= 500 else ActuatorRejected
        raise error(message, operation=operation, status=response.status_code)
    return response


async def post_alerts(
    url: str,
    alerts: list[dict[str, Any]],
    *,
    operation: str,
    timeout_s: float,
    attempts: int = 3,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: retry.Sleep = asyncio.sleep,
) -> None:
    """POST `alerts` (API v2 bodies: labels, annotations, startsAt, endsAt) in one request."""
    await send(
        url,
        "POST",
        "/api/v2/alerts",
        operation=operation,
        timeout_s=timeout_s,
        body=alerts,
        attempts=attempts,
        transport=transport,
        sleep=sleep,
    )


async def _send(
    config: AlertmanagerActuator,
    method: str,
    path: str,
    *,
    operation: str,
    body: Any = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.Response:
    return await send(
        config.url,
        method,
        path,
        operation=operation,
        timeout_s=config.timeout_s,
        body=body,
        transport=transport,
    )


async def apply(
    config: AlertmanagerActuator,
    rendered: dict[str, Any],
    *,
    operation: str,
    key: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ActionResult:
    now = dt.datetime.now(dt.UTC)
    if config.operation == "silence":
        body = {
            **rendered,
            "startsAt": iso(now),
            "endsAt": iso(now + dt.timedelta(seconds=config.duration_s)),
        }
        response = await _send(
            config, "POST", "/api/v2/silences", operation=operation, body=body, transport=transport
        )
        try:
            silence_id = str(response.json()["silenceID"])
        except (ValueError, KeyError, TypeError):
            raise ActuatorRejected(
                f"Alertmanager's answer has no silenceID: {response.text[:100]!r}",
                operation=operation,
            ) from None
        return ActionResult(
            operation=operation,
            idempotency_key=key,
            current={"silence_id": silence_id, "url": config.url},
        )
    alert = {**rendered, "startsAt": iso(now)}
    await post_alerts(
        config.url, [alert], operation=operation, timeout_s=config.timeout_s, transport=transport
    )
    return ActionResult(operation=operation, idempotency_key=key, current={"alert": alert})


async def expire(
    config: AlertmanagerActuator,
    silence_id: str,
    *,
    operation: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Expire a silence this actuator created (an expired or unknown one is not an error)."""
    if not silence_id.replace("-", "").isalnum():
        raise ActuatorRejected(f"not a silence id: {silence_id!r}", operation=operation)
    try:
        await _send(
            config,
            "DELETE",
            f"/api/v2/silence/{silence_id}",
            operation=operation,
            transport=transport,
        )
    except (ActuatorRejected, ActuatorUnavailable) as exc:
        if exc.status not in {404, 500}:  # Alertmanager answers 500 for "already expired"
            raise
