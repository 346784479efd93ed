"""Prediction through a real Prometheus: a rising series, read by the Monitor and fitted
over a real range query, gives a predicted violation with the right lead."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prom_support import (
    PrometheusNotFoundError,
    PrometheusProcess,
    free_port,
    prometheus_binary,
    start_prometheus,
)

from mape_k.config import MonitorConfig, PredictConfig, ViolationRule
from mape_k.loop.monitor import Monitor
from mape_k.loop.predict import Predictor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    try:
        prometheus_binary()
    except PrometheusNotFoundError as exc:
        pytest.fail(f"{exc} — run `make test`, which installs Debian's prometheus")
    # A target nobody listens on: the series here are expressions of time().
    handle = start_prometheus(
        tmp_path_factory.mktemp("predict"), scrape_targets=[f"127.0.0.1:{free_port()}"]
    )
    try:
        yield handle
    finally:
        handle.stop()


def config(origin: float, *, threshold: float) -> MonitorConfig:
    # A value rising by 1 a second from `origin`, labelled with its component; and a flat one.
    rising = f'label_replace(vector(time() - {origin:.3f}), "component", "api", "", "")'
    flat = 'label_replace(vector(5), "component", "db", "", "")'
    return MonitorConfig(
        queries={"backlog": f"{rising} or {flat}"},
        rules=(
            ViolationRule(
                name="queue_backlog",
                query="backlog",
                threshold=threshold,
                predict=PredictConfig(horizon_s=600, window_s=300, step_s=10, min_points=5),
            ),
        ),
    )


async def test_a_rising_series_in_prometheus_gives_a_predicted_violation(client):
    now = time.time()
    # 1 per second since 1000 s ago (the expression has every past value): 1000 now, the
    # threshold 1240 is crossed in 240 s
    monitored = config(now - 1000.0, threshold=1240.0)
    monitor = Monitor(monitored, source=client, alerts=None)
    predictor = Predictor(ranges=client)

    observation = await monitor.observe(now)
    assert not observation.degraded, observation.degraded_reason
    predicted = await predictor.predict(observation, monitored, now=now)

    assert [(v.kind, v.component, v.predicted) for v in predicted] == [
        ("queue_backlog", "api", True)
    ]
    # the range query's points end at `now`: the lead is the distance to the threshold
    assert predicted[0].lead_s == pytest.approx(240.0, abs=2.0)
    assert observation.violations == ()  # the rule itself does not fire yet
    summary = predictor.summary()["rules"]["queue_backlog"]
    assert (summary["raised"], summary["open"]) == (1, 1)


async def test_a_failing_range_query_predicts_nothing_and_does_not_raise(client):
    now = time.time()
    monitored = config(now - 1000.0, threshold=1240.0)
    observation = await Monitor(monitored, source=client, alerts=None).observe(now)
    broken = monitored.model_copy(update={"queries": {"backlog": "rate(up["}})
    predictor = Predictor(ranges=client)
    assert await predictor.predict(observation, broken, now=now) == []
    assert predictor.summary()["rules"] == {}
