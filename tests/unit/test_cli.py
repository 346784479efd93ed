"""The command line: once (mock), check-config; exit codes and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mape_k.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "mape_k_config.yaml"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("MAPEK_LOGGING__LEVEL", "error")
    monkeypatch.chdir(tmp_path)


def run_once(capsys, *args: str) -> dict:
    assert main(["once", "--mock", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_once_with_a_fault_completes_a_policy_execution(capsys):
    summary = run_once(capsys, "--fault", "error_burst")
    assert summary["completed"] >= 1
    assert summary["policy_executions"][0]["status"] == "completed"


def test_once_without_a_fault_executes_nothing(capsys):
    summary = run_once(capsys)
    assert summary["policy_executions"] == []
    assert summary["result"] == "idle"


def test_once_leaves_no_knowledge_file_behind_in_mock_mode(capsys, tmp_path):
    run_once(capsys, "--fault", "error_burst")
    assert list(tmp_path.iterdir()) == []


def test_once_frozen_executes_nothing_and_names_the_guard(capsys, monkeypatch):
    monkeypatch.setenv("MAPEK_GUARDS__FROZEN", "true")
    summary = run_once(capsys, "--fault", "error_burst")
    assert summary["policy_executions"] == []
    assert "freeze" in summary["held_by"]


def test_once_dry_run_executes_nothing_and_names_the_guard(capsys):
    summary = run_once(capsys, "--fault", "error_burst", "--dry-run")
    assert summary["policy_executions"] == []
    assert summary["held_by"] == ["dry_run"]


def test_check_config_accepts_the_shipped_file_and_marks_env_values(capsys, monkeypatch):
    monkeypatch.setenv("MAPEK_SERVER__PORT", "9999")
    assert main(["check-config", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert "server.port = 9999   <-- env:MAPEK_SERVER__PORT" in out


def test_check_config_rejects_an_unknown_key_naming_its_path(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("executor:\n  dry_runn: true\n", encoding="utf-8")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"mape-k: invalid configuration: executor.dry_runn: unknown key (from file:{bad})"
    assert "\n" not in err


def test_a_missing_config_file_is_one_line(capsys, tmp_path):
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read config file" in capsys.readouterr().err
