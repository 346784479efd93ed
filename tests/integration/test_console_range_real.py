"""The console's `signal_history` against a real Prometheus, and against a closed port."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from prom_support import (
    PrometheusNotFoundError,
    PrometheusProcess,
    free_port,
    prometheus_binary,
    start_prometheus,
)

from mape_k.console.charts import chart_window, signal_chart, signal_history
from mape_k.integrations.prometheus import PrometheusClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Two series from expressions alone: no scrape has to happen before they have points.
TWO_SERIES = (
    'label_replace(vector(1), "s", "low", "", "") or label_replace(vector(3), "s", "high", "", "")'
)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    try:
        prometheus_binary()
    except PrometheusNotFoundError as exc:
        pytest.fail(f"{exc} — run `make test`, which installs Debian's prometheus")
    # A target nobody listens on: these tests only evaluate expressions.
    handle = start_prometheus(
        tmp_path_factory.mktemp("console"), scrape_targets=[f"127.0.0.1:{free_port()}"]
    )
    try:
        yield handle
    finally:
        handle.stop()


async def test_signal_history_reads_points_from_a_real_prometheus(client):
    now = time.time()
    start, end, step = chart_window(now - 120, verify_s=60, before_s=60, after_s=60)
    points, error = await signal_history(client, "vector(1)", start=start, end=end, step=step)
    assert error is None
    assert len(points) == int((end - start) // step) + 1
    assert all(value == 1.0 for _, value in points)
    assert points[0][0] == pytest.approx(start, abs=0.001)
    # and the chart drawn from them is one unbroken line
    svg = ET.fromstring(str(signal_chart(points, start=start, end=end, title="vector(1)")))
    lines = svg.findall(".//{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 1


async def test_signal_history_keeps_the_series_with_the_highest_peak(client):
    now = time.time()
    points, error = await signal_history(client, TWO_SERIES, start=now - 30, end=now, step=5)
    assert error is None
    assert len(points) == 7
    assert {value for _, value in points} == {3.0}


async def test_a_bad_query_comes_back_as_prometheus_own_message(client):
    now = time.time()
    points, error = await signal_history(client, "rate(up[", start=now - 30, end=now, step=5)
    assert points == []
    assert error is not None
    assert error.startswith("prometheus: prometheus bad_data:")


async def test_a_closed_port_is_an_error_message_not_an_exception():
    url = f"http://127.0.0.1:{free_port()}"
    async with PrometheusClient(url=url, timeout_s=2.0, max_connections=2) as prom:
        started = time.monotonic()
        points, error = await signal_history(
            prom, "vector(1)", start=0, end=60, step=1, timeout_s=2.0
        )
    assert points == []
    assert error is not None
    assert error.startswith("prometheus: cannot reach")
    assert url in error
    assert time.monotonic() - started < 2.0  # refused, not waited out
