"""Benchmark 2: webhook ingest, alerts/s and p99 of POST /api/v1/alerts under wrk load.

The real daemon (`mape-k run --mock`, a subprocess pinned to one core) beside a bare
aiohttp handler that only reads the same body, both loaded in the same run by Debian's
`wrk` pinned to another core, posting a real Alertmanager payload.
Usage: python -m bench.webhook_ingest [--duration S] [--connections N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import FIXTURES, Verdict, table, write_json

TARGET_RATIO = 0.8
BODY = FIXTURES / "alertmanager/webhook/raw_firing_body.json"

BARE_SERVER = """
import sys
from aiohttp import web

async def alerts(request):
    await request.read()
    return web.json_response({"status": "ok"})

app = web.Application(client_max_size=1048576)
app.router.add_post("/api/v1/alerts", alerts)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, *, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cores() -> tuple[str, str]:
    """(server core, load core): different cores when there are two."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= 2:
        return str(available[0]), str(available[1])
    return str(available[0]), str(available[0])


@contextlib.contextmanager
def server(kind: str, port: int, core: str, scratch: Path, *, log_level: str) -> Iterator[None]:
    if kind == "bare":
        argv = [sys.executable, "-c", BARE_SERVER, str(port)]
    else:
        argv = [
            sys.executable,
            "-m",
            "mape_k",
            "run",
            "--mock",
            "--port",
            str(port),
            "--set",
            f"knowledge.path={scratch / f'k-{port}.sqlite3'}",
            "--set",
            f"logging.level={log_level}",
            "--set",
            "logging.format=json",
        ]
    with open(os.devnull, "wb") as devnull:  # noqa: PTH123
        proc = subprocess.Popen(  # the daemon logs to stderr: /dev/null keeps the cost
            ["taskset", "-c", core, *argv], stdout=devnull, stderr=devnull
        )
        try:
            wait_port(port)
            time.sleep(0.5)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_wrk(
    port: int, core: str, lua: Path, *, duration: int, connections: int
) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            core,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}/api/v1/alerts",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p99_ms": p99_ms,
        "non2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("### 2. Webhook ingest\n\nskipped: `wrk` is not installed (apt-get install wrk)\n")
        write_json(
            args.json,
            [
                Verdict(
                    "2 webhook ingest",
                    "throughput vs bare",
                    "not run",
                    f">= {TARGET_RATIO}x bare",
                    ok=False,
                )
            ],
        )
        return 0
    server_core, load_core = cores()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        scratch = Path(tmp)
        lua = scratch / "post.lua"
        lua.write_text(LUA.format(body=BODY))
        for name, kind, level in (
            ("bare aiohttp handler (reads the body)", "bare", "info"),
            ("mape-k daemon, logging.level=info (default)", "daemon", "info"),
            ("mape-k daemon, logging.level=warning", "daemon", "warning"),
        ):
            port = free_port()
            with server(kind, port, server_core, scratch, log_level=level):
                results[name] = run_wrk(
                    port, load_core, lua, duration=args.duration, connections=args.connections
                )
    bare = results["bare aiohttp handler (reads the body)"]["rps"]
    rows = []
    for name, r in results.items():
        rows.append(
            [
                name,
                f"{r['rps']:,.0f}",
                f"{r['p99_ms']:.2f}",
                f"{r['rps'] / bare:.2f}x",
                int(r["non2xx"]),
            ]
        )
    daemon = results["mape-k daemon, logging.level=info (default)"]
    ratio = daemon["rps"] / bare
    ok = ratio >= TARGET_RATIO and daemon["non2xx"] == 0
    print("### 2. Webhook ingest (POST /api/v1/alerts under load)\n")
    print(table(["server", "alerts/s", "p99 ms", "vs bare", "non-2xx"], rows))
    print(
        f"\nTarget: >= {TARGET_RATIO}x the bare handler's throughput -> {ratio:.2f}x: "
        f"**{'PASS' if ok else 'MISS'}**. wrk 1 thread, {args.connections} connections, "
        f"{args.duration} s per server, pinned to core {load_core}; server pinned to core "
        f"{server_core}. Body: the captured Alertmanager 0.25 payload `{BODY.name}` "
        "(one alert: after the first POST every delivery is a re-delivery, so this is the "
        "parse + validate + dedupe path; the daemon is `mape-k run --mock`, its log on "
        "/dev/null).\n"
    )
    write_json(
        args.json,
        [
            Verdict(
                "2 webhook ingest",
                "daemon / bare alerts/s",
                f"{ratio:.2f}x ({daemon['rps']:,.0f} vs {bare:,.0f}/s,"
                f" p99 {daemon['p99_ms']:.1f} ms)",
                f">= {TARGET_RATIO}x",
                ok,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
