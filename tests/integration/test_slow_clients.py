"""Slow, idle and stalled clients against the daemon as a process (`mape-k run --mock`).

The daemon runs on a free 127.0.0.1 port with its log in a file; the tests speak raw TCP
with blocking sockets and `select` (one header byte at a time, a body that never ends,
nothing at all) and check when the daemon closes. The flood test starts the daemon under
a 1,024 file limit (RLIMIT_NOFILE set in the child before exec) and opens 2,000 stalled
connections; the figures it checks are the ones bench/stalled_connections.py reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prom_support import free_port, wait_http_ok

pytestmark = pytest.mark.integration
DEADLINE_S = 20.0
SLACK_S = 1.0  # process scheduling on a shared 2-core machine
FILE_LIMIT = 1024
STALLED = 2000
BACKLOG = 128
STALL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stalled: "


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_lines()]


def _file_limit() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


@contextlib.contextmanager
def daemon(tmp_path: Path, *, file_limit: bool = False, **server: object) -> Iterator[Daemon]:
    port = free_port()
    env = {
        **os.environ,
        "MAPEK_SERVER__PORT": str(port),
        "MAPEK_KNOWLEDGE__PATH": str(tmp_path / "k.sqlite3"),
        "MAPEK_LOGGING__FORMAT": "json",
        **{f"MAPEK_SERVER__{key.upper()}": str(value) for key, value in server.items()},
    }
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "mape_k", "run", "--mock"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_file_limit if file_limit else None,  # noqa: PLW1509 - no threads here
        )
    handle = Daemon(process, f"http://127.0.0.1:{port}", port, log)
    try:
        wait_http_ok(f"{handle.url}/healthz", deadline_s=DEADLINE_S, process=process)
        yield handle
    finally:
        process.terminate()
        try:
            process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    sock.settimeout(None)
    return sock


def readable(sock: socket.socket, timeout_s: float) -> bool:
    poller = select.poll()  # not select(): descriptors here go past FD_SETSIZE
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def until_closed(
    sock: socket.socket, *, trickle: bytes = b"", every_s: float = 0.1
) -> tuple[float, bytes]:
    """Read (sending `trickle` every `every_s`) until the daemon closes: (seconds, bytes)."""
    started = time.monotonic()
    received = b""
    while time.monotonic() - started < DEADLINE_S:
        try:
            if readable(sock, every_s):
                chunk = sock.recv(65536)
                if chunk == b"":
                    return time.monotonic() - started, received
                received += chunk
            if trickle:
                sock.sendall(trickle)
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started, received
    pytest.fail(f"the daemon kept the connection open for {DEADLINE_S} s")


def test_slow_header_slow_body_and_idle_connections_are_closed_within_their_timeouts(
    tmp_path: Path,
) -> None:
    header_s, body_s, idle_s = 1.0, 1.5, 2.0
    with daemon(
        tmp_path, header_timeout_s=header_s, body_timeout_s=body_s, keepalive_timeout_s=idle_s
    ) as d:
        # Slowloris: one header byte every 0.1 s never completes the headers.
        with connect(d.port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            elapsed, received = until_closed(sock, trickle=b"x")
        assert header_s - 0.1 <= elapsed < header_s + SLACK_S
        assert received == b""

        # Idle: after one answered request, nothing more; the keep-alive timeout applies.
        with connect(d.port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = sock.recv(65536)
            elapsed, _ = until_closed(sock)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert idle_s - 0.1 <= elapsed < idle_s + SLACK_S

        # Slow body: the headers promise 1,000 bytes, one arrives every 0.1 s: 408, closed.
        with connect(d.port) as sock:
            sock.sendall(
                b"POST /api/v1/alerts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            elapsed, received = until_closed(sock, trickle=b" ")
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received
        assert json.loads(body)["field"] == "body"
        assert body_s - 0.1 <= elapsed < body_s + SLACK_S

        metrics = httpx.get(f"{d.url}/metrics", timeout=5).text
    assert 'mapek_http_connections_dropped_total{reason="header_timeout"} 1.0' in metrics
    assert 'mapek_http_connections_dropped_total{reason="idle_timeout"} 1.0' in metrics
    assert 'mapek_webhook_rejections_total{reason="timeout"} 1.0' in metrics


@contextlib.contextmanager
def many_fds(needed: int) -> Iterator[None]:
    """This process (the client) needs more descriptors than the daemon is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    assert want >= needed, f"the test needs {needed} descriptors; the hard limit is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def sample(metrics: str, series: str) -> float:
    [value] = [line.split()[-1] for line in metrics.splitlines() if line.split(" ")[0] == series]
    return float(value)


@pytest.mark.parametrize(
    ("configured", "cap"),
    [(None, 512), (5000, FILE_LIMIT - 64 - 2 * 128)],
    ids=["default-cap", "cap-lowered-to-the-file-limit"],
)
def test_2000_stalled_connections_under_a_1024_file_limit_healthz_answers_log_stays_small(
    tmp_path: Path, configured: int | None, cap: int
) -> None:
    server = {} if configured is None else {"max_connections": configured}
    stalled: list[socket.socket] = []
    with many_fds(STALLED + 256), daemon(tmp_path, file_limit=True, **server) as d:
        try:
            for _ in range(STALLED):
                sock = connect(d.port)
                stalled.append(sock)
                sock.sendall(STALL)
            answers = []
            for _ in range(3):
                started = time.monotonic()
                status = httpx.get(f"{d.url}/healthz", timeout=1.0).status_code
                answers.append((status, time.monotonic() - started))
            metrics = httpx.get(f"{d.url}/metrics", timeout=1.0).text
            alive = d.process.poll() is None
        finally:
            for sock in stalled:
                sock.close()
        lines = d.log_lines()
        size = d.log.stat().st_size
        events = d.events()  # every line is one JSON event
    assert alive
    assert [status for status, _ in answers] == [200, 200, 200]
    assert max(seconds for _, seconds in answers) < 1.0
    # The cap holds: full of stalled connections (each /healthz made room for itself) ...
    assert cap - 10 <= sample(metrics, "mapek_http_connections") <= cap
    assert sample(metrics, "mapek_http_connections_max") == cap
    evicted = sample(metrics, 'mapek_http_connections_dropped_total{reason="evicted"}')
    assert evicted >= STALLED - cap - 2 * BACKLOG  # a full accept queue holds some back
    assert sample(metrics, 'mapek_http_connections_dropped_total{reason="refused"}') == 0
    # ... and the log stays a handful of JSON events.
    assert len(lines) < 40, lines[-20:]
    assert size < 16_384
    names = [event["event"] for event in events]
    assert "connection_cap_reached" in names
    assert "asyncio_error" not in names
    lowered = [event for event in events if event["event"] == "connection_cap_lowered"]
    if configured is None:
        assert lowered == []
    else:
        assert lowered[0]["max_connections"] == cap
        assert lowered[0]["file_limit"] == FILE_LIMIT


def test_a_flood_of_malformed_requests_leaves_a_short_json_log(tmp_path: Path) -> None:
    with daemon(tmp_path) as d:
        for _ in range(300):
            with connect(d.port) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n")
                _, received = until_closed(sock)
            assert received.split(b"\r\n")[0].endswith(b" 400 Bad Request"), received
        events = d.events()  # every line is one JSON event
    # aiohttp answered them 400: the client's fault, a warning without a traceback.
    bad = [e for e in events if e["event"] == "http_bad_request"]
    assert len(bad) == 10
    assert bad[0]["logger"] == "aiohttp.server"
    assert all(e["level"] == "warning" and "exception" not in e for e in bad)
    assert not [e for e in events if e["event"] == "library_log"]
    assert [e["event"] for e in events].count("log_rate_limited") == 1
    assert len(events) < 30
