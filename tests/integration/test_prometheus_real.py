"""PrometheusClient and Monitor against a real Prometheus scraping an exporter served here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from prom_support import (
    PrometheusNotFoundError,
    PrometheusProcess,
    prometheus_binary,
    start_prometheus,
)
from structlog.testing import capture_logs

from mape_k.config import Comparator, MonitorConfig, ViolationRule
from mape_k.errors import PrometheusQueryError, PrometheusUnavailable
from mape_k.integrations.prometheus import PrometheusClient
from mape_k.loop.monitor import Monitor
from mape_k.models import Severity

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAILURE_RATE = "max(westworld_charter_failure_rate)"
SCRAPE_DEADLINE_S = 15.0


@dataclass
class Exporter:
    """A tiny text-format exporter; tests change `values` and the next scrape sees them."""

    port: int
    values: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        lines: list[str] = []
        for name, value in self.values.items():
            lines += [f"# TYPE {name} gauge", f"{name} {value!r}"]
        return "\n".join(lines) + "\n"


@pytest.fixture
async def exporter() -> AsyncIterator[Exporter]:
    state = Exporter(port=0, values={"westworld_charter_failure_rate": 0.3})

    async def metrics(_: web.Request) -> web.Response:
        # Prometheus text exposition format 0.0.4 is plain text.
        return web.Response(text=state.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: Exporter) -> Iterator[PrometheusProcess]:
    try:
        prometheus_binary()
    except PrometheusNotFoundError as exc:
        pytest.fail(f"{exc} — run `make test`, which installs Debian's prometheus")
    handle = start_prometheus(tmp_path, scrape_targets=[f"127.0.0.1:{exporter.port}"])
    try:
        yield handle
    finally:
        handle.stop()


async def wait_for_value(client: PrometheusClient, promql: str, expected: float) -> None:
    """Bounded polling of the query API until a scrape has brought `expected`."""
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    seen: list[float] = []
    while time.monotonic() < deadline:
        result = await client.query(promql)
        seen = [sample.value for sample in result.samples]
        if seen == [expected]:
            return
        await asyncio.sleep(0.1)  # polling interval; the deadline bounds the wait
    pytest.fail(f"{promql} never became {expected} within {SCRAPE_DEADLINE_S}s (last: {seen})")


def monitor_over(client: PrometheusClient) -> Monitor:
    config = MonitorConfig(
        queries={"failure_rate": FAILURE_RATE},
        rules=(
            ViolationRule(
                name="high_failure_rate",
                query="failure_rate",
                comparator=Comparator.GT,
                threshold=0.05,
                severity=Severity.CRITICAL,
            ),
        ),
        query_timeout_s=2.0,
    )
    return Monitor(config, source=client, alerts=None)


async def test_real_answers_then_a_violation_then_degraded_when_prometheus_stops(
    exporter, prometheus, client
):
    # Prometheus 2.42 applies new scrape targets about 5 s after start: this wait is the
    # bulk of the test's time, so one Prometheus serves all the checks below.
    assert await client.ready() is True
    await wait_for_value(client, FAILURE_RATE, 0.3)
    now = time.time()

    scalar = await client.query("scalar(max(westworld_charter_failure_rate))", time=now)
    assert scalar.result_type == "scalar"
    assert scalar.samples[0].value == 0.3
    assert scalar.samples[0].timestamp == pytest.approx(now, abs=0.001)

    ranged = await client.query_range(FAILURE_RATE, start=now - 30, end=now, step=1)
    assert len(ranged.series) == 1
    points = ranged.series[0].points
    assert points[-1] == (pytest.approx(now, abs=0.001), 0.3)
    assert all((now - t) == pytest.approx(round(now - t), abs=0.01) for t, _ in points)

    with pytest.raises(PrometheusQueryError) as caught:
        await client.query("westworld_charter_failure_rate >")
    assert caught.value.error_type == "bad_data"
    assert "westworld_charter_failure_rate >" in str(caught.value)

    monitor = monitor_over(client)

    seen = await monitor.observe(time.time())

    assert not seen.degraded, seen.degraded_reason
    assert [(v.kind, v.component, v.value) for v in seen.violations] == [
        ("high_failure_rate", "charter", 0.3)
    ]

    exporter.values["westworld_charter_failure_rate"] = 0.01
    await wait_for_value(client, FAILURE_RATE, 0.01)
    calm = await monitor.observe(time.time())
    assert not calm.degraded
    assert calm.violations == ()
    assert calm.value("failure_rate", "charter") == 0.01

    prometheus.stop()

    with capture_logs() as logs:
        down = await monitor.observe(time.time())
    assert down.degraded
    assert "failure_rate" in (down.degraded_reason or "")
    assert down.violations == ()
    assert [e["event"] for e in logs if e["event"].startswith("prometheus_")] == [
        "prometheus_unreachable"
    ]
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match="cannot reach"):
        await client.query(FAILURE_RATE)
    assert time.monotonic() - started < 1.0  # refused at once, not a timeout
    assert await client.ready() is False


async def test_monitor_recovers_after_prometheus_restarts(exporter, prometheus, client):
    monitor = monitor_over(client)
    prometheus.stop()
    assert (await monitor.observe(time.time())).degraded

    prometheus.restart()
    await wait_for_value(client, FAILURE_RATE, 0.3)
    with capture_logs() as logs:
        back = await monitor.observe(time.time())

    assert not back.degraded
    assert [v.kind for v in back.violations] == ["high_failure_rate"]
    assert "prometheus_recovered" in [e["event"] for e in logs]
