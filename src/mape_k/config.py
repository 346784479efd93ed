"""Configuration: one frozen pydantic tree, loaded with one precedence.

CLI flag > environment (`MAPEK_` prefix, `__` for nesting) > YAML file > defaults.
`load_settings` returns the settings and, for every leaf that did not come from the
defaults, where it came from. Errors name the full dotted path and the source.
No I/O here except reading the one YAML file (and token files) it is given.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from mape_k.errors import ConfigError
from mape_k.models import ActionType, Severity

ENV_PREFIX = "MAPEK_"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def read_secret(value: SecretStr | None, path: Path | None) -> str | None:
    """A token given inline or as a file path (the file wins; trailing newline dropped)."""
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from exc
    return value.get_secret_value() if value is not None else None


class PrometheusConfig(_Model):
    url: str = "http://127.0.0.1:9090"
    timeout_s: float = Field(5.0, gt=0, description="Per-request timeout (connect + read).")
    max_connections: int = Field(32, ge=1, description="Connection pool size of the client.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class CharterMode(StrEnum):
    MOCK = "mock"
    HTTP = "http"


class CharterConfig(_Model):
    mode: CharterMode = CharterMode.MOCK
    url: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None
    token_file: Path | None = None
    connect_timeout_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(5.0, gt=0, description="Read timeout of one call.")
    retries: int = Field(3, ge=0, le=10, description="Retries for idempotent calls only.")
    backoff_s: float = Field(0.2, ge=0, description="Base of the jittered exponential backoff.")
    mock_seed: int = Field(7, description="Seed of the simulated committee in mock mode.")
    mock_regime: Literal["calm", "volatile", "spike"] = "calm"


class Comparator(StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="

    def holds(self, value: float, threshold: float) -> bool:
        return {
            Comparator.GT: value > threshold,
            Comparator.GE: value >= threshold,
            Comparator.LT: value < threshold,
            Comparator.LE: value <= threshold,
        }[self]


class ViolationRule(_Model):
    name: str = Field(min_length=1, description="The violation kind this rule produces.")
    query: str = Field(description="Name of a query in monitor.queries.")
    comparator: Comparator = Comparator.GT
    threshold: float
    severity: Severity = Severity.WARNING
    component_label: str = Field("component", description="Label naming the component.")
    default_component: str = Field("charter", description="Component when the label is absent.")


DEFAULT_QUERIES: dict[str, str] = {
    "failure_rate": "max(westworld_charter_failure_rate)",
    "policy_error_rate": "max(westworld_charter_policy_error_rate)",
    "p99_latency_s": "max(westworld_charter_p99_latency_seconds)",
    "queue_depth": "max(westworld_charter_queue_depth)",
    "saturation": "max(westworld_charter_saturation_ratio)",
    "unhealthy_members": (
        "max(westworld_charter_committee_size - westworld_charter_healthy_members)"
    ),
    "committee_size": "max(westworld_charter_committee_size)",
    "throughput_ops_per_sec": "max(westworld_charter_throughput_ops_per_sec)",
}


def _default_rules() -> tuple[ViolationRule, ...]:
    def rule(name: str, query: str, threshold: float, severity: Severity) -> ViolationRule:
        return ViolationRule(name=name, query=query, threshold=threshold, severity=severity)

    return (
        rule("high_failure_rate", "failure_rate", 0.05, Severity.CRITICAL),
        rule("policy_regression", "policy_error_rate", 0.02, Severity.CRITICAL),
        rule("members_unhealthy", "unhealthy_members", 0, Severity.CRITICAL),
        rule("overload", "saturation", 0.9, Severity.CRITICAL),
        rule("high_latency", "p99_latency_s", 0.5, Severity.WARNING),
        rule("queue_backlog", "queue_depth", 100, Severity.WARNING),
    )


class MonitorConfig(_Model):
    query_timeout_s: float = Field(5.0, gt=0)
    max_staleness_s: float = Field(
        120.0, gt=0, description="Samples older than this count as missing."
    )
    queries: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_QUERIES),
        description="Named PromQL queries, read every iteration.",
    )
    rules: tuple[ViolationRule, ...] = Field(default_factory=_default_rules)
    alert_component_label: str = Field(
        "component", description="Alert label naming the component of an alert's violation."
    )

    @model_validator(mode="after")
    def _rules_name_queries(self) -> MonitorConfig:
        for index, rule in enumerate(self.rules):
            if rule.query not in self.queries:
                raise ValueError(f"rules.{index}.query: {rule.query!r} is not in monitor.queries")
        return self


class TemporalConfig(_Model):
    window_s: float = Field(60.0, gt=0)
    min_count: int = Field(3, ge=2)
    confidence: float = Field(0.85, ge=0, le=1)


class SpatialConfig(_Model):
    min_components: int = Field(3, ge=2)
    confidence: float = Field(0.80, ge=0, le=1)


class CausalConfig(_Model):
    window_s: float = Field(120.0, gt=0, description="B must follow A within this.")
    min_occurrences: int = Field(3, ge=1, description="How often B must follow A.")
    confidence: float = Field(0.75, ge=0, le=1)


class FrequencyConfig(_Model):
    window_s: float = Field(300.0, gt=0)
    min_count: int = Field(8, ge=2)
    confidence: float = Field(0.70, ge=0, le=1)


DEFAULT_INHIBIT: dict[str, tuple[str, ...]] = {
    # A root cause present on a target hides its symptoms there, like Alertmanager's
    # inhibit rules: acting on the symptom (scale up for a crashed member) is the wrong fix.
    "members_unhealthy": ("overload", "high_latency", "queue_backlog", "high_failure_rate"),
    "policy_regression": ("high_failure_rate",),
    "overload": ("high_latency", "queue_backlog", "high_failure_rate"),
}


class AnalyzerConfig(_Model):
    history_s: float = Field(900.0, gt=0, description="How long past violations are kept.")
    max_history: int = Field(200_000, ge=1000, description="Bound on remembered violations.")
    base_confidence: float = Field(0.6, ge=0, le=1, description="Confidence of a lone violation.")
    temporal: TemporalConfig = TemporalConfig()
    spatial: SpatialConfig = SpatialConfig()
    causal: CausalConfig = CausalConfig()
    frequency: FrequencyConfig = FrequencyConfig()
    inhibit: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_INHIBIT),
        description="Cause -> causes it hides on the same target while present.",
    )


class ActionSpec(_Model):
    cost: float = Field(ge=0, le=1)
    benefit: float = Field(ge=0, le=1)
    settle_s: float = Field(ge=0, description="Time for the effect to show before measuring.")
    requires_approval: bool = False


DEFAULT_ACTIONS: dict[ActionType, ActionSpec] = {
    ActionType.SCALE_UP: ActionSpec(cost=0.20, benefit=0.80, settle_s=30),
    ActionType.SCALE_DOWN: ActionSpec(cost=0.15, benefit=0.40, settle_s=30),
    ActionType.RESTART_SERVICE: ActionSpec(cost=0.30, benefit=0.75, settle_s=20),
    ActionType.APPLY_POLICY: ActionSpec(cost=0.10, benefit=0.60, settle_s=15),
    ActionType.BYPASS_VALIDATION: ActionSpec(
        cost=0.70, benefit=0.50, settle_s=15, requires_approval=True
    ),
    ActionType.THROTTLE_REQUESTS: ActionSpec(cost=0.40, benefit=0.65, settle_s=15),
    ActionType.ACTIVATE_EMERGENCY_OVERRIDE: ActionSpec(
        cost=0.80, benefit=0.55, settle_s=15, requires_approval=True
    ),
    ActionType.REBALANCE_LOAD: ActionSpec(cost=0.15, benefit=0.60, settle_s=15),
    ActionType.UPDATE_CONFIGURATION: ActionSpec(cost=0.25, benefit=0.50, settle_s=15),
}


class CandidateAction(_Model):
    type: ActionType
    parameters: dict[str, Any] = Field(default_factory=dict)
    benefit: float | None = Field(
        None, ge=0, le=1, description="This action's benefit for this cause (default: its own)."
    )


def _default_remediations() -> dict[str, tuple[tuple[CandidateAction, ...], ...]]:
    def one(
        kind: ActionType, benefit: float | None = None, **parameters: Any
    ) -> tuple[CandidateAction, ...]:
        return (CandidateAction(type=kind, parameters=parameters, benefit=benefit),)

    return {
        "high_failure_rate": (
            one(ActionType.RESTART_SERVICE),
            one(ActionType.THROTTLE_REQUESTS, fraction=0.7),
        ),
        "policy_regression": (one(ActionType.APPLY_POLICY, 0.9, policy_id="last_known_good"),),
        "members_unhealthy": (
            one(ActionType.RESTART_SERVICE, 0.9),
            one(ActionType.SCALE_UP, 0.5, delta=1),
        ),
        "overload": (
            one(ActionType.SCALE_UP, 0.85, delta=2),
            one(ActionType.THROTTLE_REQUESTS, fraction=0.8),
        ),
        "high_latency": (
            one(ActionType.REBALANCE_LOAD, 0.85),
            one(ActionType.SCALE_UP, 0.5, delta=1),
        ),
        "queue_backlog": (
            one(ActionType.SCALE_UP, delta=1),
            one(ActionType.THROTTLE_REQUESTS, fraction=0.8),
        ),
    }


class PlannerConfig(_Model):
    actions: dict[ActionType, ActionSpec] = Field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    remediations: dict[str, tuple[tuple[CandidateAction, ...], ...]] = Field(
        default_factory=_default_remediations,
        description="Cause (violation kind) -> candidate policies, each a list of actions.",
    )
    default_remediations: tuple[tuple[CandidateAction, ...], ...] = Field(
        default=(), description="Candidates for a cause with no entry in remediations."
    )
    require_approval: bool = Field(
        True, description="False waives approval for risky actions (not recommended)."
    )
    min_score: float = Field(0.0, description="Policies scoring below this are not proposed.")
    max_policies: int = Field(5, ge=1, description="How many ranked candidates to keep.")
    max_pending_approvals: int = Field(
        50, ge=1, description="Bound on policies waiting for an operator (oldest dropped)."
    )
    approval_ttl_s: float = Field(
        3600.0,
        gt=0,
        description="A pending, approved or rejected proposal expires after this"
        " (keep it >= guards.approval_ttl_s, which bounds how long an approval is honoured).",
    )

    @field_validator("actions")
    @classmethod
    def _complete_actions(cls, value: dict[ActionType, ActionSpec]) -> dict[ActionType, ActionSpec]:
        return {**DEFAULT_ACTIONS, **value}


class ExecutorConfig(_Model):
    dry_run: bool = False
    action_timeout_s: float = Field(10.0, gt=0)
    verify_delay_s: float | None = Field(
        None, ge=0, description="Wait before verifying; default: the action's settle_s."
    )
    verify_deadline_s: float = Field(
        300.0, gt=0, description="Give up verifying (UNKNOWN) after this long."
    )
    partial_improvement: float = Field(
        0.3, gt=0, lt=1, description="Relative improvement that counts as PARTIAL."
    )
    degradation: float = Field(
        0.5,
        gt=0,
        description="Relative worsening that counts as DEGRADATION (it triggers a panic"
        " revert, so noise must not reach it).",
    )


class KnowledgeConfig(_Model):
    path: Path = Path("mape_k_knowledge.sqlite3")
    saturation_samples: int = Field(30, ge=1, description="Samples at which confidence is 1.")
    retention_days: float = Field(30.0, gt=0)
    max_rows: int = Field(100_000, ge=100, description="Per journal table.")
    max_bytes: int = Field(
        268_435_456,
        ge=1_048_576,
        description="Byte budget of the store (file plus WAL): the oldest history is pruned"
        " when a write would exceed it; statistics and state never are.",
    )
    decisions_kept_in_memory: int = Field(50, ge=1)
    record_top_n: int = Field(
        20,
        ge=1,
        le=1000,
        description="Per list of a decision record (violations, causes, patterns...): items"
        " beyond the candidates' own are kept up to this many; the rest are counted and"
        " digested, not copied.",
    )


class OrchestratorConfig(_Model):
    interval_s: float = Field(30.0, gt=0)
    trigger_debounce_s: float = Field(1.0, ge=0)
    iteration_timeout_s: float = Field(60.0, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)


class ServerConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)
    webhook_token: SecretStr | None = None
    webhook_token_file: Path | None = None
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    max_body_bytes: int = Field(1_048_576, ge=1024)
    inbox_max_alerts: int = Field(10_000, ge=1)
    alert_ttl_s: float = Field(
        46_800.0,
        gt=0,
        description="A firing alert not re-delivered for this long is dropped (its resolve was"
        " lost). Keep it above Alertmanager's repeat_interval (12h shipped).",
    )


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class FreezeWindow(_Model):
    """A recurring change freeze, in UTC: from `start` to `end` on each of `days`.

    `end` <= `start` means the window crosses midnight (it ends the next day); a day
    names the day the window starts on.
    """

    start: str = Field(description='"HH:MM", UTC.')
    end: str = Field(description='"HH:MM", UTC.')
    days: tuple[Weekday, ...] = _WEEKDAYS
    reason: str = "change freeze window"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f'expected "HH:MM" (UTC), got {value!r}')
        return value


class CooldownConfig(_Model):
    enabled: bool = True
    base_s: float = Field(120.0, ge=0, description="Quiet time per (target, action type).")
    large_delta: int = Field(3, ge=1, description="A scale by this many members is large.")
    large_factor: float = Field(3.0, ge=1, description="Cooldown multiplier after a large one.")


class VelocityConfig(_Model):
    enabled: bool = True
    window_s: float = Field(3600.0, gt=0)
    max_size_change: int = Field(6, ge=1, description="Sum of |members changed| per window.")
    max_actions: int = Field(12, ge=1, description="Mutating actions per window (blast radius).")


class StabilizationConfig(_Model):
    enabled: bool = True
    window_s: float = Field(
        300.0, ge=0, description="Scale down only to the highest size recommended within."
    )


class OscillationConfig(_Model):
    enabled: bool = True
    window_s: float = Field(1800.0, gt=0, description="A change, its inverse and back within.")
    backoff_s: float = Field(600.0, gt=0, description="First block; doubles on each repeat.")
    max_backoff_s: float = Field(14_400.0, gt=0)


class CharterBreakerConfig(_Model):
    enabled: bool = True
    failures: int = Field(3, ge=1, description="Consecutive failed calls that open it.")
    open_s: float = Field(60.0, gt=0, description="Open this long, then one half-open probe.")


class TargetBreakerConfig(_Model):
    enabled: bool = True
    failures: int = Field(3, ge=1, description="Remediations that did not fix the target...")
    window_s: float = Field(3600.0, gt=0, description="...within this window.")
    hold_s: float = Field(3600.0, gt=0, description="Then no action on it for this long.")


class PanicConfig(_Model):
    enabled: bool = True
    on_degradation: bool = Field(True, description="Revert when verification says DEGRADATION.")
    query: str | None = Field(None, description="A monitor.queries name whose value means panic.")
    component: str = "charter"
    comparator: Comparator = Comparator.GT
    threshold: float = 0.0
    lookback_s: float = Field(900.0, gt=0, description="Executions this recent are reverted.")
    freeze_s: float | None = Field(
        3600.0, gt=0, description="Then freeze this long (null: until an operator lifts it)."
    )


class GuardsConfig(_Model):
    frozen: bool = Field(False, description="Kill switch: no mutating action at all.")
    freeze_windows: tuple[FreezeWindow, ...] = ()
    cooldown: CooldownConfig = CooldownConfig()
    velocity: VelocityConfig = VelocityConfig()
    stabilization: StabilizationConfig = StabilizationConfig()
    oscillation: OscillationConfig = OscillationConfig()
    charter_breaker: CharterBreakerConfig = CharterBreakerConfig()
    target_breaker: TargetBreakerConfig = TargetBreakerConfig()
    panic: PanicConfig = PanicConfig()
    approval_ttl_s: float = Field(
        3600.0, gt=0, description="An approval older than this is a rejection (default deny)."
    )
    validate_startup: bool = Field(
        True, description="Check config, store and Charter state before the first action."
    )


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Model):
    prometheus: PrometheusConfig = PrometheusConfig()
    charter: CharterConfig = CharterConfig()
    monitor: MonitorConfig = MonitorConfig()
    analyzer: AnalyzerConfig = AnalyzerConfig()
    planner: PlannerConfig = PlannerConfig()
    executor: ExecutorConfig = ExecutorConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    orchestrator: OrchestratorConfig = OrchestratorConfig()
    server: ServerConfig = ServerConfig()
    guards: GuardsConfig = GuardsConfig()
    logging: LoggingConfig = LoggingConfig()


# --- loading ----------------------------------------------------------------------------

Sources = dict[str, str]  # dotted path -> "file:PATH" | "env:VAR" | "cli:FLAG"


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: conflicts with a value set at {part}")
        node = child
    node[path[-1]] = value


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def _env_value(raw: str) -> Any:
    stripped = raw.strip()
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    if stripped.lower() in {"null", "none", "~"}:
        return None
    return raw


def _read_env(env: Mapping[str, str]) -> tuple[dict[str, Any], Sources]:
    tree: dict[str, Any] = {}
    sources: Sources = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == "MAPEK_CONFIG":
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        _set_path(tree, path, _env_value(raw))
        sources[".".join(path)] = f"env:{name}"
    return tree, sources


def _describe(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _origin(path: str, sources: Sources) -> str:
    """The source that set `path` or its nearest ancestor or descendant."""
    probe = path
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    for key, source in sources.items():
        if key.startswith(f"{path}."):
            return source
    return "defaults"


def load_settings(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> tuple[Settings, Sources]:
    """Merge defaults < file < env < cli; raise ConfigError naming path and source."""
    sources: Sources = {}
    tree: dict[str, Any] = {}
    if file is not None:
        file_tree = _read_file(file)
        tree = _merge(tree, file_tree)
        sources.update(dict.fromkeys(_leaves(file_tree), f"file:{file}"))
    env_tree, env_sources = _read_env(os.environ if env is None else env)
    tree = _merge(tree, env_tree)
    sources.update(env_sources)
    cli_tree: dict[str, Any] = {}
    for dotted, value in (cli or {}).items():
        _set_path(cli_tree, dotted.split("."), value)
        sources[dotted] = f"cli:{dotted}"
    tree = _merge(tree, cli_tree)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in first["loc"])
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        where = _origin(path, sources)
        raise ConfigError(f"{path or '<root>'}: {_describe(first)} (from {where}){extra}") from exc
    return settings, sources


def effective_config(settings: Settings, sources: Sources) -> dict[str, dict[str, Any]]:
    """Every leaf of the effective config with its value (secrets masked) and source."""
    dumped = settings.model_dump(mode="json")
    out: dict[str, dict[str, Any]] = {}
    for path, value in _leaves(dumped).items():
        masked = "**********" if value is not None and path.endswith("token") else value
        out[path] = {"value": masked, "source": _origin(path, sources)}
    return out


# --- reference documentation ----------------------------------------------------------


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return " \\| ".join(member.value for member in annotation)
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b[a-z_]+(?:\.[a-z_]+)*\.(?=[A-Za-z])", "", text)  # module paths
    return text.replace("|", "\\|")


def _reference_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_reference_rows(annotation, f"{path}."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, (dict, tuple, list)):
            default = json.loads(json.dumps(default, default=lambda v: v.model_dump(mode="json")))
        shown = json.dumps(default, default=str)
        if len(shown) > 60:
            shown = "(see below)" if name in {"queries", "rules", "remediations"} else "(built in)"
        env = ENV_PREFIX + path.upper().replace(".", "__")
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{path}` | `{_type_name(annotation)}` | `{shown}` | `{env}` | {description} |"
        )
    return rows


def reference_markdown() -> str:
    """docs/configuration.md, generated from the models (a test fails when it drifts)."""
    defaults = Settings()
    lines = [
        "# Configuration reference",
        "",
        "Generated from `mape_k.config` by `make docs`; do not edit by hand.",
        "Precedence: CLI flag (`--set KEY=VALUE`, `--mock`, `--dry-run`, `--port`) >",
        "environment (`MAPEK_` prefix, `__` for nesting) > YAML file (`--config`,",
        "`$MAPEK_CONFIG`) > these defaults. Lists and mappings given in the environment are",
        "JSON. An unknown key or a bad value is an error naming its path and source.",
        "",
        "| key | type | default | environment | meaning |",
        "|---|---|---|---|---|",
        *_reference_rows(Settings, ""),
        "",
        "## Built-in queries (`monitor.queries`)",
        "",
        "| name | PromQL |",
        "|---|---|",
        *[f"| `{k}` | `{v}` |" for k, v in defaults.monitor.queries.items()],
        "",
        "## Built-in violation rules (`monitor.rules`)",
        "",
        "| rule (cause) | query | comparator | threshold | severity |",
        "|---|---|---|---|---|",
        *[
            f"| `{r.name}` | `{r.query}` | `{r.comparator.value}` | {r.threshold:g} |"
            f" {r.severity.value} |"
            for r in defaults.monitor.rules
        ],
        "",
        "## Built-in remediations (`planner.remediations`)",
        "",
        "| cause | candidates (in order; benefit override in brackets) |",
        "|---|---|",
    ]
    for cause, candidates in defaults.planner.remediations.items():
        shown = []
        for candidate in candidates:
            parts = []
            for action in candidate:
                params = json.dumps(action.parameters) if action.parameters else ""
                benefit = f" [{action.benefit:g}]" if action.benefit is not None else ""
                parts.append(f"{action.type.value}{params}{benefit}")
            shown.append(" + ".join(parts))
        lines.append(f"| `{cause}` | {'; '.join(f'`{s}`' for s in shown)} |")
    lines += [
        "",
        "## Actions (`planner.actions`)",
        "",
        "| action | cost | benefit | settle_s | requires approval |",
        "|---|---|---|---|---|",
        *[
            f"| `{a.value}` | {s.cost:g} | {s.benefit:g} | {s.settle_s:g} | {s.requires_approval} |"
            for a, s in defaults.planner.actions.items()
        ],
        "",
    ]
    return "\n".join(lines)
