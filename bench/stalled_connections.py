"""Benchmark 10: stalled connections held while /healthz answers, under a 1,024 file limit.

The real daemon (`mape-k run --mock`, its log as JSON in a file) runs with RLIMIT_NOFILE
set to `--file-limit` in the child before exec. This process opens `--connections`
connections to it on 127.0.0.1, each sending an incomplete request (a slowloris client
that stalls), holds them for `--hold-s` seconds while probing GET /healthz on a fresh
connection every 0.5 s (1 s timeout each), then reads the daemon's own counters from
/metrics, closes everything and counts the log.
Usage: python -m bench.stalled_connections [--connections N] [--file-limit N]
       [--max-connections N] [--hold-s S] [--json FILE]
Run it against another checkout with PYTHONPATH=that/src to compare (missing metrics
show as "-").
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Verdict, percentile, proc_rss_bytes, table, write_json
from bench.webhook_ingest import free_port, wait_port

STALL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stalled: "
OPEN_DEADLINE_S = 60.0  # a daemon that stops accepting makes each connect wait: bound it
PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 1.0
TARGET_CONNECTIONS = 2000
TARGET_FILE_LIMIT = 1024
TARGET_LOG_LINES = 40


def probe(port: int) -> tuple[int | None, float]:
    """(status or None on failure, seconds) of one GET /healthz on a new connection."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException):
        status = None
    finally:
        connection.close()
    return status, time.monotonic() - started


def metric(port: int, series: str) -> str:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
    except (OSError, http.client.HTTPException):
        return "-"
    for line in text.splitlines():
        if line.split(" ")[0] == series:
            return f"{float(line.split()[-1]):.0f}"
    return "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=TARGET_CONNECTIONS)
    parser.add_argument("--file-limit", type=int, default=TARGET_FILE_LIMIT)
    parser.add_argument("--max-connections", type=int, help="server.max_connections")
    parser.add_argument("--hold-s", type=float, default=5.0)
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    # This process holds every client socket: it needs more descriptors than the daemon.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    port = free_port()

    def limit_files() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.file_limit, args.file_limit))

    with tempfile.TemporaryDirectory(prefix="bench-stalled-") as tmp:
        log = Path(tmp) / "daemon.log"
        env = {
            **os.environ,
            "MAPEK_SERVER__PORT": str(port),
            "MAPEK_KNOWLEDGE__PATH": str(Path(tmp) / "knowledge.sqlite3"),
            "MAPEK_LOGGING__FORMAT": "json",
        }
        if args.max_connections is not None:
            env["MAPEK_SERVER__MAX_CONNECTIONS"] = str(args.max_connections)
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "mape_k", "run", "--mock"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=limit_files,  # noqa: PLW1509 - no threads in this process
            )
        stalled: list[socket.socket] = []
        try:
            wait_port(port)
            started = time.monotonic()
            failed = 0
            for _ in range(args.connections):
                if time.monotonic() - started > OPEN_DEADLINE_S:
                    break
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
                    sock.sendall(STALL)
                except OSError:
                    failed += 1
                    continue
                stalled.append(sock)
            opened_s = time.monotonic() - started
            probes = []
            hold_until = time.monotonic() + args.hold_s
            while time.monotonic() < hold_until:
                probes.append(probe(port))
                time.sleep(PROBE_EVERY_S)  # the probe's own cadence
            open_now = metric(port, "mapek_http_connections")
            cap = metric(port, "mapek_http_connections_max")
            evicted = metric(port, 'mapek_http_connections_dropped_total{reason="evicted"}')
            refused = metric(port, 'mapek_http_connections_dropped_total{reason="refused"}')
            fds = sum(1 for _ in Path(f"/proc/{daemon.pid}/fd").iterdir())
            rss = proc_rss_bytes(daemon.pid)
        finally:
            for sock in stalled:
                sock.close()
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        raw = log.read_bytes()
    lines = raw.decode("utf-8", "replace").splitlines()
    not_json = 0
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json += 1
    answered = [seconds for status, seconds in probes if status == 200]
    all_ok = len(answered) == len(probes) > 0 and max(answered) < PROBE_TIMEOUT_S
    log_ok = not_json == 0 and len(lines) < TARGET_LOG_LINES
    ok = all_ok and log_ok and len(stalled) >= TARGET_CONNECTIONS
    print(
        f"### 10. Stalled connections under a {args.file_limit} file limit "
        f"({args.connections} slowloris clients)\n"
    )
    print(
        table(
            [
                "attempted",
                "opened",
                "connect failed",
                "open s",
                "daemon open / cap",
                "evicted",
                "refused",
                "daemon fds",
                "/healthz 200",
                "p50 ms",
                "max ms",
                "log lines",
                "not JSON",
                "log bytes",
                "RSS MiB",
            ],
            [
                [
                    args.connections,
                    len(stalled),
                    failed,
                    f"{opened_s:.1f}",
                    f"{open_now} / {cap}",
                    evicted,
                    refused,
                    fds,
                    f"{len(answered)}/{len(probes)}",
                    f"{percentile(answered, 50) * 1000:.1f}" if answered else "-",
                    f"{max(answered) * 1000:.1f}" if answered else "-",
                    len(lines),
                    not_json,
                    len(raw),
                    f"{rss / 2**20:.0f}",
                ]
            ],
        )
    )
    print(
        f"\nTarget: {TARGET_CONNECTIONS} stalled connections under a {TARGET_FILE_LIMIT} file"
        f" limit, every /healthz probe 200 within {PROBE_TIMEOUT_S:g} s, the log JSON and"
        f" under {TARGET_LOG_LINES} lines -> **{'PASS' if ok else 'MISS'}**. `mape-k run --mock`"
        " with RLIMIT_NOFILE set in the child; each stalled client sends an incomplete request"
        f" and waits (opening stops after {OPEN_DEADLINE_S:g} s), all held {args.hold_s:g} s"
        f" after the last opened, with a probe on a fresh connection every {PROBE_EVERY_S:g} s"
        " (the daemon keeps the newest up to its cap and cuts the others: evicted to make"
        " room, or at the 10 s header timeout). Daemon counters from its /metrics, its"
        " descriptors from /proc, at the end of the hold.\n"
    )
    write_json(
        args.json,
        [
            Verdict(
                "10 stalled connections",
                f"{args.connections} stalled, file limit {args.file_limit}",
                f"/healthz {len(answered)}/{len(probes)} ok, max "
                f"{max(answered) * 1000 if answered else float('nan'):.0f} ms;"
                f" log {len(lines)} lines, {not_json} not JSON",
                f"all 200 < {PROBE_TIMEOUT_S:g} s; log JSON, < {TARGET_LOG_LINES} lines",
                ok,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
