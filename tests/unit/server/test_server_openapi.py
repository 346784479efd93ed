"""The daemon's OpenAPI document (src/mape_k/openapi/daemon-api.yaml) stays true.

Every route is documented, every status seen is, and the daemon serves the document.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import pytest
import yaml
from server_harness import (
    ADMIN_TOKEN,
    Harness,
    MakeHarness,
    admin_headers,
    fixture_payload,
    make_app_parts,
    webhook_headers,
)

from mape_k import openapi
from mape_k.integrations.alertmanager import MAX_TRUNCATED

FIRING = json.dumps(fixture_payload("firing_single_alert.json"))
TRUNCATED_2_53 = json.dumps(
    fixture_payload("firing_single_alert.json") | {"truncatedAlerts": 2**53 + 1}
)
TRUNCATED_2_64 = json.dumps(
    fixture_payload("firing_single_alert.json") | {"truncatedAlerts": 2**64}
)
OTHER = json.dumps(fixture_payload("retry_after_http_400_deliveries.json"))
JSON = {"Content-Type": "application/json"}
NOT_JSON = {"/metrics": "text/plain", "/openapi.yaml": "application/yaml"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return openapi.document(openapi.DAEMON_API)


def documented(spec: dict[str, Any], path: str, method: str) -> set[int]:
    return {int(code) for code in spec["paths"][path][method.lower()]["responses"]}


def test_every_registered_route_is_documented_and_nothing_else(spec: dict[str, Any]) -> None:
    app, *_ = make_app_parts(admin_token=ADMIN_TOKEN)
    registered = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None
    }
    in_spec = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert registered == in_spec


def test_spec_is_openapi_3_with_resolvable_refs(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    text = openapi.source(openapi.DAEMON_API).decode("utf-8")
    for ref in {part.split('"')[0] for part in text.split('$ref: "#/')[1:]}:
        node: Any = spec
        for key in ref.split("/"):
            node = node[key]
        assert node, ref


# (template path, method, request path, kwargs, the status this scenario must produce)
SCENARIOS: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": FIRING}, 200),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": "nope"}, 400),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": FIRING.encode("utf-16")}, 400),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": TRUNCATED_2_53, "fresh": True}, 200),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": TRUNCATED_2_64}, 422),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": FIRING, "token": "bad"}, 401),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": "x" * 5000}, 503),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"slow": True}, 408),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": FIRING, "ctype": "text/plain"}, 415),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": '{"version": "3"}'}, 422),
    ("/api/v1/alerts", "POST", "/api/v1/alerts", {"data": OTHER}, 503),
    ("/healthz", "GET", "/healthz", {}, 200),
    ("/healthz", "GET", "/healthz", {"unhealthy": True}, 503),
    ("/readyz", "GET", "/readyz", {}, 200),
    ("/readyz", "GET", "/readyz", {"unready": True}, 503),
    ("/stats", "GET", "/stats", {}, 200),
    ("/stats", "GET", "/stats?limit=20&before=1700000000", {}, 200),
    ("/stats", "GET", "/stats?limit=0", {}, 400),
    ("/stats", "GET", "/stats", {"broken": True}, 500),
    ("/metrics", "GET", "/metrics", {}, 200),
    ("/openapi.json", "GET", "/openapi.json", {}, 200),
    ("/openapi.yaml", "GET", "/openapi.yaml", {}, 200),
    ("/api/v1/policies/pending", "GET", "/api/v1/policies/pending", {"admin": True}, 200),
    ("/api/v1/policies/pending", "GET", "/api/v1/policies/pending", {}, 401),
    ("/api/v1/policies/pending", "GET", "/api/v1/policies/pending", {"no_admin": True}, 404),
]
for action in ("approve", "reject"):
    template = f"/api/v1/policies/{{id}}/{action}"
    SCENARIOS += [
        (template, "POST", f"/api/v1/policies/pol-1/{action}", {"admin": True}, 200),
        (template, "POST", f"/api/v1/policies/pol-1/{action}", {}, 401),
        (template, "POST", f"/api/v1/policies/nope/{action}", {"admin": True}, 404),
    ]
for template, good in (
    ("/api/v1/freeze", {"reason": "incident", "duration_s": None}),
    ("/api/v1/dry-run", {"enabled": False}),
    ("/api/v1/autonomy", {"key": "scale_up", "level": "shadow", "reason": "trial"}),
):
    SCENARIOS += [
        (template, "POST", template, {"admin": True, "data": json.dumps(good)}, 200),
        (template, "POST", template, {"admin": True, "data": "{"}, 400),
        (template, "POST", template, {"data": json.dumps(good)}, 401),
        (template, "POST", template, {"no_admin": True, "data": json.dumps(good)}, 404),
        (template, "POST", template, {"admin": True, "slow": True}, 408),
        (template, "POST", template, {"admin": True, "data": " " * 5000}, 413),
        (template, "POST", template, {"admin": True, "data": "{}", "ctype": "text/plain"}, 415),
        (template, "POST", template, {"admin": True, "data": "{}"}, 422),
    ]
SCENARIOS += [
    ("/api/v1/freeze", "DELETE", "/api/v1/freeze", {"admin": True}, 200),
    ("/api/v1/freeze", "DELETE", "/api/v1/freeze", {}, 401),
    ("/api/v1/freeze", "DELETE", "/api/v1/freeze", {"no_admin": True}, 404),
]


async def slow_body() -> AsyncIterator[bytes]:
    """A body that stops after its first byte for longer than the body timeout (0.2 s)."""
    yield b"{"
    await asyncio.sleep(2.0)  # the slow client itself
    yield b"}"


async def _prepare(make_harness: MakeHarness, options: dict[str, Any]) -> Harness:
    harness = await make_harness(
        admin_token=None if options.get("no_admin") else ADMIN_TOKEN,
        max_alerts=1,
        max_body_bytes=4096,
        body_timeout_s=0.2,
    )
    control = harness.control
    if options.get("unhealthy"):
        control.alive = (False, "loop task ended")
    if options.get("unready"):
        control.ready = (False, {"prometheus": "unreachable"})
    if options.get("broken"):
        control.statistics_error = RuntimeError("bug")
    # Fill the one-slot inbox so the second distinct alert is refused.
    if not options.get("fresh"):
        await harness.client.post("/api/v1/alerts", data=FIRING, headers=webhook_headers())
    return harness


@pytest.mark.parametrize(
    ("template", "method", "path", "options", "expected"),
    SCENARIOS,
    ids=[f"{m} {p} -> {s}" for _t, m, p, _o, s in SCENARIOS],
)
async def test_each_observed_status_is_documented_for_its_route(
    spec: dict[str, Any],
    make_harness: MakeHarness,
    template: str,
    method: str,
    path: str,
    options: dict[str, Any],
    expected: int,
) -> None:
    harness = await _prepare(make_harness, options)
    if path == "/api/v1/alerts":
        headers = webhook_headers(options.get("token", "s3cr3t-test-token"))
    else:
        headers = admin_headers() if options.get("admin") or options.get("no_admin") else {}
        if "data" in options:
            headers |= JSON
    if "ctype" in options:
        headers["Content-Type"] = options["ctype"]
    data = slow_body() if options.get("slow") else options.get("data")
    if options.get("slow"):
        headers |= JSON
    response = await harness.client.request(method, path, data=data, headers=headers)
    assert response.status == expected, await response.text()
    assert response.status in documented(spec, template, method)
    if response.status == 200 and path in NOT_JSON:
        assert response.content_type == NOT_JSON[path]
    else:
        assert response.content_type == "application/json"


def test_the_documented_truncated_alerts_range_is_the_accepted_one(spec: dict[str, Any]) -> None:
    field = spec["components"]["schemas"]["WebhookPayload"]["properties"]["truncatedAlerts"]
    assert (field["minimum"], field["maximum"]) == (0, MAX_TRUNCATED)


def packaged(name: str) -> bytes:
    return files("mape_k.openapi").joinpath(name).read_bytes()


@pytest.mark.parametrize("admin_token", [ADMIN_TOKEN, None], ids=["control-api", "no-control-api"])
async def test_the_daemon_serves_its_document_without_a_token(
    make_harness: MakeHarness, admin_token: str | None
) -> None:
    harness = await make_harness(admin_token=admin_token)  # and the webhook token is set
    as_json = await harness.client.get("/openapi.json")  # no Authorization header
    assert as_json.status == 200
    assert as_json.content_type == "application/json"
    assert await as_json.json() == yaml.safe_load(packaged("daemon-api.yaml"))
    as_yaml = await harness.client.get("/openapi.yaml")
    assert as_yaml.status == 200
    assert as_yaml.content_type == "application/yaml"
    assert await as_yaml.read() == packaged("daemon-api.yaml")
    # The token checks still hold beside it.
    assert (await harness.client.post("/api/v1/alerts", json={})).status == 401
    if admin_token is not None:
        assert (await harness.client.get("/api/v1/policies/pending")).status == 401
