"""PrometheusClient: the HTTP API of Prometheus (instant and range queries) as typed values.

One shared `aiohttp.ClientSession` per client (a pool of `max_connections`), opened by
`connect()` and closed by `disconnect()`. Every failure leaves as a `PrometheusError`
(mape_k.errors) naming the PromQL; aiohttp exceptions never leave this module. No retries
here: the Monitor decides.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode

import aiohttp
import certifi
import structlog

from mape_k.config import PrometheusConfig
from mape_k.errors import (
    PrometheusQueryError,
    PrometheusResponseError,
    PrometheusTimeout,
    PrometheusUnavailable,
)
from mape_k.models import Sample

_log = structlog.get_logger(__name__)

ResultType = Literal["vector", "scalar", "matrix", "string"]
_RESULT_TYPES: frozenset[str] = frozenset({"vector", "scalar", "matrix", "string"})
_MAX_REMEMBERED_NOTES = 256  # distinct warning texts remembered, so each is logged once
_BODY_EXCERPT = 200
_KEEPALIVE_S = 5.0  # idle pooled connections close after this, as under httpx-aiohttp before
_FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a matrix: its labels and its (timestamp, value) points."""

    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class InstantResult:
    """The answer to an instant query.

    `samples` holds a vector's elements, or the one scalar (with empty labels);
    `series` holds a matrix (an instant query over a range selector);
    `string` holds a string result's value.
    """

    query: str
    result_type: ResultType
    samples: tuple[Sample, ...] = ()
    series: tuple[Series, ...] = ()
    string: str | None = None
    warnings: tuple[str, ...] = ()
    infos: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The answer to a range query: one Series per label set (a scalar gives empty labels)."""

    query: str
    series: tuple[Series, ...] = ()
    warnings: tuple[str, ...] = ()
    infos: tuple[str, ...] = ()


def _format_seconds(value: float) -> str:
    """Float seconds as Prometheus accepts them for `time`, `start`, `end`, `step`, `timeout`."""
    return repr(float(value))


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _BODY_EXCERPT else f"{flat[:_BODY_EXCERPT]}..."


def _parse_value(raw: Any, *, query: str) -> float:
    # Prometheus sends values as strings ("7.5", "NaN", "+Inf", "-Inf").
    if not isinstance(raw, str):
        raise PrometheusResponseError(f"sample value is not a string: {raw!r}", query=query)
    try:
        return float(raw)
    except ValueError as exc:
        raise PrometheusResponseError(
            f"sample value is not a number: {raw!r}", query=query
        ) from exc


def _parse_point(raw: Any, *, query: str) -> tuple[float, float]:
    if (
        not isinstance(raw, list)
        or len(raw) != 2  # [timestamp, "value"]
        or not isinstance(raw[0], int | float)
        or isinstance(raw[0], bool)
    ):
        raise PrometheusResponseError(f"malformed sample pair: {raw!r}", query=query)
    return float(raw[0]), _parse_value(raw[1], query=query)


def _parse_labels(raw: Any, *, query: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in raw.items()
    ):
        raise PrometheusResponseError(f"malformed label set: {raw!r}", query=query)
    return dict(raw)


def _parse_vector(result: Any, *, query: str) -> tuple[Sample, ...]:
    if not isinstance(result, list):
        raise PrometheusResponseError("vector result is not a list", query=query)
    samples: list[Sample] = []
    for element in result:
        if not isinstance(element, dict):
            raise PrometheusResponseError(f"malformed vector element: {element!r}", query=query)
        labels = _parse_labels(element.get("metric", {}), query=query)
        timestamp, value = _parse_point(element.get("value"), query=query)
        samples.append(Sample(labels=labels, value=value, timestamp=timestamp))
    return tuple(samples)


def _parse_matrix(result: Any, *, query: str) -> tuple[Series, ...]:
    if not isinstance(result, list):
        raise PrometheusResponseError("matrix result is not a list", query=query)
    series: list[Series] = []
    for element in result:
        if not isinstance(element, dict) or not isinstance(element.get("values"), list):
            raise PrometheusResponseError(f"malformed matrix element: {element!r}", query=query)
        labels = _parse_labels(element.get("metric", {}), query=query)
        points = tuple(_parse_point(point, query=query) for point in element["values"])
        series.append(Series(labels=labels, points=points))
    return tuple(series)


def _string_list(raw: Any, *, key: str, query: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise PrometheusResponseError(f"{key!r} is not a list of strings", query=query)
    return tuple(raw)


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """`seconds` for each phase (waiting for a pooled connection, connecting, every read),
    no overall limit: what httpx's `Timeout(seconds)` meant over aiohttp before."""
    return aiohttp.ClientTimeout(
        total=None, connect=seconds, sock_connect=seconds, sock_read=seconds
    )


def _which_timeout(exc: TimeoutError) -> str:
    """Which wait ran out, in the words these messages have always used (httpx's names)."""
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return "ReadTimeout"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # connecting, or a pooled connection
        return "ConnectTimeout"
    return type(exc).__name__


def _tls_context() -> ssl.SSLContext:
    """The CAs httpx trusted, so an https Prometheus that verified before still does:
    $SSL_CERT_FILE, else $SSL_CERT_DIR, else certifi's bundle (not the system store)."""
    if cert_file := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cert_file)
    if cert_dir := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=cert_dir)
    return ssl.create_default_context(cafile=certifi.where())


def _decode(body: bytes, charset: str | None) -> str:
    """The body as text: its declared charset if Python knows it, else UTF-8; never fails."""
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python has no codec for
        return body.decode("utf-8", errors="replace")


class PrometheusClient:
    """Async client of Prometheus' HTTP API (`/api/v1/query`, `/api/v1/query_range`, `/-/ready`).

    Use `await connect()` / `await disconnect()` or `async with PrometheusClient(...)`.
    Queries are sent as POST forms (long PromQL fits) with Prometheus' own `timeout`.
    """

    def __init__(
        self,
        config: PrometheusConfig | None = None,
        *,
        url: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        base = config if config is not None else PrometheusConfig()
        self._url = (url if url is not None else base.url).rstrip("/")
        self._timeout_s = timeout_s if timeout_s is not None else base.timeout_s
        self._max_connections = (
            max_connections if max_connections is not None else base.max_connections
        )
        self._query_url = f"{self._url}/api/v1/query"
        self._range_url = f"{self._url}/api/v1/query_range"
        self._ready_url = f"{self._url}/-/ready"
        self._client = session
        self._owns_client = session is None
        self._seen_notes: set[str] = set()

    @property
    def url(self) -> str:
        return self._url

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self) -> None:
        """Open the shared HTTP session (idempotent)."""
        if self._client is not None:
            return
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=_KEEPALIVE_S,
                ssl=_tls_context() if self._url.startswith("https://") else True,
            ),
            timeout=_timeout(self._timeout_s),
            headers={"Accept": "application/json"},
        )
        self._owns_client = True

    async def disconnect(self) -> None:
        """Close the HTTP session if this object opened it (idempotent)."""
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    # --- public API ----------------------------------------------------------------------

    async def ready(self) -> bool:
        """True when Prometheus answers 200 on `/-/ready`; False if not ready or unreachable."""
        client = self._require_client(query="")
        try:
            async with client.get(self._ready_url, allow_redirects=False) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return False
        return response.status == HTTPStatus.OK

    async def query(
        self, promql: str, *, time: float | None = None, timeout_s: float | None = None
    ) -> InstantResult:
        """Evaluate `promql` at `time` (Unix seconds; default: Prometheus' now)."""
        form: dict[str, str] = {"query": promql}
        if time is not None:
            form["time"] = _format_seconds(time)
        envelope = await self._post(self._query_url, form, query=promql, timeout_s=timeout_s)
        result_type, result = self._data(envelope, query=promql)
        warnings, infos = self._notes(envelope, query=promql)
        if result_type == "vector":
            return InstantResult(
                query=promql,
                result_type="vector",
                samples=_parse_vector(result, query=promql),
                warnings=warnings,
                infos=infos,
            )
        if result_type == "scalar":
            timestamp, value = _parse_point(result, query=promql)
            return InstantResult(
                query=promql,
                result_type="scalar",
                samples=(Sample(labels={}, value=value, timestamp=timestamp),),
                warnings=warnings,
                infos=infos,
            )
        if result_type == "matrix":
            return InstantResult(
                query=promql,
                result_type="matrix",
                series=_parse_matrix(result, query=promql),
                warnings=warnings,
                infos=infos,
            )
        # What is left is a string result.
        if (
            not isinstance(result, list)
            or len(result) != 2  # [timestamp, "text"]
            or not isinstance(result[1], str)
        ):
            raise PrometheusResponseError(f"malformed string result: {result!r}", query=promql)
        return InstantResult(
            query=promql, result_type="string", string=result[1], warnings=warnings, infos=infos
        )

    async def query_range(
        self,
        promql: str,
        *,
        start: float,
        end: float,
        step: float,
        timeout_s: float | None = None,
    ) -> RangeResult:
        """Evaluate `promql` from `start` to `end` (Unix seconds) every `step` seconds."""
        form = {
            "query": promql,
            "start": _format_seconds(start),
            "end": _format_seconds(end),
            "step": _format_seconds(step),
        }
        envelope = await self._post(self._range_url, form, query=promql, timeout_s=timeout_s)
        result_type, result = self._data(envelope, query=promql)
        if result_type != "matrix":
            raise PrometheusResponseError(
                f"range query returned {result_type}, expected matrix", query=promql
            )
        warnings, infos = self._notes(envelope, query=promql)
        return RangeResult(
            query=promql,
            series=_parse_matrix(result, query=promql),
            warnings=warnings,
            infos=infos,
        )

    async def read(self, name: str, promql: str, *, timeout_s: float) -> list[Sample]:
        """The Monitor's `MetricSource`: an instant vector or scalar as samples."""
        result = await self.query(promql, timeout_s=timeout_s)
        if result.result_type not in {"vector", "scalar"}:
            raise PrometheusResponseError(
                f"query {name!r} returned a {result.result_type}, expected a vector or a scalar",
                query=promql,
            )
        return list(result.samples)

    # --- transport and envelope ----------------------------------------------------------

    def _require_client(self, *, query: str) -> aiohttp.ClientSession:
        if self._client is None:
            raise PrometheusUnavailable(
                "PrometheusClient is not connected (call connect() first)", query=query
            )
        return self._client

    async def _post(
        self, url: str, form: dict[str, str], *, query: str, timeout_s: float | None
    ) -> Mapping[str, Any]:
        client = self._require_client(query=query)
        timeout = self._timeout_s if timeout_s is None else timeout_s
        # Prometheus' own timeout makes a slow query fail fast on the server side too,
        # instead of running on after we stopped waiting.
        body = urlencode({**form, "timeout": _format_seconds(timeout)}).encode()
        try:
            async with client.post(
                url,
                data=aiohttp.BytesPayload(body, content_type=_FORM),
                timeout=_timeout(timeout),
                allow_redirects=False,
            ) as response:
                raw = await response.read()
        except aiohttp.ClientConnectorError as exc:
            # Nobody listening (or no such host): at once, not after the timeout.
            raise PrometheusUnavailable(
                f"cannot reach {self._url}: connection refused ({exc})", query=query
            ) from exc
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError: connect, pool or read
            raise PrometheusTimeout(
                f"no answer from {self._url} within {timeout:g}s ({_which_timeout(exc)})",
                query=query,
            ) from exc
        except aiohttp.ClientError as exc:
            raise PrometheusUnavailable(
                f"cannot reach {self._url}: {type(exc).__name__}: {exc}", query=query
            ) from exc
        return self._envelope(response.status, raw, response.charset, query=query)

    def _envelope(
        self, status: int, raw: bytes, charset: str | None, *, query: str
    ) -> Mapping[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") not in {"success", "error"}:
            text = _excerpt(_decode(raw, charset))
            if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
                # 503 "Service Unavailable" while the TSDB starts, or a proxy's 502.
                raise PrometheusUnavailable(f"HTTP {status} from {self._url}: {text}", query=query)
            raise PrometheusResponseError(
                f"HTTP {status} from {self._url} is not a Prometheus API answer: {text}",
                query=query,
            )
        if body["status"] == "error":
            error_type = str(body.get("errorType", "unknown"))
            error = str(body.get("error", ""))
            if error_type == "timeout":
                raise PrometheusTimeout(f"prometheus timeout: {error}", query=query)
            raise PrometheusQueryError(error_type=error_type, error=error, query=query)
        return body

    @staticmethod
    def _data(envelope: Mapping[str, Any], *, query: str) -> tuple[str, Any]:
        data = envelope.get("data")
        if not isinstance(data, dict) or "result" not in data:
            raise PrometheusResponseError("success answer without data.result", query=query)
        result_type = data.get("resultType")
        if result_type not in _RESULT_TYPES:
            raise PrometheusResponseError(f"unknown resultType {result_type!r}", query=query)
        return str(result_type), data["result"]

    def _notes(
        self, envelope: Mapping[str, Any], *, query: str
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        warnings = _string_list(envelope.get("warnings"), key="warnings", query=query)
        infos = _string_list(envelope.get("infos"), key="infos", query=query)
        self._log_new_notes("prometheus_query_warning", warnings, query=query)
        self._log_new_notes("prometheus_query_info", infos, query=query)
        return warnings, infos

    def _log_new_notes(self, event: str, notes: Sequence[str], *, query: str) -> None:
        # The same storage warning comes back on every query: log each text once.
        for note in notes:
            key = f"{event}\0{note}"
            if key in self._seen_notes:
                continue
            if len(self._seen_notes) >= _MAX_REMEMBERED_NOTES:
                self._seen_notes.clear()
            self._seen_notes.add(key)
            _log.warning(event, message=note, query=query)
