"""Fixtures for the HTTP face tests (helpers live in server_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from server_harness import Harness, MakeHarness, make_app_parts


@pytest.fixture
async def make_harness() -> AsyncIterator[MakeHarness]:
    clients: list[TestClient[Any, Any]] = []

    async def factory(**kwargs: Any) -> Harness:
        app, control, inbox, metrics, router = make_app_parts(**kwargs)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return Harness(client, control, inbox, metrics, router)

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()
