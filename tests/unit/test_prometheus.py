"""PrometheusClient against real Prometheus 2.42 answers (tests/fixtures), served over HTTP.

A real aiohttp server on 127.0.0.1 (PromStub) answers what each test sets and records what
it received; connection-level failures are real too (a refused port, a full listen
backlog, a peer hanging up, a stalled answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from structlog.testing import capture_logs

from fakes import FIXTURES
from mape_k.config import PrometheusConfig
from mape_k.errors import (
    PrometheusError,
    PrometheusQueryError,
    PrometheusResponseError,
    PrometheusTimeout,
    PrometheusUnavailable,
)
from mape_k.integrations.prometheus import PrometheusClient

PROM = FIXTURES / "prometheus"
INDEX: dict[str, dict[str, Any]] = json.loads((FIXTURES / "_index.json").read_text())
QUERY = "max(westworld_charter_failure_rate)"


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((PROM / name).read_text())
    return body


@dataclass(frozen=True)
class Answer:
    """One canned HTTP answer: status, body bytes, content type."""

    status: int
    body: bytes
    content_type: str


def json_answer(status: int, body: Any) -> Answer:
    return Answer(status, json.dumps(body).encode(), "application/json")


def text_answer(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Answer:
    return Answer(status, text.encode(), content_type)


def response_for(name: str) -> Answer:
    """The fixture as the server sent it: its HTTP status, JSON or text body, content type."""
    body = fixture(name)
    if body.get("_non_json_response"):
        return text_answer(body["http_status"], body["body_text"], body["content_type"])
    status = INDEX[f"prometheus/{name}"]["http_status"]
    return json_answer(status, body)


@dataclass(frozen=True)
class Seen:
    """One request as the stub received it."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    peer: tuple[str, int]  # the client's end of the connection: one per connection


def form(request: Seen) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(request.body.decode()).items()}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Route:
    """What the stub answers on one (method, path), and the requests it got there."""

    calls: list[Seen] = field(default_factory=list)
    handler: Handler | None = None

    def answer(self, answer: Answer) -> Route:
        async def canned(_: web.Request) -> web.StreamResponse:
            return web.Response(
                status=answer.status,
                body=answer.body,
                headers={"Content-Type": answer.content_type},
            )

        self.handler = canned
        return self

    def respond(self, status: int = 200, *, json: Any = None, text: str | None = None) -> Route:
        return self.answer(json_answer(status, json) if text is None else text_answer(status, text))

    def handle(self, handler: Handler) -> Route:
        self.handler = handler
        return self

    @property
    def last(self) -> Seen:
        assert self.calls, "the stub got no request on this route"
        return self.calls[-1]


class PromStub:
    """A real HTTP server on 127.0.0.1 standing in for Prometheus; unknown routes are recorded
    (and fail the test at teardown) instead of being answered like Prometheus."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.unexpected: list[str] = []
        self.released = asyncio.Event()  # stalled answers wait for this (set at teardown)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def post(self, path: str) -> Route:
        return self.routes.setdefault(("POST", path), Route())

    def get(self, path: str) -> Route:
        return self.routes.setdefault(("GET", path), Route())

    async def stall(self, _: web.Request) -> web.StreamResponse:
        """Answer nothing until the test is over: the client's read timeout has to fire."""
        await self.released.wait()
        return web.Response(status=200)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        route = self.routes.get((request.method, request.path))
        if route is None or route.handler is None:
            self.unexpected.append(f"{request.method} {request.path}")
            return web.Response(status=404, text="no such route in the test's stub")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        route.calls.append(
            Seen(request.method, request.path, request.headers, body, tuple(peer or ("", 0)))
        )
        return await route.handler(request)


async def hang_up(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer (the peer went away mid-request)."""
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=200)


async def garbage(request: web.Request) -> web.StreamResponse:
    """Answer bytes that are not HTTP, then close."""
    assert request.transport is not None
    request.transport.write(b"NOT-HTTP nonsense\r\n\r\n")
    request.transport.close()
    return web.Response(status=200)


@pytest.fixture
async def stub() -> AsyncIterator[PromStub]:
    server = PromStub()
    await server.server.start_server()
    try:
        yield server
    finally:
        server.released.set()
        await server.server.close()
    assert server.unexpected == [], f"requests the test did not expect: {server.unexpected}"


@pytest.fixture
async def client(stub: PromStub) -> Any:
    async with PrometheusClient(url=stub.url, timeout_s=2.0) as prom:
        yield prom


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A port held (bound) but not listening: a connection there is refused at once."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


@pytest.fixture
def unanswered_url() -> Iterator[str]:
    """A listening port whose accept queue is full: Linux drops the next SYN, so a new
    connection neither succeeds nor is refused until the client's connect timeout."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(3):  # backlog 0 still queues one; a spare or two for good measure
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# --- instant queries --------------------------------------------------------------------


async def test_vector_answer_becomes_samples_with_labels_values_and_timestamps(stub, client):
    stub.post("/api/v1/query").answer(response_for("query_instant_vector.json"))

    result = await client.query("demo_gauge")

    assert result.result_type == "vector"
    assert [(s.labels["service"], s.value, s.timestamp) for s in result.samples] == [
        ("checkout", 7.5, 1795321396.63),
        ("payments", 2.0, 1795321396.63),
    ]
    assert result.samples[0].labels["__name__"] == "demo_gauge"
    assert result.warnings == ()


async def test_query_is_sent_as_post_form_with_prometheus_timeout_and_time(stub, client):
    route = stub.post("/api/v1/query").answer(response_for("query_instant_vector_post_form.json"))
    long_query = " or ".join(["up"] * 500)  # would not fit a GET URL comfortably

    result = await client.query(long_query, time=1795321396.5, timeout_s=1.5)

    request = route.last
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept"] == "application/json"
    assert form(request) == {"query": long_query, "time": "1795321396.5", "timeout": "1.5"}
    assert result.samples[0].labels["__name__"] == "up"
    assert result.samples[0].value == 1.0


async def test_default_timeout_comes_from_the_config(stub):
    route = stub.post("/api/v1/query").answer(response_for("query_instant_vector.json"))
    async with PrometheusClient(PrometheusConfig(url=stub.url, timeout_s=3.0)) as prom:
        await prom.query("demo_gauge")
    assert form(route.last)["timeout"] == "3.0"


async def test_empty_vector_gives_no_samples(stub, client):
    stub.post("/api/v1/query").answer(response_for("query_instant_vector_empty.json"))
    result = await client.query('demo_gauge{service="does-not-exist"}')
    assert result.result_type == "vector"
    assert result.samples == ()


async def test_scalar_answer_becomes_one_sample_without_labels(stub, client):
    stub.post("/api/v1/query").answer(response_for("query_scalar.json"))

    result = await client.query("scalar(sum(demo_gauge))")

    assert result.result_type == "scalar"
    assert len(result.samples) == 1
    assert result.samples[0].labels == {}
    assert result.samples[0].value == 9.5
    assert result.samples[0].timestamp == 1795321396.664


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("query_scalar_nan.json", math.isnan),
        ("query_scalar_inf.json", lambda v: v == math.inf),
    ],
)
async def test_special_values_nan_and_inf_are_parsed(stub, client, name, check):
    stub.post("/api/v1/query").answer(response_for(name))
    result = await client.query("1/0")
    assert check(result.samples[0].value)


async def test_string_answer_is_kept_as_text(stub, client):
    stub.post("/api/v1/query").answer(response_for("query_string.json"))
    result = await client.query('"hello"')
    assert result.result_type == "string"
    assert result.string == "hello"
    assert result.samples == ()


async def test_instant_query_over_a_range_selector_gives_series(stub, client):
    stub.post("/api/v1/query").answer(response_for("query_instant_matrix_range_selector.json"))
    result = await client.query("demo_gauge[5s]")
    assert result.result_type == "matrix"
    assert [s.labels["service"] for s in result.series] == ["checkout", "payments"]
    assert result.series[0].points[0] == (1795321392.539, 7.5)


async def test_warnings_are_returned_and_logged_once_per_text(stub, client):
    stub.post("/api/v1/query").answer(response_for("query_instant_vector_with_warnings.json"))
    with capture_logs() as logs:
        first = await client.query("demo_gauge")
        second = await client.query("demo_gauge")

    assert len(first.samples) == 2
    assert first.warnings == second.warnings
    assert first.warnings[0].startswith("remote_read: error sending request")
    warning_logs = [e for e in logs if e["event"] == "prometheus_query_warning"]
    assert len(warning_logs) == 1
    assert warning_logs[0]["query"] == "demo_gauge"


async def test_infos_are_returned(stub, client):
    body = {
        "status": "success",
        "data": {"resultType": "vector", "result": []},
        "infos": ["PromQL info: metric might not be a counter"],
    }
    stub.post("/api/v1/query").respond(200, json=body)
    with capture_logs() as logs:
        result = await client.query("rate(x[1m])")
    assert result.infos == ("PromQL info: metric might not be a counter",)
    assert [e["event"] for e in logs] == ["prometheus_query_info"]


# --- range queries ----------------------------------------------------------------------


async def test_range_query_gives_series_of_points_and_sends_start_end_step(stub, client):
    route = stub.post("/api/v1/query_range").answer(response_for("query_range_matrix.json"))

    result = await client.query_range(
        "demo_gauge", start=1795321366.625, end=1795321396.625, step=5
    )

    assert form(route.last) == {
        "query": "demo_gauge",
        "start": "1795321366.625",
        "end": "1795321396.625",
        "step": "5.0",
        "timeout": "2.0",
    }
    checkout = result.series[0]
    assert checkout.labels["service"] == "checkout"
    assert len(checkout.points) == 7
    assert checkout.points[0] == (1795321366.625, 7.5)
    assert checkout.points[-1] == (1795321396.625, 7.5)


async def test_range_query_of_a_scalar_gives_one_series_without_labels(stub, client):
    stub.post("/api/v1/query_range").answer(response_for("query_range_scalar.json"))
    result = await client.query_range("scalar(sum(demo_gauge))", start=1, end=2, step=5)
    assert len(result.series) == 1
    assert result.series[0].labels == {}
    assert [v for _, v in result.series[0].points] == [9.5, 9.5, 9.5]


async def test_range_query_warnings_are_returned(stub, client):
    stub.post("/api/v1/query_range").answer(response_for("query_range_matrix_with_warnings.json"))
    result = await client.query_range("demo_gauge", start=1, end=2, step=10)
    assert len(result.warnings) == 1
    assert result.series[0].points[0] == (1795321606.355, 7.5)


async def test_range_query_answering_a_vector_is_a_response_error(stub, client):
    stub.post("/api/v1/query_range").answer(response_for("query_instant_vector.json"))
    with pytest.raises(PrometheusResponseError, match="expected matrix"):
        await client.query_range(QUERY, start=1, end=2, step=1)


# --- errors -----------------------------------------------------------------------------

ERROR_FIXTURES = sorted(
    path.name
    for path in PROM.glob("error_*.json")
    if not fixture(path.name).get("_non_json_response")
)


def test_every_json_error_fixture_is_covered():
    assert len(ERROR_FIXTURES) >= 18


@pytest.mark.parametrize("name", ERROR_FIXTURES)
async def test_error_bodies_raise_typed_errors_naming_the_query(stub, client, name):
    body = fixture(name)
    stub.post("/api/v1/query").answer(response_for(name))

    with pytest.raises(PrometheusError) as caught:
        await client.query(QUERY)

    error = caught.value
    assert error.query == QUERY
    assert QUERY in str(error)
    assert body["error"] in str(error)
    if body["errorType"] == "timeout":
        assert type(error) is PrometheusTimeout
    else:
        assert type(error) is PrometheusQueryError
        assert error.error_type == body["errorType"]
        assert error.error == body["error"]


async def test_range_query_error_body_raises_query_error(stub, client):
    stub.post("/api/v1/query_range").answer(response_for("error_range_end_before_start.json"))
    with pytest.raises(PrometheusQueryError, match="end timestamp must not be before") as caught:
        await client.query_range("up", start=2, end=1, step=5)
    assert caught.value.error_type == "bad_data"
    assert "up" in str(caught.value)


async def test_startup_503_text_means_unavailable(stub, client):
    stub.post("/api/v1/query").answer(response_for("startup_not_ready_503_text.json"))
    with pytest.raises(PrometheusUnavailable, match="HTTP 503") as caught:
        await client.query(QUERY)
    assert QUERY in str(caught.value)
    assert "Service Unavailable" in str(caught.value)


async def test_unknown_endpoint_404_text_is_a_response_error(stub, client):
    stub.post("/api/v1/query").answer(response_for("error_unknown_endpoint.json"))
    with pytest.raises(PrometheusResponseError, match="HTTP 404") as caught:
        await client.query(QUERY)
    assert QUERY in str(caught.value)


async def test_bad_gateway_html_means_unavailable(stub, client):
    stub.post("/api/v1/query").respond(502, text="<html>Bad Gateway</html>")
    with pytest.raises(PrometheusUnavailable, match="HTTP 502"):
        await client.query(QUERY)


@pytest.mark.parametrize(
    "response",
    [
        text_answer(200, "not json at all"),
        json_answer(200, {"hello": "world"}),
        json_answer(200, ["a", "list"]),
        json_answer(200, {"status": "success"}),
        json_answer(200, {"status": "success", "data": {"resultType": "x", "result": []}}),
        json_answer(
            200,
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, 2]}]},
            },
        ),
        json_answer(
            200,
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "abc"]}]},
            },
        ),
    ],
    ids=[
        "not-json",
        "no-envelope",
        "json-list",
        "no-data",
        "unknown-result-type",
        "value-not-string",
        "value-not-number",
    ],
)
async def test_bodies_that_are_not_the_api_envelope_are_response_errors(stub, client, response):
    stub.post("/api/v1/query").answer(response)
    with pytest.raises(PrometheusResponseError) as caught:
        await client.query(QUERY)
    assert caught.value.query == QUERY


@pytest.mark.parametrize("phase", ["read", "connect"])
async def test_timeouts_become_prometheus_timeout(stub, unanswered_url, phase):
    # read: the stub takes the request and never answers; connect: the SYN is never answered.
    if phase == "read":
        stub.post("/api/v1/query").handle(stub.stall)
    url = stub.url if phase == "read" else unanswered_url
    async with PrometheusClient(url=url, timeout_s=5.0) as prom:
        started = time.monotonic()
        with pytest.raises(PrometheusTimeout) as caught:
            await prom.query(QUERY, timeout_s=0.2)
        waited = time.monotonic() - started
    assert QUERY in str(caught.value)
    word = {"read": "ReadTimeout", "connect": "ConnectTimeout"}[phase]
    assert f"no answer from {url} within 0.2s ({word})" in str(caught.value)
    assert isinstance(caught.value.__cause__, aiohttp.ServerTimeoutError)
    assert 0.2 <= waited < 2.0  # the query's own timeout, not the client's 5 s


@pytest.mark.parametrize("failure", ["connect", "protocol", "not-http"])
async def test_transport_errors_become_unavailable(stub, refused_url, failure):
    if failure == "protocol":
        stub.post("/api/v1/query").handle(hang_up)
    if failure == "not-http":
        stub.post("/api/v1/query").handle(garbage)
    url = refused_url if failure == "connect" else stub.url
    async with PrometheusClient(url=url, timeout_s=2.0) as prom:
        started = time.monotonic()
        with pytest.raises(PrometheusUnavailable, match="cannot reach") as caught:
            await prom.query(QUERY)
        assert time.monotonic() - started < 1.0  # at once, not after the timeout
    assert QUERY in str(caught.value)
    assert url in str(caught.value)
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    if failure == "connect":
        assert "connection refused" in str(caught.value)
    else:
        assert len(stub.post("/api/v1/query").calls) == 1


async def test_query_before_connect_is_unavailable_not_a_crash():
    prom = PrometheusClient(url="http://127.0.0.1:9")
    with pytest.raises(PrometheusUnavailable, match="not connected"):
        await prom.query(QUERY)


# --- read (the Monitor's MetricSource) --------------------------------------------------


async def test_read_returns_vector_samples(stub, client):
    stub.post("/api/v1/query").answer(response_for("query_instant_vector.json"))
    samples = await client.read("gauge", "demo_gauge", timeout_s=0.5)
    assert [s.value for s in samples] == [7.5, 2.0]


async def test_read_passes_its_timeout_to_prometheus(stub, client):
    route = stub.post("/api/v1/query").answer(response_for("query_scalar.json"))
    samples = await client.read("total", "scalar(sum(demo_gauge))", timeout_s=0.5)
    assert form(route.last)["timeout"] == "0.5"
    assert [(s.labels, s.value) for s in samples] == [({}, 9.5)]


@pytest.mark.parametrize("name", ["query_string.json", "query_instant_matrix_range_selector.json"])
async def test_read_refuses_results_that_are_not_vector_or_scalar(stub, client, name):
    stub.post("/api/v1/query").answer(response_for(name))
    with pytest.raises(PrometheusResponseError, match="'gauge' returned a"):
        await client.read("gauge", "demo_gauge[5s]", timeout_s=1)


# --- readiness and lifecycle ------------------------------------------------------------


async def test_ready_is_true_on_200(stub, client):
    body = fixture("health_ready.json")
    stub.get("/-/ready").respond(200, text=body["body_text"])
    assert await client.ready() is True


async def test_ready_is_false_while_starting_or_unreachable(stub, client):
    route = stub.get("/-/ready")
    route.respond(503, text="Service Unavailable")
    assert await client.ready() is False
    assert len(route.calls) == 1
    await stub.server.close()  # now nobody listens there
    assert await client.ready() is False


async def test_async_with_connects_and_disconnects():
    prom = PrometheusClient(url="http://127.0.0.1:9")
    assert not prom.connected
    async with prom:
        assert prom.connected
    assert not prom.connected


async def test_one_http_client_is_shared_by_all_queries(stub):
    route = stub.post("/api/v1/query").answer(response_for("query_scalar.json"))
    prom = PrometheusClient(url=stub.url)
    await prom.connect()
    shared = prom._client
    await prom.connect()  # idempotent: still the same client
    await prom.query("1")
    await prom.query("2")
    assert prom._client is shared
    await prom.disconnect()
    assert shared is not None
    assert shared.closed
    assert [form(seen)["query"] for seen in route.calls] == ["1", "2"]
    assert route.calls[0].peer == route.calls[1].peer  # one kept-alive connection


async def test_an_injected_http_client_is_used_and_left_open(stub):
    route = stub.post("/api/v1/query").answer(response_for("query_scalar.json"))
    async with aiohttp.ClientSession(headers={"X-Injected": "yes"}) as http:
        async with PrometheusClient(url=stub.url, session=http) as prom:
            result = await prom.query("1")
        assert result.samples[0].value == 9.5
        assert route.last.headers["X-Injected"] == "yes"  # it went through that session
        assert not http.closed


async def test_the_pool_holds_at_most_max_connections(stub):
    """What replaced the injectable httpx transport: the client's own aiohttp connector,
    `max_connections` wide."""
    answer = response_for("query_scalar_literal.json")
    in_flight = peak = 0

    async def slow(_: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(body=answer.body, content_type="application/json")

    route = stub.post("/api/v1/query").handle(slow)
    async with PrometheusClient(url=stub.url, max_connections=2) as prom:
        results = await asyncio.gather(*(prom.query("1 + 1") for _ in range(6)))
    assert [(r.result_type, r.samples[0].value) for r in results] == [("scalar", 2.0)] * 6
    assert peak == 2
    assert len({seen.peer for seen in route.calls}) == 2


async def test_a_url_with_a_path_prefix_keeps_it(stub):
    # Prometheus behind a reverse proxy at /prometheus/ (--web.route-prefix).
    route = stub.post("/prometheus/api/v1/query").answer(response_for("query_scalar.json"))
    async with PrometheusClient(url=f"{stub.url}/prometheus/") as prom:
        assert prom.url == f"{stub.url}/prometheus"
        result = await prom.query("1")
    assert result.samples[0].value == 9.5
    assert len(route.calls) == 1
