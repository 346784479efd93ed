"""Benchmark 4: memory under churn, RSS after 100k and after 1M alerts ingested and resolved.

Each alert has a fresh fingerprint; batches of 100 go the webhook's way minus HTTP: JSON
bytes -> WebhookPayload.model_validate_json -> AlertMessageRouter -> AlertInbox (firing,
then the same alerts resolved). RSS is VmRSS after gc.collect(), in this one process.
Usage: python -m bench.memory_churn [--small N] [--large N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

from prometheus_client import CollectorRegistry

from bench.common import Verdict, quiet_logs, rss_bytes, table, write_json
from mape_k.config import ServerConfig
from mape_k.integrations.alertmanager import AlertInbox, AlertMessageRouter, WebhookPayload
from mape_k.metrics import Metrics

TARGET_GROWTH = 0.05
BATCH = 100
_ALERT = (
    '{{"status":"{status}","labels":{{"alertname":"CharterHighFailureRate",'
    '"cause":"high_failure_rate","component":"member-{member}","severity":"critical",'
    '"instance":"127.0.0.1:8000","job":"charter"}},"annotations":{{"summary":"failure rate '
    'above 5%","runbook_url":"https://example.invalid/runbooks/failure-rate"}},'
    '"startsAt":"2026-11-22T04:{m:02d}:{s:02d}.{ms:03d}Z","endsAt":"{ends}",'
    '"generatorURL":"http://127.0.0.1:9090/graph?g0.expr=x","fingerprint":"{fp:016x}"}}'
)


def body(start: int, *, status: str) -> bytes:
    ends = "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-22T05:00:00Z"
    alerts = ",".join(
        _ALERT.format(
            status=status,
            member=i % 1000,
            m=(i // 60000) % 60,
            s=(i // 1000) % 60,
            ms=i % 1000,
            ends=ends,
            fp=i,
        )
        for i in range(start, start + BATCH)
    )
    return (
        f'{{"version":"4","groupKey":"{{}}:{{alertname=\\"CharterHighFailureRate\\"}}",'
        f'"truncatedAlerts":0,"status":"{status}","receiver":"mape-k",'
        f'"groupLabels":{{}},"commonLabels":{{}},"commonAnnotations":{{}},'
        f'"externalURL":"http://127.0.0.1:9093","alerts":[{alerts}]}}'
    ).encode()


def churn(router: AlertMessageRouter, start: int, count: int) -> int:
    resolved = 0
    for first in range(start, start + count, BATCH):
        for status in ("firing", "resolved"):
            payload = WebhookPayload.model_validate_json(body(first, status=status))
            resolved += router.route_alerts(payload.alerts).resolved
    return resolved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    quiet_logs()
    json.loads(body(0, status="firing"))  # the template is valid JSON
    config = ServerConfig()
    inbox = AlertInbox(max_alerts=config.inbox_max_alerts, metrics=Metrics(CollectorRegistry()))
    router = AlertMessageRouter()
    router.register_default_handler(inbox.offer)
    started = time.perf_counter()
    rows = [["start", 0, f"{rss_bytes() / 2**20:.1f}", len(inbox), inbox.remembered, "-"]]
    done = churn(router, 0, args.small)
    small = rss_bytes()
    rows.append(
        [
            "after",
            f"{args.small:,}",
            f"{small / 2**20:.1f}",
            len(inbox),
            inbox.remembered,
            f"{time.perf_counter() - started:.1f}",
        ]
    )
    done += churn(router, args.small, args.large - args.small)
    large = rss_bytes()
    rows.append(
        [
            "after",
            f"{args.large:,}",
            f"{large / 2**20:.1f}",
            len(inbox),
            inbox.remembered,
            f"{time.perf_counter() - started:.1f}",
        ]
    )
    growth = large / small - 1
    ok = growth <= TARGET_GROWTH and done == args.large
    print("### 4. Memory under churn (alerts ingested and resolved)\n")
    print(table(["point", "alerts", "RSS MiB", "firing", "resolves kept", "elapsed s"], rows))
    print(
        f"\nTarget: RSS growth <= {TARGET_GROWTH:.0%} from {args.small:,} to {args.large:,} "
        f"alerts -> {growth:+.2%}: **{'PASS' if ok else 'MISS'}**. Fresh fingerprint per "
        f"alert, batches of {BATCH} parsed from JSON bytes by WebhookPayload, routed to the "
        f"inbox (max_alerts {config.inbox_max_alerts:,}, resolve memory bounded at "
        f"max(2 x max_alerts, 1024) resolves), then resolved; {done:,} resolved in all.\n"
    )
    write_json(
        args.json,
        [
            Verdict(
                "4 memory under churn",
                f"RSS growth {args.small:,} -> {args.large:,} alerts",
                f"{growth:+.2%} ({small / 2**20:.1f} -> {large / 2**20:.1f} MiB)",
                f"<= {TARGET_GROWTH:.0%}",
                ok,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
