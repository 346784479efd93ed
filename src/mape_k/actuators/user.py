"""User-defined actions (`planner.actions.<name>` with an actuator) on the actuator interface.

`prepare` is the resolution of a user-defined action, pure and done where the built-ins
are resolved: every template of the action (and of its inverse) is rendered from the
cause, the target, the alert's labels and annotations and the candidate's parameters; a
value that fails its pattern refuses the action with the reason (the data guard blocks
it, the decision record says why); nothing half-rendered is ever sent. `UserActuator`
renders the same templates again from the same values (deterministic) and runs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import httpx

from mape_k.actuators import exec as exec_actuator
from mape_k.actuators import http as http_actuator
from mape_k.actuators import template
from mape_k.actuators.base import idempotency_key
from mape_k.config import ActionSpec, AlertmanagerActuator, ExecActuator, HttpActuator
from mape_k.errors import ActuatorError
from mape_k.integrations import retry
from mape_k.integrations.charter.base import ActionResult
from mape_k.loop.actions import Unresolvable, user_setting
from mape_k.models import (
    ActionExecution,
    RemediationAction,
    RemediationPolicy,
    is_builtin,
)

Rendered = list[str] | http_actuator.HttpRequest | dict[str, Any]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def template_values(
    policy: RemediationPolicy, action: RemediationAction, key: str
) -> dict[str, str]:
    """Every value a template of `action` may use (labels and annotations: untrusted)."""
    cause = policy.cause
    values = {
        "target": policy.target,
        "cause": cause.name,
        "action": str(action.action_type),
        "severity": str(cause.severity),
        "policy_id": policy.id,
        "idempotency_key": key,
    }
    values.update({f"labels.{k}": v for k, v in cause.labels.items()})
    values.update({f"annotations.{k}": v for k, v in cause.annotations.items()})
    values.update({f"params.{k}": _text(v) for k, v in action.parameters.items()})
    return values


def render(spec: ActionSpec, values: Mapping[str, str]) -> Rendered:
    """What `spec`'s actuator sends with `values`; TemplateError when a value may not."""
    actuator = spec.actuator
    patterns = spec.variables
    if isinstance(actuator, ExecActuator):
        return template.render_argv(actuator.argv, values, patterns)
    if isinstance(actuator, HttpActuator):
        return http_actuator.HttpRequest(
            method=actuator.method,
            url=template.render_url(actuator.url, values, patterns),
            headers={
                name: template.render(value, values, patterns)
                for name, value in actuator.headers.items()
            },
            body=template.render_json(actuator.body, values, patterns),
        )
    if isinstance(actuator, AlertmanagerActuator):
        from mape_k.actuators import alertmanager  # noqa: PLC0415 - only when used

        return alertmanager.render(actuator, values, patterns)
    raise Unresolvable("a built-in action has no templates")


def prepare(policy: RemediationPolicy, specs: Mapping[str, ActionSpec]) -> RemediationPolicy:
    """`policy` with its user-defined actions resolved: templates checked, `sets` set to
    the knob they move. Raises Unresolvable naming the action and the refused value."""
    prepared = []
    for index, action in enumerate(policy.actions):
        if is_builtin(action.action_type):
            prepared.append(action)
            continue
        spec = specs.get(action.action_type)
        if spec is None or spec.actuator is None:
            raise Unresolvable(f"{action.action_type} is not a defined action")
        values = template_values(policy, action, idempotency_key(policy.id, index, action))
        try:
            render(spec, values)
            if spec.inverse is not None:
                render(specs[spec.inverse], values)
        except template.TemplateError as exc:
            raise Unresolvable(f"{action.action_type} refused: {exc}") from None
        sets = () if spec.knob is None else (user_setting(spec.knob, spec.moves),)
        prepared.append(replace(action, sets=sets))
    return replace(policy, actions=tuple(prepared))


class UserActuator:
    """Runs user-defined actions by name from the current specs (a reload applies)."""

    def __init__(
        self,
        specs: Callable[[], Mapping[str, ActionSpec]],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: retry.Sleep = asyncio.sleep,
    ) -> None:
        self._specs = specs
        self._transport = transport
        self._sleep = sleep

    def _spec(self, name: str) -> ActionSpec:
        spec = self._specs().get(name)
        if spec is None or spec.actuator is None:
            raise ActuatorError(f"{name} is not a defined action (removed by a reload?)")
        return spec

    def budget_s(self, action: RemediationAction) -> float | None:
        """The longest the action, or its inverse (an undo), may take."""
        spec = self._spec(action.action_type)
        budgets = [self._budget(spec)]
        if spec.inverse is not None:
            budgets.append(self._budget(self._spec(spec.inverse)))
        known = [b for b in budgets if b is not None]
        return max(known) if known else None

    @staticmethod
    def _budget(spec: ActionSpec) -> float | None:
        actuator = spec.actuator
        if isinstance(actuator, ExecActuator):
            return actuator.timeout_s + 2.0  # the kill and the reap after the timeout
        if isinstance(actuator, HttpActuator):
            return http_actuator.budget_s(actuator)
        if isinstance(actuator, AlertmanagerActuator):
            return 3 * actuator.timeout_s + 2 * retry.MAX_BACKOFF_S
        return None

    def reversible(self, name: str) -> bool:
        spec = self._specs().get(name)
        if spec is None:
            return False
        actuator = spec.actuator
        silence = isinstance(actuator, AlertmanagerActuator) and actuator.operation == "silence"
        return spec.inverse is not None or silence

    async def apply(
        self, action: RemediationAction, policy: RemediationPolicy, key: str
    ) -> ActionResult:
        name = action.action_type
        values = template_values(policy, action, key)
        return await self._run(name, self._spec(name), values, key)

    async def _run(
        self, name: str, spec: ActionSpec, values: Mapping[str, str], key: str
    ) -> ActionResult:
        try:
            rendered = render(spec, values)
        except template.TemplateError as exc:  # prepared, so only after a reload
            raise ActuatorError(f"refused: {exc}", operation=name) from None
        actuator = spec.actuator
        if isinstance(actuator, ExecActuator) and isinstance(rendered, list):
            return await exec_actuator.run(actuator, rendered, operation=name, key=key)
        if isinstance(actuator, HttpActuator) and isinstance(rendered, http_actuator.HttpRequest):
            return await http_actuator.call(
                actuator,
                rendered,
                operation=name,
                key=key,
                idempotent=spec.idempotent,
                transport=self._transport,
                sleep=self._sleep,
            )
        if isinstance(actuator, AlertmanagerActuator) and isinstance(rendered, dict):
            from mape_k.actuators import alertmanager  # noqa: PLC0415

            return await alertmanager.apply(
                actuator, rendered, operation=name, key=key, transport=self._transport
            )
        raise ActuatorError("the actuator and its rendering disagree", operation=name)

    async def release(self, step: ActionExecution) -> bool:
        """After verification: expire the silence a completed silence action created
        (True); anything else has nothing to release (False)."""
        spec = self._specs().get(step.action.action_type)
        actuator = spec.actuator if spec is not None else None
        silence_id = step.result.get("current", {}).get("silence_id")
        if not isinstance(actuator, AlertmanagerActuator) or not silence_id:
            return False
        from mape_k.actuators import alertmanager  # noqa: PLC0415

        await alertmanager.expire(
            actuator,
            str(silence_id),
            operation=step.action.action_type,
            transport=self._transport,
        )
        return True

    async def undo(self, step: ActionExecution, policy: RemediationPolicy) -> bool:
        """Run the action's inverse with the same values (its key: `<key>:rollback`); a
        silence is expired."""
        if await self.release(step):
            return True
        spec = self._spec(step.action.action_type)
        if spec.inverse is None:
            return False
        key = f"{step.idempotency_key}:rollback"
        values = template_values(policy, step.action, step.idempotency_key)
        await self._run(spec.inverse, self._spec(spec.inverse), values, key)
        return True

    async def find(self, key: str) -> ActionResult | None:
        raise ActuatorError(f"a user-defined actuator cannot be asked whether the action {key} ran")
