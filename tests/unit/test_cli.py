"""The command line: once (mock), check-config; exit codes, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import mape_k
from fakes import alias_bomb
from mape_k import cli
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


# --- clean exits: a closed stdout is not an error, every error is one line ------------------

SRC = Path(mape_k.__file__).resolve().parents[1]


def run_with_stdout_closed(tmp_path, *args: str, unbuffered: bool) -> subprocess.CompletedProcess:
    """`python -m mape_k ARGS` whose stdout is a pipe nobody reads any more (`... | head`).

    The read end is closed before the child starts, so its first write (or its final
    flush, when stdout is buffered) meets a pipe without a reader: no race with the child.
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(SRC)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        return subprocess.run(
            [sys.executable, "-m", "mape_k", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_check_config_into_a_closed_pipe_exits_141_quietly(tmp_path, unbuffered):
    done = run_with_stdout_closed(tmp_path, "check-config", str(SHIPPED), unbuffered=unbuffered)
    assert done.stderr.decode() == ""
    assert done.returncode == 141


def test_help_into_a_closed_pipe_is_quiet(tmp_path):
    # argparse swallows a failed write itself (exit 0); buffered, the failure surfaces at
    # our flush instead (141). Either way: no traceback, no "Exception ignored" noise.
    done = run_with_stdout_closed(tmp_path, "--help", unbuffered=False)
    assert done.stderr.decode() == ""
    assert done.returncode == 141


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("mape-k: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def test_a_missing_token_file_for_charter_sim_is_one_line(capsys, tmp_path):
    missing = tmp_path / "nope"
    assert main(["charter-sim", "--port", "0", "--token-file", str(missing)]) == 1
    err = one_line_error(capsys)
    assert err.endswith(f"--token-file: cannot read {missing}: No such file or directory")


def test_an_empty_token_file_does_not_turn_authentication_off(capsys, tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n", encoding="utf-8")
    assert main(["charter-sim", "--port", "0", "--token-file", str(empty)]) == 1
    assert one_line_error(capsys).endswith(
        f"--token-file: {empty} is empty; put the token in it, or unset it"
    )


def test_charter_sim_on_a_port_in_use_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["charter-sim", "--port", str(port)]) == 1
    err = one_line_error(capsys)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err


def test_status_against_a_daemon_that_is_down_is_one_line(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    assert main(["status", "--url", f"http://127.0.0.1:{port}"]) == 1
    assert f"cannot reach the daemon at http://127.0.0.1:{port}/stats" in one_line_error(capsys)


def test_status_with_a_malformed_url_is_one_line(capsys):
    assert main(["status", "--url", "http://[::1"]) == 1
    assert "--url 'http://[::1': not a valid URL" in one_line_error(capsys)


def test_an_unexpected_error_is_one_line_naming_its_type(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "status", broken)
    assert main(["status"]) == 1
    err = one_line_error(capsys)
    assert err.startswith("mape-k: unexpected error: RuntimeError: first line second line")


def test_check_config_warns_once_about_kubernetes_service_links(capsys, monkeypatch):
    monkeypatch.setenv("MAPEK_SERVICE_HOST", "10.96.12.34")
    monkeypatch.setenv("MAPEK_SERVICE_PORT", "8001")
    monkeypatch.setenv("MAPEK_PORT", "tcp://10.96.12.34:8001")
    monkeypatch.setenv("MAPEK_PORT_8001_TCP_PORT", "8001")
    assert main(["check-config", str(SHIPPED)]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "mape-k: warning: ignoring Kubernetes service-link variables MAPEK_PORT,"
        " MAPEK_PORT_8001_TCP_PORT, MAPEK_SERVICE_HOST, MAPEK_SERVICE_PORT (a Service named"
        " mapek; `enableServiceLinks: false` in the pod spec drops them)\n"
    )
    assert "MAPEK_PORT" not in captured.out


def test_check_config_prints_the_effective_remediation_table(capsys, tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text(
        "planner:\n  remediations:\n    overload: [[{type: scale_up, parameters: {delta: 3}}]]\n",
        encoding="utf-8",
    )
    assert main(["check-config", str(file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("# Effective remediations"))) :]
    assert f'overload = scale_up{{"delta": 3}}   (file:{file})' in table
    assert (
        'members_unhealthy = restart_service{"scope": "unhealthy"} [0.9];'
        ' scale_up{"delta": 1} [0.5]   (built-in)' in table
    )


@pytest.mark.parametrize(
    "content",
    [
        alias_bomb().encode(),
        b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "x: caf\xe9\n".encode("latin-1"),
        b"orchestrator: {interval_s: .inf}\n",
    ],
    ids=["alias-bomb", "5000-deep", "latin-1", "inf"],
)
def test_check_config_rejects_a_hostile_file_with_one_line_and_exit_1(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "mape_k", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,  # a hang (the alias bomb used to take minutes and gigabytes) fails here
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAPEK_")},
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("mape-k: invalid configuration: ")
