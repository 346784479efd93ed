"""The `CharterClient` Protocol and the values it exchanges.

Implemented by `HttpCharterClient` (http.py) and `MockCharterClient` (mock.py); one
contract test suite runs against both. Every mutating call takes an idempotency key:
the same key twice has one effect and returns the first result. Errors are the
CharterError family of mape_k.errors, never transport exceptions. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mape_k.models import RestartScope

# Names of the signals the committee model exports. The shipped config's
# `monitor.queries` use these names, so in mock mode the Monitor reads them straight
# from the simulated committee, and in http mode the same names map to PromQL over the
# simulator's `westworld_charter_*` metrics.
SIGNALS: tuple[str, ...] = (
    "failure_rate",  # fraction of validations failing, 0..1
    "policy_error_rate",  # fraction failing because of the active policy, 0..1
    "p99_latency_s",  # p99 validation latency, seconds
    "queue_depth",  # waiting validations
    "saturation",  # offered load / capacity of healthy members
    "unhealthy_members",  # committee_size - healthy_members
    "committee_size",
    "healthy_members",
    "throughput_ops_per_sec",
    "offered_load",
)


@dataclass(frozen=True, slots=True)
class CommitteeState:
    size: int  # configured members
    healthy_members: int
    target_size: int  # where a pending scale is heading
    offered_load: float  # ops/s
    throughput_ops_per_sec: float
    failure_rate: float
    p99_latency_s: float
    queue_depth: float
    throttle_limit: float | None  # ops/s admitted, None = unthrottled
    emergency_override: bool
    validation_bypass: bool
    active_policy: str | None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CharterPolicy:
    id: str
    version: int
    status: str  # "active" | "inactive"
    known_good: bool
    description: str = ""


@dataclass(frozen=True, slots=True)
class PolicyValidation:
    policy_id: str
    valid: bool
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CharterViolation:
    id: str
    kind: str
    severity: str
    message: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The answer to a mutating call. `previous` holds what an inverse needs."""

    operation: str
    idempotency_key: str
    replayed: bool = False  # True when the key was seen before and nothing changed
    previous: dict[str, Any] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class CharterClient(Protocol):
    async def connect(self) -> None: ...
    async def disconnect(self) -> None: ...
    async def ping(self) -> None:
        """Return when the API answers; raise CharterUnavailable otherwise."""

    async def get_policies(self) -> list[CharterPolicy]: ...
    async def find_action(self, idempotency_key: str) -> ActionResult | None:
        """The result of the mutation made with this idempotency key, or None if the
        Charter never received one (a read: applies nothing)."""

    async def validate_policy(self, policy_id: str) -> PolicyValidation: ...
    async def apply_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult: ...
    async def rollback_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult: ...
    async def get_committee_state(self) -> CommitteeState: ...
    async def get_violations(self) -> list[CharterViolation]: ...
    async def scale_committee(self, size: int, *, idempotency_key: str) -> ActionResult: ...
    async def restart_committee(
        self, *, idempotency_key: str, scope: RestartScope = "all"
    ) -> ActionResult: ...
    async def set_throttle(
        self, limit_ops_per_sec: float | None, *, idempotency_key: str
    ) -> ActionResult: ...
    async def set_validation_bypass(
        self, active: bool, *, idempotency_key: str
    ) -> ActionResult: ...
    async def set_emergency_override(
        self, active: bool, *, idempotency_key: str
    ) -> ActionResult: ...
    async def rebalance_load(self, *, idempotency_key: str) -> ActionResult: ...
    async def update_configuration(
        self, settings: dict[str, Any], *, idempotency_key: str
    ) -> ActionResult: ...
