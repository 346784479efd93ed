"""Fixtures shared by the integration tests that talk to a real Prometheus."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prom_support import PrometheusProcess

from mape_k.integrations.prometheus import PrometheusClient, aiohttp_transport


@pytest.fixture(params=["httpx", "aiohttp"])
async def client(
    request: pytest.FixtureRequest, prometheus: PrometheusProcess
) -> AsyncIterator[PrometheusClient]:
    """Both transports: httpx's own (unit tests, respx) and aiohttp's (what app.py runs),
    on the module's own `prometheus` fixture."""
    transport = aiohttp_transport(4) if request.param == "aiohttp" else None
    async with PrometheusClient(url=prometheus.url, timeout_s=2.0, transport=transport) as prom:
        yield prom
