"""`HttpCharterClient`: the `CharterClient` Protocol over the Charter HTTP API (see
src/mape_k/openapi/charter-api.yaml), on one `httpx.AsyncClient`.

Retries (jittered exponential backoff) only where safe: GET/PUT, and calls carrying an
idempotency key, on connect/read errors and 502/503/504. Never on 4xx. httpx errors never
leave this module: they become the CharterError family.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import structlog

from mape_k.config import CharterConfig, read_secret
from mape_k.errors import (
    CharterError,
    CharterNotFound,
    CharterRequestError,
    CharterTimeout,
    CharterUnavailable,
)
from mape_k.integrations import retry
from mape_k.integrations.charter.base import (
    ActionResult,
    CharterPolicy,
    CharterViolation,
    CommitteeState,
    PolicyValidation,
)
from mape_k.metrics import Metrics
from mape_k.models import RestartScope

log = structlog.get_logger(__name__)

API = "/api/v1"
RETRY_STATUSES = retry.RETRY_STATUSES
MAX_BACKOFF_S = retry.MAX_BACKOFF_S
IDEMPOTENCY_HEADER = "Idempotency-Key"
EPOCH_HEADER = "X-Mapek-Epoch"  # the leader lease's epoch (replicas): a newer one fences

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class HttpCharterClient:
    """Talks to the Charter API; see the module docstring for retries and errors."""

    def __init__(
        self,
        config: CharterConfig | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        connect_timeout_s: float | None = None,
        timeout_s: float | None = None,
        retries: int | None = None,
        backoff_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        epoch: Callable[[], int | None] | None = None,
    ) -> None:
        config = config or CharterConfig()
        # Replicas: the leader's epoch, sent with every mutating call (fencing at the Charter).
        self._epoch = epoch
        self.url = (url or config.url).rstrip("/")
        self._token = (
            token
            if token is not None
            else read_secret(config.token, config.token_file, file_key="charter.token_file")
        )
        self._timeout = httpx.Timeout(
            timeout_s if timeout_s is not None else config.timeout_s,
            connect=connect_timeout_s
            if connect_timeout_s is not None
            else config.connect_timeout_s,
        )
        self.retries = retries if retries is not None else config.retries
        self.backoff_s = backoff_s if backoff_s is not None else config.backoff_s
        self._transport = transport
        self._metrics = metrics
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is None:
            headers = {"Accept": "application/json"}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            self._client = httpx.AsyncClient(
                base_url=self.url,
                timeout=self._timeout,
                headers=headers,
                transport=self._transport,
            )

    async def disconnect(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # --- transport -----------------------------------------------------------------------

    def backoff(self, attempt: int) -> float:
        """Equal-jitter exponential backoff before retry number `attempt` (0-based)."""
        return retry.backoff(attempt, self.backoff_s, self._rng)

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotency_key: str | None = None,
    ) -> Any:
        await self.connect()
        assert self._client is not None
        started = time.perf_counter()
        result = "error"
        try:
            body = await self._call_with_retries(
                operation, method, path, json=json, idempotency_key=idempotency_key
            )
        except CharterUnavailable:
            result = "unavailable"
            raise
        except CharterRequestError:
            result = "rejected"
            raise
        else:
            result = "ok"
            return body
        finally:
            if self._metrics is not None:
                self._metrics.charter_calls.labels(operation=operation, result=result).inc()
                self._metrics.charter_call_duration.labels(operation=operation).observe(
                    time.perf_counter() - started
                )

    async def _call_with_retries(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: Any,
        idempotency_key: str | None,
    ) -> Any:
        assert self._client is not None
        safe = method in {"GET", "PUT"} or bool(idempotency_key) or operation == "validate_policy"
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else {}
        # Reads carry it too: a new leader's first call (its reconcile's lookup) raises the
        # Charter's epoch, so a call of the old leader still in flight lands before it (and
        # is found) or after it (and is refused).
        epoch = self._epoch() if self._epoch is not None else None
        if epoch is not None:
            headers[EPOCH_HEADER] = str(epoch)
        attempts = 1 + (self.retries if safe else 0)
        response = await retry.request(
            self._client,
            method,
            f"{API}{path}",
            operation=operation,
            where=self.url,
            attempts=attempts,
            delay=self.backoff,
            sleep=self._sleep,
            timeout_error=CharterTimeout,
            unavailable_error=CharterUnavailable,
            json=json,
            headers=headers,
            event="charter_call_retry",
        )
        return self._decode(operation, response)

    @staticmethod
    def _decode(operation: str, response: httpx.Response) -> Any:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status >= 400:
            message = (
                str(body.get("error"))
                if isinstance(body, dict) and body.get("error")
                else (response.text[:200] or response.reason_phrase)
            )
            if status == 404:
                raise CharterNotFound(message, operation=operation, status=status)
            if status < 500:
                raise CharterRequestError(message, operation=operation, status=status)
            raise CharterUnavailable(message, operation=operation, status=status)
        if body is None:
            raise CharterError(
                f"malformed response (not JSON): {response.text[:100]!r}",
                operation=operation,
                status=status,
            )
        return body

    # --- the Protocol --------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call("ping", "GET", "/ping")

    async def find_action(self, idempotency_key: str) -> ActionResult | None:
        try:
            body = await self._call(
                "find_action",
                "GET",
                f"/actions/{_seg(idempotency_key)}",
                json=None,
                idempotency_key=None,
            )
        except CharterNotFound:
            return None
        return _parse("find_action", lambda: _action_result(body, idempotency_key))

    async def get_policies(self) -> list[CharterPolicy]:
        body = await self._call("get_policies", "GET", "/policies")
        return _parse("get_policies", lambda: [_policy(p) for p in body["policies"]])

    async def validate_policy(self, policy_id: str) -> PolicyValidation:
        body = await self._call("validate_policy", "POST", f"/policies/{_seg(policy_id)}/validate")
        return _parse(
            "validate_policy",
            lambda: PolicyValidation(
                policy_id=str(body["policy_id"]),
                valid=bool(body["valid"]),
                errors=tuple(str(e) for e in body.get("errors", ())),
            ),
        )

    async def _action(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        key: str,
        json: Any = None,
    ) -> ActionResult:
        body = await self._call(operation, method, path, json=json, idempotency_key=key)
        return _parse(operation, lambda: _action_result(body, key))

    async def apply_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult:
        path = f"/policies/{_seg(policy_id)}/apply"
        return await self._action("apply_policy", "POST", path, key=idempotency_key)

    async def rollback_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult:
        path = f"/policies/{_seg(policy_id)}/rollback"
        return await self._action("rollback_policy", "POST", path, key=idempotency_key)

    async def get_committee_state(self) -> CommitteeState:
        body = await self._call("get_committee_state", "GET", "/committee")
        return _parse("get_committee_state", lambda: _state(body))

    async def get_violations(self) -> list[CharterViolation]:
        body = await self._call("get_violations", "GET", "/violations")
        return _parse("get_violations", lambda: [_violation(v) for v in body["violations"]])

    async def scale_committee(self, size: int, *, idempotency_key: str) -> ActionResult:
        return await self._action(
            "scale_committee", "POST", "/committee/scale", key=idempotency_key, json={"size": size}
        )

    async def restart_committee(
        self, *, idempotency_key: str, scope: RestartScope = "all"
    ) -> ActionResult:
        # A full restart sends no body, as before scopes existed (a Charter without them
        # still takes it); only a narrower scope says so.
        body = None if scope == "all" else {"scope": scope}
        return await self._action(
            "restart_committee", "POST", "/committee/restart", key=idempotency_key, json=body
        )

    async def set_throttle(
        self, limit_ops_per_sec: float | None, *, idempotency_key: str
    ) -> ActionResult:
        return await self._action(
            "set_throttle",
            "PUT",
            "/throttle",
            key=idempotency_key,
            json={"limit_ops_per_sec": limit_ops_per_sec},
        )

    async def set_validation_bypass(self, active: bool, *, idempotency_key: str) -> ActionResult:
        return await self._action(
            "set_validation_bypass",
            "PUT",
            "/validation-bypass",
            key=idempotency_key,
            json={"active": active},
        )

    async def set_emergency_override(self, active: bool, *, idempotency_key: str) -> ActionResult:
        return await self._action(
            "set_emergency_override",
            "PUT",
            "/emergency-override",
            key=idempotency_key,
            json={"active": active},
        )

    async def rebalance_load(self, *, idempotency_key: str) -> ActionResult:
        return await self._action(
            "rebalance_load", "POST", "/committee/rebalance", key=idempotency_key
        )

    async def update_configuration(
        self, settings: dict[str, Any], *, idempotency_key: str
    ) -> ActionResult:
        return await self._action(
            "update_configuration",
            "PATCH",
            "/config",
            key=idempotency_key,
            json={"settings": settings},
        )


# --- decoding -------------------------------------------------------------------------------


def _seg(value: str) -> str:
    """A path segment, percent-encoded (policy ids come from config and the API)."""
    return quote(value, safe="")


def _action_result(body: Any, key: str) -> ActionResult:
    return ActionResult(
        operation=str(body["operation"]),
        idempotency_key=str(body.get("idempotency_key") or key),
        replayed=bool(body.get("replayed", False)),
        previous=dict(body.get("previous") or {}),
        current=dict(body.get("current") or {}),
    )


def _parse(operation: str, build: Callable[[], T]) -> T:
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CharterError(
            f"malformed response: {type(exc).__name__}: {exc}", operation=operation
        ) from exc


def _policy(raw: dict[str, Any]) -> CharterPolicy:
    return CharterPolicy(
        id=str(raw["id"]),
        version=int(raw["version"]),
        status=str(raw["status"]),
        known_good=bool(raw["known_good"]),
        description=str(raw.get("description", "")),
    )


def _violation(raw: dict[str, Any]) -> CharterViolation:
    return CharterViolation(
        id=str(raw["id"]),
        kind=str(raw["kind"]),
        severity=str(raw["severity"]),
        message=str(raw["message"]),
        timestamp=float(raw["timestamp"]),
    )


def _state(raw: dict[str, Any]) -> CommitteeState:
    limit = raw["throttle_limit"]
    policy = raw["active_policy"]
    return CommitteeState(
        size=int(raw["size"]),
        healthy_members=int(raw["healthy_members"]),
        target_size=int(raw["target_size"]),
        offered_load=float(raw["offered_load"]),
        throughput_ops_per_sec=float(raw["throughput_ops_per_sec"]),
        failure_rate=float(raw["failure_rate"]),
        p99_latency_s=float(raw["p99_latency_s"]),
        queue_depth=float(raw["queue_depth"]),
        throttle_limit=None if limit is None else float(limit),
        emergency_override=bool(raw["emergency_override"]),
        validation_bypass=bool(raw["validation_bypass"]),
        active_policy=None if policy is None else str(policy),
        config=dict(raw.get("config") or {}),
    )
