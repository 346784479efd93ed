"""Fixtures shared by the integration tests that talk to a real Prometheus."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prom_support import PrometheusProcess

from mape_k.integrations.prometheus import PrometheusClient


@pytest.fixture
async def client(prometheus: PrometheusProcess) -> AsyncIterator[PrometheusClient]:
    """The client app.py runs (its own aiohttp session, a pool of 4), on the module's own
    `prometheus` fixture."""
    async with PrometheusClient(url=prometheus.url, timeout_s=2.0, max_connections=4) as prom:
        yield prom
