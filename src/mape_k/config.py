"""Configuration: one frozen pydantic tree, loaded with one precedence.

CLI flag > environment (`MAPEK_` prefix, `__` for nesting) > YAML file > defaults.
`load_settings` returns the settings and, for every leaf that did not come from the
defaults, where it came from. Errors name the full dotted path and the source.
No I/O here except reading the one YAML file (and token files) it is given.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

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

from mape_k.actuators import template
from mape_k.causes import CAUSES, RETURNS
from mape_k.errors import ConfigError
from mape_k.loop.actions import LAST_KNOWN_GOOD, parameter_problem
from mape_k.loop.maintenance import MaintenanceWindow, check_names
from mape_k.models import ActionName, ActionType, Severity, action_name, is_builtin

ENV_PREFIX = "MAPEK_"


class _Model(BaseModel):
    # inf and NaN are never a meaningful setting (an infinite interval, a NaN threshold).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def read_secret(value: SecretStr | None, path: Path | None, *, file_key: str) -> str | None:
    """A token given inline or as a file (surrounding whitespace dropped); None if neither.

    The models refuse both set at once and an empty inline value (`check_secret_pair`); an
    empty file is refused here, naming `file_key`: an empty secret never means "no secret".
    """
    if path is None:
        return value.get_secret_value() if value is not None else None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{file_key}: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{file_key}: {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"{file_key}: {path} is empty; put the token in it, or unset it")
    return token


def check_secret_pair(value: SecretStr | None, path: Path | None, key: str) -> None:
    """One source per secret, and an inline one that is not blank (ValueError names it)."""
    if value is not None and path is not None:
        raise ValueError(f"{key} and {key}_file are both set; keep one")
    if value is not None and not value.get_secret_value().strip():
        raise ValueError(
            f"{key} is empty (an empty secret is not 'no secret': it would accept a bare"
            f" 'Bearer' header); set a token or remove {key}"
        )


def is_loopback(host: str) -> bool:
    """`host` (an address or "localhost") can only be reached from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    NONE = "none"  # no Charter: only user-defined actions act (on any service)


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

    @model_validator(mode="after")
    def _one_token(self) -> CharterConfig:
        check_secret_pair(self.token, self.token_file, "token")
        return self


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


class PredictConfig(_Model):
    """Early warning for one rule (loop/predict.py): a trend fitted over the last
    `window_s` of its query, extrapolated `horizon_s` ahead."""

    horizon_s: float = Field(
        600.0,
        gt=0,
        description="Raise a predicted violation when the fitted trend crosses"
        " the threshold within this many seconds.",
    )
    window_s: float = Field(
        900.0,
        gt=0,
        description="The history the trend is fitted over (a range query on"
        " Prometheus; the loop's own readings on the mock).",
    )
    method: Literal["linear", "holt"] = Field(
        "linear",
        description="linear: least squares (predict_linear); holt: Holt's linear"
        " trend (double exponential smoothing, recent points weigh more).",
    )
    holt_alpha: float = Field(0.5, gt=0, le=1, description="Holt's level smoothing.")
    holt_beta: float = Field(0.3, gt=0, le=1, description="Holt's trend smoothing.")
    min_points: int = Field(5, ge=3, description="Fewer points in the window: no forecast.")
    significance: float = Field(
        3.0,
        ge=0,
        description="The least-squares slope must be this many standard errors"
        " from zero (noise on a flat signal predicts nothing).",
    )
    step_s: float = Field(15.0, gt=0, description="The range query's resolution (Prometheus).")
    tolerance_s: float = Field(
        300.0,
        ge=0,
        description="A prediction came true if the real violation appears by"
        " the expected crossing plus this; after it, it did not (or was prevented).",
    )
    act: bool = Field(
        True, description="The planner may act on a predicted violation (false: warn only)."
    )
    max_cost: float = Field(
        0.25,
        ge=0,
        description="For a predicted violation the planner proposes only"
        " candidates costing at most this (low-cost actions: scale_up 0.20, not restart 0.30).",
    )

    @model_validator(mode="after")
    def _window_holds_points(self) -> PredictConfig:
        if self.window_s < self.step_s * (self.min_points - 1):
            raise ValueError(
                f"window_s: {self.window_s:g} s holds fewer than min_points ({self.min_points})"
                f" samples at step_s {self.step_s:g} s"
            )
        return self


class ViolationRule(_Model):
    name: str = Field(min_length=1, description="The violation kind this rule produces.")
    query: str = Field(description="Name of a query in monitor.queries.")
    comparator: Comparator = Comparator.GT
    threshold: float
    severity: Severity = Severity.WARNING
    component_label: str = Field("component", description="Label naming the component.")
    default_component: str = Field("charter", description="Component when the label is absent.")
    predict: PredictConfig | None = Field(
        None,
        description="Early warning: raise a predicted violation before the threshold is"
        " crossed (off unless set; see monitor.rules.N.predict).",
    )

    @field_validator("name")
    @classmethod
    def _not_a_return(cls, value: str) -> str:
        if value in RETURNS:
            raise ValueError(
                f"{value!r} is the daemon's own return-to-baseline cause, not a violation kind"
            )
        return value


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
    "offered_load": "max(westworld_charter_offered_load_ops_per_sec)",
}


def _default_rules() -> tuple[ViolationRule, ...]:
    """One rule per cause of the table in causes.py (the query is named after the signal)."""
    return tuple(
        ViolationRule(name=c.name, query=c.signal, threshold=c.threshold, severity=c.severity)
        for c in CAUSES
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


class LoadReadingConfig(_Model):
    """Right reading first: a symptom of load (latency) is named as the load cause when the
    load signal is near its threshold or rising to cross it, not as a cause of its own."""

    enabled: bool = Field(True, description="Off: every symptom is a cause of its own.")
    symptoms: tuple[str, ...] = Field(
        ("high_latency",), description="Causes read as `cause` while the load signal is high."
    )
    cause: str = Field("overload", description="The load cause they are named as then.")
    signal: str = Field("saturation", description="The monitor.queries name of the load signal.")
    load: str | None = Field(
        "offered_load",
        description="The monitor.queries name of the offered load: a load signal rising"
        " below `near` is read as load only while the offered load rises with it (at least"
        " half as fast, relatively); flat, the capacity fell (a slow member, a degraded"
        " node) and the symptom stays a cause of its own. Unset or unread: the load signal"
        " alone decides.",
    )
    near: float = Field(0.8, description="At or above this, the signal is near its threshold.")
    threshold: float = Field(
        next(c.threshold for c in CAUSES if c.name == "overload"),
        description="The signal's threshold (the `cause` rule's): rising to cross it within"
        " horizon_s, at its trend over executor.trend_window_s, is rising fast.",
    )
    horizon_s: float = Field(30.0, ge=0, description="How far ahead the trend is projected.")


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
    load_reading: LoadReadingConfig = LoadReadingConfig()


class ExecActuator(_Model):
    """Run a program: an argv list, never a shell; each template value is one element."""

    type: Literal["exec"]
    argv: tuple[str, ...] = Field(
        min_length=1,
        description="Program and arguments, each a template; argv[0] an absolute path.",
    )
    timeout_s: float = Field(30.0, gt=0, description="Killed (and failed) after this long.")
    cwd: Path | None = Field(None, description="Working directory (default: the daemon's).")
    env: tuple[str, ...] = Field(
        (), description="Names of the daemon's environment variables passed on (allow-list)."
    )
    set_env: dict[str, str] = Field(
        default_factory=dict, description="Fixed environment variables (not templated)."
    )
    max_output_bytes: int = Field(
        4096, ge=0, le=1 << 20, description="Output kept in the journal (head of stdout+stderr)."
    )
    success_exit_codes: tuple[int, ...] = Field((0,), min_length=1)

    @field_validator("argv")
    @classmethod
    def _absolute_program(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value[0].startswith("/") or "{" in value[0]:
            raise ValueError(
                f"argv[0] must be an absolute path without variables, got {value[0]!r}"
            )
        return value

    def templates(self) -> list[str]:
        return list(self.argv)


class HttpActuator(_Model):
    """Call a webhook: a URL template (values percent-encoded), headers, a JSON body."""

    type: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(description="URL template; every value in it is percent-encoded.")
    headers: dict[str, str] = Field(default_factory=dict, description="Header templates.")
    header_files: dict[str, Path] = Field(
        default_factory=dict,
        description="Header -> file holding its value (a secret: `Authorization: Bearer ...`).",
    )
    body: Any = Field(None, description="JSON body template (every string in it rendered).")
    expect: tuple[int, ...] = Field(
        (200, 201, 202, 204), min_length=1, description="Statuses that mean it worked."
    )
    connect_timeout_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(10.0, gt=0, description="Read timeout of one attempt.")
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries on connect/read errors and 502/503/504, only when safe: GET,"
        " PUT, DELETE, or an action marked idempotent (it sends an Idempotency-Key).",
    )
    backoff_s: float = Field(0.2, ge=0)
    verify_tls: bool = True
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        head = value.split("://", 1)[1].split("/", 1)[0]
        if "{" in head:
            raise ValueError("the host and port may not be templated (a label cannot pick a host)")
        return value

    def templates(self) -> list[str]:
        return [self.url, *self.headers.values(), *template.json_strings(self.body)]


class AlertmanagerActuator(_Model):
    """Silence the alert being remediated while the action settles, or post an alert."""

    type: Literal["alertmanager"]
    url: str = Field("http://127.0.0.1:9093", description="Alertmanager's base URL.")
    operation: Literal["silence", "alert"] = "silence"
    duration_s: float = Field(
        600.0, gt=0, description="Silence: its life, if verification never expires it."
    )
    matchers: tuple[str, ...] = Field(
        ("alertname",),
        min_length=1,
        description="Silence: the alert's labels it matches on (each must be present).",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Alert: label templates of the alert posted."
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Alert: templates.")
    created_by: str = "mape-k"
    timeout_s: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def templates(self) -> list[str]:
        return [*self.labels.values(), *self.annotations.values()]


Actuator = Annotated[
    ExecActuator | HttpActuator | AlertmanagerActuator, Field(discriminator="type")
]


class ActionSpec(_Model):
    cost: float = Field(ge=0, le=1)
    benefit: float = Field(ge=0, le=1)
    settle_s: float = Field(ge=0, description="Time for the effect to show before measuring.")
    requires_approval: bool = False
    # User-defined actions only (a name that is not one of the nine built-ins):
    actuator: Actuator | None = Field(
        None, description="What runs it (exec, http, alertmanager); built-ins: the Charter."
    )
    inverse: str | None = Field(
        None, description="The user-defined action that undoes it (rollback, panic revert)."
    )
    knob: str | None = Field(
        None, description="The setting it moves (guards: cooldown per knob, oscillation)."
    )
    moves: Literal["up", "down", "set"] = Field(
        "set", description="Which way it moves its knob (up then down is a flip-flop)."
    )
    idempotent: bool = Field(
        False, description="Running it twice has one effect (http: retried, keyed)."
    )
    variables: dict[str, str] = Field(
        default_factory=dict,
        description="Template variable -> the regular expression its value must match"
        f" (default {template.DEFAULT_PATTERN}).",
    )

    @model_validator(mode="after")
    def _templates(self) -> ActionSpec:
        for name, pattern in self.variables.items():
            problem = template.variable_problem(name)
            if problem is not None:
                raise ValueError(f"variables: {problem}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"variables.{name}: not a regular expression: {exc}") from None
        if self.actuator is not None:
            try:
                template.variables(self.actuator.templates())
            except template.TemplateError as exc:
                raise ValueError(f"actuator: {exc}") from None
        return self


DEFAULT_ACTIONS: dict[ActionName, ActionSpec] = {
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
    type: ActionName = Field(
        description="A built-in action or the name of a user-defined one (planner.actions)."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Checked against the action-effect model (loop/actions.py): scale_up /"
        " scale_down take delta (default 1), to_size or target_value; throttle_requests"
        " fraction (of the offered load, default 0.8), limit_ops_per_sec or lift (true: no"
        " limit); bypass_validation /"
        " activate_emergency_override active (default true); apply_policy policy_id"
        " (default last_known_good); update_configuration settings (required);"
        " restart_service scope: all (default: every member at once, a short full outage),"
        " rolling (one member at a time, no outage, members x longer) or unhealthy (only"
        " the members not up; the healthy ones keep serving).",
    )
    benefit: float | None = Field(
        None, ge=0, le=1, description="This action's benefit for this cause (default: its own)."
    )

    @field_validator("type")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", value):
            raise ValueError(f"{value!r} is not an action name (lower case, digits, _)")
        return action_name(value)

    @model_validator(mode="after")
    def _known_parameters(self) -> CandidateAction:
        problem = parameter_problem(self.type, self.parameters)
        if problem is not None:
            raise ValueError(problem)
        return self


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
        "policy_regression": (one(ActionType.APPLY_POLICY, 0.9, policy_id=LAST_KNOWN_GOOD),),
        "members_unhealthy": (
            one(ActionType.RESTART_SERVICE, 0.9, scope="unhealthy"),
            one(ActionType.SCALE_UP, 0.5, delta=1),
        ),
        "overload": (
            one(ActionType.SCALE_UP, 0.85, target_value=0.6),
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
        # Return to baseline (loop/baseline.py, planner.return_to_baseline): raised by the
        # daemon when a knob it moved may go back. The size down to what the load needs at
        # saturation 0.75 (never below the size before the fault), the throttle lifted
        # (back to the value before the fault).
        "excess_capacity": (one(ActionType.SCALE_DOWN, target_value=0.75),),
        "throttle_unneeded": (one(ActionType.THROTTLE_REQUESTS, lift=True),),
    }


class ReturnToBaselineConfig(_Model):
    enabled: bool = Field(
        True,
        description="Scale back down and lift a throttle the daemon set, once the cause has"
        " cleared and stayed clear (the excess_capacity and throttle_unneeded causes).",
    )
    window_s: float = Field(
        300.0,
        gt=0,
        description="A target with no violation for this long may return (HPA's scale-down"
        " stabilisation); each return reversed by a later action on the target doubles it.",
    )
    max_window_s: float = Field(
        3600.0, gt=0, description="The longest the doubled window grows (its back-off cap)."
    )
    target_value: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Hysteresis: a return only when the saturation it projects after the"
        " change is at most this (overload fires over 0.9; its candidate scales up to 0.6).",
    )
    load_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="A knob moved to fix overload returns only once the offered load is"
        " below this fraction of the load when it was moved (the cause cleared, not a ramp"
        " still rising).",
    )
    reversal_s: float = Field(
        1800.0,
        gt=0,
        description="A return followed by another action on its target within this long was"
        " premature: it counts toward the doubled window.",
    )

    @model_validator(mode="after")
    def _windows(self) -> ReturnToBaselineConfig:
        if self.max_window_s < self.window_s:
            raise ValueError("max_window_s is below window_s")
        return self


class PlannerConfig(_Model):
    actions: dict[ActionName, ActionSpec] = Field(
        default_factory=lambda: dict(DEFAULT_ACTIONS),
        description="Action name -> its properties: the nine built-ins (Charter calls), and"
        " user-defined actions, each with an actuator (docs/remediate-your-service.md).",
    )
    remediations: dict[str, tuple[tuple[CandidateAction, ...], ...]] = Field(
        default_factory=_default_remediations,
        description="Cause (violation kind) -> candidate policies, each a list of actions."
        " Merged with the built-ins per cause: a cause given here replaces that cause's"
        " built-in candidates, the others keep theirs; [] leaves a cause without any.",
    )
    default_remediations: tuple[tuple[CandidateAction, ...], ...] = Field(
        default=(), description="Candidates for a cause with no entry in remediations."
    )
    require_approval: bool = Field(
        True, description="False waives approval for risky actions (not recommended)."
    )
    min_score: float = Field(
        0.0,
        description="A floor on confidence x posterior mean - cost: a candidate below it is"
        " proposed only when its upper bound beats the best credible candidate's mean.",
    )
    prior_strength: float = Field(
        2.0,
        gt=0,
        description="How many outcomes the configured benefit is worth: the prior of each"
        " candidate's posterior is Beta(benefit x this, (1 - benefit) x this), so a wrong"
        " benefit is overturned within a few outcomes.",
    )
    exploration: float = Field(
        0.5,
        ge=0,
        description="Optimism: a candidate scores confidence x (posterior mean + this x the"
        " posterior's sd) - cost (UCB), so one little tried is tried; 0 = its mean only.",
    )
    pool_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="What an outcome on another target (and one older than the outcomes"
        " kept) counts for a target's posterior, against 1 for its own.",
    )
    max_policies: int = Field(5, ge=1, description="How many ranked candidates to keep.")
    max_pending_approvals: int = Field(
        50, ge=1, description="Bound on policies waiting for an operator (oldest dropped)."
    )
    approval_ttl_s: float = Field(
        3600.0,
        gt=0,
        description="How long a proposal waits for an operator's answer, and how long a"
        " rejected one is not proposed again. An approval's own life is guards.approval_ttl_s.",
    )
    return_to_baseline: ReturnToBaselineConfig = ReturnToBaselineConfig()

    @field_validator("actions")
    @classmethod
    def _complete_actions(cls, value: dict[str, ActionSpec]) -> dict[ActionName, ActionSpec]:
        for name, spec in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"{name!r} is not an action name (lower case, digits, _)")
            if is_builtin(name) and (spec.actuator is not None or spec.inverse is not None):
                raise ValueError(
                    f"{name} is a built-in Charter action: it takes no actuator or inverse"
                    " (name your own action differently)"
                )
            if not is_builtin(name) and spec.actuator is None:
                raise ValueError(f"{name}: a user-defined action needs an actuator")
        return {**DEFAULT_ACTIONS, **{action_name(k): v for k, v in value.items()}}

    @field_validator("remediations")
    @classmethod
    def _complete_remediations(
        cls, value: dict[str, tuple[tuple[CandidateAction, ...], ...]]
    ) -> dict[str, tuple[tuple[CandidateAction, ...], ...]]:
        # An empty tuple stays: the cause then has no candidates (not default_remediations).
        return {**_default_remediations(), **value}

    @model_validator(mode="after")
    def _known_actions(self) -> PlannerConfig:
        for name, spec in self.actions.items():
            inverse = spec.inverse
            if inverse is not None and (inverse not in self.actions or is_builtin(inverse)):
                raise ValueError(
                    f"actions.{name}.inverse: {inverse!r} is not a user-defined action here"
                )
        named = [("default_remediations", c) for c in self.default_remediations] + [
            (f"remediations.{cause}", c) for cause, cs in self.remediations.items() for c in cs
        ]
        for where, candidate in named:
            for action in candidate:
                if action.type not in self.actions:
                    raise ValueError(
                        f"{where}: {action.type!r} is neither a built-in action nor defined"
                        " in planner.actions"
                    )
                missing = sorted(set(self._params_used(action.type)) - set(action.parameters))
                if missing:
                    raise ValueError(
                        f"{where}: {action.type} needs parameters {', '.join(missing)}"
                        " (its templates use them)"
                    )
        return self

    def _params_used(self, name: str) -> list[str]:
        """The `{params.X}` names the templates of action `name` (and its inverse) use."""
        spec = self.actions[name]
        templates = [] if spec.actuator is None else spec.actuator.templates()
        inverse = self.actions.get(spec.inverse) if spec.inverse is not None else None
        if inverse is not None and inverse.actuator is not None:
            templates += inverse.actuator.templates()
        used = template.variables(templates)
        return [v.removeprefix("params.") for v in used if v.startswith("params.")]


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
    significance: float = Field(
        0.1,
        ge=0,
        description="A change smaller than this fraction of the threshold (or of the excess"
        " over it, if larger) is noise: neither PARTIAL nor DEGRADATION.",
    )
    trend_window_s: float = Field(
        120.0,
        ge=0,
        description="Readings this recent give the signal's trend before an action: the"
        " outcome is judged against where that trend led, not against the value then.",
    )
    load_query: str | None = Field(
        "offered_load",
        description="A monitor.queries name reading the offered load of a target; signals"
        " in load_normalised are compared at equal load (null: never normalised).",
    )
    load_normalised: tuple[str, ...] = Field(
        ("saturation",),
        description="Signals proportional to the offered load: judged per unit of load, so"
        " a load spike after a scale-up is not read as the scale-up's harm.",
    )
    load_tolerance: float = Field(
        0.2,
        ge=0,
        description="A signal not in load_normalised that got worse while the offered load"
        " rose by more than this fraction is not DEGRADATION: the load, not the action, is"
        " the likely cause (it is INEFFECTIVE).",
    )
    utilisation_query: str | None = Field(
        "saturation",
        description="A monitor.queries name reading a target's load per capacity (null:"
        " none). With it, a queue_signals signal that got worse under a rising load on the"
        " same capacity is judged against what a filling queue does (1/(1 - utilisation)).",
    )
    queue_signals: tuple[str, ...] = Field(
        ("p99_latency_s", "queue_depth"),
        description="Signals that are a queue's wait or length (higher is worse): near"
        " capacity they grow far faster than the load.",
    )
    ineffective_margin_s: float = Field(
        15.0,
        ge=0,
        description="INEFFECTIVE as soon as the signal has not improved this long after"
        " the settle time (not at verify_deadline_s).",
    )


class KnowledgeConfig(_Model):
    path: Path = Path("mape_k_knowledge.sqlite3")
    url: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:port/dbname: the store on PostgreSQL,"
        " shared by replicas (one holds the leader lease and acts; see `ha`). Unset: the"
        " SQLite file at `path`. Needs `pip install 'mape-k[ha]'`.",
    )
    url_file: Path | None = Field(
        None, description="A file holding `url` (keeps the password out of the config)."
    )
    connect_timeout_s: float = Field(
        3.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="PostgreSQL: a connection attempt gives up after this long.",
    )
    statement_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description=(
            "PostgreSQL: a statement, a lock wait, or a transaction left idle (a paused"
            " replica's) gives up after this long."
        ),
    )
    saturation_samples: int = Field(
        30, ge=1, description="Samples at which an insight's confidence is 1."
    )
    recovery_scale_s: float = Field(
        300.0,
        gt=0,
        description="A success's reward as evidence is 1 less half its time to stabilise over"
        " this (capped at half): a quick fix is preferred over a slow one.",
    )
    degradation_weight: float = Field(
        2.0,
        ge=1,
        description="A DEGRADATION counts this many failures in the posterior (its side"
        " effect is worse than doing nothing).",
    )
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

    @model_validator(mode="after")
    def _url(self) -> KnowledgeConfig:
        check_secret_pair(self.url, self.url_file, "url")
        if self.url is not None:
            check_store_url(self.url.get_secret_value(), "knowledge.url")
        return self


def check_store_url(url: str, key: str) -> str:
    """A PostgreSQL URL (ValueError naming `key` otherwise; the URL itself is not echoed:
    it may hold a password)."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{key}: must start with postgresql:// (the store on PostgreSQL)")
    return url


class HAConfig(_Model):
    """Replicas on one PostgreSQL store (knowledge.url): a fenced leader lease."""

    replica_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._:@-]{1,128}$",
        description="This replica's name in the lease and in /stats; unset: hostname:port.",
    )
    lease_ttl_s: float = Field(
        15.0,
        ge=1,
        le=600,
        allow_inf_nan=False,
        description="The leader lease lasts this long unrenewed (renewed every third of it):"
        " a leader that dies is replaced within it plus one interval; a leader that cannot"
        " renew stops acting before another can take over.",
    )
    lease_name: str = Field(
        "mapek",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Replicas contending for the same lease manage the same targets.",
    )


AutonomyLevel = Literal["shadow", "approve", "auto"]
AUTONOMY_LEVELS: tuple[AutonomyLevel, ...] = ("shadow", "approve", "auto")  # lowest first


class AutonomyRule(_Model):
    """One action's (or one cause x action's) level of autonomy, with the bounds promotion
    and demotion keep to."""

    level: AutonomyLevel = Field(
        description="shadow: decided and guarded, recorded as a would-do, nothing called;"
        " approve: waits for an operator; auto: runs."
    )
    min: AutonomyLevel = Field("shadow", description="Demotion goes no lower than this.")
    max: AutonomyLevel | None = Field(
        None, description="Promotion goes no higher than this (default: `level`: none)."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"level": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _bounds(self) -> AutonomyRule:
        rank = AUTONOMY_LEVELS.index
        top = self.max or self.level
        if not rank(self.min) <= rank(self.level) <= rank(top):
            raise ValueError(f"level {self.level} is outside min {self.min} .. max {top}")
        return self


class PromotionConfig(_Model):
    enabled: bool = Field(
        False,
        description="Raise a level (shadow -> approve -> auto, up to its max) once the"
        " evidence passes the thresholds below; every change is a decision record. Only a"
        " key named in `levels` with a `max` above its level is raised: an action at"
        " `default` has no bounds and is never promoted.",
    )
    min_samples: int = Field(
        10,
        ge=1,
        description="Scored would-dos (to leave shadow) or verified outcomes (to leave"
        " approve) needed before a promotion.",
    )
    min_precision: float = Field(
        0.9, ge=0, le=1, description="Shadow precision (would have helped / would-do) needed."
    )
    min_posterior: float = Field(
        0.8, ge=0, le=1, description="Posterior mean of success needed (planner's Beta)."
    )


class AutonomyConfig(_Model):
    """Graded autonomy per action: shadow, approve or auto (docs/autonomy.md)."""

    default: AutonomyLevel | None = Field(
        None,
        description="The level of an action not in `levels`; unset: auto, and approve for"
        " an action that requires_approval (while planner.require_approval). A risky action"
        " is never above approve unless `levels` names it. It has no bounds: promotion never"
        " raises an action at it (name the action in `levels` with a `max`).",
    )
    levels: dict[str, AutonomyRule] = Field(
        default_factory=dict,
        description="Action name, or cause/action (more specific), -> its level"
        " (`scale_up: shadow`, or `{level: shadow, min: shadow, max: auto}`).",
    )
    promotion: PromotionConfig = PromotionConfig()
    demote_on_degradation: bool = Field(
        True,
        description="An attributed DEGRADATION of an action named in `levels` drops its"
        " level by one (not below its min).",
    )
    shadow_track_s: float = Field(
        3600.0,
        gt=0,
        description="A would-do whose violation persists is followed this long at most"
        " (the time it would have saved).",
    )

    @field_validator("levels")
    @classmethod
    def _keys(cls, value: dict[str, AutonomyRule]) -> dict[str, AutonomyRule]:
        for key in value:
            if not re.fullmatch(r"([a-z][a-z0-9_]{0,63}/)?[a-z][a-z0-9_]{0,63}", key):
                raise ValueError(f"{key!r} is not an action or cause/action name")
        return value


class OrchestratorConfig(_Model):
    interval_s: float = Field(30.0, gt=0, le=86_400)
    trigger_debounce_s: float = Field(1.0, ge=0, le=3600)
    watch_interval_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Between iterations, read the rule queries this often and start an"
        " iteration at once when one shows a violation the last iteration did not see (a"
        " step in the load is acted on within this, not within interval_s). 0, or not less"
        " than interval_s: no watch.",
    )
    iteration_timeout_s: float = Field(60.0, gt=0, le=3600)
    shutdown_timeout_s: float = Field(10.0, gt=0, le=600)


MAX_FREEZE_S = 365 * 86_400.0  # a timed operator freeze of more than a year is a mistake
POLICY_ID_PATTERN = r"[A-Za-z0-9._:-]{1,128}"  # what the control API and console take


class ConsoleConfig(_Model):
    """The operator console at /ui (mape_k/console): pages, live decisions, control forms."""

    enabled: bool = Field(True, description="Serve the console at /ui.")
    session_ttl_s: float = Field(
        8 * 3600.0,
        gt=0,
        le=7 * 86_400,
        allow_inf_nan=False,
        description="A console login lasts this long (its HttpOnly, SameSite=Strict cookie"
        " expires with it). Sessions live in memory: a restart logs everyone out.",
    )
    max_sessions: int = Field(
        100, ge=1, le=10_000, description="Console logins kept at most (the oldest goes first)."
    )
    max_streams: int = Field(
        20,
        ge=1,
        le=1000,
        description="Live decision streams (/ui/events) open at once; one more gets 503.",
    )
    secure_cookie: bool | None = Field(
        None,
        description="Mark the session cookie Secure. Unset: when the request came over HTTPS"
        " (directly, or X-Forwarded-Proto from a proxy on loopback).",
    )


class ServerConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)
    webhook_token: SecretStr | None = None
    webhook_token_file: Path | None = None
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    viewer_token: SecretStr | None = Field(
        None,
        description="When set, the console's read-only pages need a login with this token (or"
        " the admin token). Unset: they are open like /stats.",
    )
    viewer_token_file: Path | None = None
    console: ConsoleConfig = ConsoleConfig()
    allow_open_webhook: bool = Field(
        False,
        description="Start with no webhook token on a non-loopback host (anyone who can"
        " reach the port can then post alerts). Off: such a start is a config error.",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024)
    inbox_max_alerts: int = Field(10_000, ge=1)
    alert_ttl_s: float = Field(
        46_800.0,
        gt=0,
        description="A firing alert not re-delivered for this long is dropped (its resolve was"
        " lost), and a resolve is remembered this long (a firing delivery of the resolved"
        " span is ignored). Keep it above Alertmanager's repeat_interval (12h shipped).",
    )
    max_connections: int = Field(
        512,
        ge=8,  # connections.MIN_CONNECTIONS
        description="Open HTTP connections at most. At the cap a new connection replaces the"
        " longest-waiting idle or stalled one, or gets 503 + Retry-After when all are busy."
        " Lowered at start to fit the file limit (RLIMIT_NOFILE).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="A request's line and headers must arrive within this long of the"
        " connection opening (or of the request's first byte); then the connection is closed.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="A request body must arrive within this long of the handler starting to"
        " read it; otherwise 408 and the connection is closed.",
    )
    keepalive_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="An idle keep-alive connection is closed after this long without a new"
        " request.",
    )

    @model_validator(mode="after")
    def _secrets(self) -> ServerConfig:
        check_secret_pair(self.webhook_token, self.webhook_token_file, "webhook_token")
        check_secret_pair(self.admin_token, self.admin_token_file, "admin_token")
        check_secret_pair(self.viewer_token, self.viewer_token_file, "viewer_token")
        no_token = self.webhook_token is None and self.webhook_token_file is None
        if no_token and self.enabled and not is_loopback(self.host) and not self.allow_open_webhook:
            raise ValueError(
                f"no webhook_token or webhook_token_file, and host {self.host} is not"
                " loopback: anyone reaching the port could post alerts; set a token, or"
                " allow_open_webhook: true"
            )
        return self


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


class NeedsHumanAlertConfig(_Model):
    """The built-in `MapekNeedsHuman` alert (Alertmanager API v2) while a target is held."""

    enabled: bool | None = Field(
        None,
        description="Post `MapekNeedsHuman` to Alertmanager while a target is held for a"
        " human, resolved when the hold clears. null: on when an Alertmanager URL is known"
        " (url, else the first alertmanager actuator's in planner.actions); false: off.",
    )
    url: str | None = Field(
        None, description="Alertmanager's base URL (null: an alertmanager actuator's)."
    )
    resend_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Re-sent this often while the hold lasts (at most once an iteration),"
        " with endsAt 4 periods ahead: Alertmanager forgets an alert at its endsAt.",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Bound of one delivery, retry included; a failed one is logged and"
        " retried at the next iteration.",
    )
    severity: Severity = Severity.CRITICAL

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return None if value is None else value.rstrip("/")


class TargetBreakerConfig(_Model):
    enabled: bool = True
    failures: int = Field(3, ge=1, description="Remediations that did not fix the target...")
    window_s: float = Field(3600.0, gt=0, description="...within this window.")
    hold_s: float | None = Field(
        None,
        gt=0,
        description="Then no action on it for at most this long (null: until an operator"
        " clears it, DELETE /api/v1/holds/{target}, or it stays quiet for clear_after_s).",
    )
    clear_after_s: float = Field(
        900.0,
        gt=0,
        description="A held target with no violation for this long is released: the cause"
        " went away.",
    )
    escalate: str | None = Field(
        None,
        description="A user-defined action run once when a target is held for a human"
        " (an alertmanager `alert` action pages someone); not judged by the guards.",
    )
    alert: NeedsHumanAlertConfig = NeedsHumanAlertConfig()


class PanicConfig(_Model):
    enabled: bool = True
    on_degradation: bool = Field(True, description="Revert when verification says DEGRADATION.")
    query: str | None = Field(None, description="A monitor.queries name whose value means panic.")
    component: str = "charter"
    comparator: Comparator = Comparator.GT
    threshold: float = 0.0
    lookback_s: float = Field(900.0, gt=0, description="Executions this recent are reverted.")
    initial_freeze_s: float = Field(
        300.0,
        gt=0,
        description="The first panic freezes this long; each panic within freeze_s of the"
        " last doubles it, up to freeze_s.",
    )
    freeze_s: float | None = Field(
        3600.0,
        gt=0,
        description="The longest panic freeze (null: until an operator lifts it).",
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


MAX_CHANGE_WINDOW_S = 7 * 86_400.0  # a longer window after a change is a typo


class ChangesConfig(_Model):
    """Recorded deploys and config changes (POST /api/v1/changes, loop/changes.py)."""

    window_s: float = Field(
        1800.0,
        gt=0,
        le=MAX_CHANGE_WINDOW_S,
        description="How long after a change it counts as recent (a change may set its own).",
    )
    max_kept: int = Field(200, ge=1, le=10_000, description="Changes kept (the newest).")
    rollback_causes: tuple[str, ...] = Field(
        ("policy_regression",),
        description="Causes whose remedy, after a recent change on the target, is rolling"
        " that change back first (its rollback action, when it names one).",
    )
    max_age_s: float = Field(
        86_400.0, gt=0, description="A change posted with an older `at` is refused."
    )
    clock_skew_s: float = Field(
        60.0, ge=0, le=3600, description="How far in the future a posted `at` may be."
    )

    @field_validator("rollback_causes")
    @classmethod
    def _cause_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"{name!r} is not a cause name (lower case, digits, _)")
        return value


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Model):
    @model_validator(mode="after")
    def _escalation_is_defined(self) -> Settings:
        name = self.guards.target_breaker.escalate
        if name is not None and (name not in self.planner.actions or is_builtin(name)):
            raise ValueError(
                f"guards.target_breaker.escalate: {name!r} is not a user-defined action"
                " in planner.actions"
            )
        return self

    @model_validator(mode="after")
    def _needs_human_alert_has_a_url(self) -> Settings:
        if self.guards.target_breaker.alert.enabled and needs_human_alert_url(self) is None:
            raise ValueError(
                "guards.target_breaker.alert.enabled: no Alertmanager URL (set"
                " guards.target_breaker.alert.url, or define an alertmanager actuator)"
            )
        return self

    @model_validator(mode="after")
    def _autonomy_actions_exist(self) -> Settings:
        for key in self.autonomy.levels:
            action = key.rsplit("/", 1)[-1]
            if action not in self.planner.actions:
                raise ValueError(f"autonomy.levels.{key}: no action {action!r} in planner.actions")
        return self

    prometheus: PrometheusConfig = PrometheusConfig()
    charter: CharterConfig = CharterConfig()
    monitor: MonitorConfig = MonitorConfig()
    analyzer: AnalyzerConfig = AnalyzerConfig()
    planner: PlannerConfig = PlannerConfig()
    executor: ExecutorConfig = ExecutorConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    ha: HAConfig = HAConfig()
    autonomy: AutonomyConfig = AutonomyConfig()
    orchestrator: OrchestratorConfig = OrchestratorConfig()
    server: ServerConfig = ServerConfig()
    guards: GuardsConfig = GuardsConfig()
    logging: LoggingConfig = LoggingConfig()
    changes: ChangesConfig = ChangesConfig()
    maintenance: tuple[MaintenanceWindow, ...] = Field(
        (), description="Recurring windows (Alertmanager time intervals) holding actions."
    )

    @field_validator("maintenance")
    @classmethod
    def _unique_windows(cls, value: tuple[MaintenanceWindow, ...]) -> tuple[MaintenanceWindow, ...]:
        check_names(value)
        return value


def needs_human_alert_url(settings: Settings) -> str | None:
    """Where `MapekNeedsHuman` goes: `guards.target_breaker.alert.url`, else the URL of the
    first alertmanager actuator in planner.actions; None when off or no URL is known."""
    alert = settings.guards.target_breaker.alert
    if alert.enabled is False:
        return None
    if alert.url is not None:
        return alert.url
    for spec in settings.planner.actions.values():
        if isinstance(spec.actuator, AlertmanagerActuator):
            return spec.actuator.url
    return None


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


# Bounds of a config file: a real one is a few KiB, a few hundred values, a few levels deep.
# Past them it is a mistake or an attack (a YAML "billion laughs" of nested aliases expands
# exponentially, 800 bytes to gigabytes); refused before anything walks the tree.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 32
# libyaml's safe loader where PyYAML has it: fast, and it stops at 1,000 levels of nesting
# at once, where the pure-Python one recurses until RecursionError (seconds).
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(raw)} bytes, more than a config file can be (1 MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset"
            f" {exc.start}); save the file as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise ConfigError(
            f"{path}{where}: not valid YAML" + (f" ({problem})" if problem else "")
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    _expanded_size(data, path, depth=0, memo={})
    return data


def _expanded_size(node: Any, path: Path, *, depth: int, memo: dict[int, int]) -> int:
    """How many values `node` holds once aliases are expanded (each shared node counted
    every time it is referenced, but walked once); ConfigError past the bounds."""
    if not isinstance(node, dict | list):
        return 1
    if depth >= MAX_CONFIG_DEPTH:
        raise ConfigError(f"{path}: nested more than {MAX_CONFIG_DEPTH} levels deep")
    if id(node) in memo:
        size = memo[id(node)]
    else:
        size = 1
        for child in node.values() if isinstance(node, dict) else node:
            size += _expanded_size(child, path, depth=depth + 1, memo=memo)
            if size > MAX_CONFIG_VALUES:
                break
        memo[id(node)] = size
    if size > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{path}: expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases"
            " referencing aliases?); a config file is far smaller"
        )
    return size


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


# What Kubernetes injects into every pod for a Service named `mapek` (service links, on
# unless the pod sets `enableServiceLinks: false`): Docker-link variables in our prefix,
# never settings. Matched by name and value, so a typo or a hand-set MAPEK_PORT=9000 is
# still an error.
_SERVICE_LINK = re.compile(
    r"^MAPEK_(?:"
    r"(?P<host>SERVICE_HOST)"
    r"|(?P<port>SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT_\d+_(?:TCP|UDP|SCTP)_PORT)"
    r"|(?P<addr>PORT_\d+_(?:TCP|UDP|SCTP)_ADDR)"
    r"|(?P<proto>PORT_\d+_(?:TCP|UDP|SCTP)_PROTO)"
    r"|(?P<url>PORT(?:_\d+_(?:TCP|UDP|SCTP))?)"
    r")$"
)
_LINK_URL = re.compile(r"^(?:tcp|udp|sctp)://\[?(?P<ip>[0-9A-Fa-f:.]+?)\]?:(?P<port>\d+)$")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_port(value: str) -> bool:
    return value.isdigit() and 0 < int(value) <= 65535


def is_service_link(name: str, value: str) -> bool:
    """True for a variable Kubernetes injects for a Service named `mapek` (not a setting)."""
    match = _SERVICE_LINK.match(name)
    if match is None:
        return False
    kind = match.lastgroup
    if kind in {"host", "addr"}:
        return _is_ip(value)
    if kind == "port":
        return _is_port(value)
    if kind == "proto":
        return value in {"tcp", "udp", "sctp"}
    url = _LINK_URL.match(value)
    return url is not None and _is_ip(url["ip"]) and _is_port(url["port"])


def service_links(env: Mapping[str, str]) -> list[str]:
    """The Kubernetes service-link variables in `env`, which `load_settings` ignores."""
    return sorted(name for name, value in env.items() if is_service_link(name, value))


def _read_env(env: Mapping[str, str]) -> tuple[dict[str, Any], Sources]:
    tree: dict[str, Any] = {}
    sources: Sources = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == "MAPEK_CONFIG":
            continue
        if is_service_link(name, raw):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        value = _env_value(raw)
        _set_path(tree, path, value)
        sources.update(dict.fromkeys(_leaves({".".join(path): value}), f"env:{name}"))
    return tree, sources


# "guards.x.y: ..." at the start of a message from a check across sections (Settings').
_NAMED_FIELD = re.compile(r"([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_/-]+)+): ")


def _describe(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _origin(path: str, sources: Sources) -> str:
    """The source that set `path` or its nearest ancestor, else those of its descendants."""
    probe = path
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    below = dict.fromkeys(s for k, s in sources.items() if k.startswith(f"{path}."))
    return ", ".join(below) if below else "defaults"


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
        sources.update(dict.fromkeys(_leaves({dotted: value}), f"cli:{dotted}"))
    tree = _merge(tree, cli_tree)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in first["loc"])
        message = _describe(first)
        named = _NAMED_FIELD.match(message) if not path else None
        if named is not None:  # a check across sections names its field: that is the path
            path, message = named.group(1), message[named.end() :]
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        where = _origin(path, sources)
        raise ConfigError(f"{path or '<root>'}: {message} (from {where}){extra}") from exc
    return settings, sources


# --- reload ---------------------------------------------------------------------------

# What a SIGHUP cannot change: values built into long-lived objects at start. Everything
# else applies at the reload (docs/operations.md lists both; a test keeps it in step).
RESTART_REQUIRED: tuple[str, ...] = (
    "prometheus",  # the HTTP client and its connection pool
    "charter",  # the Charter client (or the mock committee)
    "server",  # the listening socket, the tokens, the alert inbox's bounds
    "knowledge.path",  # the open store
    "knowledge.url",
    "knowledge.url_file",
    "knowledge.connect_timeout_s",
    "knowledge.statement_timeout_s",
    "ha",  # the lease this replica holds or contends for
    "monitor.alert_component_label",  # the alert inbox
)

_M = TypeVar("_M", bound=BaseModel)


def _at(model: BaseModel, path: str) -> Any:
    value: Any = model
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _replaced(model: _M, path: list[str], value: Any) -> _M:
    head, *rest = path
    child = value if not rest else _replaced(getattr(model, head), rest, value)
    return model.model_copy(update={head: child})


def _changed_leaves(path: str, before: Any, after: Any) -> list[str]:
    if not isinstance(before, BaseModel) or not isinstance(after, BaseModel):
        return [path]
    old, new = _leaves(before.model_dump(), f"{path}."), _leaves(after.model_dump(), f"{path}.")
    return [key for key in dict.fromkeys([*old, *new]) if old.get(key) != new.get(key)]


def reload_plan(running: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """What a reload applies: `new`, but every RESTART_REQUIRED value kept as it runs;
    and the dotted paths of those that differ (they wait for a restart)."""
    effective = new
    waiting: list[str] = []
    for path in RESTART_REQUIRED:
        before, after = _at(running, path), _at(new, path)
        if before != after:
            waiting += _changed_leaves(path, before, after)
            effective = _replaced(effective, path.split("."), before)
    return effective, waiting


_SECRET_HEADER = re.compile(r"\.headers\.[^.]*(auth|token|key|secret|cookie)", re.IGNORECASE)


def _secret_path(path: str) -> bool:
    """A token, or an http action's header that carries a credential (inline)."""
    return path.endswith("token") or _SECRET_HEADER.search(path) is not None


def effective_config(settings: Settings, sources: Sources) -> dict[str, dict[str, Any]]:
    """Every leaf of the effective config with its value (secrets masked) and source."""
    dumped = settings.model_dump(mode="json")
    out: dict[str, dict[str, Any]] = {}
    for path, value in _leaves(dumped).items():
        masked = "**********" if value is not None and _secret_path(path) else value
        out[path] = {"value": masked, "source": _origin(path, sources)}
    return out


def candidate_text(candidate: tuple[CandidateAction, ...]) -> str:
    """`scale_up{"delta": 2} [0.85] + throttle_requests{...}`: actions, parameters, benefit."""
    parts = []
    for action in candidate:
        params = json.dumps(action.parameters) if action.parameters else ""
        benefit = f" [{action.benefit:g}]" if action.benefit is not None else ""
        parts.append(f"{action.type}{params}{benefit}")
    return " + ".join(parts)


def _candidates_text(candidates: tuple[tuple[CandidateAction, ...], ...]) -> str:
    shown = [candidate_text(candidate) for candidate in candidates if candidate]
    return "; ".join(shown) if shown else "none"


BUILT_IN = "built-in"


def remediation_table(settings: Settings, sources: Sources) -> list[tuple[str, str, str]]:
    """(cause, its candidates in order, where they come from) for the effective planner.

    Every cause in `planner.remediations` (the built-ins merged with the configured ones),
    then each `monitor.rules` cause without an entry, then any other cause (an alert's),
    both of which get `planner.default_remediations`.
    """
    planner = settings.planner
    rows = [
        (
            cause,
            _candidates_text(candidates),
            sources.get(f"planner.remediations.{cause}", BUILT_IN),
        )
        for cause, candidates in planner.remediations.items()
    ]
    fallback = _candidates_text(planner.default_remediations)
    origin = _origin("planner.default_remediations", sources)
    fallback_source = (
        f"planner.default_remediations, {BUILT_IN if origin == 'defaults' else origin}"
    )
    ruled = dict.fromkeys(
        r.name for r in settings.monitor.rules if r.name not in planner.remediations
    )
    rows += [(cause, fallback, fallback_source) for cause in ruled]
    rows.append(("(any other cause)", fallback, fallback_source))
    return rows


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
        if field.is_required():
            default = "(required)"
        else:
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
        kind = "exec \\| http \\| alertmanager \\| None" if name == "actuator" else None
        rows.append(
            f"| `{path}` | `{kind or _type_name(annotation)}` | `{shown}` | `{env}` |"
            f" {description} |"
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
        "The variables Kubernetes injects for a Service named `mapek` (`MAPEK_SERVICE_HOST`,",
        "`MAPEK_SERVICE_PORT[_<NAME>]`, `MAPEK_PORT`, `MAPEK_PORT_<port>_<TCP|UDP|SCTP>` and",
        "its `_ADDR`, `_PORT`, `_PROTO`, with the values Kubernetes gives them) are no settings:",
        "they are ignored, with one warning on stderr naming them.",
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
        "## Prediction (`monitor.rules.N.predict`)",
        "",
        "Off unless a rule has a `predict` block (`predict: {}` takes these defaults).",
        "",
        "| key | type | default | environment | meaning |",
        "|---|---|---|---|---|",
        *_reference_rows(PredictConfig, "monitor.rules.N.predict."),
        "",
        "## Built-in remediations (`planner.remediations`)",
        "",
        "A cause given in `planner.remediations` (file, environment or `--set`) replaces that",
        "cause's built-in candidates below; every other cause keeps its built-ins, and an",
        "empty list (`overload: []`) leaves a cause with no candidates at all. A cause with",
        "no entry gets `planner.default_remediations`. `mape-k check-config FILE` prints the",
        "effective table, each cause marked built-in or with where it was set.",
        "",
        "| cause | candidates (in order; benefit override in brackets) |",
        "|---|---|",
    ]
    for cause, candidates in defaults.planner.remediations.items():
        shown = "; ".join(f"`{candidate_text(candidate)}`" for candidate in candidates)
        lines.append(f"| `{cause}` | {shown} |")
    lines += [
        "",
        "## Action properties (`planner.actions.<name>`)",
        "",
        "A name that is not one of the nine built-ins is a user-defined action and needs an",
        "`actuator` (docs/remediate-your-service.md). Its templates are checked at load.",
        "",
        "| key | type | default | environment | meaning |",
        "|---|---|---|---|---|",
        *_reference_rows(ActionSpec, "planner.actions.NAME."),
        "",
    ]
    for model in (ExecActuator, HttpActuator, AlertmanagerActuator):
        kind = model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        lines += [
            f"### `actuator.type: {kind}`",
            "",
            "| key | type | default | environment | meaning |",
            "|---|---|---|---|---|",
            *_reference_rows(model, "planner.actions.NAME.actuator."),
            "",
        ]
    lines += [
        "## Actions (`planner.actions`)",
        "",
        "| action | cost | benefit | settle_s | requires approval |",
        "|---|---|---|---|---|",
        *[
            f"| `{a}` | {s.cost:g} | {s.benefit:g} | {s.settle_s:g} | {s.requires_approval} |"
            for a, s in defaults.planner.actions.items()
        ],
        "",
    ]
    return "\n".join(lines)
