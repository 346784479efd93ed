"""Configuration: precedence CLI > env > file > defaults, errors naming path and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import K8S_SERVICE_LINKS, alias_bomb
from mape_k.config import (
    CandidateAction,
    effective_config,
    load_settings,
    read_secret,
    reload_plan,
    remediation_table,
    service_links,
)
from mape_k.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "mape_k_config.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_config_is_valid():
    settings, _ = load_settings(SHIPPED, {})
    assert settings.server.port == 8001
    assert settings.orchestrator.interval_s == 30


def test_defaults_match_the_spec():
    settings, sources = load_settings(None, {})
    assert sources == {}
    assert settings.charter.mode.value == "mock"
    assert settings.analyzer.temporal.window_s == 60
    assert settings.analyzer.temporal.min_count == 3
    assert settings.analyzer.frequency.min_count == 8
    assert settings.planner.actions["scale_up"].cost == 0.20


def test_crashed_members_are_restarted_alone_and_an_error_burst_by_a_full_restart():
    settings, _ = load_settings(None, {})
    remediations = settings.planner.remediations
    first = remediations["members_unhealthy"][0][0]
    assert (first.type, first.parameters) == ("restart_service", {"scope": "unhealthy"})
    burst = remediations["high_failure_rate"][0][0]
    assert (burst.type, burst.parameters) == ("restart_service", {})  # scope all, the default


def test_an_unknown_restart_scope_is_a_one_line_error_naming_the_field(tmp_path):
    file = write(
        tmp_path,
        "planner:\n  remediations:\n"
        "    members_unhealthy: [[{type: restart_service, parameters: {scope: crashed}}]]\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(file, {})
    text = str(caught.value)
    assert "\n" not in text
    assert "planner.remediations.members_unhealthy" in text
    assert "restart_service.scope must be one of all, rolling, unhealthy, got 'crashed'" in text


def test_cli_beats_env_beats_file_beats_defaults(tmp_path):
    file = write(
        tmp_path,
        "orchestrator: {interval_s: 10}\n"
        "server: {port: 9000, host: 0.0.0.0, webhook_token_file: /run/secrets/t}\n",
    )
    env = {"MAPEK_SERVER__PORT": "9100", "MAPEK_ORCHESTRATOR__INTERVAL_S": "20"}
    settings, sources = load_settings(file, env, {"orchestrator.interval_s": 5})
    assert settings.orchestrator.interval_s == 5
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"
    assert settings.prometheus.url == "http://127.0.0.1:9090"
    assert sources["orchestrator.interval_s"] == "cli:orchestrator.interval_s"
    assert sources["server.port"] == "env:MAPEK_SERVER__PORT"
    assert sources["server.host"] == f"file:{file}"


def test_an_unknown_key_names_its_path_and_file(tmp_path):
    file = write(tmp_path, "orchestrator:\n  intervall_s: 10\n")
    with pytest.raises(ConfigError) as err:
        load_settings(file, {})
    assert str(err.value) == f"orchestrator.intervall_s: unknown key (from file:{file})"


def test_a_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"server\.port: .*\(from env:MAPEK_SERVER__PORT\)"):
        load_settings(None, {"MAPEK_SERVER__PORT": "eighty"})


def test_a_rule_naming_an_unknown_query_is_refused(tmp_path):
    file = write(
        tmp_path,
        "monitor:\n  rules:\n    - {name: x, query: nope, threshold: 1}\n",
    )
    with pytest.raises(ConfigError, match=r"'nope' is not in monitor\.queries"):
        load_settings(file, {})


def test_invalid_yaml_is_one_line_with_the_line_number(tmp_path):
    file = write(tmp_path, "server: [1,\n")
    with pytest.raises(ConfigError, match=r"line \d+: not valid YAML"):
        load_settings(file, {})


def test_env_lists_parse_as_json():
    env = {"MAPEK_MONITOR__QUERIES": '{"up": "up"}', "MAPEK_MONITOR__RULES": "[]"}
    settings, _ = load_settings(None, env)
    assert settings.monitor.queries == {"up": "up"}
    assert settings.monitor.rules == ()


def test_replacing_queries_without_their_rules_says_which_rule_breaks():
    with pytest.raises(
        ConfigError, match=r"rules\.0\.query: 'failure_rate' is not in monitor\.queries"
    ):
        load_settings(None, {"MAPEK_MONITOR__QUERIES": '{"up": "up"}'})


def test_effective_config_masks_tokens_and_marks_sources(tmp_path):
    settings, sources = load_settings(None, {"MAPEK_CHARTER__TOKEN": "s3cret"})
    effective = effective_config(settings, sources)
    assert effective["charter.token"] == {
        "value": "**********",
        "source": "env:MAPEK_CHARTER__TOKEN",
    }
    assert effective["server.port"]["source"] == "defaults"


def test_settings_are_frozen():
    settings, _ = load_settings(None, {})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is internal
        settings.server.port = 1  # type: ignore[misc]


# --- Kubernetes service links: a Service named `mapek` injects MAPEK_* variables ----------

SERVICE_LINKS = {
    **K8S_SERVICE_LINKS,
    # a second port of the same Service, dual-stack style
    "MAPEK_SERVICE_PORT_METRICS_UDP": "9102",
    "MAPEK_PORT_9102_UDP": "udp://[fd00:10:96::c]:9102",
    "MAPEK_PORT_9102_UDP_ADDR": "fd00:10:96::c",
    "MAPEK_PORT_9102_UDP_PORT": "9102",
    "MAPEK_PORT_9102_UDP_PROTO": "udp",
    "MAPEK_PORT_38412_SCTP": "sctp://10.96.12.34:38412",
}


def test_kubernetes_service_links_are_ignored_and_named():
    env = {**SERVICE_LINKS, "MAPEK_SERVER__PORT": "9000", "KUBERNETES_PORT": "tcp://10.96.0.1:443"}
    settings, sources = load_settings(None, env)
    assert settings.server.port == 9000
    assert sources == {"server.port": "env:MAPEK_SERVER__PORT"}
    assert service_links(env) == sorted(SERVICE_LINKS)


@pytest.mark.parametrize(
    ("name", "value", "path"),
    [
        ("MAPEK_SERVR__PORT", "9000", "servr"),  # a typo stays an error
        ("MAPEK_PORT", "9000", "port"),  # set by hand, not by Kubernetes
        ("MAPEK_SERVICE_HOST", "mapek.default.svc", "service_host"),
        ("MAPEK_PORT_8001_TCP_PROTO", "http", "port_8001_tcp_proto"),
        ("MAPEK_PORT_8001_HTTP", "tcp://10.96.12.34:8001", "port_8001_http"),
        ("MAPEK_PORT_8001_TCP_HOST", "10.96.12.34", "port_8001_tcp_host"),
        ("MAPEK_SERVICE_PORT", "http", "service_port"),
    ],
)
def test_only_the_exact_service_link_shapes_are_ignored(name, value, path):
    with pytest.raises(ConfigError) as err:
        load_settings(None, {**SERVICE_LINKS, name: value})
    assert str(err.value) == f"{path}: unknown key (from env:{name})"


# --- planner.remediations: merged with the built-ins per cause ------------------------------


def test_overriding_one_cause_keeps_every_other_causes_built_in_remediations(tmp_path):
    built_in = load_settings(None, {})[0].planner.remediations
    file = write(
        tmp_path,
        "planner:\n  remediations:\n"
        "    overload:\n      - [{type: scale_up, parameters: {delta: 3}}]\n"
        "    queue_backlog: []\n",
    )
    env = {"MAPEK_PLANNER__REMEDIATIONS": '{"high_latency": [[{"type": "rebalance_load"}]]}'}
    remediations = load_settings(file, env)[0].planner.remediations
    assert remediations["overload"] == (
        (CandidateAction(type="scale_up", parameters={"delta": 3}),),
    )
    assert remediations["high_latency"] == ((CandidateAction(type="rebalance_load"),),)
    assert remediations["queue_backlog"] == ()  # removed: no candidates at all
    untouched = set(built_in) - {"overload", "high_latency", "queue_backlog"}
    assert untouched
    assert {cause: remediations[cause] for cause in untouched} == {
        cause: built_in[cause] for cause in untouched
    }


def test_the_remediation_table_marks_built_in_and_configured_causes(tmp_path):
    file = write(
        tmp_path,
        "planner:\n  remediations:\n"
        "    overload:\n      - [{type: scale_up, parameters: {delta: 3}, benefit: 0.9}]\n"
        "    queue_backlog: []\n"
        "monitor:\n  rules:\n"
        "    - {name: high_failure_rate, query: failure_rate, threshold: 0.05}\n"
        "    - {name: lonely, query: queue_depth, threshold: 5}\n",
    )
    env = {"MAPEK_PLANNER__DEFAULT_REMEDIATIONS": '[[{"type": "rebalance_load"}]]'}
    table = {
        cause: (text, source)
        for cause, text, source in remediation_table(*load_settings(file, env))
    }
    assert table["overload"] == ('scale_up{"delta": 3} [0.9]', f"file:{file}")
    assert table["queue_backlog"] == ("none", f"file:{file}")
    assert table["high_failure_rate"] == (
        'restart_service; throttle_requests{"fraction": 0.7}',
        "built-in",
    )
    fallback = (
        "rebalance_load",
        "planner.default_remediations, env:MAPEK_PLANNER__DEFAULT_REMEDIATIONS",
    )
    assert table["lonely"] == fallback  # a rule's cause without an entry
    assert table["(any other cause)"] == fallback


# --- reload: what a SIGHUP applies, and what waits for a restart ------------------------------


def test_a_reload_keeps_restart_only_values_and_names_them():
    running, _ = load_settings(None, {})
    new, _ = load_settings(
        None,
        {},
        {
            "planner.min_score": 0.5,
            "guards.frozen": True,
            "server.port": 9000,
            "server.webhook_token": "changed",
            "knowledge.path": "/elsewhere.sqlite3",
            "knowledge.max_rows": 500,
            "monitor.alert_component_label": "service",
            "monitor.max_staleness_s": 30,
            "prometheus.url": "http://prometheus:9090",
        },
    )
    effective, restart = reload_plan(running, new)
    assert restart == [
        "prometheus.url",
        "server.port",
        "server.webhook_token",
        "knowledge.path",
        "monitor.alert_component_label",
    ]
    assert effective.prometheus == running.prometheus
    assert effective.server == running.server
    assert effective.knowledge.path == running.knowledge.path
    assert effective.monitor.alert_component_label == running.monitor.alert_component_label
    assert effective.planner == new.planner
    assert effective.guards == new.guards
    assert effective.knowledge.max_rows == 500
    assert effective.monitor.max_staleness_s == 30
    assert reload_plan(running, running) == (running, [])


# --- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAPEK_SERVER__ADMIN_TOKEN": ""}, "admin_token is empty"),
        ({"MAPEK_SERVER__WEBHOOK_TOKEN": "  \t"}, "webhook_token is empty"),
        ({"MAPEK_CHARTER__TOKEN": ""}, "token is empty"),
        (
            {"MAPEK_SERVER__WEBHOOK_TOKEN": "t", "MAPEK_SERVER__WEBHOOK_TOKEN_FILE": "/run/t"},
            "webhook_token and webhook_token_file are both set; keep one",
        ),
        (
            {"MAPEK_SERVER__ADMIN_TOKEN": "t", "MAPEK_SERVER__ADMIN_TOKEN_FILE": "/run/t"},
            "admin_token and admin_token_file are both set",
        ),
    ],
)
def test_an_empty_or_doubly_given_secret_is_a_config_error(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env)


def test_an_empty_token_file_is_an_error_naming_the_key(tmp_path):
    empty = tmp_path / "token"
    empty.write_text(" \n", encoding="utf-8")
    settings, _ = load_settings(None, {"MAPEK_SERVER__WEBHOOK_TOKEN_FILE": str(empty)})
    server = settings.server
    with pytest.raises(ConfigError, match=r"^server\.webhook_token_file: .* is empty"):
        read_secret(server.webhook_token, server.webhook_token_file, file_key=FILE_KEY)
    empty.write_text("s3cret\n", encoding="utf-8")
    assert read_secret(server.webhook_token, server.webhook_token_file, file_key=FILE_KEY) == (
        "s3cret"
    )


FILE_KEY = "server.webhook_token_file"


def test_an_open_webhook_off_loopback_needs_an_explicit_yes():
    with pytest.raises(ConfigError, match=r"host 0\.0\.0\.0 is not loopback.*allow_open_webhook"):
        load_settings(None, {"MAPEK_SERVER__HOST": "0.0.0.0"})
    settings, _ = load_settings(
        None, {"MAPEK_SERVER__HOST": "0.0.0.0", "MAPEK_SERVER__ALLOW_OPEN_WEBHOOK": "true"}
    )
    assert settings.server.allow_open_webhook
    for host in ("127.0.0.1", "::1", "localhost"):  # loopback: allowed, with a warning at start
        assert load_settings(None, {"MAPEK_SERVER__HOST": host})[0].server.host == host


# --- files that would hang or crash a YAML loader ----------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (alias_bomb().encode(), r"expands to more than 100,000 values"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", r"line 1: not valid YAML \(.*nesting"),
        (b"a:\n" + b"".join(b"  " * i + b"- \n" for i in range(1, 60)), r"nested more than 32"),
        ("x: 1\ny: caf\xe9\n".encode("latin-1"), r"line 2: not UTF-8 text \(byte 0xe9"),
        ("\ufeffx: 1\n".encode("utf-16"), r"not UTF-8 text"),
        (b"# big\n" + b"#" * (1 << 20), r"more than a config file can be"),
        (b"orchestrator: {interval_s: .inf}\n", r"orchestrator\.interval_s: .*finite number"),
        (b"orchestrator: {interval_s: .nan}\n", r"orchestrator\.interval_s: .*finite number"),
        (b"orchestrator: {interval_s: 1e12}\n", r"orchestrator\.interval_s: .*less than or equal"),
        (b"monitor: {query_timeout_s: -.inf}\n", r"monitor\.query_timeout_s"),
    ],
)
def test_a_hostile_or_broken_file_is_one_config_error(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, {})


def test_anchors_and_aliases_of_a_normal_size_still_work(tmp_path):
    path = write(
        tmp_path,
        "x-timeouts: &timeouts {query_timeout_s: 3}\nmonitor: *timeouts\n",
    )
    with pytest.raises(ConfigError, match="x-timeouts: unknown key"):
        load_settings(path, {})  # the anchor's own key is still checked...
    path.write_text("monitor: &m {query_timeout_s: 3}\n", encoding="utf-8")
    assert load_settings(path, {})[0].monitor.query_timeout_s == 3  # ...an alias is fine


def test_a_rule_cannot_produce_a_return_to_baseline_cause() -> None:
    with pytest.raises(ConfigError, match=r"throttle_unneeded.*return-to-baseline"):
        load_settings(
            None,
            {},
            {
                "monitor.rules": [
                    {"name": "throttle_unneeded", "query": "saturation", "threshold": 0.1}
                ]
            },
        )
