"""The HTTP face: webhook rules, health/ready/stats/metrics, and the operator control API."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
import structlog
import yaml
from server_harness import (
    ADMIN_TOKEN,
    FIXTURES,
    WEBHOOK_TOKEN,
    Harness,
    MakeHarness,
    admin_headers,
    fixture_payload,
    webhook_headers,
)

import fakes
from mape_k.config import ServerConfig
from mape_k.integrations.alertmanager import MAX_TRUNCATED
from mape_k.models import Severity, ViolationSource
from mape_k.server import warn_if_open

WEBHOOK = "/api/v1/alerts"
PAYLOAD_FIXTURES = [
    "firing_single_alert.json",
    "grouped_firing_2_alerts.json",
    "grouped_resolved_2_alerts.json",
    "resolved_single_alert.json",
    "raw_firing_body.json",
    "raw_resolved_body.json",
    "retry_after_http_400_deliveries.json",
    "retry_after_http_500_deliveries.json",
]


async def post_alerts(
    harness: Harness, payload: Any, *, token: str | None = WEBHOOK_TOKEN
) -> tuple[int, dict[str, Any]]:
    response = await harness.client.post(
        WEBHOOK, data=json.dumps(payload), headers=webhook_headers(token)
    )
    return response.status, await response.json()


# --- webhook: accepted payloads ------------------------------------------------------------


@pytest.mark.parametrize("name", PAYLOAD_FIXTURES)
async def test_every_shared_alertmanager_payload_is_accepted(harness: Harness, name: str) -> None:
    status, body = await post_alerts(harness, fixture_payload(name))
    assert status == 200, body
    assert body["status"] == "ok"
    assert body["received"] == len(fixture_payload(name)["alerts"])


@pytest.mark.parametrize("name", ["raw_firing_body.json", "raw_resolved_body.json"])
async def test_byte_exact_alertmanager_body_with_its_headers_is_accepted(
    harness: Harness, name: str
) -> None:
    headers = json.loads((FIXTURES / "request_headers.json").read_text())
    sent = dict(headers["with_authorization_type_Bearer_explicit"])
    for drop in ("Host", "Content-Length"):
        sent.pop(drop)
    response = await harness.client.post(WEBHOOK, data=(FIXTURES / name).read_bytes(), headers=sent)
    assert response.status == 200


async def test_new_firing_alert_becomes_violation_and_triggers_once(harness: Harness) -> None:
    status, body = await post_alerts(harness, fixture_payload("firing_single_alert.json"))
    assert (status, body["new_firing"]) == (200, 1)
    assert harness.control.triggers == ["alert"]
    [violation] = harness.inbox.firing()
    assert violation.kind == "DemoGaugeHigh"  # no `cause` label: the alertname
    assert violation.component == "charter"  # no `component` label: the default
    assert violation.severity is Severity.CRITICAL
    assert violation.source is ViolationSource.ALERT
    assert violation.timestamp == pytest.approx(1795321030.023)
    assert harness.sample("mapek_alerts_received_total", {"status": "firing"}) == 1


async def test_cause_and_component_labels_name_the_violation(harness: Harness) -> None:
    payload = fixture_payload("firing_single_alert.json")
    payload["alerts"][0]["labels"].update({"cause": "high_failure_rate", "component": "charter-eu"})
    await post_alerts(harness, payload)
    [violation] = harness.inbox.firing()
    assert (violation.kind, violation.component) == ("high_failure_rate", "charter-eu")


async def test_resolved_alert_clears_violation_and_never_triggers(harness: Harness) -> None:
    await post_alerts(harness, fixture_payload("firing_single_alert.json"))
    harness.control.triggers.clear()
    status, body = await post_alerts(harness, fixture_payload("resolved_single_alert.json"))
    assert (status, body["resolved"], body["new_firing"]) == (200, 1, 0)
    assert harness.inbox.firing() == []
    assert harness.control.triggers == []
    assert harness.sample("mapek_alerts_received_total", {"status": "resolved"}) == 1


async def test_firing_notification_carrying_a_resolved_alert_uses_each_alerts_status(
    harness: Harness,
) -> None:
    grouped = fixture_payload("grouped_firing_2_alerts.json")
    await post_alerts(harness, grouped)
    assert len(harness.inbox.firing()) == 2
    harness.control.triggers.clear()
    partial = copy.deepcopy(grouped)
    partial["alerts"][0]["status"] = "resolved"
    partial["alerts"][0]["endsAt"] = "2026-11-22T04:25:30.023Z"
    assert partial["status"] == "firing"
    status, body = await post_alerts(harness, partial)
    assert (status, body["resolved"], body["new_firing"], body["duplicates"]) == (200, 1, 0, 1)
    assert [v.labels["service"] for v in harness.inbox.firing()] == ["grp-b"]
    assert harness.control.triggers == []


async def test_truncated_alerts_are_counted(harness: Harness) -> None:
    payload = fixture_payload("firing_single_alert.json")
    payload["truncatedAlerts"] = 2
    status, body = await post_alerts(harness, payload)
    assert (status, body["truncated"]) == (200, 2)
    assert harness.sample("mapek_alerts_truncated_total") == 2


async def test_alertmanager_retries_of_the_same_delivery_count_once(harness: Harness) -> None:
    payload = fixture_payload("retry_after_http_500_deliveries.json")
    for _ in range(6):  # the captured run: five 500s, then a 200, all the same payload
        status, _body = await post_alerts(harness, payload)
        assert status == 200
    assert len(harness.inbox.firing()) == 1
    assert harness.control.triggers == ["alert"]
    assert harness.sample("mapek_alerts_duplicate_total") == 5
    assert harness.sample("mapek_alerts_received_total", {"status": "firing"}) == 6


async def test_full_inbox_answers_503_and_the_retry_lands_once_room_is_made(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(max_alerts=1)
    await post_alerts(harness, fixture_payload("firing_single_alert.json"))
    other = fixture_payload("retry_after_http_400_deliveries.json")
    status, body = await post_alerts(harness, other)
    assert status == 503
    assert body["rejected"] == 1
    assert harness.sample("mapek_inbox_full_total") == 1
    await post_alerts(harness, fixture_payload("resolved_single_alert.json"))
    status, _ = await post_alerts(harness, other)  # Alertmanager's retry
    assert status == 200
    assert [v.labels["service"] for v in harness.inbox.firing()] == ["retry-b"]


async def test_webhook_returns_without_running_an_iteration(harness: Harness) -> None:
    # trigger() is the only thing the handler does with the loop; the fake only records it.
    status, _ = await post_alerts(harness, fixture_payload("firing_single_alert.json"))
    assert status == 200
    assert harness.control.calls == []
    assert harness.control.triggers == ["alert"]


# --- webhook: refused requests -------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {WEBHOOK_TOKEN}", "Bearer", f"Bearer {WEBHOOK_TOKEN}x"],
)
async def test_webhook_without_the_right_bearer_token_is_401(
    harness: Harness, authorization: str | None
) -> None:
    headers = webhook_headers(None)
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await harness.client.post(
        WEBHOOK, data=json.dumps(fixture_payload("firing_single_alert.json")), headers=headers
    )
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "error" in await response.json()
    assert harness.inbox.firing() == []
    assert harness.sample("mapek_webhook_rejections_total", {"reason": "unauthorized"}) == 1


async def test_bearer_scheme_is_case_insensitive(harness: Harness) -> None:
    headers = webhook_headers(None) | {"Authorization": f"bearer {WEBHOOK_TOKEN}"}
    response = await harness.client.post(
        WEBHOOK, data=json.dumps(fixture_payload("firing_single_alert.json")), headers=headers
    )
    assert response.status == 200


async def test_webhook_is_open_when_no_token_is_configured(make_harness: MakeHarness) -> None:
    harness = await make_harness(webhook_token=None)
    status, _ = await post_alerts(harness, fixture_payload("firing_single_alert.json"), token=None)
    assert status == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_wrong_content_type_is_415(harness: Harness, content_type: str) -> None:
    headers = webhook_headers() | {"Content-Type": content_type}
    response = await harness.client.post(
        WEBHOOK, data=json.dumps(fixture_payload("firing_single_alert.json")), headers=headers
    )
    assert response.status == 415
    assert (await response.json())["field"] == "Content-Type"
    assert harness.sample("mapek_webhook_rejections_total", {"reason": "content_type"}) == 1


async def test_json_content_type_with_charset_is_accepted(harness: Harness) -> None:
    headers = webhook_headers() | {"Content-Type": "application/json; charset=utf-8"}
    response = await harness.client.post(
        WEBHOOK, data=json.dumps(fixture_payload("firing_single_alert.json")), headers=headers
    )
    assert response.status == 200


async def test_a_delivery_over_the_body_limit_is_503_with_retry_after_naming_the_limit(
    make_harness: MakeHarness,
) -> None:
    # Well-formed, only too big for this daemon: Alertmanager drops a 4xx, retries a 503.
    harness = await make_harness(max_body_bytes=2048)
    payload = fixture_payload("firing_single_alert.json")
    payload["commonAnnotations"]["padding"] = "x" * 4096
    with structlog.testing.capture_logs() as logs:
        response = await harness.client.post(
            WEBHOOK, data=json.dumps(payload), headers=webhook_headers()
        )
    body = await response.json()
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert body["limit_bytes"] == 2048
    assert "2048" in body["error"]
    assert "max_alerts" in body["error"]
    assert harness.sample("mapek_webhook_rejections_total", {"reason": "too_large"}) == 1
    assert [e["log_level"] for e in logs if e["event"] == "webhook_rejected"] == ["warning"]
    assert harness.inbox.firing() == []


async def test_a_full_group_of_the_shipped_alertmanager_lands_and_one_over_the_limit_is_503(
    make_harness: MakeHarness,
) -> None:
    config = yaml.safe_load((fakes.STAGING / "alertmanager" / "alertmanager.yml").read_text())
    [max_alerts] = {
        h["max_alerts"] for r in config["receivers"] for h in r.get("webhook_configs", [])
    }
    harness = await make_harness(max_alerts=10_000)  # the shipped limits otherwise
    full = fakes.shipped_alert_group(max_alerts)
    response = await harness.client.post(WEBHOOK, data=full, headers=webhook_headers())
    assert response.status == 200, await response.text()
    assert (await response.json())["new_firing"] == max_alerts
    # What max_alerts: 0 let through: ~2,900 alerts, over 1 MiB. Retried, never dropped.
    huge = fakes.shipped_alert_group(2_900)
    assert len(huge) > ServerConfig().max_body_bytes
    response = await harness.client.post(WEBHOOK, data=io.BytesIO(huge), headers=webhook_headers())
    assert (response.status, response.headers["Retry-After"]) == (503, "5")


async def test_chunked_body_over_the_limit_is_503(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_body_bytes=2048)

    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1024

    response = await harness.client.post(WEBHOOK, data=chunks(), headers=webhook_headers())
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"


async def test_a_control_body_over_the_limit_is_still_413(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_body_bytes=2048)
    response = await harness.client.post(
        "/api/v1/freeze",
        data=json.dumps({"reason": "x" * 4096}),
        headers=admin_headers() | {"Content-Type": "application/json"},
    )
    assert response.status == 413


@pytest.mark.parametrize("body", [b"not json", b"{", b"", b"\xff\xfe\x00", b"[" * 100_000])
async def test_body_that_is_not_json_is_400(harness: Harness, body: bytes) -> None:
    response = await harness.client.post(WEBHOOK, data=body, headers=webhook_headers())
    assert response.status == 400
    assert (await response.json())["field"] == "body"
    assert harness.sample("mapek_webhook_rejections_total", {"reason": "not_json"}) == 1


@pytest.mark.parametrize(
    ("encoding", "problem"),
    [
        ("utf-16", "NUL byte at offset 3 (UTF-16 or UTF-32?)"),  # after its byte order mark
        ("utf-16-be", "NUL byte at offset 0 (UTF-16 or UTF-32?)"),
        ("utf-16-le", "NUL byte at offset 1 (UTF-16 or UTF-32?)"),
        ("utf-32", "NUL byte at offset 2 (UTF-16 or UTF-32?)"),
        ("latin-1", "byte 0xdc at offset "),
        ("utf-8-sig", "Unexpected UTF-8 BOM"),
    ],
)
async def test_a_valid_payload_in_another_encoding_is_400_naming_the_problem(
    harness: Harness, encoding: str, problem: str
) -> None:
    payload = fixture_payload("firing_single_alert.json")
    payload["commonAnnotations"]["summary"] = "Überlast"  # not ASCII: latin-1 differs
    body = json.dumps(payload, ensure_ascii=False).encode(encoding)
    response = await harness.client.post(WEBHOOK, data=body, headers=webhook_headers())
    answer = await response.json()
    assert (response.status, answer["field"]) == (400, "body")
    assert answer["error"].startswith("body is not UTF-8 JSON: ")
    assert problem in answer["error"]
    assert harness.sample("mapek_webhook_rejections_total", {"reason": "not_json"}) == 1
    assert harness.inbox.firing() == []


async def test_invalid_json_is_400_saying_where(harness: Harness) -> None:
    response = await harness.client.post(
        WEBHOOK, data=b'{"version": "4",\n "alerts": [}', headers=webhook_headers()
    )
    assert response.status == 400
    assert (await response.json())["error"] == (
        "body is not UTF-8 JSON: Expecting value at line 2 column 13"
    )


@pytest.mark.parametrize("truncated", [2**53, 2**53 + 1, MAX_TRUNCATED])
async def test_any_truncated_alerts_count_alertmanager_can_send_is_accepted(
    harness: Harness, truncated: int
) -> None:
    payload = fixture_payload("firing_single_alert.json")
    payload["truncatedAlerts"] = truncated  # a Go uint64
    status, body = await post_alerts(harness, payload)
    assert (status, body["truncated"], body["new_firing"]) == (200, truncated, 1)
    assert harness.sample("mapek_alerts_truncated_total") == float(truncated)


async def test_a_truncated_alerts_count_beyond_uint64_is_422_naming_the_field(
    harness: Harness,
) -> None:
    payload = fixture_payload("firing_single_alert.json")
    payload["truncatedAlerts"] = MAX_TRUNCATED + 1
    status, body = await post_alerts(harness, payload)
    assert (status, body["field"]) == (422, "truncatedAlerts")


@pytest.mark.parametrize("version", ["3", 4, None, "5"])
async def test_unknown_payload_version_is_422(harness: Harness, version: Any) -> None:
    payload = fixture_payload("firing_single_alert.json")
    payload["version"] = version
    status, body = await post_alerts(harness, payload)
    assert (status, body["field"]) == (422, "version")
    assert harness.sample("mapek_webhook_rejections_total", {"reason": "version"}) == 1


async def test_missing_version_is_422(harness: Harness) -> None:
    payload = fixture_payload("firing_single_alert.json")
    del payload["version"]
    status, body = await post_alerts(harness, payload)
    assert (status, body["field"]) == (422, "version")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p["alerts"][0].update(startsAt="yesterday"), "alerts.0.startsAt"),
        (lambda p: p["alerts"][0].update(startsAt="2026-11-22T04:17:10"), "alerts.0.startsAt"),
        (lambda p: p["alerts"][0].update(startsAt=1795321030), "alerts.0.startsAt"),
        (lambda p: p["alerts"][0].update(endsAt="2026-13-40T00:00:00Z"), "alerts.0.endsAt"),
        (lambda p: p["alerts"][0].pop("fingerprint"), "alerts.0.fingerprint"),
        (lambda p: p["alerts"][0].update(status="pending"), "alerts.0.status"),
        (lambda p: p["alerts"][0]["labels"].update(severity=1), "alerts.0.labels.severity"),
        (lambda p: p.pop("alerts"), "alerts"),
        (lambda p: p.update(truncatedAlerts="2"), "truncatedAlerts"),
        (lambda p: p.update(truncatedAlerts=-1), "truncatedAlerts"),
    ],
)
async def test_invalid_field_is_422_naming_the_field(
    harness: Harness, mutate: Any, field: str
) -> None:
    payload = fixture_payload("firing_single_alert.json")
    mutate(payload)
    status, body = await post_alerts(harness, payload)
    assert (status, body["field"]) == (422, field)
    assert harness.inbox.firing() == []
    assert harness.control.triggers == []
    assert harness.sample("mapek_webhook_rejections_total", {"reason": "invalid"}) == 1


async def test_json_that_is_not_an_object_is_422(harness: Harness) -> None:
    status, body = await post_alerts(harness, [fixture_payload("firing_single_alert.json")])
    assert (status, body["field"]) == (422, "body")


async def test_newer_alertmanager_fields_are_ignored(harness: Harness) -> None:
    payload = fixture_payload("firing_single_alert.json")
    payload["notification_reason"] = "first notification"
    payload["routeLabels"] = {}
    status, _ = await post_alerts(harness, payload)
    assert status == 200


# --- health, stats, metrics ----------------------------------------------------------------


async def test_healthz_is_200_when_alive_and_503_with_the_reason_otherwise(
    harness: Harness,
) -> None:
    response = await harness.client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"
    harness.control.alive = (False, "last iteration started 95 s ago (> 3 intervals)")
    response = await harness.client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["reason"].startswith("last iteration started 95 s ago")


async def test_readyz_names_what_is_not_ready(harness: Harness) -> None:
    response = await harness.client.get("/readyz")
    assert (response.status, (await response.json())["status"]) == (200, "ready")
    harness.control.ready = (False, {"prometheus": "no answer for 40 s", "charter": "ok"})
    response = await harness.client.get("/readyz")
    body = await response.json()
    assert response.status == 503
    assert body["problems"] == {"prometheus": "no answer for 40 s"}


async def test_stats_serves_the_controls_statistics(harness: Harness) -> None:
    response = await harness.client.get("/stats")
    assert response.status == 200
    assert await response.json() == harness.control.stats


async def test_stats_pages_are_bounded_and_bad_page_parameters_are_a_400(
    harness: Harness,
) -> None:
    assert (await harness.client.get("/stats")).status == 200
    assert (await harness.client.get("/stats?limit=100&before=1700000000.5")).status == 200
    assert harness.control.stats_pages == [(10, None), (100, 1700000000.5)]
    for query, field in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=1e3", "limit"),
        ("limit=%D9%A3", "limit"),  # an Arabic-Indic digit: isdigit() but not ASCII
        ("limit=" + "9" * 5000, "limit"),  # more digits than int() takes
        ("before=inf", "before"),
        ("before=nan", "before"),
        ("before=yesterday", "before"),
    ]:
        response = await harness.client.get(f"/stats?{query}")
        assert response.status == 400, query
        body = await response.json()
        assert body["field"] == field, query
    assert len(harness.control.stats_pages) == 2  # none of those reached the daemon


async def test_metrics_exposes_the_registry(harness: Harness) -> None:
    await post_alerts(harness, fixture_payload("firing_single_alert.json"))
    response = await harness.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert 'mapek_alerts_received_total{status="firing"} 1.0' in text
    assert 'mapek_webhook_rejections_total{reason="too_large"} 0.0' in text


async def test_a_bug_in_a_handler_is_a_logged_json_500(harness: Harness) -> None:
    harness.control.statistics_error = RuntimeError("boom")
    with structlog.testing.capture_logs() as logs:
        response = await harness.client.get("/stats")
    assert response.status == 500
    assert await response.json() == {"error": "internal error"}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["http_handler_failed"]


async def test_unknown_route_and_wrong_method_answer_json(harness: Harness) -> None:
    response = await harness.client.get("/nope")
    assert (response.status, "error" in await response.json()) == (404, True)
    response = await harness.client.get(WEBHOOK)
    assert response.status == 405
    assert "POST" in response.headers["Allow"]


def test_a_webhook_without_a_token_logs_a_warning_on_any_address() -> None:
    open_public = ServerConfig(host="0.0.0.0", allow_open_webhook=True)
    with structlog.testing.capture_logs() as logs:
        assert warn_if_open(open_public, None)
        assert not warn_if_open(open_public, "t")
        assert warn_if_open(ServerConfig(host="127.0.0.1"), None)
        assert warn_if_open(ServerConfig(host="::1"), None)
        assert not warn_if_open(ServerConfig(host="localhost"), "t")
    assert [(e["event"], e["log_level"], e["reachable_from"]) for e in logs] == [
        ("webhook_unauthenticated", "warning", "the network"),
        ("webhook_unauthenticated", "warning", "this machine only"),
        ("webhook_unauthenticated", "warning", "this machine only"),
    ]


# --- operator control ----------------------------------------------------------------------

CONTROL_CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/policies/pending", None),
    ("POST", "/api/v1/policies/pol-1/approve", None),
    ("POST", "/api/v1/policies/pol-1/reject", None),
    ("POST", "/api/v1/freeze", {"reason": "incident 42", "duration_s": None}),
    ("DELETE", "/api/v1/freeze", None),
    ("POST", "/api/v1/dry-run", {"enabled": True}),
    ("DELETE", "/api/v1/holds/charter", None),
    ("POST", "/api/v1/autonomy", {"key": "scale_up", "level": "shadow", "reason": "trial"}),
]


@pytest.mark.parametrize(("method", "path", "body"), CONTROL_CALLS)
async def test_control_routes_do_not_exist_without_an_admin_token(
    make_harness: MakeHarness, method: str, path: str, body: Any
) -> None:
    harness = await make_harness(admin_token=None)
    response = await harness.client.request(method, path, json=body, headers=admin_headers())
    assert response.status == 404
    assert harness.control.records == []


@pytest.mark.parametrize(("method", "path", "body"), CONTROL_CALLS)
@pytest.mark.parametrize("token", [None, "wrong", WEBHOOK_TOKEN])
async def test_control_routes_need_the_admin_token(
    harness: Harness, method: str, path: str, body: Any, token: str | None
) -> None:
    headers = {} if token is None else admin_headers(token)
    response = await harness.client.request(method, path, json=body, headers=headers)
    assert response.status == 401
    assert harness.control.records == []
    assert harness.control.calls == []


@pytest.mark.parametrize(("method", "path", "body"), CONTROL_CALLS)
async def test_every_control_call_is_recorded_with_route_body_and_caller(
    harness: Harness, method: str, path: str, body: Any
) -> None:
    response = await harness.client.request(method, path, json=body, headers=admin_headers())
    assert response.status == 200, await response.text()
    [record] = harness.control.records
    assert record["route"] == f"{method} {path}"
    assert record["caller"] == "127.0.0.1"
    if body is not None:
        assert record["body"] == body


async def test_clearing_a_hold_names_the_target_and_an_unknown_one_is_404(
    harness: Harness,
) -> None:
    response = await harness.client.delete("/api/v1/holds/charter", headers=admin_headers())
    assert (response.status, await response.json()) == (200, {"target": "charter", "cleared": True})
    response = await harness.client.delete("/api/v1/holds/elsewhere", headers=admin_headers())
    assert response.status == 404
    assert (await response.json())["target"] == "elsewhere"
    assert harness.control.calls == [
        ("clear_hold", "charter", "127.0.0.1"),
        ("clear_hold", "elsewhere", "127.0.0.1"),
    ]


async def test_pending_lists_the_controls_pending_approvals(harness: Harness) -> None:
    response = await harness.client.get("/api/v1/policies/pending", headers=admin_headers())
    assert await response.json() == {"pending": harness.control.pending}


async def test_approve_passes_the_id_and_caller_and_unknown_id_is_404(harness: Harness) -> None:
    response = await harness.client.post("/api/v1/policies/pol-1/approve", headers=admin_headers())
    assert (response.status, await response.json()) == (
        200,
        {"policy_id": "pol-1", "status": "approved"},
    )
    assert harness.control.calls == [("approve", "pol-1", "127.0.0.1")]
    response = await harness.client.post("/api/v1/policies/pol-1/reject", headers=admin_headers())
    assert response.status == 404
    assert (await response.json())["policy_id"] == "pol-1"


async def test_policy_id_outside_the_allowed_charset_is_404(harness: Harness) -> None:
    response = await harness.client.post("/api/v1/policies/a%20b/approve", headers=admin_headers())
    assert response.status == 404
    assert harness.control.calls == []


async def test_freeze_with_a_duration_reaches_the_control(harness: Harness) -> None:
    response = await harness.client.post(
        "/api/v1/freeze", json={"reason": "deploy", "duration_s": 600}, headers=admin_headers()
    )
    assert response.status == 200
    assert harness.control.calls == [("freeze", ("deploy", 600.0), "127.0.0.1")]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/freeze", {"reason": "", "duration_s": None}, "reason"),
        ("/api/v1/freeze", {"reason": "x", "duration_s": -1}, "duration_s"),
        ("/api/v1/freeze", {"reason": "x", "duration_s": 1.7976931348623157e308}, "duration_s"),
        ("/api/v1/freeze", {"reason": "x", "duration_s": 365 * 86_400 + 1}, "duration_s"),
        ("/api/v1/freeze", {"reason": "x", "duration_s": "10"}, "duration_s"),
        ("/api/v1/freeze", {"duration_s": 10}, "reason"),
        ("/api/v1/freeze", {"reason": "x", "until": 10}, "until"),
        ("/api/v1/dry-run", {"enabled": "yes"}, "enabled"),
        ("/api/v1/dry-run", {}, "enabled"),
        ("/api/v1/dry-run", [True], "body"),
        ("/api/v1/autonomy", {"key": "Scale Up", "level": "auto", "reason": "x"}, "key"),
        ("/api/v1/autonomy", {"key": "a/b/c", "level": "auto", "reason": "x"}, "key"),
        ("/api/v1/autonomy", {"key": "scale_up", "level": "full", "reason": "x"}, "level"),
        ("/api/v1/autonomy", {"key": "scale_up", "reason": "x"}, "level"),
        ("/api/v1/autonomy", {"key": "scale_up", "level": "auto", "reason": ""}, "reason"),
    ],
)
async def test_invalid_control_body_is_422_naming_the_field(
    harness: Harness, path: str, body: Any, field: str
) -> None:
    response = await harness.client.post(path, json=body, headers=admin_headers())
    assert response.status == 422
    assert (await response.json())["field"] == field
    assert harness.control.calls == []
    assert harness.control.records == []


async def test_autonomy_change_reaches_the_daemon_and_an_unknown_action_is_422(
    harness: Harness,
) -> None:
    body = {"key": "overload/scale_up", "level": None, "reason": "back to config"}
    response = await harness.client.post("/api/v1/autonomy", json=body, headers=admin_headers())
    assert response.status == 200
    assert harness.control.calls[-1][:2] == (
        "set_autonomy",
        ("overload/scale_up", None, "back to config"),
    )
    assert harness.control.records[-1]["route"] == "POST /api/v1/autonomy"
    body = {"key": "nope", "level": "auto", "reason": "x"}
    response = await harness.client.post("/api/v1/autonomy", json=body, headers=admin_headers())
    assert response.status == 422
    assert (await response.json())["field"] == "key"


async def test_control_body_must_be_json(harness: Harness) -> None:
    response = await harness.client.post(
        "/api/v1/dry-run", data="enabled=1", headers=admin_headers()
    )
    assert response.status == 415
    response = await harness.client.post(
        "/api/v1/dry-run",
        data="{",
        headers=admin_headers() | {"Content-Type": "application/json"},
    )
    assert response.status == 400


async def test_admin_token_does_not_open_the_webhook(harness: Harness) -> None:
    status, _ = await post_alerts(
        harness, fixture_payload("firing_single_alert.json"), token=ADMIN_TOKEN
    )
    assert status == 401
