"""The local stack's generated configs (mape_k.stack): pure transformations of the staging ones."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from mape_k.config import load_settings, needs_human_alert_url
from mape_k.models import ActionType
from mape_k.stack import (
    BASE_PORTS,
    STACK_SETTLE_S,
    StackError,
    allocate_ports,
    port_in_use,
    short_for,
    short_window,
    stack_alertmanager_config,
    stack_daemon_config,
    stack_prometheus_config,
    stack_rules,
    staging_files,
)

PORTS = {"prometheus": 19090, "alertmanager": 19093, "charter": 18000, "mape-k": 18001}


def staging(path: str) -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load(
        staging_files().joinpath(path).read_text(encoding="utf-8")
    )
    return data


def test_range_windows_shrink_sixty_fold_with_a_five_second_floor() -> None:
    assert short_window("rate(x[5m]) + increase(y[15m]) + z[10m] + w[1m]") == (
        "rate(x[5s]) + increase(y[15s]) + z[10s] + w[5s]"
    )


def test_for_becomes_one_second_up_to_a_minute_and_two_beyond() -> None:
    assert [short_for(d) for d in ("30s", "1m", "2m", "30m")] == ["1s", "1s", "2s", "2s"]


def test_every_staging_rule_keeps_its_labels_and_gets_a_short_for_and_interval() -> None:
    original = staging("prometheus/rules/charter.rules.yml")
    rules = stack_rules(original, interval_s=1.0)
    [group] = rules["groups"]
    assert group["interval"] == "1s"
    [before] = original["groups"]  # type: ignore[index]
    assert len(group["rules"]) == len(before["rules"])
    for old, new in zip(before["rules"], group["rules"], strict=True):
        assert new["labels"] == old["labels"]
        assert new.get("for", "1s") in {"1s", "2s"}
        assert "m]" not in new["expr"]


def test_prometheus_targets_point_at_the_local_ports() -> None:
    config = stack_prometheus_config(
        staging("prometheus/prometheus.yml"), ports=PORTS, rules_dir=Path("/r"), interval_s=1.0
    )
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets == {
        "charter": ["127.0.0.1:18000"],
        "mape-k": ["127.0.0.1:18001"],
        "prometheus": ["127.0.0.1:19090"],
        "alertmanager": ["127.0.0.1:19093"],
    }
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    # Replicas: the compose profile's `mape-k-ha-N` are the stack's mape-k-(N+1).
    replicas = {**PORTS, "mape-k-2": 18002, "mape-k-3": 18003}
    config = stack_prometheus_config(
        staging("prometheus/prometheus.yml"), ports=replicas, rules_dir=Path("/r"), interval_s=1.0
    )
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs["mape-k-ha"] == ["127.0.0.1:18002", "127.0.0.1:18003"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:19093"
    ]


def test_alertmanager_webhooks_use_the_daemon_port_the_token_file_and_one_second_grouping() -> None:
    config = stack_alertmanager_config(
        staging("alertmanager/alertmanager.yml"), daemon_port=18001, token_file=Path("/t/tok")
    )
    route = config["route"]
    assert (route["group_wait"], route["group_interval"]) == ("1s", "1s")
    assert all(r.get("group_wait", "1s") == "1s" for r in route["routes"])
    hooks = [h for r in config["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks
    for hook in hooks:
        assert hook["url"] == "http://127.0.0.1:18001/api/v1/alerts"
        assert hook["http_config"]["authorization"]["credentials_file"] == "/t/tok"
    assert config["inhibit_rules"] == staging("alertmanager/alertmanager.yml")["inhibit_rules"]


def test_daemon_config_is_valid_and_uses_the_short_settle_times(tmp_path: Path) -> None:
    path = tmp_path / "mape-k.yaml"
    config = stack_daemon_config(ports=PORTS, workdir=tmp_path, orchestrator_interval_s=2.0)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    settings, _ = load_settings(path, env={})
    assert settings.charter.mode.value == "http"
    assert settings.server.port == 18001
    assert (
        settings.planner.actions[ActionType.RESTART_SERVICE].settle_s
        == (STACK_SETTLE_S[ActionType.RESTART_SERVICE])
    )
    assert settings.knowledge.path == tmp_path / "knowledge.sqlite3"
    assert needs_human_alert_url(settings) == "http://127.0.0.1:19093"


def test_fixed_ports_are_shifted_by_the_offset_and_a_busy_one_is_named() -> None:
    with socket.socket() as sock:
        for offset in range(20_000, 50_000, 97):  # an offset whose five ports are all valid
            try:
                sock.bind(("127.0.0.1", BASE_PORTS["charter"] + offset))
            except OSError:
                continue
            break
        sock.listen()
        busy = sock.getsockname()[1]
        with pytest.raises(StackError, match=f"charter {busy}"):
            allocate_ports("fixed", offset=busy - BASE_PORTS["charter"])


def test_a_port_holding_only_time_wait_connections_is_free_and_a_listening_one_busy() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    assert port_in_use(port)
    accepted.close()  # the server side closes first: its end of the connection is TIME_WAIT
    client.close()
    listener.close()
    assert not port_in_use(port)


def test_free_ports_are_distinct() -> None:
    ports = allocate_ports("free")
    assert len(set(ports.values())) == len(BASE_PORTS)
