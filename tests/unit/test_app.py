"""The daemon's assembly: start-up failures are one line, freezes survive and fail closed."""

from __future__ import annotations

import socket

import pytest

from mape_k.app import Daemon, build, restore_freeze
from mape_k.cli import main
from mape_k.config import load_settings
from mape_k.errors import StoreError
from mape_k.loop.safety import FREEZE_KEY


def settings_for(tmp_path, **cli):
    return load_settings(None, {}, {"knowledge.path": str(tmp_path / "k.sqlite3"), **cli})[0]


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
        parts.store.set_state(FREEZE_KEY, {"reason": "x", "since": None})
        restore_freeze(parts, clock())
        freeze = parts.orchestrator.freeze
    assert freeze is not None
    assert freeze.until is None
    assert freeze.source == "store"


async def test_an_operator_freeze_survives_a_restart(tmp_path, clock):
    settings = settings_for(tmp_path)
    async with build(settings, clock=clock) as parts:
        await Daemon(parts, clock=clock).freeze("incident 42", None, caller="127.0.0.1")
    async with build(settings, clock=clock) as parts:
        restore_freeze(parts, clock())
        freeze = parts.orchestrator.freeze
    assert freeze is not None
    assert (freeze.reason, freeze.until) == ("incident 42", None)


async def test_unfreeze_does_not_lift_the_config_kill_switch(tmp_path, clock):
    settings = settings_for(tmp_path, **{"guards.frozen": True})
    async with build(settings, clock=clock) as parts:
        daemon = Daemon(parts, clock=clock)
        await daemon.freeze("extra", 60, caller="127.0.0.1")
        answer = await daemon.unfreeze(caller="127.0.0.1")
        freeze = parts.orchestrator.freeze
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
        frozen = parts.orchestrator.freeze
    assert frozen is not None
    assert answer["persisted"] is (broken != "set_state")
