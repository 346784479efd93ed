"""HttpCharterClient against respx: what the simulator cannot easily produce.

Timeouts, 5xx sequences, malformed JSON, connection resets, 4xx (never retried), retries
only where safe, backoff, token and idempotency headers, metrics.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import respx
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from mape_k.config import CharterConfig, CharterMode
from mape_k.errors import CharterError, CharterNotFound, CharterRequestError, CharterUnavailable
from mape_k.integrations.charter import get_charter_client
from mape_k.integrations.charter.http import HttpCharterClient
from mape_k.integrations.charter.mock import MockCharterClient
from mape_k.metrics import Metrics

URL = "http://charter.test"
STATE = {
    "size": 3,
    "healthy_members": 3,
    "target_size": 3,
    "offered_load": 180.0,
    "throughput_ops_per_sec": 179.0,
    "failure_rate": 0.0,
    "p99_latency_s": 0.1,
    "queue_depth": 0.0,
    "throttle_limit": None,
    "emergency_override": False,
    "validation_bypass": False,
    "active_policy": "baseline-v1",
    "config": {"batch_size": 16},
}
RESULT = {
    "operation": "restart_committee",
    "idempotency_key": "k",
    "replayed": False,
    "previous": {},
    "current": {"available_at": 3.0},
}


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def client(sleeps: Sleeps, metrics: Metrics) -> AsyncIterator[HttpCharterClient]:
    charter = HttpCharterClient(
        url=URL,
        token="tok",
        retries=3,
        backoff_s=0.2,
        sleep=sleeps,
        metrics=metrics,
        rng=random.Random(1),
    )
    async with charter:
        yield charter


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=f"{URL}/api/v1", assert_all_called=False) as mocked:
        yield mocked


def calls(metrics: Metrics, operation: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "mapek_charter_calls_total", {"operation": operation, "result": result}
    )
    return value or 0.0


async def test_a_get_is_retried_through_a_5xx_sequence(
    client: HttpCharterClient, router: respx.MockRouter, sleeps: Sleeps, metrics: Metrics
) -> None:
    route = router.get("/committee").mock(
        side_effect=[
            httpx.Response(502),
            httpx.Response(503, json={"error": "busy"}),
            httpx.Response(504),
            httpx.Response(200, json=STATE),
        ]
    )
    state = await client.get_committee_state()
    assert state.size == 3
    assert route.call_count == 4
    assert len(sleeps.delays) == 3
    assert calls(metrics, "get_committee_state", "ok") == 1


async def test_retries_stop_after_the_configured_count_with_the_server_message(
    client: HttpCharterClient, router: respx.MockRouter, metrics: Metrics
) -> None:
    route = router.get("/committee").mock(
        return_value=httpx.Response(503, json={"error": "committee busy"})
    )
    with pytest.raises(CharterUnavailable) as info:
        await client.get_committee_state()
    assert route.call_count == 4
    assert info.value.status == 503
    assert info.value.message == "committee busy"
    assert info.value.operation == "get_committee_state"
    assert calls(metrics, "get_committee_state", "unavailable") == 1


async def test_a_500_is_not_retried(client: HttpCharterClient, router: respx.MockRouter) -> None:
    route = router.get("/committee").mock(return_value=httpx.Response(500, text="boom"))
    with pytest.raises(CharterUnavailable) as info:
        await client.get_committee_state()
    assert route.call_count == 1
    assert info.value.status == 500


async def test_timeouts_are_retried_then_reported_as_unavailable(
    client: HttpCharterClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = router.get("/policies").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(CharterUnavailable) as info:
        await client.get_policies()
    assert route.call_count == 4
    assert "timed out" in info.value.message
    assert isinstance(info.value.__cause__, httpx.TimeoutException)
    assert len(sleeps.delays) == 3


async def test_a_connection_reset_is_retried_and_can_recover(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    route = router.get("/policies").mock(
        side_effect=[
            httpx.ReadError("Connection reset by peer"),
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            httpx.Response(200, json={"policies": []}),
        ]
    )
    assert await client.get_policies() == []
    assert route.call_count == 3


async def test_a_connect_error_becomes_unavailable_naming_the_url(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    router.get("/ping").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(CharterUnavailable) as info:
        await client.ping()
    assert URL in info.value.message


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, CharterRequestError), (401, CharterRequestError), (409, CharterRequestError)],
)
async def test_4xx_is_never_retried_and_carries_status_and_message(
    client: HttpCharterClient,
    router: respx.MockRouter,
    metrics: Metrics,
    status: int,
    error: type[CharterError],
) -> None:
    route = router.post("/committee/scale").mock(
        return_value=httpx.Response(
            status, json={"error": "size must be in 1..50", "field": "size"}
        )
    )
    with pytest.raises(error) as info:
        await client.scale_committee(0, idempotency_key="k")
    assert not isinstance(info.value, CharterNotFound)
    assert route.call_count == 1
    assert (info.value.status, info.value.message) == (status, "size must be in 1..50")
    assert calls(metrics, "scale_committee", "rejected") == 1


async def test_404_is_not_found(client: HttpCharterClient, router: respx.MockRouter) -> None:
    router.post("/policies/ghost/apply").mock(
        return_value=httpx.Response(404, json={"error": "unknown policy 'ghost'"})
    )
    with pytest.raises(CharterNotFound) as info:
        await client.apply_policy("ghost", idempotency_key="k")
    assert info.value.status == 404
    assert "ghost" in info.value.message


async def test_a_4xx_without_a_json_body_uses_the_text(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    router.get("/committee").mock(return_value=httpx.Response(403, text="forbidden by proxy"))
    with pytest.raises(CharterRequestError) as info:
        await client.get_committee_state()
    assert info.value.message == "forbidden by proxy"


async def test_malformed_json_is_a_charter_error_not_retried(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    route = router.get("/committee").mock(return_value=httpx.Response(200, text="<html>oops"))
    with pytest.raises(CharterError) as info:
        await client.get_committee_state()
    assert type(info.value) is CharterError
    assert "malformed" in info.value.message
    assert route.call_count == 1


async def test_json_of_the_wrong_shape_is_a_malformed_response(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    router.get("/committee").mock(return_value=httpx.Response(200, json={"size": 3}))
    router.get("/violations").mock(return_value=httpx.Response(200, json=[1, 2]))
    with pytest.raises(CharterError, match="malformed"):
        await client.get_committee_state()
    with pytest.raises(CharterError, match="malformed"):
        await client.get_violations()


async def test_a_keyed_post_is_retried_with_the_same_key(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    route = router.post("/committee/restart").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(502),
            httpx.Response(200, json=RESULT),
        ]
    )
    result = await client.restart_committee(idempotency_key="k")
    assert result.current == {"available_at": 3.0}
    assert route.call_count == 3
    assert {call.request.headers["Idempotency-Key"] for call in route.calls} == {"k"}


async def test_a_full_restart_sends_no_body_and_an_unhealthy_only_one_says_its_scope(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    route = router.post("/committee/restart").mock(return_value=httpx.Response(200, json=RESULT))
    await client.restart_committee(idempotency_key="all")
    await client.restart_committee(idempotency_key="some", scope="unhealthy")
    await client.restart_committee(idempotency_key="turns", scope="rolling")
    full, narrow, rolling = (call.request for call in route.calls)
    assert full.content == b""  # what a Charter without scopes has always been sent
    assert json.loads(narrow.content) == {"scope": "unhealthy"}
    assert json.loads(rolling.content) == {"scope": "rolling"}
    assert narrow.headers["Idempotency-Key"] == "some"


async def test_a_post_without_a_key_is_not_retried(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    route = router.post("/committee/restart").mock(return_value=httpx.Response(503))
    with pytest.raises(CharterUnavailable):
        await client.restart_committee(idempotency_key="")
    assert route.call_count == 1
    assert "Idempotency-Key" not in route.calls[0].request.headers


async def test_a_put_is_retried_even_without_a_key(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    body = {**RESULT, "operation": "set_throttle", "current": {"throttle_limit": 5.0}}
    route = router.put("/throttle").mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json=body)]
    )
    result = await client.set_throttle(5.0, idempotency_key="")
    assert result.current == {"throttle_limit": 5.0}
    assert route.call_count == 2
    assert route.calls[0].request.content == b'{"limit_ops_per_sec":5.0}'


async def test_requests_carry_the_bearer_token(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    route = router.get("/ping").mock(return_value=httpx.Response(200, json={"status": "ok"}))
    await client.ping()
    assert route.calls[0].request.headers["Authorization"] == "Bearer tok"


async def test_the_token_file_of_the_config_is_used(
    tmp_path: Path, router: respx.MockRouter
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n", encoding="utf-8")
    config = CharterConfig(mode=CharterMode.HTTP, url=URL, token_file=token_file)
    route = router.get("/ping").mock(return_value=httpx.Response(200, json={"status": "ok"}))
    async with HttpCharterClient(config) as charter:
        await charter.ping()
    assert route.calls[0].request.headers["Authorization"] == "Bearer from-file"


async def test_no_authorization_header_without_a_token(router: respx.MockRouter) -> None:
    route = router.get("/ping").mock(return_value=httpx.Response(200, json={"status": "ok"}))
    async with HttpCharterClient(url=URL) as charter:
        await charter.ping()
    assert "Authorization" not in route.calls[0].request.headers


async def test_policy_ids_are_escaped_in_the_path(
    client: HttpCharterClient, router: respx.MockRouter
) -> None:
    route = router.post("/policies/a%2Fb%20c/validate").mock(
        return_value=httpx.Response(200, json={"policy_id": "a/b c", "valid": True, "errors": []})
    )
    assert (await client.validate_policy("a/b c")).valid
    assert route.call_count == 1


def test_backoff_is_exponential_jittered_and_capped() -> None:
    charter = HttpCharterClient(url=URL, backoff_s=0.2, rng=random.Random(3))
    for attempt, ceiling in [(0, 0.2), (1, 0.4), (2, 0.8), (10, 5.0)]:
        delays = [charter.backoff(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


async def test_call_durations_are_observed(
    client: HttpCharterClient, router: respx.MockRouter, metrics: Metrics
) -> None:
    router.get("/ping").mock(return_value=httpx.Response(200, json={"status": "ok"}))
    await client.ping()
    count = metrics.registry.get_sample_value(
        "mapek_charter_call_duration_seconds_count", {"operation": "ping"}
    )
    assert count == 1


def test_get_charter_client_picks_by_mode() -> None:
    http = get_charter_client(CharterConfig(mode=CharterMode.HTTP, token=SecretStr("x")))
    assert isinstance(http, HttpCharterClient)
    mock = get_charter_client(CharterConfig(mock_seed=3, mock_regime="spike"), clock=lambda: 5.0)
    assert isinstance(mock, MockCharterClient)
    assert (mock.committee.seed, mock.committee.regime) == (3, "spike")
