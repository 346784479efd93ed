"""Benchmark 6: monitor fan-out, one Monitor pass of 200 PromQL queries, wall time and CPU.

A Prometheus-compatible stub (bench.prom_stub, a subprocess on another core) answers;
the real Monitor + PrometheusClient (what the daemon runs: its own aiohttp session) and
the Monitor over a bare aiohttp client (the floor) read it, their passes interleaved.
Usage: python -m bench.monitor_fanout [--queries N] [--passes N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp

from bench.common import Verdict, quiet_logs, table, write_json
from bench.webhook_ingest import cores, free_port, wait_port
from mape_k.config import MonitorConfig
from mape_k.integrations.prometheus import PrometheusClient
from mape_k.loop.monitor import Monitor
from mape_k.models import Sample

TARGET_RATIO = 1.5  # the daemon's pass (PrometheusClient) / the bare aiohttp client's
MAX_CONNECTIONS = 32  # prometheus.max_connections default
DAEMON = "mape-k PrometheusClient (aiohttp session, what the daemon runs)"
FLOOR = "bare aiohttp client (floor, not a daemon option)"


class AiohttpSource:
    """The floor: a bare aiohttp client reading the same vector (not a daemon option)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def read(self, name: str, promql: str, *, timeout_s: float) -> list[Sample]:  # noqa: ARG002
        assert self._session is not None
        async with self._session.post(f"{self._url}/api/v1/query", data={"query": promql}) as r:
            body = await r.json()
        return [
            Sample(labels=e["metric"], value=float(e["value"][1]), timestamp=e["value"][0])
            for e in body["data"]["result"]
        ]


async def passes(monitors: dict[str, Monitor], count: int) -> dict[str, dict[str, Any]]:
    """Per monitor: wall and CPU ms per pass, and failed queries. One warm-up pass each,
    then the passes interleaved (the order alternating every round), so a machine whose
    speed drifts during the run slows both alike and the ratio stays fair."""
    for monitor in monitors.values():
        await monitor.observe(time.time())
    out: dict[str, dict[str, Any]] = {n: {"walls": [], "cpus": [], "failed": 0} for n in monitors}
    names = list(monitors)
    for round_ in range(count):
        for name in names if round_ % 2 == 0 else reversed(names):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            observation = await monitors[name].observe(time.time())
            out[name]["walls"].append((time.perf_counter() - wall0) * 1000)
            out[name]["cpus"].append((time.process_time() - cpu0) * 1000)
            out[name]["failed"] += sum(not q.ok for q in observation.queries)
    return out


async def measure(url: str, *, queries: int, count: int) -> dict[str, dict[str, Any]]:
    config = MonitorConfig(
        queries={
            f"q{i}": f'max(westworld_charter_failure_rate{{shard="{i}"}})' for i in range(queries)
        },
        rules=(),
        query_timeout_s=10,
    )
    client = PrometheusClient(url=url, timeout_s=10, max_connections=MAX_CONNECTIONS)
    floor = AiohttpSource(url)
    await client.connect()
    await floor.open()
    try:
        return await passes(
            {
                DAEMON: Monitor(config, source=client, alerts=None),
                FLOOR: Monitor(config, source=floor, alerts=None),
            },
            count,
        )
    finally:
        await client.disconnect()
        await floor.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    quiet_logs()
    client_core, stub_core = cores()
    os.sched_setaffinity(0, {int(client_core)})
    port = free_port()
    stub = subprocess.Popen(
        ["taskset", "-c", stub_core, sys.executable, "-m", "bench.prom_stub", str(port)]
    )
    try:
        wait_port(port)
        results = asyncio.run(
            measure(f"http://127.0.0.1:{port}", queries=args.queries, count=args.passes)
        )
    finally:
        stub.terminate()
        stub.wait(10)
    floor = statistics.median(results[FLOOR]["walls"])
    rows = []
    for name, r in results.items():
        rows.append(
            [
                name,
                f"{statistics.median(r['walls']):.1f}",
                f"{max(r['walls']):.1f}",
                f"{statistics.median(r['cpus']):.1f}",
                f"{statistics.median(r['cpus']) * 1000 / args.queries:.0f}",
                r["failed"],
                f"{statistics.median(r['walls']) / floor:.2f}x",
            ]
        )
    daemon = results[DAEMON]
    wall = statistics.median(daemon["walls"])
    ratio = wall / floor
    ok = ratio <= TARGET_RATIO and daemon["failed"] == 0
    print(f"### 6. Monitor fan-out ({args.queries} queries, one Monitor pass)\n")
    print(
        table(
            [
                "client",
                "median wall ms",
                "max wall ms",
                "median CPU ms",
                "CPU us/query",
                "failed queries",
                "wall / floor",
            ],
            rows,
        )
    )
    print(
        f"\nTarget: the daemon's pass (PrometheusClient) <= {TARGET_RATIO:g}x the bare "
        f"aiohttp client's -> {wall:.1f} ms / {floor:.1f} ms = {ratio:.2f}x: "
        f"**{'PASS' if ok else 'MISS'}**. "
        f"Median of {args.passes} passes each after a warm-up "
        "pass, the two clients' passes interleaved; "
        f"pool of {MAX_CONNECTIONS} connections (prometheus.max_connections); client "
        f"pinned to core {client_core}, stub (bench.prom_stub, aiohttp) to core {stub_core}; "
        "CPU is time.process_time() of the client process.\n"
    )
    write_json(
        args.json,
        [
            Verdict(
                "6 monitor fan-out",
                f"{args.queries} queries, daemon's pass / bare aiohttp client",
                f"{ratio:.2f}x ({wall:.1f} ms vs {floor:.1f} ms)",
                f"<= {TARGET_RATIO:g}x",
                ok,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
