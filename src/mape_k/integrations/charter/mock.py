"""In-memory Charter: `MockCharterClient` and `MockMetricSource` over one simulated committee.

No network: both read and drive a `mape_k.sim.committee.Committee`, advancing it to the
injected clock before each call, so `--mock` runs the whole loop with no server at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mape_k.errors import CharterError, CharterUnavailable, PrometheusQueryError
from mape_k.integrations.charter.base import (
    ActionResult,
    CharterPolicy,
    CharterViolation,
    CommitteeState,
    PolicyValidation,
)
from mape_k.models import RestartScope, Sample
from mape_k.sim.committee import Committee

DEFAULT_FAULT_MAGNITUDE = 0.8
FAULT_HEAD_START_S = 10.0  # a fault the mock world starts with has been developing this long


class MockCharterClient:
    """The `CharterClient` Protocol over an in-memory committee (same errors as the API)."""

    def __init__(
        self,
        committee: Committee | None = None,
        *,
        clock: Callable[[], float],
        seed: int = 7,
        regime: str = "calm",
        fault: str | None = None,
        fault_magnitude: float = DEFAULT_FAULT_MAGNITUDE,
    ) -> None:
        self._clock = clock
        self.committee = committee or Committee(seed, regime, start=clock())
        self.connected = False
        self._failures: dict[str, list[CharterError]] = {}
        if fault is not None:
            self.committee.inject(fault, fault_magnitude, 0, self.committee.now)

    def fail_next(
        self, operation: str, error: CharterError | None = None, *, times: int = 1
    ) -> None:
        """Make the next `times` calls of `operation` (a method name) raise `error`.

        For tests of callers (rollback, retries); the committee is not touched by them.
        """
        failure = error or CharterUnavailable("injected failure", operation=operation, status=503)
        self._failures.setdefault(operation, []).extend([failure] * times)

    def _now(self, operation: str) -> float:
        pending = self._failures.get(operation)
        if pending:
            raise pending.pop(0)
        now = self._clock()
        self.committee.advance(now)
        return now

    async def connect(self) -> None:
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    async def ping(self) -> None:
        self._now("ping")

    async def find_action(self, idempotency_key: str) -> ActionResult | None:
        self._now("find_action")
        return self.committee.find_action(idempotency_key)

    async def get_policies(self) -> list[CharterPolicy]:
        self._now("get_policies")
        return self.committee.policies()

    async def validate_policy(self, policy_id: str) -> PolicyValidation:
        self._now("validate_policy")
        return self.committee.validate_policy(policy_id)

    async def apply_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult:
        now = self._now("apply_policy")
        return self.committee.apply_policy(policy_id, key=idempotency_key, now=now)

    async def rollback_policy(self, policy_id: str, *, idempotency_key: str) -> ActionResult:
        now = self._now("rollback_policy")
        return self.committee.rollback_policy(policy_id, key=idempotency_key, now=now)

    async def get_committee_state(self) -> CommitteeState:
        self._now("get_committee_state")
        return self.committee.state()

    async def get_violations(self) -> list[CharterViolation]:
        self._now("get_violations")
        return self.committee.violations()

    async def scale_committee(self, size: int, *, idempotency_key: str) -> ActionResult:
        now = self._now("scale_committee")
        return self.committee.scale(size, key=idempotency_key, now=now)

    async def restart_committee(
        self, *, idempotency_key: str, scope: RestartScope = "all"
    ) -> ActionResult:
        now = self._now("restart_committee")
        return self.committee.restart(key=idempotency_key, now=now, scope=scope)

    async def set_throttle(
        self, limit_ops_per_sec: float | None, *, idempotency_key: str
    ) -> ActionResult:
        now = self._now("set_throttle")
        return self.committee.set_throttle(limit_ops_per_sec, key=idempotency_key, now=now)

    async def set_validation_bypass(self, active: bool, *, idempotency_key: str) -> ActionResult:
        now = self._now("set_validation_bypass")
        return self.committee.set_validation_bypass(active, key=idempotency_key, now=now)

    async def set_emergency_override(self, active: bool, *, idempotency_key: str) -> ActionResult:
        now = self._now("set_emergency_override")
        return self.committee.set_emergency_override(active, key=idempotency_key, now=now)

    async def rebalance_load(self, *, idempotency_key: str) -> ActionResult:
        now = self._now("rebalance_load")
        return self.committee.rebalance(key=idempotency_key, now=now)

    async def update_configuration(
        self, settings: dict[str, Any], *, idempotency_key: str
    ) -> ActionResult:
        now = self._now("update_configuration")
        return self.committee.update_configuration(settings, key=idempotency_key, now=now)


class MockMetricSource:
    """The Monitor's MetricSource over the committee: query name -> one `charter` sample.

    The PromQL is ignored: the configured query *name* must be one of base.SIGNALS.
    """

    def __init__(self, committee: Committee, clock: Callable[[], float]) -> None:
        self.committee = committee
        self._clock = clock

    async def read(self, name: str, promql: str, *, timeout_s: float) -> list[Sample]:  # noqa: ARG002
        now = self._clock()
        self.committee.advance(now)
        signals = self.committee.signals()
        if name not in signals:
            raise PrometheusQueryError(
                error_type="bad_data",
                error=f"the mock committee has no signal {name!r} "
                f"(expected one of {', '.join(signals)})",
                query=promql,
            )
        return [Sample(labels={"component": "charter"}, value=signals[name], timestamp=now)]


@dataclass(frozen=True, slots=True)
class MockCharterWorld:
    """A mock client and a metric source sharing one committee (what `--mock` runs on)."""

    committee: Committee
    client: MockCharterClient
    metrics: MockMetricSource

    @classmethod
    def create(
        cls,
        *,
        clock: Callable[[], float],
        seed: int = 7,
        regime: str = "calm",
        fault: str | None = None,
        fault_magnitude: float = DEFAULT_FAULT_MAGNITUDE,
    ) -> MockCharterWorld:
        # A fault given at start began FAULT_HEAD_START_S ago: the first reading sees it.
        start = clock() - (FAULT_HEAD_START_S if fault is not None else 0.0)
        committee = Committee(seed, regime, start=start)
        client = MockCharterClient(
            committee, clock=clock, fault=fault, fault_magnitude=fault_magnitude
        )
        return cls(committee=committee, client=client, metrics=MockMetricSource(committee, clock))
