"""What the console's pages read beyond /stats: one decision, the knowledge table, a
target's actions with the signal around each. Read-only; every store error becomes a
message on the page, never a 500.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mape_k.console.charts import ChartMark, chart_window, signal_history
from mape_k.errors import MapekError
from mape_k.models import PolicyExecution, PolicyOutcome

if TYPE_CHECKING:
    from mape_k.app import Components

OUTCOMES_READ = 2000  # the knowledge table's recent outcomes (median, strip)
STRIP = 20  # outcomes per row's strip
ACTIONS_SHOWN = 6  # charts on a target's page


@dataclass(frozen=True, slots=True)
class ActionView:
    """One execution on a target, with what its chart needs."""

    execution: PolicyExecution
    outcome: PolicyOutcome | None
    signal: str | None  # the cause's query name
    promql: str | None
    threshold: float | None
    mark: ChartMark
    start: float
    end: float
    step: float


class ConsoleData:
    """Reads for the console from the running daemon's parts."""

    def __init__(self, parts: Components, *, clock: Callable[[], float]) -> None:
        self._parts = parts
        self.clock = clock

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._parts.orchestrator.listeners.append(listener)

    async def decision(self, record_id: str) -> dict[str, Any] | None:
        return await self._parts.orchestrator.find_record(record_id)

    async def verification(self, record: Mapping[str, Any]) -> PolicyOutcome | None:
        """The verified outcome of the record's execution, once measured."""
        execution = record.get("execution")
        if not isinstance(execution, Mapping) or not isinstance(execution.get("id"), str):
            return None
        return await self._parts.store.outcome(execution["id"])

    async def knowledge_rows(self) -> list[dict[str, Any]]:
        """Per (cause, action): samples, success, posterior, median time to recover and
        the last outcomes (oldest first)."""
        parts = self._parts
        summary = parts.knowledge.summary()
        posteriors: dict[tuple[str, str], Mapping[str, Any]] = {}
        for row in parts.orchestrator.planner.posteriors(parts.knowledge.view()):
            posteriors.setdefault((row.cause, row.actions[0] if row.actions else ""), row.as_dict())
        recent: dict[tuple[str, str], list[PolicyOutcome]] = defaultdict(list)
        for outcome in reversed(await parts.store.recent_outcomes(OUTCOMES_READ)):
            recent[(outcome.cause, str(outcome.action_type))].append(outcome)
        keys = {(p["cause"], p["action_type"]) for p in summary["pairs"]} | set(posteriors)
        pairs = {(p["cause"], p["action_type"]): p for p in summary["pairs"]}
        rows = []
        for key in sorted(keys):
            pair = pairs.get(key, {})
            outcomes = recent.get(key, [])
            ttr = [
                o.time_to_stabilize_s
                for o in outcomes
                if o.outcome.value == "success" and o.time_to_stabilize_s is not None
            ]
            rows.append(
                {
                    "cause": key[0],
                    "action_type": key[1],
                    "samples": pair.get("samples", 0),
                    "success_rate": pair.get("success_rate"),
                    "posterior": posteriors.get(key),
                    "median_ttr_s": statistics.median(ttr) if ttr else None,
                    "ttr_series": [o.time_to_stabilize_s for o in outcomes[-STRIP:]],
                    "strip": [o.outcome.value for o in outcomes[-STRIP:]],
                }
            )
        return rows

    async def targets(self) -> list[str]:
        """Targets with an action on record, newest first."""
        seen: dict[str, None] = {}
        for execution in await self._parts.store.recent_executions(200):
            seen.setdefault(execution.policy.target, None)
        return list(seen)

    async def target_actions(self, target: str) -> list[ActionView]:
        parts = self._parts
        settings = parts.settings
        rules = {rule.name: rule for rule in settings.monitor.rules}
        executions = await parts.store.target_executions(target, ACTIONS_SHOWN)
        since = min((e.started_at for e in executions), default=self.clock())
        outcomes = {
            o.execution_id: o for o in await parts.store.target_outcomes_since(target, since)
        }
        verify_s = settings.executor.verify_deadline_s
        views = []
        for execution in executions:
            rule = rules.get(execution.policy.cause.name)
            outcome = outcomes.get(execution.id)
            acted = execution.finished_at or execution.started_at
            verified = outcome.recorded_at if outcome is not None else None
            window_end = verified if verified is not None else acted + verify_s
            start, end, step = chart_window(acted, verify_s=max(1.0, window_end - acted))
            views.append(
                ActionView(
                    execution=execution,
                    outcome=outcome,
                    signal=rule.query if rule else None,
                    promql=settings.monitor.queries.get(rule.query) if rule else None,
                    threshold=rule.threshold if rule else None,
                    mark=ChartMark(
                        at=acted,
                        label=str(execution.policy.primary_action),
                        outcome=outcome.outcome.value if outcome is not None else None,
                        window=(acted, window_end),
                    ),
                    start=start,
                    end=end,
                    step=step,
                )
            )
        return views

    async def history(self, view: ActionView) -> tuple[list[tuple[float, float]], str | None]:
        prometheus = self._parts.prometheus
        if view.promql is None:
            return [], "no monitor rule names this cause: nothing to chart"
        if prometheus is None:
            return [], "no Prometheus in this mode (mock or none): nothing to chart"
        end = min(view.end, self.clock())  # the chart spans the whole window; data ends now
        if end <= view.start:
            return [], "the window has not begun"
        return await signal_history(
            prometheus, view.promql, start=view.start, end=end, step=view.step
        )


async def safe(read: Awaitable[Any], default: Any) -> tuple[Any, str | None]:
    """(await read, None), or (default, the store's message) when the store cannot answer."""
    try:
        return await read, None
    except MapekError as exc:
        return default, str(exc)
