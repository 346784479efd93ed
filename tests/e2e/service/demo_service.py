"""A small HTTP service for the real-service end-to-end test (stdlib only).

`python demo_service.py PORT PIDFILE`: serves Prometheus metrics on /metrics
(`demo_error_ratio`: 0, or 0.9 once degraded) and `POST /degrade` degrades it until it is
restarted. It writes its pid to PIDFILE once it listens.
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEGRADED = {"on": False}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        ratio = 0.9 if DEGRADED["on"] else 0.0
        body = f"# TYPE demo_error_ratio gauge\ndemo_error_ratio {ratio}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path != "/degrade":
            self.send_error(404)
            return
        DEGRADED["on"] = True
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


def main() -> None:
    port, pidfile = int(sys.argv[1]), Path(sys.argv[2])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    tmp = pidfile.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(pidfile)
    server.serve_forever()


if __name__ == "__main__":
    main()
