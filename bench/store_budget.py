"""Benchmark 11: knowledge store bytes after 24 simulated hours with 10,000 alerts firing.

The daemon's own pieces (`app.build`: the store opened with knowledge.max_bytes, the mock
Charter, the alert inbox, the orchestrator) on a simulated clock: 10,000 firing alerts
(1,000 members x 10 fingerprints) stay in the inbox the whole time, one iteration runs per
orchestrator.interval_s of simulated time (the loop's grid) and the hourly retention prune
(`app.prune`) runs every simulated hour. No sleeping. Bytes are the database file plus its
WAL as the file system reports them, after every iteration (peak) and at the end; once with
the default budget, once with a tight one so that pruning has to hold it.
Usage: python -m bench.store_budget [--hours H] [--alerts N] [--tight-mib M] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.common import Verdict, quiet_logs, table, write_json
from mape_k.app import build, prune
from mape_k.config import KnowledgeConfig, Settings
from mape_k.integrations.alertmanager import Alert
from mape_k.integrations.charter.mock import MockCharterWorld

START = 1_700_000_000.0
MEMBERS = 1000


class SimClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def alerts(count: int) -> list[Alert]:
    return [
        Alert.model_validate(
            {
                "status": "firing",
                "labels": {
                    "alertname": "CharterHighFailureRate",
                    "cause": "high_failure_rate",
                    "component": f"member-{i % MEMBERS}",
                    "severity": "critical",
                    "instance": "127.0.0.1:8000",
                    "job": "charter",
                },
                "annotations": {"summary": "failure rate above 5%"},
                "startsAt": "2026-11-22T04:17:10.023Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=x",
                "fingerprint": f"{i:016x}",
            }
        )
        for i in range(count)
    ]


def on_disk(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def simulate(*, hours: float, alert_count: int, max_bytes: int, tmp: Path) -> dict[str, Any]:
    path = tmp / f"knowledge-{max_bytes}.sqlite3"
    settings = Settings.model_validate(
        {
            "charter": {"mode": "mock"},
            "knowledge": {"path": str(path), "max_bytes": max_bytes},
            "server": {"inbox_max_alerts": max(alert_count, 1)},
        }
    )
    clock = SimClock(START)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    interval = settings.orchestrator.interval_s
    iterations = int(hours * 3600 / interval)
    peak = 0
    record_bytes: list[int] = []
    results: dict[str, int] = {}
    started = time.perf_counter()
    async with build(settings, registry=CollectorRegistry(), world=world, clock=clock) as parts:
        firing = alerts(alert_count)
        parts.inbox.offer(firing)
        for i in range(iterations):
            clock.now = START + (i + 1) * interval
            record = await parts.orchestrator.run_once()
            results[record["result"]] = results.get(record["result"], 0) + 1
            if i % 60 == 0:
                record_bytes.append(len(json.dumps(record)))
            if i and i % int(3600 / interval) == 0:
                await prune(parts, now=clock.now)
            peak = max(peak, on_disk(path))
        final = on_disk(path)
        firing_now = len(parts.inbox)
        stored = len(await parts.store.recent_iterations(10_000_000))
        registry = parts.metrics.registry
        pruned = sum(
            sample.value
            for metric in registry.collect()
            if metric.name == "mapek_knowledge_pruned_rows"
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
    return {
        "max_bytes": max_bytes,
        "iterations": iterations,
        "results": results,
        "final": final,
        "peak": peak,
        "record_bytes": max(record_bytes) if record_bytes else 0,
        "stored": stored,
        "pruned": int(pruned),
        "firing": firing_now,
        "wall_s": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--tight-mib", type=float, default=16.0)
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    quiet_logs()
    default_budget = KnowledgeConfig().max_bytes
    budgets = [default_budget, int(args.tight_mib * 2**20)]
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        runs = [
            asyncio.run(
                simulate(hours=args.hours, alert_count=args.alerts, max_bytes=b, tmp=Path(tmp))
            )
            for b in budgets
        ]
    mib = 2**20
    print(
        f"### 11. Store bytes after {args.hours:g} simulated hours, {args.alerts:,} alerts firing\n"
    )
    print(
        table(
            [
                "max_bytes MiB",
                "iterations",
                "results",
                "alerts firing at end",
                "largest record kB",
                "records kept",
                "rows pruned",
                "peak MiB",
                "end MiB",
                "wall s",
            ],
            [
                [
                    f"{r['max_bytes'] / mib:g}",
                    f"{r['iterations']:,}",
                    " ".join(f"{k}={v}" for k, v in sorted(r["results"].items())),
                    f"{r['firing']:,}",
                    f"{r['record_bytes'] / 1000:.1f}",
                    f"{r['stored']:,}",
                    f"{r['pruned']:,}",
                    f"{r['peak'] / mib:.2f}",
                    f"{r['final'] / mib:.2f}",
                    f"{r['wall_s']:.0f}",
                ]
                for r in runs
            ],
        )
    )
    print(
        "\nThe daemon's pieces from `app.build` on a simulated clock (no sleeping): one"
        " iteration per orchestrator.interval_s (30 s), the hourly `app.prune`, the byte"
        " budget checked by the store after every write. Bytes: database file + WAL from"
        " stat(), after every iteration (peak) and at the end.\n"
    )
    verdicts = [
        Verdict(
            "11 store budget",
            f"bytes after {args.hours:g} h, {args.alerts:,} alerts,"
            f" max_bytes {r['max_bytes'] / mib:g} MiB",
            f"{r['final'] / mib:.2f} MiB (peak {r['peak']:,} bytes)",
            f"<= {r['max_bytes'] / mib:g} MiB",
            r["peak"] <= r["max_bytes"] and r["firing"] == args.alerts,
        )
        for r in runs
    ]
    write_json(args.json, verdicts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
