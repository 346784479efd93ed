"""Test doubles shared by the test folders (importable: `tests` is on pytest's pythonpath)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import yaml

# Captured Prometheus / Alertmanager payloads, inside the repository (see its README).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


class FakeClock:
    """A settable clock for anything with time in it: tests advance it explicitly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def alias_bomb(levels: int = 9, fanout: int = 9) -> str:
    """A "billion laughs": each anchor references the previous one `fanout` times."""
    lines = ["a0: &a0 {x: 1, y: 1, z: 1, w: 1}"]
    for i in range(1, levels + 1):
        refs = ", ".join(f"k{j}: *a{i - 1}" for j in range(fanout))
        lines.append(f"a{i}: &a{i} {{{refs}}}")
    lines.append(f"orchestrator: *a{levels}")
    return "\n".join(lines) + "\n"


# What the kubelet injects for a Service named `mapek` (one TCP port, 8001).
K8S_SERVICE_LINKS = {
    "MAPEK_SERVICE_HOST": "10.96.12.34",
    "MAPEK_SERVICE_PORT": "8001",
    "MAPEK_SERVICE_PORT_HTTP": "8001",
    "MAPEK_PORT": "tcp://10.96.12.34:8001",
    "MAPEK_PORT_8001_TCP": "tcp://10.96.12.34:8001",
    "MAPEK_PORT_8001_TCP_ADDR": "10.96.12.34",
    "MAPEK_PORT_8001_TCP_PORT": "8001",
    "MAPEK_PORT_8001_TCP_PROTO": "tcp",
}


# --- a realistic Alertmanager group of the shipped rules -----------------------------------

STAGING = Path(__file__).resolve().parents[1] / "src" / "mape_k" / "staging"
# Long but plausible values for what Prometheus adds: the target and the external labels.
_TARGET_LABELS = {
    "instance": "charter-member-0042.eu-west-1.prod.example.internal:8000",
    "job": "charter",
    "environment": "production-eu-west-1",
}
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")


def _rendered(text: str, labels: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        inside = match.group(1).strip()
        if inside.startswith("$labels."):
            return labels.get(inside.removeprefix("$labels."), "")
        return "1.2345678901e+03"  # $value, humanized or not: at most this long

    return _TEMPLATE.sub(one, text)


def _go_json(value: Any) -> str:
    """json.Marshal's bytes: compact, map keys sorted, & < > escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def shipped_alerts() -> list[dict[str, Any]]:
    """One firing alert per shipped alert rule, as Alertmanager 0.25 delivers it."""
    alerts = []
    for path in sorted((STAGING / "prometheus" / "rules").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                labels = {"alertname": rule["alert"], **_TARGET_LABELS, **rule.get("labels", {})}
                expr = " ".join(str(rule["expr"]).split())
                alerts.append(
                    {
                        "status": "firing",
                        "labels": labels,
                        "annotations": {
                            k: _rendered(v, labels) for k, v in rule["annotations"].items()
                        },
                        "startsAt": "2026-11-22T04:17:10.023456789Z",
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prometheus-0.prometheus.example.internal:9090"
                        f"/graph?g0.expr={quote_plus(expr)}&g0.tab=1",
                        "fingerprint": "5a764585f3009a1c",
                    }
                )
    return alerts


def alert_size(alert: dict[str, Any]) -> int:
    return len(_go_json(alert).encode())


def shipped_alert_group(count: int) -> bytes:
    """A webhook body of `count` alerts of the shipped rule whose alert is the largest."""
    largest = max(shipped_alerts(), key=alert_size)
    alerts = []
    for index in range(count):
        labels = {**largest["labels"], "instance": f"{index:04d}{_TARGET_LABELS['instance'][4:]}"}
        alerts.append({**largest, "labels": labels, "fingerprint": f"{index:016x}"})
    common = {k: v for k, v in largest["labels"].items() if k != "instance"}
    payload = {
        "receiver": "mape-k-critical",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {k: common[k] for k in ("alertname", "component")},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager-0.alertmanager.example.internal:9093",
        "version": "4",
        "groupKey": '{}/{cause=~".+"}/{severity="critical"}:{alertname="'
        + largest["labels"]["alertname"]
        + '", component="charter"}',
        "truncatedAlerts": 0,
    }
    return _go_json(payload).encode()
