"""A Prometheus-compatible stub for the benchmarks: /api/v1/query answers a one-sample vector.

`python -m bench.prom_stub PORT`. Every instant query (GET or POST form) gets a vector
with one sample stamped now: "5" for committee-size queries, "0" otherwise (a healthy,
idle committee). /-/ready answers 200. No PromQL evaluation at all.
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web


async def query(request: web.Request) -> web.Response:
    form = await request.post() if request.method == "POST" else request.query
    promql = str(form.get("query", ""))
    healthy_size = "committee_size" in promql and "healthy_members" not in promql
    value = (
        "5" if healthy_size or promql.strip() == "max(westworld_charter_healthy_members)" else "0"
    )
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"component": "charter"}, "value": [time.time(), value]}],
        },
    }
    return web.Response(body=json.dumps(body).encode(), content_type="application/json")


async def ready(_request: web.Request) -> web.Response:
    return web.Response(text="Prometheus Server is Ready.\n")


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", query)
    app.router.add_get("/-/ready", ready)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
