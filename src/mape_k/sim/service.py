"""The Charter simulator service: the Charter API, /metrics, /sim/* and /health over aiohttp.

Serves one `Committee` (sim/committee.py), advanced to `clock()` on every request and
scrape. The API is documented in src/mape_k/openapi/charter-api.yaml, served at
GET /openapi.json (and /openapi.yaml) without a token. No signal handling here:
`serve` runs until its `stop` event is set (the CLI turns signals into that).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from typing import Any, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mape_k import openapi
from mape_k.causes import FAULT_KINDS
from mape_k.errors import CharterNotFound, CharterRequestError
from mape_k.integrations.charter.base import ActionResult
from mape_k.integrations.charter.http import EPOCH_HEADER
from mape_k.sim.committee import (
    ERROR_REASONS,
    LATENCY_BUCKETS,
    Committee,
    InvalidArgument,
)

log = structlog.get_logger(__name__)

API = "/api/v1"
M = TypeVar("M", bound=BaseModel)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


CHAOS_LOG_SIZE = 1000


class SimState:
    """What the handlers share: the model, the clock, the token and the chaos switch."""

    def __init__(
        self, committee: Committee, *, clock: Callable[[], float], token: str | None
    ) -> None:
        self.committee = committee
        self.clock = clock
        self.token = token
        self.mutations_fail_with: int | None = None
        self.chaos_operations: frozenset[str] | None = None  # None: every mutating operation
        # Mutating calls chaos refused (they never reach the committee's action log).
        self.rejected: deque[dict[str, Any]] = deque(maxlen=CHAOS_LOG_SIZE)
        # Fencing: the newest leader epoch a mutating call carried (X-Mapek-Epoch); a call
        # with an older one comes from a replica that lost its lease, and is refused.
        self.epoch = 0

    def now(self) -> float:
        now = self.clock()
        self.committee.advance(now)
        return now


SIM_STATE = web.AppKey("sim_state", SimState)
REGISTRY = web.AppKey("registry", CollectorRegistry)


# --- request bodies -----------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ScaleBody(_Body):
    size: int


class RestartBody(_Body):
    scope: str = "all"  # or "unhealthy"; the committee checks the value


class ThrottleBody(_Body):
    limit_ops_per_sec: float | None


class ActiveBody(_Body):
    active: bool


class ConfigBody(_Body):
    settings: dict[str, Any] = Field(min_length=1)


class FaultBody(_Body):
    kind: str
    magnitude: float
    duration_s: float


class ChaosBody(_Body):
    mutations_fail_with: int | None = Field(ge=400, le=599)
    operations: list[str] | None = None  # only these operations fail; None: all of them


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise _BadRequest(f"body is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = "unknown field" if first["type"] == "extra_forbidden" else str(first["msg"])
        raise _BadRequest(f"{field}: {message}" if field else message, field=field) from exc


class _BadRequest(Exception):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(message)


# --- middlewares ----------------------------------------------------------------------------

# The mutating routes' names (build_app names them by their Charter operation).
MUTATING_OPERATIONS = frozenset(
    {
        "apply_policy",
        "rollback_policy",
        "scale_committee",
        "restart_committee",
        "rebalance_load",
        "set_throttle",
        "set_validation_bypass",
        "set_emergency_override",
        "update_configuration",
    }
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _error(400, exc.message, exc.field)
    except InvalidArgument as exc:
        return _error(400, exc.message, exc.field)
    except CharterNotFound as exc:
        return _error(404, exc.message)
    except CharterRequestError as exc:
        return _error(exc.status or 400, exc.message)
    except web.HTTPException as exc:  # unknown route, wrong method, body too large
        if exc.status < 400:
            raise
        return _error(exc.status, f"{exc.reason}: {request.method} {request.path}")


@web.middleware
async def _auth_and_chaos(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(f"{API}/"):
        return await handler(request)
    state = request.app[SIM_STATE]
    if state.token is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {state.token}".encode()):
            return web.json_response(
                {"error": "missing or wrong bearer token", "field": None},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    if (stale := _stale_epoch(request, state)) is not None:
        return stale
    if (
        state.mutations_fail_with is not None
        and request.method in _MUTATING
        and not request.path.endswith("/validate")
    ):
        operation = request.match_info.route.name or request.path
        if state.chaos_operations is None or operation in state.chaos_operations:
            state.rejected.append(
                {
                    "time": state.now(),
                    "operation": operation,
                    "idempotency_key": _key(request),
                    "status": state.mutations_fail_with,
                }
            )
            return _error(state.mutations_fail_with, "injected failure (POST /sim/chaos)")
    return await handler(request)


def _stale_epoch(request: web.Request, state: SimState) -> web.Response | None:
    """Fencing: any call raises the newest epoch seen; a mutating call with an older one is
    refused (409). A read with an old epoch is answered: reading changes nothing."""
    given = request.headers.get(EPOCH_HEADER)
    if given is None:
        return None
    try:
        epoch = int(given)
    except ValueError:
        return _json_error(422, f"{EPOCH_HEADER} must be an integer", EPOCH_HEADER)
    if epoch < state.epoch and request.method in _MUTATING:
        state.rejected.append(
            {
                "time": state.now(),
                "operation": request.match_info.route.name or request.path,
                "idempotency_key": _key(request),
                "status": 409,
                "epoch": epoch,
            }
        )
        return _json_error(
            409, f"stale leader epoch {epoch}: epoch {state.epoch} has acted since", EPOCH_HEADER
        )
    state.epoch = max(state.epoch, epoch)
    return None


def _json_error(status: int, error: str, field: str) -> web.Response:
    return web.json_response({"error": error, "field": field}, status=status)


# --- Charter API ----------------------------------------------------------------------------


def _state(request: web.Request) -> SimState:
    return request.app[SIM_STATE]


def _key(request: web.Request) -> str:
    return request.headers.get("Idempotency-Key", "")


def _result(result: ActionResult) -> web.Response:
    return web.json_response(asdict(result))


async def ping(request: web.Request) -> web.Response:
    _state(request).now()
    return web.json_response({"status": "ok"})


async def get_policies(request: web.Request) -> web.Response:
    state = _state(request)
    state.now()
    return web.json_response({"policies": [asdict(p) for p in state.committee.policies()]})


async def validate_policy(request: web.Request) -> web.Response:
    state = _state(request)
    state.now()
    validation = state.committee.validate_policy(request.match_info["policy_id"])
    return web.json_response(asdict(validation))


async def apply_policy(request: web.Request) -> web.Response:
    state = _state(request)
    policy_id = request.match_info["policy_id"]
    return _result(state.committee.apply_policy(policy_id, key=_key(request), now=state.now()))


async def rollback_policy(request: web.Request) -> web.Response:
    state = _state(request)
    policy_id = request.match_info["policy_id"]
    return _result(state.committee.rollback_policy(policy_id, key=_key(request), now=state.now()))


async def find_action(request: web.Request) -> web.Response:
    state = _state(request)
    state.now()
    key = request.match_info["idempotency_key"]
    found = state.committee.find_action(key)
    if found is None:
        raise CharterNotFound(f"no action was made with idempotency key {key!r}")
    return _result(found)


async def get_committee(request: web.Request) -> web.Response:
    state = _state(request)
    state.now()
    return web.json_response(asdict(state.committee.state()))


async def get_violations(request: web.Request) -> web.Response:
    state = _state(request)
    state.now()
    return web.json_response({"violations": [asdict(v) for v in state.committee.violations()]})


async def scale(request: web.Request) -> web.Response:
    body = await _body(request, ScaleBody)
    state = _state(request)
    return _result(state.committee.scale(body.size, key=_key(request), now=state.now()))


async def restart(request: web.Request) -> web.Response:
    body = await _body(request, RestartBody)  # no body: a full restart, as before scopes
    state = _state(request)
    return _result(state.committee.restart(key=_key(request), now=state.now(), scope=body.scope))


async def rebalance(request: web.Request) -> web.Response:
    state = _state(request)
    return _result(state.committee.rebalance(key=_key(request), now=state.now()))


async def set_throttle(request: web.Request) -> web.Response:
    body = await _body(request, ThrottleBody)
    state = _state(request)
    limit = body.limit_ops_per_sec
    return _result(state.committee.set_throttle(limit, key=_key(request), now=state.now()))


async def set_validation_bypass(request: web.Request) -> web.Response:
    body = await _body(request, ActiveBody)
    state = _state(request)
    committee = state.committee
    return _result(committee.set_validation_bypass(body.active, key=_key(request), now=state.now()))


async def set_emergency_override(request: web.Request) -> web.Response:
    body = await _body(request, ActiveBody)
    state = _state(request)
    committee = state.committee
    result = committee.set_emergency_override(body.active, key=_key(request), now=state.now())
    return _result(result)


async def update_configuration(request: web.Request) -> web.Response:
    body = await _body(request, ConfigBody)
    state = _state(request)
    committee = state.committee
    result = committee.update_configuration(body.settings, key=_key(request), now=state.now())
    return _result(result)


# --- /sim, /health, /metrics ----------------------------------------------------------------


async def inject_fault(request: web.Request) -> web.Response:
    body = await _body(request, FaultBody)
    state = _state(request)
    fault_id = state.committee.inject(body.kind, body.magnitude, body.duration_s, state.clock())
    log.info("sim_fault_injected", fault_id=fault_id, kind=body.kind, magnitude=body.magnitude)
    return web.json_response({"id": fault_id}, status=201)


async def clear_faults(request: web.Request) -> web.Response:
    state = _state(request)
    state.now()
    cleared = state.committee.clear_faults()
    log.info("sim_faults_cleared", count=len(cleared))
    return web.json_response({"cleared": cleared})


async def set_chaos(request: web.Request) -> web.Response:
    body = await _body(request, ChaosBody)
    unknown = sorted(set(body.operations or ()) - MUTATING_OPERATIONS)
    if unknown:
        raise _BadRequest(f"operations: unknown operation(s) {unknown}", field="operations")
    state = _state(request)
    state.mutations_fail_with = body.mutations_fail_with
    state.chaos_operations = None if body.operations is None else frozenset(body.operations)
    return web.json_response(
        {"mutations_fail_with": state.mutations_fail_with, "operations": _ops(state)}
    )


def _ops(state: SimState) -> list[str] | None:
    return None if state.chaos_operations is None else sorted(state.chaos_operations)


async def sim_state(request: web.Request) -> web.Response:
    state = _state(request)
    now = state.now()
    committee = state.committee
    current = committee.state()
    return web.json_response(
        {
            "time": now,
            "regime": committee.regime,
            "seed": committee.seed,
            "committee_size": current.size,
            "target_size": current.target_size,
            "healthy_members": current.healthy_members,
            "offered_load": current.offered_load,
            "failure_rate": current.failure_rate,
            "p99_latency_s": current.p99_latency_s,
            "active_policy": current.active_policy,
            "throttle_limit": current.throttle_limit,
            "signals": committee.signals(),
            "active_faults": [f.as_dict() for f in committee.active_faults],
            "actions": [a.as_dict() for a in committee.actions],
            "mutations_fail_with": state.mutations_fail_with,
            "chaos_operations": _ops(state),
            "rejected": list(state.rejected),
            "epoch": state.epoch,
        }
    )


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class CommitteeCollector(Collector):
    """Reads the committee at scrape time: the `westworld_charter_*` families."""

    def __init__(self, state: SimState) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self._state.now()
        committee = self._state.committee
        signals = committee.signals()
        current = committee.state()
        counters = committee.counters
        prefix = "westworld_charter_"

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{prefix}{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{prefix}{name}", doc, value=value)

        yield gauge("up", "1 while the Charter API answers.", 1.0)
        yield gauge("failure_rate", "Fraction of validations failing.", signals["failure_rate"])
        yield gauge(
            "policy_error_rate",
            "Fraction of validations failing because of the active policy.",
            signals["policy_error_rate"],
        )
        yield gauge("p99_latency_seconds", "p99 validation latency.", signals["p99_latency_s"])
        yield gauge("committee_size", "Configured committee members.", signals["committee_size"])
        yield gauge(
            "target_committee_size", "Size a pending scale is heading to.", current.target_size
        )
        yield gauge("healthy_members", "Members serving.", signals["healthy_members"])
        yield gauge(
            "throughput_ops_per_sec",
            "Validations completed successfully per second.",
            signals["throughput_ops_per_sec"],
        )
        yield gauge(
            "offered_load_ops_per_sec", "Validations offered per second.", signals["offered_load"]
        )
        yield gauge("queue_depth", "Validations waiting.", signals["queue_depth"])
        yield gauge(
            "saturation_ratio",
            "Admitted load / capacity of healthy members.",
            signals["saturation"],
        )
        yield gauge(
            "throttle_limit_ops_per_sec",
            "Admission limit (0 = none).",
            current.throttle_limit or 0.0,
        )
        yield gauge(
            "emergency_override_active",
            "1 while the emergency override is on.",
            float(current.emergency_override),
        )
        yield gauge(
            "validation_bypass_active",
            "1 while validation is bypassed.",
            float(current.validation_bypass),
        )
        info = GaugeMetricFamily(
            f"{prefix}active_policy_info", "The active policy (value 1).", labels=["policy"]
        )
        info.add_metric([current.active_policy or ""], 1.0)
        yield info
        faults = GaugeMetricFamily(
            f"{prefix}sim_active_faults", "Injected faults active, by kind.", labels=["kind"]
        )
        for kind in FAULT_KINDS:
            faults.add_metric([kind], sum(1 for f in committee.active_faults if f.kind == kind))
        yield faults
        yield counter("violations_total", "Violations Charter recorded.", counters.violations)
        executions = CounterMetricFamily(
            f"{prefix}policy_executions_total", "Policy validations run.", labels=["result"]
        )
        executions.add_metric(["success"], counters.executions_success)
        executions.add_metric(["failure"], counters.executions_failure)
        yield executions
        errors = CounterMetricFamily(
            f"{prefix}errors_total", "Failed validations by reason.", labels=["reason"]
        )
        for reason in ERROR_REASONS:
            errors.add_metric([reason], counters.errors[reason])
        yield errors
        yield counter("restarts_total", "Committee restarts.", counters.restarts)
        yield counter(
            "scale_operations_total", "Scale operations accepted.", counters.scale_operations
        )
        histogram = HistogramMetricFamily(
            f"{prefix}validation_latency_seconds", "Validation latency."
        )
        buckets = [
            (repr(bound), value)
            for bound, value in zip(LATENCY_BUCKETS, counters.latency_buckets, strict=True)
        ]
        buckets.append(("+Inf", counters.latency_count))
        histogram.add_metric([], buckets=buckets, sum_value=counters.latency_sum)
        yield histogram


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
    )


def build_app(
    *,
    seed: int,
    regime: str,
    token: str | None = None,
    clock: Callable[[], float] = time.time,
    committee: Committee | None = None,
) -> web.Application:
    """The simulator app on a fresh committee (or the one given) and a fresh registry."""
    state = SimState(committee or Committee(seed, regime, start=clock()), clock=clock, token=token)
    app = web.Application(middlewares=[_errors, _auth_and_chaos], client_max_size=1_048_576)
    app[SIM_STATE] = state
    registry = CollectorRegistry()
    registry.register(CommitteeCollector(state))
    app[REGISTRY] = registry
    app.router.add_get(f"{API}/ping", ping)
    app.router.add_get(f"{API}/policies", get_policies)
    app.router.add_post(f"{API}/policies/{{policy_id}}/validate", validate_policy)
    app.router.add_post(f"{API}/policies/{{policy_id}}/apply", apply_policy, name="apply_policy")
    app.router.add_post(
        f"{API}/policies/{{policy_id}}/rollback", rollback_policy, name="rollback_policy"
    )
    app.router.add_get(f"{API}/committee", get_committee)
    app.router.add_get(f"{API}/actions/{{idempotency_key}}", find_action)
    app.router.add_get(f"{API}/violations", get_violations)
    app.router.add_post(f"{API}/committee/scale", scale, name="scale_committee")
    app.router.add_post(f"{API}/committee/restart", restart, name="restart_committee")
    app.router.add_post(f"{API}/committee/rebalance", rebalance, name="rebalance_load")
    app.router.add_put(f"{API}/throttle", set_throttle, name="set_throttle")
    app.router.add_put(
        f"{API}/validation-bypass", set_validation_bypass, name="set_validation_bypass"
    )
    app.router.add_put(
        f"{API}/emergency-override", set_emergency_override, name="set_emergency_override"
    )
    app.router.add_patch(f"{API}/config", update_configuration, name="update_configuration")
    app.router.add_post("/sim/faults", inject_fault)
    app.router.add_delete("/sim/faults", clear_faults)
    app.router.add_get("/sim/state", sim_state)
    app.router.add_post("/sim/chaos", set_chaos)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    openapi.add_routes(app.router, openapi.CHARTER_API)
    return app


async def serve(
    *,
    host: str,
    port: int,
    seed: int,
    regime: str,
    stop: asyncio.Event,
    token: str | None = None,
    clock: Callable[[], float] = time.time,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve the simulator until `stop` is set; `on_ready(port)` gets the bound port."""
    app = build_app(seed=seed, regime=regime, token=token, clock=clock)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = port
        for address in runner.addresses:  # the real port when asked for port 0
            if isinstance(address, tuple):
                bound = int(address[1])
                break
        log.info("charter_sim_started", host=host, port=bound, seed=seed, regime=regime)
        if on_ready is not None:
            on_ready(bound)
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("charter_sim_stopped")
