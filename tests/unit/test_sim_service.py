"""The Charter simulator service: API errors, auth, idempotency, /sim/*, /metrics, serve()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import httpx
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from openapi_schema_validator import OAS30Validator
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeClock
from mape_k import openapi
from mape_k.sim.committee import Committee
from mape_k.sim.service import build_app, serve

START = 1_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(seed=7, regime="calm", clock=clock)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def metric(client: TestClient[Any, Any], name: str) -> float:
    response = await client.get("/metrics")
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


async def test_health_answers_ok(client: TestClient[Any, Any]) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_metrics_exposes_the_shared_families_in_prometheus_text(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    ours = {name for name in families if name.startswith("westworld_charter_")}
    assert len(ours) >= 15
    expected = {
        "westworld_charter_validation_latency_seconds": "histogram",
        "westworld_charter_failure_rate": "gauge",
        "westworld_charter_policy_error_rate": "gauge",
        "westworld_charter_p99_latency_seconds": "gauge",
        "westworld_charter_committee_size": "gauge",
        "westworld_charter_healthy_members": "gauge",
        "westworld_charter_throughput_ops_per_sec": "gauge",
        "westworld_charter_offered_load_ops_per_sec": "gauge",
        "westworld_charter_queue_depth": "gauge",
        "westworld_charter_saturation_ratio": "gauge",
        "westworld_charter_violations": "counter",
        "westworld_charter_policy_executions": "counter",
        "westworld_charter_errors": "counter",
        "westworld_charter_restarts": "counter",
        "westworld_charter_scale_operations": "counter",
        "westworld_charter_throttle_limit_ops_per_sec": "gauge",
        "westworld_charter_emergency_override_active": "gauge",
        "westworld_charter_validation_bypass_active": "gauge",
        "westworld_charter_active_policy_info": "gauge",
        "westworld_charter_up": "gauge",
    }
    assert {name: families[name].type for name in expected} == expected
    policy = families["westworld_charter_active_policy_info"].samples[0]
    assert (policy.labels, policy.value) == ({"policy": "baseline-v1"}, 1.0)
    results = {s.labels["result"] for s in families["westworld_charter_policy_executions"].samples}
    assert results == {"success", "failure"}


async def test_error_burst_raises_the_failure_rate_metric_and_a_restart_brings_it_back(
    client: TestClient[Any, Any], clock: FakeClock
) -> None:
    clock.advance(30)
    assert await metric(client, "westworld_charter_failure_rate") < 0.01
    response = await client.post(
        "/sim/faults", json={"kind": "error_burst", "magnitude": 0.5, "duration_s": 0}
    )
    assert response.status == 201
    clock.advance(3)
    assert await metric(client, "westworld_charter_failure_rate") > 0.05
    restart = await client.post("/api/v1/committee/restart", headers={"Idempotency-Key": "r1"})
    assert restart.status == 200
    clock.advance(10)
    assert await metric(client, "westworld_charter_failure_rate") < 0.05
    assert await metric(client, "westworld_charter_restarts_total") == 1


async def test_restarting_the_unhealthy_members_over_http_keeps_the_healthy_ones_serving(
    client: TestClient[Any, Any], clock: FakeClock
) -> None:
    crash = await client.post(
        "/sim/faults", json={"kind": "member_crash", "magnitude": 0.5, "duration_s": 0}
    )
    assert crash.status == 201
    clock.advance(5)
    headers = {"Idempotency-Key": "u1"}
    body = {"scope": "unhealthy"}
    response = await client.post("/api/v1/committee/restart", json=body, headers=headers)
    assert response.status == 200
    result = await response.json()
    assert (result["operation"], result["replayed"]) == ("restart_committee", False)
    assert result["current"]["restarted_members"] == 1
    for _ in range(5):  # the 3 s the crashed member takes to come back
        clock.advance(0.5)
        assert await metric(client, "westworld_charter_healthy_members") == 2
        assert await metric(client, "westworld_charter_throughput_ops_per_sec") > 100
    clock.advance(1)
    assert await metric(client, "westworld_charter_healthy_members") == 3
    replay = await client.post("/api/v1/committee/restart", json=body, headers=headers)
    assert (await replay.json())["replayed"] is True
    assert await metric(client, "westworld_charter_restarts_total") == 1
    state = await (await client.get("/sim/state")).json()
    assert state["active_faults"] == []
    assert [a["arguments"] for a in state["actions"]] == [body, body]


async def test_restarting_the_unhealthy_members_of_a_healthy_committee_changes_nothing(
    client: TestClient[Any, Any], clock: FakeClock
) -> None:
    clock.advance(5)
    response = await client.post("/api/v1/committee/restart", json={"scope": "unhealthy"})
    assert response.status == 200
    assert (await response.json())["current"]["restarted_members"] == 0
    clock.advance(0.5)
    assert await metric(client, "westworld_charter_healthy_members") == 3
    assert await metric(client, "westworld_charter_restarts_total") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "meteor", "magnitude": 0.5, "duration_s": 0}, "kind"),
        ({"magnitude": 0.5, "duration_s": 0}, "kind"),
        ({"kind": "error_burst", "duration_s": 0}, "magnitude"),
        ({"kind": "error_burst", "magnitude": 0.5}, "duration_s"),
        ({"kind": "error_burst", "magnitude": 0, "duration_s": 0}, "magnitude"),
        ({"kind": "error_burst", "magnitude": 1.01, "duration_s": 0}, "magnitude"),
        ({"kind": "error_burst", "magnitude": "high", "duration_s": 0}, "magnitude"),
        ({"kind": "error_burst", "magnitude": 0.5, "duration_s": -1}, "duration_s"),
        ({"kind": "error_burst", "magnitude": 0.5, "duration_s": 0, "x": 1}, "x"),
    ],
)
async def test_a_bad_fault_is_a_400_naming_the_field(
    client: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    response = await client.post("/sim/faults", json=body)
    assert response.status == 400
    payload = await response.json()
    assert payload["field"] == field
    assert payload["error"]
    state = await (await client.get("/sim/state")).json()
    assert state["active_faults"] == []


async def test_a_fault_body_that_is_not_json_is_a_400(client: TestClient[Any, Any]) -> None:
    response = await client.post("/sim/faults", data=b"{kind", headers={"Content-Type": "x"})
    assert response.status == 400
    assert "JSON" in (await response.json())["error"]


async def test_faults_are_listed_in_state_and_delete_clears_them(
    client: TestClient[Any, Any],
) -> None:
    created = await client.post(
        "/sim/faults", json={"kind": "member_crash", "magnitude": 1, "duration_s": 30}
    )
    fault_id = (await created.json())["id"]
    state = await (await client.get("/sim/state")).json()
    assert [(f["id"], f["kind"]) for f in state["active_faults"]] == [(fault_id, "member_crash")]
    assert state["healthy_members"] < state["committee_size"]
    deleted = await client.delete("/sim/faults")
    assert deleted.status == 200
    state = await (await client.get("/sim/state")).json()
    assert state["active_faults"] == []
    assert state["healthy_members"] == state["committee_size"] == 3


async def test_state_has_the_documented_keys(client: TestClient[Any, Any]) -> None:
    state = await (await client.get("/sim/state")).json()
    for key in (
        "committee_size",
        "healthy_members",
        "offered_load",
        "failure_rate",
        "p99_latency_s",
        "active_faults",
        "actions",
    ):
        assert key in state


async def test_the_same_idempotency_key_twice_has_one_effect_and_the_first_result(
    client: TestClient[Any, Any], clock: FakeClock
) -> None:
    headers = {"Idempotency-Key": "scale-1"}
    first = await client.post("/api/v1/committee/scale", json={"size": 5}, headers=headers)
    clock.advance(1)
    second = await client.post("/api/v1/committee/scale", json={"size": 9}, headers=headers)
    one, two = await first.json(), await second.json()
    assert (one["replayed"], two["replayed"]) == (False, True)
    assert (two["previous"], two["current"]) == (one["previous"], one["current"])
    state = await (await client.get("/sim/state")).json()
    assert state["target_size"] == 5
    assert [(a["operation"], a["idempotency_key"], a["replayed"]) for a in state["actions"]] == [
        ("scale_committee", "scale-1", False),
        ("scale_committee", "scale-1", True),
    ]
    assert state["actions"][0]["arguments"] == {"size": 5}
    assert await metric(client, "westworld_charter_scale_operations_total") == 1


async def test_calls_without_an_idempotency_key_still_work_and_are_not_deduplicated(
    client: TestClient[Any, Any],
) -> None:
    for _ in range(2):
        assert (await client.post("/api/v1/committee/restart")).status == 200
    assert await metric(client, "westworld_charter_restarts_total") == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("POST", "/api/v1/committee/scale", {"size": 0}, 400, "size"),
        ("POST", "/api/v1/committee/scale", {"size": 51}, 400, "size"),
        ("POST", "/api/v1/committee/scale", {"size": "4"}, 400, "size"),
        ("POST", "/api/v1/committee/scale", {}, 400, "size"),
        ("POST", "/api/v1/policies/nope/apply", None, 404, None),
        ("POST", "/api/v1/policies/nope/validate", None, 404, None),
        ("POST", "/api/v1/policies/strict-v2/rollback", None, 409, None),
        ("PUT", "/api/v1/throttle", {"limit_ops_per_sec": -1}, 400, "limit_ops_per_sec"),
        ("PUT", "/api/v1/validation-bypass", {"active": "yes"}, 400, "active"),
        ("PATCH", "/api/v1/config", {"settings": {"warp": 1}}, 400, "settings.warp"),
        ("PATCH", "/api/v1/config", {"settings": {}}, 400, "settings"),
        ("POST", "/api/v1/committee/restart", {"scope": "crashed"}, 400, "scope"),
        ("POST", "/api/v1/committee/restart", {"scope": 1}, 400, "scope"),
        ("POST", "/api/v1/committee/restart", {"force": True}, 400, "force"),
    ],
)
async def test_bad_requests_get_a_4xx_json_error_naming_the_problem(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    field: str | None,
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status == status
    payload = await response.json()
    assert payload["field"] == field
    assert payload["error"]


async def test_every_api_operation_answers(client: TestClient[Any, Any]) -> None:
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/v1/ping", None),
        ("GET", "/api/v1/policies", None),
        ("POST", "/api/v1/policies/strict-v2/validate", None),
        ("POST", "/api/v1/policies/strict-v2/apply", None),
        ("POST", "/api/v1/policies/strict-v2/rollback", None),
        ("GET", "/api/v1/committee", None),
        ("GET", "/api/v1/violations", None),
        ("POST", "/api/v1/committee/scale", {"size": 4}),
        ("POST", "/api/v1/committee/restart", None),
        ("POST", "/api/v1/committee/rebalance", None),
        ("PUT", "/api/v1/throttle", {"limit_ops_per_sec": None}),
        ("PUT", "/api/v1/validation-bypass", {"active": True}),
        ("PUT", "/api/v1/emergency-override", {"active": True}),
        ("PATCH", "/api/v1/config", {"settings": {"batch_size": 32}}),
    ]
    for method, path, body in calls:
        response = await client.request(method, path, json=body)
        assert response.status == 200, (method, path, await response.text())
    state = await (await client.get("/sim/state")).json()
    assert len(state["actions"]) == 9


async def test_a_configured_token_is_required_on_the_api_only(clock: FakeClock) -> None:
    app = build_app(seed=7, regime="calm", clock=clock, token="s3cret")
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/api/v1/committee")).status == 401
        wrong = await client.get("/api/v1/committee", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        assert "error" in await wrong.json()
        right = await client.get("/api/v1/committee", headers={"Authorization": "Bearer s3cret"})
        assert right.status == 200
        assert (await client.get("/health")).status == 200
        assert (await client.get("/metrics")).status == 200


async def test_chaos_makes_mutations_fail_until_switched_off(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/sim/chaos", json={"mutations_fail_with": 503})).status == 200
    assert (await client.post("/api/v1/committee/restart")).status == 503
    assert (await client.get("/api/v1/committee")).status == 200
    assert (await client.post("/api/v1/policies/baseline-v1/validate")).status == 200
    state = await (await client.get("/sim/state")).json()
    assert state["actions"] == []
    assert (await client.post("/sim/chaos", json={"mutations_fail_with": None})).status == 200
    assert (await client.post("/api/v1/committee/restart")).status == 200


async def test_chaos_can_fail_only_the_named_operations_and_lists_what_it_refused(
    client: TestClient[Any, Any],
) -> None:
    body = {"mutations_fail_with": 503, "operations": ["restart_committee"]}
    assert (await client.post("/sim/chaos", json=body)).status == 200
    refused = await client.post("/api/v1/committee/restart", headers={"Idempotency-Key": "k1"})
    assert refused.status == 503
    throttle = await client.put("/api/v1/throttle", json={"limit_ops_per_sec": 100})
    assert throttle.status == 200
    state = await (await client.get("/sim/state")).json()
    assert state["chaos_operations"] == ["restart_committee"]
    assert [a["operation"] for a in state["actions"]] == ["set_throttle"]
    assert [(r["operation"], r["idempotency_key"], r["status"]) for r in state["rejected"]] == [
        ("restart_committee", "k1", 503)
    ]


async def test_chaos_refuses_an_unknown_operation(client: TestClient[Any, Any]) -> None:
    body = {"mutations_fail_with": 503, "operations": ["reboot_everything"]}
    assert (await client.post("/sim/chaos", json=body)).status == 400


async def test_chaos_refuses_a_status_that_is_not_an_error(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/sim/chaos", json={"mutations_fail_with": 200})).status == 400


async def test_build_app_can_serve_a_given_committee(clock: FakeClock) -> None:
    committee = Committee(1, "calm", start=clock())
    committee.scale(6, now=clock())
    async with TestClient(
        TestServer(build_app(seed=0, regime="calm", clock=clock, committee=committee))
    ) as client:
        clock.advance(6)
        body = await (await client.get("/api/v1/committee")).json()
    assert body["size"] == 6


async def test_serve_listens_on_a_free_port_until_stopped() -> None:
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            host="127.0.0.1", port=0, seed=1, regime="spike", stop=stop, on_ready=ready.set_result
        )
    )
    port = await asyncio.wait_for(ready, 10)
    assert port > 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/sim/state")).json()["regime"] == "spike"
    stop.set()
    await asyncio.wait_for(task, 10)
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/health")


def test_the_openapi_document_describes_every_route_and_nothing_else() -> None:
    spec = openapi.document(openapi.CHARTER_API)
    assert spec["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }
    app = build_app(seed=1, regime="calm", clock=FakeClock(START))
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == served


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (None, 200),
        ({}, 200),
        ({"scope": "all"}, 200),
        ({"scope": "unhealthy"}, 200),
        ({"scope": "crashed"}, 400),
        ({"scope": 1}, 400),
        ({"force": True}, 400),
    ],
)
async def test_the_documented_restart_body_is_the_one_the_simulator_takes(
    client: TestClient[Any, Any], body: dict[str, Any] | None, status: int
) -> None:
    spec = openapi.document(openapi.CHARTER_API)
    operation = spec["paths"]["/api/v1/committee/restart"]["post"]
    assert operation["requestBody"]["required"] is False  # no body: a full restart
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    documented = body is None or not list(OAS30Validator(schema).iter_errors(body))
    response = await client.post("/api/v1/committee/restart", json=body)
    assert (response.status, documented) == (status, status == 200)
    assert str(status) in operation["responses"]
    if status == 200:
        result = spec["components"]["schemas"]["ActionResult"]
        assert list(OAS30Validator(result).iter_errors(await response.json())) == []


async def test_the_simulator_serves_its_document_without_a_token(clock: FakeClock) -> None:
    packaged = files("mape_k.openapi").joinpath("charter-api.yaml").read_bytes()
    app = build_app(seed=1, regime="calm", clock=clock, token="sim-token")
    async with TestClient(TestServer(app)) as client:
        as_json = await client.get("/openapi.json")
        assert as_json.status == 200
        assert as_json.content_type == "application/json"
        assert await as_json.json() == yaml.safe_load(packaged)
        as_yaml = await client.get("/openapi.yaml")
        assert as_yaml.status == 200
        assert as_yaml.content_type == "application/yaml"
        assert await as_yaml.read() == packaged
        assert (await client.get("/api/v1/ping")).status == 401  # the API still needs it


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/api/v1/nowhere", 404), ("DELETE", "/api/v1/committee", 405)],
)
async def test_unknown_routes_and_methods_also_answer_json_errors(
    client: TestClient[Any, Any], method: str, path: str, status: int
) -> None:
    response = await client.request(method, path)
    assert response.status == status
    assert path in (await response.json())["error"]
