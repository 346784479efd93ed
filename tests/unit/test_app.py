"""The daemon's assembly: start-up failures are one line, freezes survive and fail closed,
a SIGHUP applies what can change at run time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from datetime import UTC, datetime

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from builders import settings as settings_for
from mape_k import app as app_module
from mape_k import logs
from mape_k.app import Daemon, build, reload_config, restore_freeze
from mape_k.cli import main
from mape_k.config import Settings
from mape_k.connections import GuardedSite
from mape_k.errors import ConfigError, StoreError
from mape_k.integrations.alertmanager import Alert, IngestResult
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop.envelope import FREEZE_KEY
from mape_k.models import ActionType
from mape_k.server import build_app


def test_a_port_in_use_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAPEK_KNOWLEDGE__PATH", str(tmp_path / "k.sqlite3"))
    monkeypatch.setenv("MAPEK_LOGGING__LEVEL", "error")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["run", "--mock", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    expected = (
        "mape-k: invalid configuration: server.host/server.port: cannot listen on"
        f" 127.0.0.1:{port}: Address already in use"
    )
    assert err == [expected]


async def test_an_unreadable_saved_freeze_keeps_the_daemon_frozen(tmp_path, clock):
    settings = settings_for(tmp_path)
    async with build(settings, clock=clock) as parts:
        await parts.store.set_state(FREEZE_KEY, {"reason": "x", "since": None})
        await restore_freeze(parts, clock())
        freeze = parts.orchestrator.envelope.freeze
    assert freeze is not None
    assert freeze.until is None
    assert freeze.source == "store"


async def test_an_operator_freeze_survives_a_restart(tmp_path, clock):
    settings = settings_for(tmp_path)
    async with build(settings, clock=clock) as parts:
        await Daemon(parts, clock=clock).freeze("incident 42", None, caller="127.0.0.1")
    async with build(settings, clock=clock) as parts:
        await restore_freeze(parts, clock())
        freeze = parts.orchestrator.envelope.freeze
    assert freeze is not None
    assert (freeze.reason, freeze.until) == ("incident 42", None)


async def test_unfreeze_does_not_lift_the_config_kill_switch(tmp_path, clock):
    settings = settings_for(tmp_path, **{"guards.frozen": True})
    async with build(settings, clock=clock) as parts:
        daemon = Daemon(parts, clock=clock)
        await daemon.freeze("extra", 60, caller="127.0.0.1")
        answer = await daemon.unfreeze(caller="127.0.0.1")
        freeze = parts.orchestrator.envelope.freeze
    assert answer["frozen"] is True
    assert freeze is not None
    assert freeze.source == "config"


@pytest.mark.parametrize("broken", ["record_control", "set_state"])
async def test_a_freeze_takes_effect_even_when_the_store_cannot_write(
    tmp_path, clock, monkeypatch, broken
):

    settings = settings_for(tmp_path)
    async with build(settings, clock=clock) as parts:

        def fail(*_args, **_kwargs):
            raise StoreError("disk full")

        monkeypatch.setattr(parts.store, broken, fail)
        daemon = Daemon(parts, clock=clock)
        await daemon.record_control(route="POST /api/v1/freeze", body={}, caller="127.0.0.1")
        answer = await daemon.freeze("disk trouble", None, caller="127.0.0.1")
        frozen = parts.orchestrator.envelope.freeze
    assert frozen is not None
    assert answer["persisted"] is (broken != "set_state")


# --- SIGHUP: what can change at run time applies, the rest is named -----------------------

RISKY = {  # the only candidate for the fault's cause needs an operator's approval
    "planner.remediations.high_failure_rate": [[{"type": "bypass_validation"}]],
    "planner.min_score": -1.0,
}


async def test_a_reload_applies_the_planner_and_keeps_a_pending_approval_it_still_offers(
    tmp_path, clock
):
    settings = settings_for(tmp_path, **RISKY)
    world = MockCharterWorld.create(clock=clock, seed=3, fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts:
        orchestrator = parts.orchestrator
        clock.advance(5)
        first = await orchestrator.run_once()
        assert first["result"] == "pending_approval"
        [pending] = orchestrator.planner.pending_approvals()

        # A cost changes, the risky candidate stays: the operator's queue survives the reload.
        bypass = {"cost": 0.5, "benefit": 0.5, "settle_s": 15, "requires_approval": True}
        cheaper = settings_for(
            tmp_path,
            **RISKY,
            **{
                "planner.actions.bypass_validation": bypass,
                "server.port": 9999,
                "knowledge.path": str(tmp_path / "elsewhere.sqlite3"),
            },
        )
        with capture_logs() as logs:
            restart = reload_config(parts, lambda: cheaper, configure_logging=False)
        assert restart == ["server.port", "knowledge.path"]
        assert orchestrator.planner.config.actions[ActionType.BYPASS_VALIDATION].cost == 0.5
        assert orchestrator.planner.pending_approvals() == [pending]
        assert parts.settings.server.port == settings.server.port  # still what it listens on
        assert parts.settings.knowledge.path == settings.knowledge.path
        [partial] = [e for e in logs if e["event"] == "config_reload_partial"]
        assert partial["restart_required_for"] == ["server.port", "knowledge.path"]
        [done] = [e for e in logs if e["event"] == "config_reloaded"]
        assert done["applied"] == ["planner"]

        # The cause's built-ins come back: the risky proposal is dropped, the fix runs.
        reload_config(parts, lambda: settings_for(tmp_path), configure_logging=False)
        assert orchestrator.planner.pending_approvals() == []
        clock.advance(5)
        second = await orchestrator.run_once()
    assert second["result"] == "acted"
    assert second["execution"]["actions"][0]["type"] == "restart_service"


async def test_a_reload_that_fails_validation_changes_nothing(tmp_path, clock):
    settings = settings_for(tmp_path)

    def broken() -> Settings:
        raise ConfigError("orchestrator.interval_s: must be > 0 (from file:c.yaml)")

    async with build(settings, clock=clock) as parts:
        planner = parts.orchestrator.planner.config
        assert reload_config(parts, broken, configure_logging=False) == []
        assert parts.settings is settings
        assert parts.orchestrator.planner.config is planner


async def test_a_reload_applies_the_logging_level(tmp_path, clock, capsys):
    settings = settings_for(tmp_path, **{"logging.format": "json"})
    quieter = settings_for(tmp_path, **{"logging.format": "json", "logging.level": "error"})
    async with build(settings, clock=clock) as parts:
        logs.configure(level="info", fmt="json")
        reload_config(parts, lambda: quieter)
        log = structlog.get_logger("test")
        log.warning("hidden_after_reload")
        log.error("shown_after_reload")
    err = capsys.readouterr().err
    assert "shown_after_reload" in err
    assert "hidden_after_reload" not in err


def am_alert(fingerprint, status="firing", *, starts_at, ends_at=None, **labels):
    def rfc3339(timestamp):
        return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")

    return Alert.model_validate(
        {
            "status": status,
            "labels": {"alertname": "CharterDown", "cause": "charter_down", **labels},
            "startsAt": rfc3339(starts_at),
            "endsAt": "0001-01-01T00:00:00Z" if ends_at is None else rfc3339(ends_at),
            "fingerprint": fingerprint,
        }
    )


async def test_firing_alerts_and_resolves_survive_a_restart(tmp_path, clock):
    settings = settings_for(tmp_path)
    started = time.time() - 60
    async with build(settings, clock=clock) as parts:
        await parts.router.deliver(
            [
                am_alert("a", starts_at=started, component="charter-1"),
                am_alert("b", starts_at=started, component="charter-2"),
            ]
        )
        resolve = am_alert("b", "resolved", starts_at=started - 30, ends_at=started + 30)
        assert await parts.router.deliver([resolve]) == IngestResult(resolved=1)
    async with build(settings, clock=clock) as parts:
        assert [(v.kind, v.component) for v in parts.inbox.firing()] == [
            ("charter_down", "charter-1")
        ]
        # Alertmanager's re-delivery of a is a duplicate; a late firing retry of b stays out.
        again = [am_alert("a", starts_at=started), am_alert("b", starts_at=started)]
        assert await parts.router.deliver(again) == IngestResult(duplicates=2)
        assert len(parts.inbox.firing()) == 1


async def test_an_unreadable_saved_inbox_starts_empty_with_a_warning(tmp_path, clock):
    settings = settings_for(tmp_path)
    async with build(settings, clock=clock) as parts:
        await parts.router.deliver([am_alert("a", starts_at=time.time())])
    with sqlite3.connect(settings.knowledge.path) as raw:
        raw.execute("UPDATE alert_inbox SET labels = '[1, 2]'")
    with capture_logs() as logs:
        async with build(settings, clock=clock) as parts:
            assert parts.inbox.firing() == []
            await parts.router.deliver([am_alert("b", starts_at=time.time())])
            assert len(parts.inbox.firing()) == 1  # and the inbox works as before
    [warning] = [e for e in logs if e["event"] == "alert_inbox_not_restored"]
    assert "alert inbox" in warning["error"]


@contextlib.asynccontextmanager
async def serving(parts, clock, admin_token=None):
    """The real HTTP face of a real Daemon (aiohttp test server on 127.0.0.1)."""
    app = build_app(
        control=Daemon(parts, clock=clock),
        router=parts.router,
        metrics=parts.metrics,
        config=parts.settings.server,
        webhook_token=None,
        admin_token=admin_token,
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_readyz_says_the_store_cannot_write_when_the_disk_is_full(tmp_path, clock):
    settings = settings_for(tmp_path, **{"charter.mode": "mock"})
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts, serving(parts, clock) as client:
        clock.advance(5)
        await parts.orchestrator.run_once()
        ready = await (await client.get("/readyz")).json()
        assert ready["checks"]["knowledge"] == "ok"

        conn = parts.store.backend._require_open()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, as on a full disk
        for _ in range(100):  # until the records no longer fit in the pages there are
            clock.advance(30)
            record = await parts.orchestrator.run_once()
            if (await parts.store.recent_iterations(1))[0]["id"] != record["id"]:
                break
        else:
            pytest.fail("the store kept writing")
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 503
        assert body["problems"]["knowledge"] == (
            "cannot write: record_iteration failed: database or disk is full"
        )

        conn.execute(f"PRAGMA max_page_count = {pages * 1000}")  # space again
        clock.advance(30)
        await parts.orchestrator.run_once()
        body = await (await client.get("/readyz")).json()
        assert body["checks"]["knowledge"] == "ok"


async def test_stats_pages_through_the_decision_records_newest_first(tmp_path, clock):
    settings = settings_for(tmp_path, **{"charter.mode": "mock"})
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts:
        ids = []
        for _ in range(25):
            clock.advance(30)
            ids.append((await parts.orchestrator.run_once())["id"])
    ids.reverse()  # newest first
    # A restart: the records of the earlier run come from the journal.
    async with build(settings, world=world, clock=clock) as parts, serving(parts, clock) as client:
        clock.advance(30)
        ids.insert(0, (await parts.orchestrator.run_once())["id"])
        first = await (await client.get("/stats")).json()
        assert [r["id"] for r in first["iterations"]] == ids[:10]
        page = first["iterations_page"]
        assert page["next_before"] == first["iterations"][-1]["started_at"]
        second = await (await client.get(page["next"])).json()
        assert [r["id"] for r in second["iterations"]] == ids[10:20]
        rest = await (
            await client.get(f"/stats?limit=100&before={second['iterations_page']['next_before']}")
        ).json()
        assert [r["id"] for r in rest["iterations"]] == ids[20:]
        assert rest["iterations_page"] == {
            "limit": 100,
            "before": second["iterations_page"]["next_before"],
            "next_before": None,
            "next": None,
        }
        two = await (await client.get("/stats?limit=2")).json()
        assert [r["id"] for r in two["iterations"]] == ids[:2]
        for query, field in (
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=x", "limit"),
            ("before=nan", "before"),
            ("before=soon", "before"),
        ):
            response = await client.get(f"/stats?{query}")
            assert response.status == 400, query
            assert (await response.json())["field"] == field


def gauge(text: str, name: str) -> float:
    [value] = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return value


async def test_a_timed_freeze_that_expires_reads_zero_on_metrics(tmp_path, clock):
    settings = settings_for(tmp_path, **{"charter.mode": "mock"})
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with (
        build(settings, world=world, clock=clock) as parts,
        serving(parts, clock, admin_token="t0ken") as client,
    ):
        assert gauge(await (await client.get("/metrics")).text(), "mapek_frozen") == 0
        response = await client.post(
            "/api/v1/freeze",
            json={"reason": "deploy", "duration_s": 60},
            headers={"Authorization": "Bearer t0ken"},
        )
        assert response.status == 200
        assert gauge(await (await client.get("/metrics")).text(), "mapek_frozen") == 1
        clock.advance(61)  # nothing runs in between: no code path resets anything
        assert gauge(await (await client.get("/metrics")).text(), "mapek_frozen") == 0


async def test_state_gauges_are_read_from_their_owners_at_scrape_time(tmp_path, clock):
    settings = settings_for(tmp_path, **{"charter.mode": "mock"})
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault="error_burst")
    async with build(settings, world=world, clock=clock) as parts, serving(parts, clock) as client:
        clock.advance(5)
        record = await parts.orchestrator.run_once()
        assert record["result"] == "acted"
        text = await (await client.get("/metrics")).text()
        assert gauge(text, "mapek_pending_verifications") == 1
        assert gauge(text, "mapek_dry_run") == 0
        parts.orchestrator.envelope.dry_run = True
        safety = parts.orchestrator.envelope
        for _ in range(3):
            safety.charter_result(False, now=clock(), error="503")
        text = await (await client.get("/metrics")).text()
        assert gauge(text, "mapek_dry_run") == 1
        assert 'mapek_circuit_open{circuit="charter"} 1.0' in text


@pytest.mark.parametrize("root", ["pruner", "http-server"])
async def test_a_root_task_that_dies_takes_the_daemon_down_with_exit_1(tmp_path, monkeypatch, root):
    """The HTTP server, the pruner (and the watchdog, the reloader) are supervised like the
    loop: one that ends by itself is logged and the daemon exits 1 for systemd."""
    if root == "pruner":
        calls = []

        async def prune_then_break(parts, now=None):
            calls.append(now)
            if len(calls) > 1:  # the first prune runs at start, the next in the pruner task
                raise RuntimeError("pruner bug")

        monkeypatch.setattr(app_module, "PRUNE_EVERY_S", 0.0)
        monkeypatch.setattr(app_module, "prune", prune_then_break)
    else:

        async def stopped_serving(self):
            self._server.close()  # the listener went away

        monkeypatch.setattr(GuardedSite, "serve", stopped_serving)
    settings = settings_for(tmp_path, **{"charter.mode": "mock", "server.port": 0})
    stop = asyncio.Event()
    with capture_logs() as logs:
        code = await app_module.run(settings, stop=stop, configure_logging=False)
    assert code == 1
    [ended] = [e for e in logs if e["event"] == "root_task_ended"]
    assert ended["task"] == root
    assert not stop.is_set()
