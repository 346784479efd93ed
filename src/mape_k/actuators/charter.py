"""The nine built-in actions on the actuator interface: calls to the Charter API.

The action-effect model (loop/actions.py) resolved each action to the absolute state it
sets; this sends exactly that, and undoes a step by restoring what the Charter reported
as `previous` for its knob.
"""

from __future__ import annotations

from typing import Any

from mape_k.integrations.charter.base import ActionResult, CharterClient
from mape_k.loop import actions as effects
from mape_k.models import ActionExecution, ActionType, RemediationAction, RemediationPolicy


class CharterActuator:
    def __init__(self, charter: CharterClient) -> None:
        self._charter = charter

    def budget_s(self, action: RemediationAction) -> float | None:  # noqa: ARG002
        return None

    async def find(self, key: str) -> ActionResult | None:
        return await self._charter.find_action(key)

    async def apply(  # noqa: PLR0911 - one case per action type
        self,
        action: RemediationAction,
        policy: RemediationPolicy,  # noqa: ARG002 - the Charter needs only the action
        key: str,
    ) -> ActionResult:
        """Send the absolute state `action` was resolved to, literally: no read, no default."""
        charter = self._charter
        match action.action_type:
            case ActionType.SCALE_UP | ActionType.SCALE_DOWN:
                size = effects.desired(action, "size")
                return await charter.scale_committee(int(size), idempotency_key=key)
            case ActionType.RESTART_SERVICE:
                scope = effects.restart_scope(action)
                return await charter.restart_committee(idempotency_key=key, scope=scope)
            case ActionType.APPLY_POLICY:
                policy_id = effects.desired(action, "policy")
                return await charter.apply_policy(str(policy_id), idempotency_key=key)
            case ActionType.BYPASS_VALIDATION:
                active = effects.desired(action, "bypass")
                return await charter.set_validation_bypass(bool(active), idempotency_key=key)
            case ActionType.THROTTLE_REQUESTS:
                limit = effects.desired(action, "throttle")
                return await charter.set_throttle(
                    None if limit is None else float(limit), idempotency_key=key
                )
            case ActionType.ACTIVATE_EMERGENCY_OVERRIDE:
                active = effects.desired(action, "override")
                return await charter.set_emergency_override(bool(active), idempotency_key=key)
            case ActionType.REBALANCE_LOAD:
                return await charter.rebalance_load(idempotency_key=key)
            case ActionType.UPDATE_CONFIGURATION:
                settings = effects.config_settings(action)
                return await charter.update_configuration(settings, idempotency_key=key)
        raise effects.Unresolvable(f"{action.action_type} is not a Charter action")

    async def undo(self, step: ActionExecution, policy: RemediationPolicy) -> bool:  # noqa: ARG002
        """Restore what `step` changed, to what the Charter reported before it; False when
        the action cannot be undone. An answer that does not say what was there raises."""
        charter = self._charter
        key = f"{step.idempotency_key}:rollback"
        previous: dict[str, Any] = step.result.get("previous", {})
        current: dict[str, Any] = step.result.get("current", {})
        match step.action.action_type:
            case ActionType.SCALE_UP | ActionType.SCALE_DOWN:
                size = effects.restore_value("size", previous)
                await charter.scale_committee(int(size), idempotency_key=key)
            case ActionType.APPLY_POLICY:
                applied = current.get("active_policy") or effects.desired(step.action, "policy")
                await charter.rollback_policy(str(applied), idempotency_key=key)
            case ActionType.BYPASS_VALIDATION:
                active = effects.restore_value("bypass", previous)
                await charter.set_validation_bypass(bool(active), idempotency_key=key)
            case ActionType.THROTTLE_REQUESTS:
                limit = effects.restore_value("throttle", previous)
                await charter.set_throttle(
                    None if limit is None else float(limit), idempotency_key=key
                )
            case ActionType.ACTIVATE_EMERGENCY_OVERRIDE:
                active = effects.restore_value("override", previous)
                await charter.set_emergency_override(bool(active), idempotency_key=key)
            case ActionType.UPDATE_CONFIGURATION:
                await charter.update_configuration(dict(previous["settings"]), idempotency_key=key)
            case _:
                return False
        return True
