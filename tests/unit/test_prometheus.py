"""PrometheusClient against real Prometheus 2.42 answers (tests/fixtures), served by respx."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
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
URL = "http://prometheus.test:9090"
QUERY = "max(westworld_charter_failure_rate)"


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((PROM / name).read_text())
    return body


def response_for(name: str) -> httpx.Response:
    """The fixture as the server sent it: its HTTP status, JSON or text body, content type."""
    body = fixture(name)
    if body.get("_non_json_response"):
        return httpx.Response(
            body["http_status"],
            text=body["body_text"],
            headers={"Content-Type": body["content_type"]},
        )
    status = INDEX[f"prometheus/{name}"]["http_status"]
    return httpx.Response(status, json=body)


def form(request: httpx.Request) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(request.content.decode()).items()}


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def client(router: respx.MockRouter) -> Any:
    async with PrometheusClient(url=URL, timeout_s=2.0) as prom:
        yield prom


# --- instant queries --------------------------------------------------------------------


async def test_vector_answer_becomes_samples_with_labels_values_and_timestamps(router, client):
    router.post("/api/v1/query").mock(return_value=response_for("query_instant_vector.json"))

    result = await client.query("demo_gauge")

    assert result.result_type == "vector"
    assert [(s.labels["service"], s.value, s.timestamp) for s in result.samples] == [
        ("checkout", 7.5, 1795321396.63),
        ("payments", 2.0, 1795321396.63),
    ]
    assert result.samples[0].labels["__name__"] == "demo_gauge"
    assert result.warnings == ()


async def test_query_is_sent_as_post_form_with_prometheus_timeout_and_time(router, client):
    route = router.post("/api/v1/query").mock(
        return_value=response_for("query_instant_vector_post_form.json")
    )
    long_query = " or ".join(["up"] * 500)  # would not fit a GET URL comfortably

    result = await client.query(long_query, time=1795321396.5, timeout_s=1.5)

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form(request) == {"query": long_query, "time": "1795321396.5", "timeout": "1.5"}
    assert result.samples[0].labels["__name__"] == "up"
    assert result.samples[0].value == 1.0


async def test_default_timeout_comes_from_the_config(router):
    route = router.post("/api/v1/query").mock(
        return_value=response_for("query_instant_vector.json")
    )
    async with PrometheusClient(PrometheusConfig(url=URL, timeout_s=3.0)) as prom:
        await prom.query("demo_gauge")
    assert form(route.calls.last.request)["timeout"] == "3.0"


async def test_empty_vector_gives_no_samples(router, client):
    router.post("/api/v1/query").mock(return_value=response_for("query_instant_vector_empty.json"))
    result = await client.query('demo_gauge{service="does-not-exist"}')
    assert result.result_type == "vector"
    assert result.samples == ()


async def test_scalar_answer_becomes_one_sample_without_labels(router, client):
    router.post("/api/v1/query").mock(return_value=response_for("query_scalar.json"))

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
async def test_special_values_nan_and_inf_are_parsed(router, client, name, check):
    router.post("/api/v1/query").mock(return_value=response_for(name))
    result = await client.query("1/0")
    assert check(result.samples[0].value)


async def test_string_answer_is_kept_as_text(router, client):
    router.post("/api/v1/query").mock(return_value=response_for("query_string.json"))
    result = await client.query('"hello"')
    assert result.result_type == "string"
    assert result.string == "hello"
    assert result.samples == ()


async def test_instant_query_over_a_range_selector_gives_series(router, client):
    router.post("/api/v1/query").mock(
        return_value=response_for("query_instant_matrix_range_selector.json")
    )
    result = await client.query("demo_gauge[5s]")
    assert result.result_type == "matrix"
    assert [s.labels["service"] for s in result.series] == ["checkout", "payments"]
    assert result.series[0].points[0] == (1795321392.539, 7.5)


async def test_warnings_are_returned_and_logged_once_per_text(router, client):
    router.post("/api/v1/query").mock(
        return_value=response_for("query_instant_vector_with_warnings.json")
    )
    with capture_logs() as logs:
        first = await client.query("demo_gauge")
        second = await client.query("demo_gauge")

    assert len(first.samples) == 2
    assert first.warnings == second.warnings
    assert first.warnings[0].startswith("remote_read: error sending request")
    warning_logs = [e for e in logs if e["event"] == "prometheus_query_warning"]
    assert len(warning_logs) == 1
    assert warning_logs[0]["query"] == "demo_gauge"


async def test_infos_are_returned(router, client):
    body = {
        "status": "success",
        "data": {"resultType": "vector", "result": []},
        "infos": ["PromQL info: metric might not be a counter"],
    }
    router.post("/api/v1/query").respond(200, json=body)
    with capture_logs() as logs:
        result = await client.query("rate(x[1m])")
    assert result.infos == ("PromQL info: metric might not be a counter",)
    assert [e["event"] for e in logs] == ["prometheus_query_info"]


# --- range queries ----------------------------------------------------------------------


async def test_range_query_gives_series_of_points_and_sends_start_end_step(router, client):
    route = router.post("/api/v1/query_range").mock(
        return_value=response_for("query_range_matrix.json")
    )

    result = await client.query_range(
        "demo_gauge", start=1795321366.625, end=1795321396.625, step=5
    )

    assert form(route.calls.last.request) == {
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


async def test_range_query_of_a_scalar_gives_one_series_without_labels(router, client):
    router.post("/api/v1/query_range").mock(return_value=response_for("query_range_scalar.json"))
    result = await client.query_range("scalar(sum(demo_gauge))", start=1, end=2, step=5)
    assert len(result.series) == 1
    assert result.series[0].labels == {}
    assert [v for _, v in result.series[0].points] == [9.5, 9.5, 9.5]


async def test_range_query_warnings_are_returned(router, client):
    router.post("/api/v1/query_range").mock(
        return_value=response_for("query_range_matrix_with_warnings.json")
    )
    result = await client.query_range("demo_gauge", start=1, end=2, step=10)
    assert len(result.warnings) == 1
    assert result.series[0].points[0] == (1795321606.355, 7.5)


async def test_range_query_answering_a_vector_is_a_response_error(router, client):
    router.post("/api/v1/query_range").mock(return_value=response_for("query_instant_vector.json"))
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
async def test_error_bodies_raise_typed_errors_naming_the_query(router, client, name):
    body = fixture(name)
    router.post("/api/v1/query").mock(return_value=response_for(name))

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


async def test_range_query_error_body_raises_query_error(router, client):
    router.post("/api/v1/query_range").mock(
        return_value=response_for("error_range_end_before_start.json")
    )
    with pytest.raises(PrometheusQueryError, match="end timestamp must not be before") as caught:
        await client.query_range("up", start=2, end=1, step=5)
    assert caught.value.error_type == "bad_data"
    assert "up" in str(caught.value)


async def test_startup_503_text_means_unavailable(router, client):
    router.post("/api/v1/query").mock(return_value=response_for("startup_not_ready_503_text.json"))
    with pytest.raises(PrometheusUnavailable, match="HTTP 503") as caught:
        await client.query(QUERY)
    assert QUERY in str(caught.value)
    assert "Service Unavailable" in str(caught.value)


async def test_unknown_endpoint_404_text_is_a_response_error(router, client):
    router.post("/api/v1/query").mock(return_value=response_for("error_unknown_endpoint.json"))
    with pytest.raises(PrometheusResponseError, match="HTTP 404") as caught:
        await client.query(QUERY)
    assert QUERY in str(caught.value)


async def test_bad_gateway_html_means_unavailable(router, client):
    router.post("/api/v1/query").respond(502, text="<html>Bad Gateway</html>")
    with pytest.raises(PrometheusUnavailable, match="HTTP 502"):
        await client.query(QUERY)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="not json at all"),
        httpx.Response(200, json={"hello": "world"}),
        httpx.Response(200, json=["a", "list"]),
        httpx.Response(200, json={"status": "success"}),
        httpx.Response(200, json={"status": "success", "data": {"resultType": "x", "result": []}}),
        httpx.Response(
            200,
            json={
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, 2]}]},
            },
        ),
        httpx.Response(
            200,
            json={
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
async def test_bodies_that_are_not_the_api_envelope_are_response_errors(router, client, response):
    router.post("/api/v1/query").mock(return_value=response)
    with pytest.raises(PrometheusResponseError) as caught:
        await client.query(QUERY)
    assert caught.value.query == QUERY


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("read timed out"), httpx.ConnectTimeout("connect timed out")],
    ids=["read", "connect"],
)
async def test_httpx_timeouts_become_prometheus_timeout(router, client, exc):
    router.post("/api/v1/query").mock(side_effect=exc)
    with pytest.raises(PrometheusTimeout) as caught:
        await client.query(QUERY)
    assert QUERY in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("Connection refused"), httpx.RemoteProtocolError("peer closed")],
    ids=["connect", "protocol"],
)
async def test_transport_errors_become_unavailable(router, client, exc):
    router.post("/api/v1/query").mock(side_effect=exc)
    with pytest.raises(PrometheusUnavailable, match="cannot reach") as caught:
        await client.query(QUERY)
    assert QUERY in str(caught.value)


async def test_query_before_connect_is_unavailable_not_a_crash():
    prom = PrometheusClient(url=URL)
    with pytest.raises(PrometheusUnavailable, match="not connected"):
        await prom.query(QUERY)


# --- read (the Monitor's MetricSource) --------------------------------------------------


async def test_read_returns_vector_samples(router, client):
    router.post("/api/v1/query").mock(return_value=response_for("query_instant_vector.json"))
    samples = await client.read("gauge", "demo_gauge", timeout_s=0.5)
    assert [s.value for s in samples] == [7.5, 2.0]


async def test_read_passes_its_timeout_to_prometheus(router, client):
    route = router.post("/api/v1/query").mock(return_value=response_for("query_scalar.json"))
    samples = await client.read("total", "scalar(sum(demo_gauge))", timeout_s=0.5)
    assert form(route.calls.last.request)["timeout"] == "0.5"
    assert [(s.labels, s.value) for s in samples] == [({}, 9.5)]


@pytest.mark.parametrize("name", ["query_string.json", "query_instant_matrix_range_selector.json"])
async def test_read_refuses_results_that_are_not_vector_or_scalar(router, client, name):
    router.post("/api/v1/query").mock(return_value=response_for(name))
    with pytest.raises(PrometheusResponseError, match="'gauge' returned a"):
        await client.read("gauge", "demo_gauge[5s]", timeout_s=1)


# --- readiness and lifecycle ------------------------------------------------------------


async def test_ready_is_true_on_200(router, client):
    body = fixture("health_ready.json")
    router.get("/-/ready").respond(200, text=body["body_text"])
    assert await client.ready() is True


async def test_ready_is_false_while_starting_or_unreachable(router, client):
    route = router.get("/-/ready")
    route.respond(503, text="Service Unavailable")
    assert await client.ready() is False
    route.mock(side_effect=httpx.ConnectError("refused"))
    assert await client.ready() is False


async def test_async_with_connects_and_disconnects(router):
    prom = PrometheusClient(url=URL)
    assert not prom.connected
    async with prom:
        assert prom.connected
    assert not prom.connected


async def test_one_http_client_is_shared_by_all_queries(router):
    router.post("/api/v1/query").mock(return_value=response_for("query_scalar.json"))
    prom = PrometheusClient(url=URL)
    await prom.connect()
    shared = prom._client
    await prom.connect()  # idempotent: still the same client
    await prom.query("1")
    await prom.query("2")
    assert prom._client is shared
    await prom.disconnect()
    assert shared is not None
    assert shared.is_closed


async def test_an_injected_http_client_is_used_and_left_open(router):
    router.post("/api/v1/query").mock(return_value=response_for("query_scalar.json"))
    async with httpx.AsyncClient(base_url=URL) as http:
        async with PrometheusClient(url=URL, client=http) as prom:
            result = await prom.query("1")
        assert result.samples[0].value == 9.5
        assert not http.is_closed


async def test_transport_can_be_injected():
    def handler(request: httpx.Request) -> httpx.Response:
        return response_for("query_scalar_literal.json")

    async with PrometheusClient(url=URL, transport=httpx.MockTransport(handler)) as prom:
        result = await prom.query("1 + 1")
    assert result.result_type == "scalar"
    assert result.samples[0].value == 2.0
