"""Property-based fuzzing of the webhook: whatever arrives, no 5xx and no escaped exception.

Each test drives one app instance on its own event loop (hypothesis calls a sync function).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import (
    WEBHOOK_TOKEN,
    FakeControl,
    fixture_payload,
    make_app_parts,
    webhook_headers,
)

from mape_k.integrations.alertmanager import AlertInbox

SEEDS = [
    fixture_payload(name)
    for name in (
        "firing_single_alert.json",
        "grouped_firing_2_alerts.json",
        "grouped_resolved_2_alerts.json",
        "resolved_single_alert.json",
        "retry_after_http_500_deliveries.json",
    )
]
FUZZ = settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "4",
            "firing",
            "resolved",
            "0001-01-01T00:00:00Z",
            "2026-11-22T04:17:10.023Z",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
            "2026-02-30T00:00:00Z",
            "",
        ]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _mutate(document: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    """Drop, replace or duplicate the node at `path` (the root can only be replaced)."""
    if not path:
        return value if op == "replace" else document
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "drop":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    return document


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    document = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = list(_paths(document))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["drop", "replace", "replace", "duplicate"]))
        document = _mutate(document, path, op, draw(json_values))
    raw = json.dumps(document).encode()
    if draw(st.integers(min_value=0, max_value=4)) == 0 and raw:  # corrupt some bytes too
        at = draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw = raw[:at] + draw(st.binary(max_size=8)) + raw[at + draw(st.integers(0, 8)) :]
    return raw


@contextmanager
def running_app(
    *, max_alerts: int = 1_000_000
) -> Iterator[tuple[Callable[..., int], FakeControl, AlertInbox]]:
    """One app for the whole property; `post(...)` returns the status code."""
    app, control, inbox, _metrics, _router = make_app_parts(max_alerts=max_alerts)
    loop = asyncio.new_event_loop()
    client: TestClient[Any, Any] = TestClient(TestServer(app, loop=loop), loop=loop)
    loop.run_until_complete(client.start_server())

    async def _post(body: bytes, headers: dict[str, str]) -> int:
        response = await client.post("/api/v1/alerts", data=body, headers=headers)
        await response.read()
        return response.status

    def post(body: bytes, headers: dict[str, str] | None = None) -> int:
        return loop.run_until_complete(_post(body, headers or webhook_headers()))

    try:
        with structlog.testing.capture_logs() as logs:
            yield post, control, inbox
        assert [e for e in logs if e["log_level"] in {"error", "critical"}] == []
        # The loop-facing side still works after the storm.
        body = json.dumps(fixture_payload("firing_single_alert.json")).encode()
        assert post(body) == 200
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def test_mutated_alertmanager_payloads_never_get_a_5xx() -> None:
    with running_app() as (post, _control, inbox):

        @FUZZ
        @given(body=mutated_payloads())
        def check(body: bytes) -> None:
            status = post(body)
            assert status in {200, 400, 422}, (status, body[:200])

        check()
    assert len(inbox) <= 1_000_000


def test_arbitrary_json_documents_never_get_a_5xx() -> None:
    with running_app() as (post, _control, _inbox):

        @FUZZ
        @given(document=json_values)
        def check(document: Any) -> None:
            assert post(json.dumps(document).encode()) in {200, 400, 422}

        check()


def test_garbage_bytes_headers_and_tokens_never_get_a_5xx() -> None:
    content_types = st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", "", "a/b; c", "*/*"]
    )
    tokens = st.sampled_from([f"Bearer {WEBHOOK_TOKEN}", "Bearer", "", "Basic x", "Bearer é"])
    with running_app() as (post, _control, _inbox):

        @settings(FUZZ, max_examples=600)
        @given(body=st.binary(max_size=2048), content_type=content_types, auth=tokens)
        def check(body: bytes, content_type: str, auth: str) -> None:
            headers = {"Content-Type": content_type, "Authorization": auth}
            assert post(body, headers) in {200, 400, 401, 415, 422}

        check()


def test_valid_generated_alerts_always_land_and_only_new_firing_ones_trigger() -> None:
    alerts = st.fixed_dictionaries(
        {
            "status": st.sampled_from(["firing", "resolved"]),
            "labels": st.dictionaries(
                st.sampled_from(["alertname", "cause", "component", "severity", "x"]),
                st.text(max_size=8),
                max_size=5,
            ),
            "annotations": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
            "startsAt": st.sampled_from(["2026-11-22T04:17:10.023Z", "2026-11-22T05:00:00+01:00"]),
            "endsAt": st.just("0001-01-01T00:00:00Z"),
            "generatorURL": st.just(""),
            "fingerprint": st.sampled_from(["a1", "b2", "c3", "d4"]),
        }
    )
    with running_app(max_alerts=2) as (post, control, inbox):

        @settings(FUZZ, max_examples=400)
        @given(batch=st.lists(alerts, max_size=5), truncated=st.integers(0, 2**40))
        def check(batch: list[dict[str, Any]], truncated: int) -> None:
            seed = copy.deepcopy(SEEDS[0])
            seed.update(alerts=batch, truncatedAlerts=truncated)
            before = len(control.triggers)
            status = post(json.dumps(seed).encode())
            assert status in {200, 503}
            assert len(inbox) <= 2
            if not any(a["status"] == "firing" for a in batch):
                assert len(control.triggers) == before

        check()
