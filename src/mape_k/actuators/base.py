"""The actuator interface: what the executor asks of whatever carries out an action.

An `Actuator` applies one resolved action under its idempotency key and answers with an
`ActionResult` (what was there before, what is there now, for the journal and the undo),
undoes a completed step (False: it cannot be undone), and says after a crash whether an
interrupted action arrived (`find`; raising when it cannot know).
"""

from __future__ import annotations

from typing import Protocol

from mape_k.integrations.charter.base import ActionResult
from mape_k.models import ActionExecution, RemediationAction, RemediationPolicy


def idempotency_key(policy_id: str, index: int, action: RemediationAction) -> str:
    return f"{policy_id}:{index}:{action.action_type}"


class Actuator(Protocol):
    async def apply(
        self, action: RemediationAction, policy: RemediationPolicy, key: str
    ) -> ActionResult:
        """Carry out `action` (resolved) of `policy` once under `key`."""

    async def undo(self, step: ActionExecution, policy: RemediationPolicy) -> bool:
        """Undo a completed `step`; False when the action cannot be undone."""

    async def find(self, key: str) -> ActionResult | None:
        """What the action made with `key` did, or None if it never arrived; raises when
        that cannot be known."""

    def budget_s(self, action: RemediationAction) -> float | None:
        """How long one apply or undo may take (None: the executor's action_timeout_s)."""
