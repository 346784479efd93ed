"""Deployment artefacts agree with each other and with the code.

Staging compose, Prometheus config and rules, Alertmanager config, Grafana provisioning
and dashboards, Dockerfile and the systemd unit: parsed and cross-checked here, and the
real promtool / amtool validate them. Reads files only; starts no service.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from fakes import alert_size, shipped_alert_group, shipped_alerts
from mape_k.app import file_reserve
from mape_k.config import load_settings, needs_human_alert_url
from mape_k.connections import plan_file_limit
from mape_k.loop.escalation import alert_labels
from mape_k.metrics import Metrics, StateGauges
from mape_k.models import Severity
from mape_k.sim.service import REGISTRY as SIM_REGISTRY
from mape_k.sim.service import build_app as build_sim_app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.staging.yml"
STAGING = ROOT / "src" / "mape_k" / "staging"
PROM_CONFIG = STAGING / "prometheus" / "prometheus.yml"
RULES_DIR = STAGING / "prometheus" / "rules"
RULE_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.test.yml"))
AM_CONFIG = STAGING / "alertmanager" / "alertmanager.yml"
GRAFANA = ROOT / "grafana"
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "deploy" / "systemd" / "mape-k.service"
RUNBOOK = ROOT / "docs" / "runbook.md"

PORTS = {"prometheus": 9090, "alertmanager": 9093, "charter": 8000, "mape-k": 8001, "grafana": 3000}
SEVERITIES = {"critical", "warning", "info"}
DAEMON_KINDS = {
    "high_failure_rate",
    "policy_regression",
    "members_unhealthy",
    "overload",
    "high_latency",
    "queue_backlog",
}

# The Charter metric families of the shared naming facts: the contract the rules rely on.
CHARTER_CONTRACT = (
    "westworld_charter_validation_latency_seconds",
    "westworld_charter_failure_rate",
    "westworld_charter_policy_error_rate",
    "westworld_charter_p99_latency_seconds",
    "westworld_charter_committee_size",
    "westworld_charter_healthy_members",
    "westworld_charter_throughput_ops_per_sec",
    "westworld_charter_offered_load_ops_per_sec",
    "westworld_charter_queue_depth",
    "westworld_charter_saturation_ratio",
    "westworld_charter_violations",
    "westworld_charter_policy_executions",
    "westworld_charter_errors",
    "westworld_charter_restarts",
    "westworld_charter_scale_operations",
    "westworld_charter_throttle_limit_ops_per_sec",
    "westworld_charter_emergency_override_active",
    "westworld_charter_validation_bypass_active",
    "westworld_charter_active_policy_info",
    "westworld_charter_up",
)
PROMETHEUS_SYNTHETIC = {"up"}


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose, from its metric families (not its samples,
    so labelled families with no child yet count too)."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def charter_series() -> set[str]:
    """What the simulator really exports: its registry, read once."""
    app = build_sim_app(seed=7, regime="calm", clock=lambda: 1_000.0)
    return series_names(app[SIM_REGISTRY])


def daemon_series() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry).watch_state(StateGauges)  # the state gauges, read at scrape time
    return series_names(registry)


KNOWN_SERIES = charter_series() | daemon_series() | PROMETHEUS_SYNTHETIC

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors, incl. $__rate_interval
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def all_rules() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(RULES_DIR.glob("*.rules.yml")):
        for group in load_yaml(path)["groups"]:
            out.extend((path, rule) for rule in group["rules"])
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for _, rule in all_rules() if "alert" in rule]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` is not on PATH. Run `make test`, which installs it "
            "(Debian: apt-get install prometheus prometheus-alertmanager)."
        )
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT, timeout=60)


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


# --- compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    assert parts.hostname is not None
    assert parts.port is not None, f"{url} names no port"
    return parts.hostname, parts.port


def mapek_env(services: dict[str, Any]) -> dict[str, str]:
    env = services["mape-k"]["environment"]
    assert isinstance(env, dict), "mape-k environment must be a mapping"
    return {key: str(value) for key, value in env.items()}


def test_compose_file_is_valid_for_docker_compose_v1(tmp_path: Path) -> None:
    """Debian's docker-compose 1.29 (Compose v1) validates it against the Compose
    Specification that v2 implements too; v1 rejects v2-only keys such as top-level `name`."""
    result = run(
        tool("docker-compose"), "--project-directory", str(ROOT), "-f", str(COMPOSE), "config", "-q"
    )
    assert result.returncode == 0, result.stderr


HA_PORTS = {"mape-k-ha-1": 8011, "mape-k-ha-2": 8012}


def test_compose_has_the_five_services_on_their_ports(services: dict[str, Any]) -> None:
    core = {name for name, service in services.items() if "profiles" not in service}
    assert core == set(PORTS)
    for name, port in PORTS.items():
        assert services[name]["ports"] == [f"{port}:{port}"], name


def test_compose_ha_profile_is_postgres_and_two_replicas_of_the_daemon(
    services: dict[str, Any],
) -> None:
    ha = {name for name, service in services.items() if service.get("profiles") == ["ha"]}
    assert ha == {"postgres", *HA_PORTS}
    single = mapek_env(services)
    ids = set()
    for name, port in HA_PORTS.items():
        replica = services[name]
        assert replica["ports"] == [f"{port}:8001"], name
        env = {key: str(value) for key, value in replica["environment"].items()}
        ids.add(env.pop("MAPEK_HA__REPLICA_ID"))
        assert env.pop("MAPEK_KNOWLEDGE__URL_FILE") == "/run/secrets/pg_url"
        # Otherwise the same daemon as the single node: same Charter, Prometheus, tokens.
        assert env == {k: v for k, v in single.items() if k != "MAPEK_KNOWLEDGE__PATH"}, name
        assert set(replica["secrets"]) == {"webhook_token", "admin_token", "pg_url"}
        assert replica["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert ids == set(HA_PORTS)
    postgres = services["postgres"]
    assert postgres["secrets"] == ["pg_password"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_password"
    # The URL's password is the database's.
    password = (ROOT / "deploy" / "secrets" / "pg_password").read_text().strip()
    url = (ROOT / "deploy" / "secrets" / "pg_url").read_text().strip()
    assert url == f"postgresql://mapek:{password}@postgres:5432/mapek"


def test_compose_puts_every_service_on_network_westworld(compose: dict[str, Any]) -> None:
    assert "westworld" in compose["networks"]
    for name, service in compose["services"].items():
        assert service["networks"] == ["westworld"], name


def test_compose_services_all_have_healthchecks(services: dict[str, Any]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check is not None, f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_compose_dependencies_wait_for_healthy_services(services: dict[str, Any]) -> None:
    seen = 0
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            seen += 1
    assert services["mape-k"]["depends_on"].keys() >= {"prometheus", "charter"}
    assert seen >= 4


def test_compose_bind_mounts_and_secret_files_exist_in_the_repo(compose: dict[str, Any]) -> None:
    sources = []
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                sources.append(source)
    sources += [secret["file"] for secret in compose["secrets"].values()]
    assert len(sources) >= 8
    for source in sources:
        assert (ROOT / source).exists(), f"{source} is mounted but missing"


def test_compose_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == {"prometheus-data", "knowledge", "grafana-data", "pg-data"}
    assert set(compose["volumes"]) == used


def test_compose_secrets_are_declared_and_mounted(compose: dict[str, Any]) -> None:
    declared = set(compose["secrets"])
    assert declared == {"webhook_token", "admin_token", "pg_password", "pg_url"}
    services = compose["services"]
    assert set(services["mape-k"]["secrets"]) == {"webhook_token", "admin_token"}
    assert services["alertmanager"]["secrets"] == ["webhook_token"]


def test_prometheus_scrapes_charter_and_mapek_by_service_name_and_port(
    services: dict[str, Any],
) -> None:
    config = load_yaml(PROM_CONFIG)
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    for job in ("charter", "mape-k"):
        (target,) = targets[job]
        host, port = host_port(target)
        assert host in services
        assert port == PORTS[host]
    assert host_port(targets["charter"][0])[0] == "charter"
    assert host_port(targets["mape-k"][0])[0] == "mape-k"
    assert config["global"]["scrape_interval"] == "30s"
    assert config["global"]["evaluation_interval"] == "30s"


def test_prometheus_sends_alerts_to_the_alertmanager_service() -> None:
    config = load_yaml(PROM_CONFIG)
    (manager,) = config["alerting"]["alertmanagers"]
    (target,) = manager["static_configs"][0]["targets"]
    assert host_port(target) == ("alertmanager", PORTS["alertmanager"])


def test_prometheus_rule_files_resolve_inside_the_container(services: dict[str, Any]) -> None:
    mounts = dict(volume.split(":")[:2] for volume in services["prometheus"]["volumes"])
    config_in_container = mounts["./src/mape_k/staging/prometheus/prometheus.yml"]
    assert "--config.file=" + config_in_container in services["prometheus"]["command"]
    config_dir = Path(config_in_container).parent
    for pattern in load_yaml(PROM_CONFIG)["rule_files"]:
        container_dir = (config_dir / pattern).parent
        host_dir = (PROM_CONFIG.parent / pattern).parent
        assert mounts.get("./" + str(host_dir.relative_to(ROOT))) == str(container_dir)
        assert list(host_dir.glob(Path(pattern).name)), f"{pattern} matches no file"


def test_alertmanager_webhook_reaches_mapek_with_the_shared_token(
    services: dict[str, Any],
) -> None:
    config = load_yaml(AM_CONFIG)
    webhooks = [
        hook for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])
    ]
    assert webhooks
    token_file = mapek_env(services)["MAPEK_SERVER__WEBHOOK_TOKEN_FILE"]
    assert token_file == "/run/secrets/webhook_token"
    for hook in webhooks:
        assert urlsplit(hook["url"]).path == "/api/v1/alerts"
        assert host_port(hook["url"]) == ("mape-k", PORTS["mape-k"])
        assert hook["send_resolved"] is True
        assert hook["http_config"]["authorization"]["credentials_file"] == token_file


def test_a_full_group_of_the_shipped_max_alerts_fits_the_shipped_body_limit() -> None:
    # A delivery over server.max_body_bytes is refused (503) and retried in vain: the
    # shipped max_alerts must keep a group of realistic alerts under the limit, with room.
    limit = load_settings(file=ROOT / "config" / "mape_k_config.yaml")[0].server.max_body_bytes
    config = load_yaml(AM_CONFIG)
    hooks = [
        hook for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])
    ]
    [max_alerts] = {hook["max_alerts"] for hook in hooks}
    assert max_alerts > 0  # 0 means every alert of the group, however many
    largest = max(alert_size(alert) for alert in shipped_alerts())
    assert 500 < largest < 1100  # what the arithmetic in alertmanager.yml assumes
    body = shipped_alert_group(max_alerts)
    assert max_alerts * largest < len(body) <= limit // 2  # label values may be twice as long
    assert len(shipped_alert_group(2 * max_alerts)) <= limit


def test_alertmanager_timings_and_grouping_match_the_spec() -> None:
    route = load_yaml(AM_CONFIG)["route"]
    assert route["group_by"] == ["alertname", "component"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "10s",
        "10s",
        "12h",
    )
    [to_mapek] = [child for child in route["routes"] if child["receiver"] == "mape-k"]
    matchers = {m for child in to_mapek["routes"] for m in child["matchers"]}
    assert {f'severity="{s}"' for s in SEVERITIES} <= matchers


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["component=charter", "severity=critical", "cause=overload"], "mape-k-critical"),
        (["component=charter", "severity=warning", "cause=overload"], "mape-k"),
        (["component=charter", "severity=info", "cause=overload"], "mape-k-info"),
        (["component=charter", "cause=overload"], "mape-k"),
        (["component=mape-k", "severity=critical", "cause=overload"], "operators"),
        # Alerts mape-k cannot remediate (no cause), e.g. another team's in a shared
        # Alertmanager, never reach it.
        (["component=charter", "severity=critical"], "operators"),
        (["alertname=DiskFull", "team=storage", "severity=warning"], "operators"),
        (["alertname=Watchdog"], "operators"),
    ],
)
def test_alertmanager_routes_only_alerts_with_a_cause_to_mapek_by_severity(
    labels: list[str], receiver: str
) -> None:
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


@pytest.mark.parametrize("severity", list(Severity))
def test_alertmanager_routes_mapek_needs_human_to_the_operators_not_back_to_mapek(
    severity: Severity,
) -> None:
    # The labels mape-k posts while it holds a target for a human: they carry a cause.
    labels = alert_labels("charter", "overload", severity)
    pairs = [f"{name}={value}" for name, value in labels.items()]
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}", *pairs)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "operators"


def test_mapek_environment_is_valid_config_pointing_at_the_compose_services(
    services: dict[str, Any],
) -> None:
    settings, sources = load_settings(file=None, env=mapek_env(services))
    assert sources["charter.url"].startswith("env:")
    assert settings.charter.mode == "http"
    assert host_port(settings.charter.url) == ("charter", PORTS["charter"])
    assert host_port(settings.prometheus.url) == ("prometheus", PORTS["prometheus"])
    alert_url = needs_human_alert_url(settings)
    assert alert_url is not None
    assert host_port(alert_url) == ("alertmanager", PORTS["alertmanager"])
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == PORTS["mape-k"]
    assert str(settings.knowledge.path).startswith("/var/lib/mape-k/")
    secret_paths = {f"/run/secrets/{name}" for name in services["mape-k"]["secrets"]}
    assert {str(settings.server.webhook_token_file), str(settings.server.admin_token_file)} == (
        secret_paths
    )
    knowledge_mount = [v for v in services["mape-k"]["volumes"] if v.startswith("knowledge:")]
    assert knowledge_mount == ["knowledge:/var/lib/mape-k"]


def test_shipped_config_loads_under_the_compose_environment(services: dict[str, Any]) -> None:
    shipped = ROOT / "config" / "mape_k_config.yaml"
    settings, _ = load_settings(file=shipped, env=mapek_env(services))
    assert settings.charter.mode == "http"
    assert host_port(settings.prometheus.url) == ("prometheus", PORTS["prometheus"])
    assert settings.server.host == "0.0.0.0"


def test_mapek_config_path_in_the_image_is_inside_the_config_mount(
    services: dict[str, Any],
) -> None:
    command = services["mape-k"]["command"]
    config_path = command[command.index("--config") + 1]
    assert "./config:/etc/mape-k:ro" in services["mape-k"]["volumes"]
    assert config_path.startswith("/etc/mape-k/")
    assert f'"{config_path}"' in DOCKERFILE.read_text(encoding="utf-8")


def test_charter_service_runs_the_simulator_on_its_port(services: dict[str, Any]) -> None:
    command = services["charter"]["command"]
    assert command[0] == "charter-sim"
    assert command[command.index("--port") + 1] == str(PORTS["charter"])
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_grafana_datasource_points_at_the_prometheus_service() -> None:
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert host_port(source["url"]) == ("prometheus", PORTS["prometheus"])
    assert source["uid"] == "prometheus"


def test_grafana_dashboard_provider_reads_the_mounted_dashboards(services: dict[str, Any]) -> None:
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --- dashboards and rules name real metrics ---------------------------------------------


def test_metric_name_extraction_ignores_functions_labels_and_keywords() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (phase, le) "
        '(rate(mapek_a_bucket{x="y"}[$__rate_interval])))'
        " / on (instance) group_left max(b_total offset 5m) and c > bool 1 unless absent(d)"
    )
    assert metric_names(expr) == {"mapek_a_bucket", "b_total", "c", "d"}


def test_simulator_exports_every_charter_family_of_the_shared_contract() -> None:
    app = build_sim_app(seed=7, regime="calm", clock=lambda: 1_000.0)
    families = {family.name for family in app[SIM_REGISTRY].collect()}
    assert set(CHARTER_CONTRACT) - families == set()


def test_known_series_include_histogram_and_counter_suffixes() -> None:
    assert {
        "mapek_iteration_duration_seconds_bucket",
        "mapek_actions_total",
        "mapek_frozen",
        "westworld_charter_validation_latency_seconds_bucket",
        "westworld_charter_restarts_total",
    } <= KNOWN_SERIES
    assert "mapek_actions" not in KNOWN_SERIES


def test_dashboards_are_valid_grafana_json_with_queries() -> None:
    boards = dashboards()
    assert set(boards) == {"charter-health.json", "mapek-loop.json"}
    for name, board in boards.items():
        assert board["schemaVersion"] >= 36, name
        assert board["uid"], name
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        queried = [panel for panel in panels(board) if panel["type"] != "row"]
        assert len(queried) >= 8, name
        for panel in queried:
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"].strip(), panel["title"]


def test_every_dashboard_query_names_only_exported_metrics() -> None:
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                unknown = metric_names(target["expr"]) - KNOWN_SERIES
                assert not unknown, f"{name} / {panel['title']}: {sorted(unknown)}"
                assert metric_names(target["expr"]), f"{name} / {panel['title']}: no metric"


def test_dashboards_cover_the_loop_and_the_charter() -> None:
    used = {
        metric
        for board in dashboards().values()
        for panel in panels(board)
        for target in panel.get("targets", [])
        for metric in metric_names(target["expr"])
    }
    must = {
        "mapek_iterations_total",
        "mapek_iteration_duration_seconds_bucket",
        "mapek_violations_total",
        "mapek_patterns_total",
        "mapek_actions_total",
        "mapek_outcomes_total",
        "mapek_guard_decisions_total",
        "mapek_knowledge_success_rate",
        "mapek_frozen",
        "mapek_dry_run",
        "mapek_circuit_open",
        "westworld_charter_validation_latency_seconds_bucket",
        "westworld_charter_failure_rate",
        "westworld_charter_committee_size",
        "westworld_charter_healthy_members",
        "westworld_charter_offered_load_ops_per_sec",
        "westworld_charter_throughput_ops_per_sec",
        "westworld_charter_saturation_ratio",
        "westworld_charter_queue_depth",
    }
    assert must <= used, sorted(must - used)


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    exprs = [
        target["expr"].replace("$__rate_interval", "5m")
        for board in dashboards().values()
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    rules = [{"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_expr_names_only_exported_metrics() -> None:
    for path, rule in all_rules():
        unknown = metric_names(rule["expr"]) - KNOWN_SERIES
        assert not unknown, f"{path.name} / {rule.get('alert')}: {sorted(unknown)}"


# --- rule hygiene ------------------------------------------------------------------------


def test_there_are_at_least_eleven_charter_alerts_and_the_loop_alerts() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    charter = [rule for rule in alert_rules() if rule["labels"]["component"] == "charter"]
    assert len(charter) >= 11
    assert {
        "MapekLoopStalled",
        "MapekExecutionsFailing",
        "MapekOscillationDetected",
        "MapekPanicRevert",
        "MapekCircuitOpen",
        "MapekNeedsHuman",
        "MapekFrozen",
    } <= names
    assert len(names) == len(alert_rules()), "duplicate alert names"


def test_every_alert_has_severity_cause_component_and_annotations() -> None:
    anchors = github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in alert_rules():
        name = rule["alert"]
        labels, notes = rule["labels"], rule["annotations"]
        assert labels["severity"] in SEVERITIES, name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", labels["cause"]), name
        assert labels["component"] in {"charter", "mape-k"}, name
        assert notes["summary"].strip(), name
        assert notes["description"].strip(), name
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/runbook.md", name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"{name}: no section #{anchor} in docs/runbook.md"


def test_charter_alerts_use_the_daemon_violation_kinds_as_causes() -> None:
    charter = [rule for rule in alert_rules() if rule["alert"].startswith("Charter")]
    assert all(rule["labels"]["component"] == "charter" for rule in charter)
    assert {rule["labels"]["cause"] for rule in charter} >= DAEMON_KINDS
    assert {rule["labels"]["severity"] for rule in alert_rules()} == SEVERITIES


def test_every_alert_rule_has_a_promtool_unit_test() -> None:
    tested = {
        case["alertname"]
        for path in RULE_TESTS
        for test in load_yaml(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    silent = {
        case["alertname"]
        for path in RULE_TESTS
        for test in load_yaml(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if not case["exp_alerts"]
    }
    names = {rule["alert"] for rule in alert_rules()}
    assert names - tested == set(), "alerts never expected to fire"
    assert names - silent == set(), "alerts never expected to stay silent"


# --- the real tools ----------------------------------------------------------------------


def test_promtool_check_config_passes() -> None:
    result = run(tool("promtool"), "check", "config", str(PROM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules_passes() -> None:
    files = sorted(str(path) for path in RULES_DIR.glob("*.rules.yml"))
    result = run(tool("promtool"), "check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config_passes() -> None:
    result = run(tool("amtool"), "check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile and systemd --------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_volumes() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2
    assert all(rest.startswith("python:3.11-slim") for rest in froms)
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    keys = dict(final)
    assert keys["USER"] not in {"root", "0", ""}
    assert keys["EXPOSE"] == "8001"
    health = keys["HEALTHCHECK"]
    assert "http://127.0.0.1:8001/healthz" in health
    assert "urllib" in health
    volumes = json.loads(keys["VOLUME"])
    assert set(volumes) == {"/etc/mape-k", "/var/lib/mape-k"}
    assert json.loads(keys["ENTRYPOINT"]) == ["mape-k"]
    assert json.loads(keys["CMD"]) == ["run", "--config", "/etc/mape-k/mape_k_config.yaml"]


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name (or its index) -> its instructions after FROM."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            _, _, name = rest.partition(" AS ")
            current = stages.setdefault(name.strip() or str(len(stages)), [])
            continue
        current.append((keyword, rest))
    return stages


def test_dockerfile_installs_dependencies_in_a_layer_that_source_changes_keep(
    tmp_path: Path,
) -> None:
    stages = dockerfile_stages()
    final = stages[list(stages)[-1]]
    runs = [rest for keyword, rest in final if keyword == "RUN"]
    deps_run = next(i for i, rest in enumerate(runs) if "from=deps" in rest)
    package_run = next(i for i, rest in enumerate(runs) if "from=build" in rest)
    assert deps_run < package_run
    assert "--no-deps" in runs[package_run]
    # The dependency stage sees pyproject.toml only: a change under src/ cannot touch it.
    copies = [rest for keyword, rest in stages["deps"] if keyword in {"COPY", "ADD"}]
    assert copies == ["pyproject.toml ./"]
    # Its requirement list is pyproject's dependencies (run the same command here).
    [command] = re.findall(r'python -c "([^"]+)"', next(r for k, r in stages["deps"] if k == "RUN"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    listed = subprocess.run(
        [sys.executable, "-c", command],  # sh keeps the backslash of "\n" for Python
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["ha"]
    assert [line for line in listed if line] == declared


def unit_entries() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("["):
            section = stripped.strip("[]")
            continue
        key, _, value = stripped.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def test_systemd_unit_has_the_required_settings() -> None:
    entries = unit_entries()
    expected = {
        "Service.Type": "notify",
        "Service.WatchdogSec": "90",
        "Service.Restart": "on-failure",
        "Service.DynamicUser": "yes",
        "Service.StateDirectory": "mape-k",
        "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "yes",
        "Service.PrivateTmp": "yes",
        "Service.NoNewPrivileges": "yes",
        "Service.EnvironmentFile": "-/etc/mape-k/mape-k.env",
        "Service.ExecReload": "/bin/kill -HUP $MAINPID",
        "Service.KillSignal": "SIGTERM",
        "Install.WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert entries.get(key) == [value], key
    assert entries["Service.ExecStart"] == [
        "/opt/mape-k/venv/bin/mape-k run --config /etc/mape-k/mape_k_config.yaml"
    ]
    assert (
        "MAPEK_KNOWLEDGE__PATH=/var/lib/mape-k/knowledge.sqlite3" in entries["Service.Environment"]
    )
    assert {"Service.RestartSec", "Service.TimeoutStopSec"} <= entries.keys()


def test_systemd_watchdog_is_three_loop_intervals_of_the_shipped_config() -> None:
    settings, _ = load_settings(file=ROOT / "config" / "mape_k_config.yaml", env={})
    (watchdog,) = unit_entries()["Service.WatchdogSec"]
    assert float(watchdog) == 3 * settings.orchestrator.interval_s


def test_systemd_file_limit_fits_the_connection_cap_of_the_shipped_config() -> None:
    env = {"MAPEK_CHARTER__MODE": "http"}  # production: the client pools need descriptors too
    settings, _ = load_settings(file=ROOT / "config" / "mape_k_config.yaml", env=env)
    (limit,) = unit_entries()["Service.LimitNOFILE"]
    reserve = file_reserve(settings)
    # The shipped cap fits, with room to double it.
    for cap in (settings.server.max_connections, 2 * settings.server.max_connections):
        plan = plan_file_limit(cap, soft=int(limit), hard=int(limit), reserve=reserve)
        assert (plan.max_connections, plan.lowered) == (cap, False), plan


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this venv's entry point.
    entry_point = Path(sys.executable).parent / "mape-k"
    assert entry_point.exists(), "mape-k is not installed in this venv (pip install -e .)"
    text = UNIT.read_text(encoding="utf-8").replace("/opt/mape-k/venv/bin/mape-k", str(entry_point))
    unit = tmp_path / "mape-k.service"
    unit.write_text(text, encoding="utf-8")
    result = run("systemd-analyze", "verify", "--man=no", str(unit))
    complaints = [line for line in result.stderr.splitlines() if "mape-k.service" in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []
