"""Benchmark 7: idle cost, CPU seconds per hour of the daemon at the default 30 s interval.

The real daemon (`mape-k run`, charter.mode=http) as a subprocess with the shipped
queries against a Prometheus-compatible stub (bench.prom_stub) and the Charter simulator
(`mape-k charter-sim`); utime+stime of the daemon's PID over a wall window, per hour.
Usage: python -m bench.idle_cost [--seconds S] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Verdict, cpu_seconds, proc_rss_bytes, table, write_json
from bench.webhook_ingest import free_port, wait_port

TARGET_FRACTION = 0.005  # of one core
WARMUP_S = 5.0


@contextlib.contextmanager
def process(
    argv: list[str], port: int, *, log: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` running while the block runs, once it listens on `port`; output to `log`."""
    with open(log or os.devnull, "wb") as output:  # noqa: PTH123
        proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
        try:
            wait_port(port)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    prom_port, sim_port, port = free_port(), free_port(), free_port()
    mapek = [sys.executable, "-m", "mape_k"]
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        daemon_argv = [
            *mapek,
            "run",
            "--port",
            str(port),
            "--set",
            "charter.mode=http",
            "--set",
            f"charter.url=http://127.0.0.1:{sim_port}",
            "--set",
            f"prometheus.url=http://127.0.0.1:{prom_port}",
            "--set",
            f"knowledge.path={Path(tmp) / 'knowledge.sqlite3'}",
            "--set",
            "logging.format=json",
        ]
        with (
            process([sys.executable, "-m", "bench.prom_stub", str(prom_port)], prom_port),
            process([*mapek, "charter-sim", "--port", str(sim_port)], sim_port),
            process(daemon_argv, port) as daemon,
        ):
            time.sleep(WARMUP_S)  # start-up (imports, first iteration) is not idle cost
            before = stats(port)["orchestrator"]
            cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(args.seconds)
            cpu1, wall1 = cpu_seconds(daemon.pid), time.monotonic()
            after = stats(port)["orchestrator"]
            rss = proc_rss_bytes(daemon.pid)
    cpu, wall = cpu1 - cpu0, wall1 - wall0
    per_hour = cpu / wall * 3600
    fraction = cpu / wall
    iterations = after["iteration"] - before["iteration"]
    ok = fraction < TARGET_FRACTION and after["last_result"] == "idle"
    print("### 7. Idle cost (daemon at the default 30 s interval, shipped queries)\n")
    print(
        table(
            [
                "window s",
                "iterations",
                "last result",
                "CPU s",
                "CPU s/hour",
                "% of a core",
                "mean iteration ms",
                "RSS MiB",
            ],
            [
                [
                    f"{wall:.0f}",
                    iterations,
                    after["last_result"],
                    f"{cpu:.2f}",
                    f"{per_hour:.1f}",
                    f"{fraction:.3%}",
                    f"{after['mean_cycle_s'] * 1000:.1f}",
                    f"{rss / 2**20:.0f}",
                ]
            ],
        )
    )
    print(
        f"\nTarget: < {TARGET_FRACTION:.1%} of one core ({TARGET_FRACTION * 3600:g} CPU s/hour) "
        f"-> {fraction:.3%} ({per_hour:.1f} s/hour): **{'PASS' if ok else 'MISS'}**. "
        "`mape-k run` with charter.mode=http against `mape-k charter-sim` and a "
        "Prometheus-compatible stub answering the 8 shipped queries (healthy values); "
        "utime+stime of the daemon's PID from /proc over the window, after a "
        f"{WARMUP_S:g} s start-up; logs at info (JSON) on /dev/null.\n"
    )
    write_json(
        args.json,
        [
            Verdict(
                "7 idle cost",
                "daemon CPU at 30 s interval",
                f"{per_hour:.1f} CPU s/hour ({fraction:.3%} of a core)",
                f"< {TARGET_FRACTION * 3600:g} s/hour (0.5%)",
                ok,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
