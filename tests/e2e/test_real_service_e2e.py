"""A real service of the user's, remediated by an `exec` action: no Charter at all.

A small HTTP service (tests/e2e/service/demo_service.py) runs as its own process and is
scraped every second by a real Prometheus. The daemon (`charter.mode: none`, in process,
the real clock) reads two named queries and knows one user-defined action, `restart_demo`,
which runs tests/e2e/service/restart_demo.py with the target and the sample's `instance`
label as argv elements. The service is crashed (SIGKILL: `up` goes to 0) and then
degraded (`POST /degrade`: its error ratio goes to 0.9); each time the daemon must run the
restart and verify it from a fresh Prometheus reading (SUCCESS in Knowledge).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prom_support import PrometheusProcess, free_port, start_prometheus, wait_http_ok

from mape_k.app import build
from mape_k.config import load_settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SERVICE_DIR = Path(__file__).with_name("service")
POLL_S = 0.25
DEADLINE_S = 30.0


class DemoService:
    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.pidfile = workdir / "demo.pid"
        self._process: subprocess.Popen[bytes] | None = None  # the first one (ours to reap)

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                str(SERVICE_DIR / "demo_service.py"),
                str(self.port),
                str(self.pidfile),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http_ok(f"http://{self.instance}/metrics", deadline_s=10.0, process=None)

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._process is not None and self._process.pid == pid:
            self._process.wait(timeout=10)

    def restarts(self) -> list[str]:
        log = self.workdir / "restarts.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def service(tmp_path: Path) -> Iterator[DemoService]:
    demo = DemoService(tmp_path, free_port())
    demo.start()
    try:
        yield demo
    finally:
        demo.kill()


def _settings(tmp_path: Path, prometheus: PrometheusProcess) -> Any:
    restart = [sys.executable, str(SERVICE_DIR / "restart_demo.py"), str(tmp_path)]
    cli = {
        "knowledge.path": str(tmp_path / "k.sqlite3"),
        "charter.mode": "none",
        "prometheus.url": prometheus.url,
        "monitor.queries": {
            "service_up": 'up{job="demo"}',
            # While the process is down its own series is stale: `up * 0` keeps the query
            # answering (0) so the crash is judged on `up`, not as missing data.
            "error_ratio": 'demo_error_ratio{job="demo"} or (up{job="demo"} * 0)',
        },
        "monitor.rules": [
            {
                "name": "service_down",
                "query": "service_up",
                "comparator": "<",
                "threshold": 1,
                "severity": "critical",
                "component_label": "job",
            },
            {
                "name": "high_error_ratio",
                "query": "error_ratio",
                "comparator": ">",
                "threshold": 0.5,
                "severity": "critical",
                "component_label": "job",
            },
        ],
        "planner.actions": {
            "restart_demo": {
                "cost": 0.2,
                "benefit": 0.9,
                "settle_s": 2,
                "knob": "process",
                "actuator": {
                    "type": "exec",
                    "argv": [*restart, "{target}", "{labels.instance}"],
                    "timeout_s": 15,
                },
            }
        },
        "planner.remediations": {
            "service_down": [[{"type": "restart_demo"}]],
            "high_error_ratio": [[{"type": "restart_demo"}]],
        },
        "guards.cooldown.base_s": 0,
        "executor.verify_deadline_s": 20,
    }
    return load_settings(None, {}, cli)[0]


async def _query(prometheus: PrometheusProcess, promql: str) -> float | None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        answer = await client.get(f"{prometheus.url}/api/v1/query", params={"query": promql})
    result = answer.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


async def _until(prometheus: PrometheusProcess, promql: str, expected: float) -> None:
    """Poll (bounded) until Prometheus itself reads `expected` for `promql`."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if await _query(prometheus, promql) == expected:
            return
        await asyncio.sleep(POLL_S)
    pytest.fail(f"Prometheus never read {promql} = {expected}")


async def _remediate(parts: Any, cause: str) -> list[dict[str, Any]]:
    """Iterations (every POLL_S, bounded) until an outcome for `cause` is recorded."""
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        record = await parts.orchestrator.run_once()
        records.append(record)
        if any(v["cause"] == cause for v in record.get("verifications", [])):
            return records
        await asyncio.sleep(POLL_S)
    why = [(r["result"], r.get("why")) for r in records[-5:]]
    pytest.fail(f"no outcome for {cause} in {DEADLINE_S} s; last iterations: {why}")


async def test_a_crashed_then_degraded_service_is_restarted_by_exec_and_verified(
    tmp_path: Path, service: DemoService
) -> None:
    prometheus = start_prometheus(tmp_path, scrape_targets={"demo": [service.instance]})
    try:
        await _until(prometheus, 'up{job="demo"}', 1.0)
        async with build(_settings(tmp_path, prometheus)) as parts:
            first = await parts.orchestrator.run_once()
            assert first["result"] != "acted", first  # healthy: nothing to do

            service.kill()  # a crash
            await _until(prometheus, 'up{job="demo"}', 0.0)
            records = await _remediate(parts, "service_down")
            acted = [r for r in records if r["result"] == "acted"]
            assert len(acted) == 1, [(r["result"], r.get("why")) for r in records]
            assert service.restarts() == [f"demo {service.instance}"]
            [step] = acted[0]["execution"]["actions"]
            assert step["status"] == "completed"
            verified = [v for r in records for v in r.get("verifications", [])]
            assert [(v["cause"], v["outcome"]) for v in verified] == [("service_down", "success")]

            httpx.post(f"http://{service.instance}/degrade", timeout=2.0).raise_for_status()
            await _until(prometheus, 'demo_error_ratio{job="demo"}', 0.9)
            records = await _remediate(parts, "high_error_ratio")
            assert len(service.restarts()) == 2
            verified = [v for r in records for v in r.get("verifications", [])]
            assert [(v["cause"], v["outcome"]) for v in verified] == [
                ("high_error_ratio", "success")
            ]
            assert await _query(prometheus, 'demo_error_ratio{job="demo"}') == 0.0
            pairs = {(p.cause, p.action_type): p.samples for p in parts.knowledge.view().values()}
        assert pairs == {
            ("service_down", "restart_demo"): 1,
            ("high_error_ratio", "restart_demo"): 1,
        }
    finally:
        prometheus.stop()
