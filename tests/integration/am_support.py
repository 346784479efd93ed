"""A real Alertmanager (Debian `prometheus-alertmanager`) for integration tests.

`alertmanager(tmp_path, webhook_url=...)` starts it on a free loopback port with its own
config and storage, clustering off, its webhook receiver sending the bearer token from a
file the way `http_config.authorization.credentials_file` does; it waits (bounded) until
ready and always stops the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prom_support import free_port

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
AMTOOL = "/usr/bin/amtool"
TOKEN = "integration-webhook-token"
DEADLINE_S = 15.0
INSTALL_HINT = "install it: apt-get install -y --no-install-recommends prometheus-alertmanager"
SHIPPED_CONFIG = (
    Path(__file__).resolve().parents[2] / "src/mape_k/staging/alertmanager/alertmanager.yml"
)


def shipped_max_alerts() -> int:
    """The max_alerts of the shipped Alertmanager config (the same for every mape-k receiver)."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    hooks = [h for r in config["receivers"] for h in r.get("webhook_configs", [])]
    [value] = {hook["max_alerts"] for hook in hooks}
    return int(value)


def alertmanager_config(*, webhook_url: str, token_file: Path) -> str:
    max_alerts = shipped_max_alerts()
    return f"""
route:
  receiver: mape-k
  group_by: ['alertname']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: mape-k
    webhook_configs:
      - url: '{webhook_url}'
        send_resolved: true
        max_alerts: {max_alerts}
        http_config:
          authorization:
            type: Bearer
            credentials_file: '{token_file}'
"""


@contextlib.asynccontextmanager
async def alertmanager(tmp_path: Path, *, webhook_url: str) -> AsyncIterator[str]:
    """A running Alertmanager delivering to `webhook_url`; yields its base URL."""
    if shutil.which(ALERTMANAGER) is None:
        pytest.fail(f"{ALERTMANAGER} not found; {INSTALL_HINT}")
    token_file = tmp_path / "webhook_token"
    token_file.write_text(TOKEN + "\n")
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(alertmanager_config(webhook_url=webhook_url, token_file=token_file))
    check = subprocess.run(
        [AMTOOL, "check-config", str(config_file)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "alertmanager.log").open("wb") as log:  # the child keeps its descriptor
        process = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config_file}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--web.external-url={url}",
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await _wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), timeout=10)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)


async def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(timeout=1.0) as client:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                if process.poll() is not None:
                    pytest.fail(f"alertmanager exited with {process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/-/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.05)  # polling an external process's readiness


def now_rfc3339() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


def am_alert(**labels: str) -> dict[str, Any]:
    """An alert as posted to Alertmanager's /api/v2/alerts (labels override the defaults)."""
    return {
        "labels": {
            "alertname": "CharterHighFailureRate",
            "cause": "high_failure_rate",
            "component": "charter",
            "severity": "critical",
            **labels,
        },
        "annotations": {"summary": "failure rate above 5%"},
        "startsAt": now_rfc3339(),
        "generatorURL": "http://127.0.0.1:9090/graph",
    }


@contextlib.asynccontextmanager
async def in_process_daemon(knowledge: Path, *, deadline_s: float = 20.0) -> AsyncIterator[Any]:
    """The real daemon (app.run) in-process: mock Charter, a free port, the webhook token
    TOKEN, an hour's interval (only an alert wakes it) and an alert-only cause
    (`charter_down`, which no rule reads, so no fresh reading supersedes it). Yields its
    Components once it serves; stops it on exit."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - only these tests

    from mape_k.app import Components, run  # noqa: PLC0415
    from mape_k.config import load_settings  # noqa: PLC0415

    settings, _ = load_settings(
        None,
        {},
        {
            "charter.mode": "mock",
            "server.port": 0,
            "server.webhook_token": TOKEN,
            "orchestrator.interval_s": 3600,
            "knowledge.path": str(knowledge),
            "planner.remediations": {"charter_down": [[{"type": "restart_service"}]]},
        },
    )
    stop = asyncio.Event()
    ready: asyncio.Queue[Components] = asyncio.Queue()
    task = asyncio.create_task(
        run(
            settings,
            stop=stop,
            on_ready=ready.put_nowait,
            configure_logging=False,
            registry=CollectorRegistry(),
        )
    )
    try:
        yield await asyncio.wait_for(ready.get(), deadline_s)
    finally:
        stop.set()
        await asyncio.wait_for(task, deadline_s)
