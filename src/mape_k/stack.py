"""The whole stack as local processes on loopback: Prometheus, Alertmanager, Charter sim, daemon.

Configs are generated from the staging ones (package data: `mape_k/staging/prometheus/`,
`mape_k/staging/alertmanager/`, read with importlib.resources, so an installed wheel has
them too) with short intervals;
each process runs in its own process group with its log in the working directory, and
`Stack.start()` always stops every process it started (errors and Ctrl-C included).
Used by `mape-k demo`, tests/e2e and bench/recovery.py; not by the daemon itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import httpx
import structlog
import yaml

from mape_k.causes import FAULTS, fault_signal
from mape_k.config import DEFAULT_ACTIONS
from mape_k.errors import MapekError
from mape_k.models import ActionType

log = structlog.get_logger(__name__)

INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
COMPONENTS = ("charter", "alertmanager", "prometheus", "mape-k")
BASE_PORTS: dict[str, int] = {
    "prometheus": 9090,
    "alertmanager": 9093,
    "charter": 8000,
    "mape-k": 8001,
    "grafana": 3000,  # reserved (not started), so an offset stack never collides with one
}
# Staging targets name compose services; these are the names the generated configs rewrite.
_STAGING_HOSTS = {"charter": "charter", "mape-k": "mape-k", "alertmanager": "alertmanager"}
_STAGING_PORT_OWNER = {port: name for name, port in BASE_PORTS.items()}

READY_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0
_POLL_S = 0.1

# Settle times: the simulator's effect delay (sim/committee.py: restart_s 3, scale_delay_s 5,
# signals smoothed with tau 1 s) plus the alert pipeline's lag (range window 5 s + `for` 2 s +
# evaluation + group_interval), so verification never reads a lagging alert (docs/demo.md).
STACK_SETTLE_S: dict[ActionType, float] = {
    ActionType.RESTART_SERVICE: 8.0,
    ActionType.SCALE_UP: 14.0,
    ActionType.SCALE_DOWN: 10.0,
    ActionType.APPLY_POLICY: 5.0,
    ActionType.REBALANCE_LOAD: 12.0,
    ActionType.THROTTLE_REQUESTS: 5.0,
    ActionType.UPDATE_CONFIGURATION: 5.0,
    ActionType.BYPASS_VALIDATION: 5.0,
    ActionType.ACTIVATE_EMERGENCY_OVERRIDE: 5.0,
}
# Per fault kind, from the one table in causes.py: the signal it drives over its threshold,
# the cause (the alert rules' `cause` label) it must raise, the simulator operations that
# fit it, and the magnitude that makes it clearly visible (docs/demo.md).
FAULT_SIGNALS: dict[str, tuple[str, float]] = {f.kind: fault_signal(f.kind) for f in FAULTS}
FAULT_CAUSE: dict[str, str] = {f.kind: f.cause for f in FAULTS}
FITTING_OPERATIONS: dict[str, frozenset[str]] = {f.kind: f.fixes for f in FAULTS}
DEFAULT_MAGNITUDE: dict[str, float] = {f.kind: f.magnitude for f in FAULTS}
TIME_SCALE = 60.0  # range windows in the stack: staging's / 60 (5m -> 5s), at least 5 s


# What a caller merges over the daemon's generated config: a mapping, or a function of the
# allocated ports returning one (to name the simulator's port in user-defined actions).
DaemonConfig = Mapping[str, Any] | Callable[[Mapping[str, int]], Mapping[str, Any]]


class StackError(MapekError):
    """The local stack could not be set up or a component did not become ready."""


@dataclass
class _Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str
    process: subprocess.Popen[bytes] | None = None
    extra_ready: list[str] = field(default_factory=list)


def find_binary(name: str) -> str:
    """`name` on PATH or in /usr/bin; a StackError saying how to install it otherwise."""
    for candidate in (shutil.which(name), f"/usr/bin/{name}"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(f"{name} is not installed; install it with: {INSTALL_HINT}")


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """Something listens on (or holds) 127.0.0.1:`port`.

    SO_REUSEADDR, as the servers themselves set it: the connections of a stack that just
    stopped linger in TIME_WAIT for a minute, and they do not keep a new listener out.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def allocate_ports(mode: Literal["fixed", "free"], *, offset: int = 0) -> dict[str, int]:
    """The five ports: the staging ones shifted by `offset`, or free ones."""
    if mode == "free":
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(BASE_PORTS):
            ports = {name: free_port() for name in BASE_PORTS}
        return ports
    ports = {name: base + offset for name, base in BASE_PORTS.items()}
    for name, port in ports.items():
        if not 0 < port < 65536:
            raise StackError(f"port offset {offset} puts {name} on port {port}")
    busy = [f"{name} {port}" for name, port in ports.items() if port_in_use(port)]
    if busy:
        raise StackError(
            f"port(s) in use: {', '.join(busy)}; pick another --port-offset (e.g. 100)"
        )
    return ports


def staging_files() -> Traversable:
    """The staging configs shipped in the package: prometheus/ (config, rules), alertmanager/.

    The same files the compose stack mounts; package data, so a wheel or an image has them.
    """
    return resources.files("mape_k") / "staging"


def staging_rule_files(staging: Traversable | None = None) -> list[Traversable]:
    """The staging Prometheus rule files (`*.rules.yml`), sorted by name."""
    rules = (staging or staging_files()) / "prometheus" / "rules"
    if not rules.is_dir():
        return []
    return sorted((f for f in rules.iterdir() if f.name.endswith(".rules.yml")), key=_name)


def _name(item: Traversable) -> str:
    return item.name


# --- generated configs ------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RANGE = re.compile(r"\[(\d+)(ms|s|m|h|d)\]")


def parse_duration(text: str) -> float:
    """Seconds in a simple Prometheus duration ("30s", "5m")."""
    match = _DURATION.match(str(text).strip())
    if not match:
        raise StackError(f"unsupported duration {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def short_for(text: str) -> str:
    """A rule's `for:` in the stack: 1 s up to 1 minute in staging, 2 s beyond (order kept)."""
    return "1s" if parse_duration(text) <= 60 else "2s"


def short_window(expr: str) -> str:
    """Range windows divided by TIME_SCALE (5m → 5s), at least 5 s (five 1-s scrapes)."""

    def repl(match: re.Match[str]) -> str:
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        return f"[{max(5, round(seconds / TIME_SCALE))}s]"

    return _RANGE.sub(repl, expr)


def stack_rules(staging: Mapping[str, Any], *, interval_s: float) -> dict[str, Any]:
    """A staging rules file with every group at `interval_s`, short `for` and range windows."""
    groups = []
    for group in staging.get("groups", []):
        rules = []
        for rule in group.get("rules", []):
            new = dict(rule)
            new["expr"] = short_window(str(rule["expr"]))
            if "for" in rule:
                new["for"] = short_for(str(rule["for"]))
            rules.append(new)
        groups.append({**group, "interval": f"{interval_s:g}s", "rules": rules})
    return {"groups": groups}


def _rewrite_target(target: str, ports: Mapping[str, int]) -> str | None:
    """The loopback address of a staging target; None for a replica of the compose `ha`
    profile that this stack does not run (`mape-k-ha-N` is the stack's replica N + 1)."""
    host, _, port_text = target.rpartition(":")
    if (replica := re.fullmatch(r"mape-k-ha-(\d+)", host)) is not None:
        name = replica_name(int(replica.group(1)) + 1)
        return f"127.0.0.1:{ports[name]}" if name in ports else None
    owner = _STAGING_HOSTS.get(host) or _STAGING_PORT_OWNER.get(int(port_text))
    if owner is None:
        raise StackError(f"cannot map the staging target {target!r} to a local process")
    return f"127.0.0.1:{ports[owner]}"


def stack_prometheus_config(
    staging: Mapping[str, Any], *, ports: Mapping[str, int], rules_dir: Path, interval_s: float
) -> dict[str, Any]:
    """prometheus.yml for the stack: loopback targets, `interval_s` scrape and evaluation."""
    interval = f"{interval_s:g}s"
    config = dict(staging)
    config["global"] = {
        **staging.get("global", {}),
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "evaluation_interval": interval,
        "external_labels": {"environment": "local-stack"},
    }
    config["rule_files"] = [str(rules_dir / "*.rules.yml")]
    config["alerting"] = {
        "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports['alertmanager']}"]}]}]
    }
    jobs = []
    for job in staging.get("scrape_configs", []):
        statics = []
        for sc in job.get("static_configs", []):
            targets = [t for t in (_rewrite_target(t, ports) for t in sc.get("targets", [])) if t]
            if targets:
                statics.append({**sc, "targets": targets})
        if statics:  # a job of replicas this stack does not run is left out
            jobs.append({**job, "static_configs": statics})
    config["scrape_configs"] = jobs
    return config


def stack_alertmanager_config(
    staging: Mapping[str, Any], *, daemon_port: int | Sequence[int], token_file: Path
) -> dict[str, Any]:
    """alertmanager.yml for the stack: 1 s grouping, the webhook on loopback with the token
    (to every replica when there are several: a delivery to any reaches the leader)."""
    daemon_ports = [daemon_port] if isinstance(daemon_port, int) else list(daemon_port)

    def route(node: Mapping[str, Any], *, top: bool) -> dict[str, Any]:
        new = dict(node)
        if top or "group_wait" in node:
            new["group_wait"] = "1s"
        if top or "group_interval" in node:
            new["group_interval"] = "1s"
        if top or "repeat_interval" in node:
            new["repeat_interval"] = "1h"
        if "routes" in node:
            new["routes"] = [route(child, top=False) for child in node["routes"]]
        return new

    receivers = []
    for receiver in staging.get("receivers", []):
        new = dict(receiver)
        if "webhook_configs" in receiver:
            hooks: list[dict[str, Any]] = []
            for hook in receiver["webhook_configs"]:
                path = httpx.URL(hook["url"]).path
                http_config = dict(hook.get("http_config", {}))
                auth = dict(http_config.get("authorization", {}))
                auth["credentials_file"] = str(token_file)
                http_config["authorization"] = auth
                hooks.extend(
                    {**hook, "url": f"http://127.0.0.1:{port}{path}", "http_config": http_config}
                    for port in daemon_ports
                )
            new["webhook_configs"] = hooks
        receivers.append(new)
    return {**staging, "route": route(staging["route"], top=True), "receivers": receivers}


def stack_daemon_config(
    *,
    ports: Mapping[str, int],
    workdir: Path,
    orchestrator_interval_s: float,
) -> dict[str, Any]:
    """The daemon's YAML for the stack: http Charter, short loop and settle times."""
    actions = {
        str(action): {
            **spec.model_dump(mode="json", exclude_defaults=True),
            "settle_s": STACK_SETTLE_S[ActionType(action)],
        }
        for action, spec in DEFAULT_ACTIONS.items()
    }
    return {
        "prometheus": {"url": f"http://127.0.0.1:{ports['prometheus']}", "timeout_s": 2.0},
        "charter": {
            "mode": "http",
            "url": f"http://127.0.0.1:{ports['charter']}",
            "token_file": str(workdir / "charter_token"),
            "timeout_s": 3.0,
        },
        "monitor": {"query_timeout_s": 2.0, "max_staleness_s": 15.0},
        "planner": {"actions": actions},
        "executor": {"verify_deadline_s": 60.0},
        "knowledge": {"path": str(workdir / "knowledge.sqlite3")},
        "orchestrator": {
            "interval_s": orchestrator_interval_s,
            "trigger_debounce_s": 0.5,
            "iteration_timeout_s": 20.0,
            "shutdown_timeout_s": 5.0,
        },
        "server": {
            "host": "127.0.0.1",
            "port": ports["mape-k"],
            "webhook_token_file": str(workdir / "webhook_token"),
            "admin_token_file": str(workdir / "admin_token"),
        },
        # MapekNeedsHuman goes to the stack's Alertmanager (routed to the operators).
        "guards": {
            "target_breaker": {"alert": {"url": f"http://127.0.0.1:{ports['alertmanager']}"}}
        },
        "logging": {"format": "json", "level": "info"},
    }


def _load_yaml(path: Traversable) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StackError(f"cannot read the staging config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise StackError(f"{path}: expected a mapping")
    return data


def _dump(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return path


def _merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            merged[key] = _merged(old, value)
        else:
            merged[key] = value
    return merged


def _make_workdir(path: Path) -> Path:
    resolved = path.resolve()
    resolved.mkdir(parents=True, exist_ok=True)
    return resolved


def _secret(path: Path) -> str:
    token = secrets.token_urlsafe(24)
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(0o600)
    return token


# --- the stack ----------------------------------------------------------------------------


class Stack:
    """A running stack; get one with `async with Stack.start(workdir) as stack:`."""

    def __init__(self, *, workdir: Path, ports: Mapping[str, int], procs: dict[str, _Proc]) -> None:
        self.workdir = workdir
        self.ports = dict(ports)
        self._procs = procs
        self.admin_token = (workdir / "admin_token").read_text(encoding="utf-8").strip()
        self._http = httpx.AsyncClient(timeout=5.0)

    @property
    def urls(self) -> dict[str, str]:
        return {
            name: f"http://127.0.0.1:{port}"
            for name, port in self.ports.items()
            if name != "grafana"
        }

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        workdir: Path,
        *,
        port_offset: int = 0,
        ports: Literal["fixed", "free"] = "fixed",
        fault: tuple[str, float, float] | None = None,
        daemon_env: Mapping[str, str] | None = None,
        daemon_config: DaemonConfig | None = None,
        interval_s: float = 1.0,
        orchestrator_interval_s: float = 2.0,
        seed: int = 7,
        progress: Callable[[str], None] | None = None,
        replicas: int = 1,
    ) -> AsyncIterator[Stack]:
        """Generate configs in `workdir`, start every process, wait until each is ready.

        `fault` = (kind, magnitude, duration_s) is injected once everything is ready.
        `replicas` > 1 runs that many daemons (components `mape-k`, `mape-k-2`, ...) on one
        shared store, which the daemon config must name (`knowledge.url`); free ports only.
        `daemon_config` is merged over the daemon's generated config (mappings key by key);
        a callable gets the allocated ports and returns what is merged.
        Every process started is stopped on exit, whatever the exit. `progress` is told
        what the start-up waits for at each step (the demo shows it while it waits).
        """
        say = progress or (lambda _: None)
        prometheus_bin = find_binary("prometheus")
        alertmanager_bin = find_binary("prometheus-alertmanager")
        workdir = _make_workdir(workdir)
        allocated = allocate_ports(ports, offset=port_offset)
        if replicas > 1:
            if ports != "free":
                raise StackError("several replicas need free ports")
            for index in range(2, replicas + 1):
                allocated[replica_name(index)] = free_port()
        procs = _prepare(
            workdir=workdir,
            ports=allocated,
            staging=staging_files(),
            prometheus_bin=prometheus_bin,
            alertmanager_bin=alertmanager_bin,
            interval_s=interval_s,
            orchestrator_interval_s=orchestrator_interval_s,
            daemon_env=daemon_env or {},
            daemon_config=daemon_config or {},
            seed=seed,
            replicas=replicas,
        )
        stack = cls(workdir=workdir, ports=allocated, procs=procs)
        try:
            for name in procs:
                say(f"{name} to start and answer its readiness check")
                await stack._launch(name)
                if name == "prometheus":
                    say("Prometheus's first scrape of the simulator")
                    await stack._wait_scraped()
            say("the start-up alerts to resolve (absent metrics before the first scrape)")
            await stack._wait_quiet()
            if fault is not None:
                await stack.inject(*fault)
            yield stack
        finally:
            try:
                await stack._http.aclose()
            finally:
                stack.stop_all()

    # --- processes ---------------------------------------------------------------------

    def _proc(self, name: str) -> _Proc:
        try:
            return self._procs[name]
        except KeyError:
            raise StackError(f"no component {name!r}; expected one of {COMPONENTS}") from None

    async def _launch(self, name: str) -> None:
        proc = self._proc(name)
        with proc.log_path.open("ab") as out:  # the child keeps its own descriptor
            proc.process = subprocess.Popen(  # noqa: ASYNC220, S603 - args built here; fast
                proc.args,
                env=proc.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: we signal the group
            )
        log.info("stack_process_started", component=name, pid=proc.process.pid)
        for url in (proc.ready_url, *proc.extra_ready):
            await self._wait_ok(name, url)

    async def _wait_ok(self, name: str, url: str, deadline_s: float = READY_DEADLINE_S) -> None:
        proc = self._proc(name)
        last = "no answer yet"
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if proc.process is not None and proc.process.poll() is not None:
                raise StackError(
                    f"{name} exited with {proc.process.returncode} before it was ready;"
                    f" log tail:\n{self.logs(name)}"
                )
            try:
                response = await self._http.get(url, timeout=1.0)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == httpx.codes.OK:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            await asyncio.sleep(_POLL_S)  # readiness probe of another process
        raise StackError(
            f"{name} not ready at {url} after {deadline_s:g} s ({last}); log tail:\n"
            f"{self.logs(name)}"
        )

    async def _wait_scraped(self) -> None:
        """Prometheus has a sample of the simulator (the daemon's first pass is not degraded)."""
        url = f"{self.urls['prometheus']}/api/v1/query"
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await self._http.get(url, params={"query": "westworld_charter_up"})
                if response.json().get("data", {}).get("result"):
                    return
            await asyncio.sleep(_POLL_S)  # waiting for another process's first scrape
        raise StackError(
            f"prometheus never scraped the simulator; log tail:\n{self.logs('prometheus')}"
        )

    async def _wait_quiet(self, deadline_s: float = 20.0) -> None:
        """No alert active in Prometheus: start-up alerts (absent metrics before the first
        scrape) resolved, so a fault starts from a clean baseline."""
        deadline = time.monotonic() + deadline_s
        active: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(StackError):
                active = [a["labels"]["alertname"] for a in await self.prometheus_alerts()]
                if not active:
                    return
            await asyncio.sleep(_POLL_S)  # waiting for another process's rule evaluation
        raise StackError(f"alerts still active {deadline_s:g} s after start-up: {active}")

    def running(self, name: str) -> bool:
        process = self._proc(name).process
        return process is not None and process.poll() is None

    def pid(self, name: str) -> int | None:
        process = self._proc(name).process
        return process.pid if process is not None else None

    def returncode(self, name: str) -> int | None:
        """The component's exit status once it exited (None while running or never started)."""
        process = self._proc(name).process
        return None if process is None else process.poll()

    def signal(self, name: str, sig: int) -> None:
        """Send `sig` to the component's process group."""
        process = self._proc(name).process
        if process is None or process.poll() is not None:
            raise StackError(f"{name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL the component (a crash) and reap it."""
        process = self._proc(name).process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_DEADLINE_S)

    async def stop(self, name: str) -> None:
        """SIGTERM, wait (bounded), SIGKILL if it does not exit."""
        process = self._proc(name).process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE_S
        while process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)  # waiting for another process to exit
        if process.poll() is None:
            self.kill(name)

    async def restart(self, name: str) -> None:
        """Stop the component and start it again on the same port; wait until it is ready."""
        await self.stop(name)
        await self._launch(name)

    def stop_all(self) -> None:
        """Stop every process (SIGTERM all groups, bounded wait, then SIGKILL). Synchronous,
        so it also runs to the end while a Ctrl-C unwinds the event loop."""
        started = [p for p in self._procs.values() if p.process is not None]
        for proc in reversed(started):
            assert proc.process is not None
            if proc.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE_S
        for proc in started:
            assert proc.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGKILL)
                proc.process.wait(timeout=STOP_DEADLINE_S)
            log.info("stack_process_stopped", component=proc.name, rc=proc.process.returncode)

    def logs(self, name: str, *, tail: int = 4000) -> str:
        try:
            text = self._proc(name).log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-tail:]

    # --- talking to the components -----------------------------------------------------

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, url, **kwargs)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise StackError(f"{method} {url}: {exc}") from exc

    async def inject(self, kind: str, magnitude: float, duration_s: float = 0.0) -> str:
        """Inject a fault through the simulator's /sim/faults; returns the fault id."""
        body = {"kind": kind, "magnitude": magnitude, "duration_s": duration_s}
        data = await self._json("POST", f"{self.urls['charter']}/sim/faults", json=body)
        return str(data["id"])

    async def clear_faults(self) -> list[str]:
        data = await self._json("DELETE", f"{self.urls['charter']}/sim/faults")
        return [str(i) for i in data["cleared"]]

    async def sim_state(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._json("GET", f"{self.urls['charter']}/sim/state")
        return data

    async def daemon_stats(self, replica: str = "mape-k") -> dict[str, Any]:
        data: dict[str, Any] = await self._json("GET", f"{self.urls[replica]}/stats")
        return data

    async def daemon_metrics(self, replica: str = "mape-k") -> str:
        try:
            response = await self._http.get(f"{self.urls[replica]}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise StackError(f"GET mape-k /metrics: {exc}") from exc
        return response.text

    async def daemon_readiness(self, replica: str = "mape-k") -> tuple[int, dict[str, Any]]:
        """The daemon's /readyz: (HTTP status, body); 503 is an answer, not an error."""
        try:
            response = await self._http.get(f"{self.urls[replica]}/readyz")
            body: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise StackError(f"GET mape-k /readyz: {exc}") from exc
        return response.status_code, body

    async def set_chaos(self, status: int | None, operations: Sequence[str] | None = None) -> None:
        """The simulator's mutating calls (only `operations`, if given) answer `status`."""
        body = {
            "mutations_fail_with": status,
            "operations": None if operations is None else list(operations),
        }
        await self._json("POST", f"{self.urls['charter']}/sim/chaos", json=body)

    async def post_alerts(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """POST a webhook body to the daemon as Alertmanager does (with the webhook token)."""
        token = (self.workdir / "webhook_token").read_text(encoding="utf-8").strip()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            response = await self._http.post(
                f"{self.urls['mape-k']}/api/v1/alerts", content=body, headers=headers
            )
            answer: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise StackError(f"POST mape-k /api/v1/alerts: {exc}") from exc
        return response.status_code, answer

    async def prometheus_alerts(self) -> list[dict[str, Any]]:
        """Prometheus's active alerts (pending and firing), from /api/v1/alerts."""
        data = await self._json("GET", f"{self.urls['prometheus']}/api/v1/alerts")
        alerts: list[dict[str, Any]] = data["data"]["alerts"]
        return alerts

    async def prometheus_query(self, query: str) -> list[dict[str, Any]]:
        url = f"{self.urls['prometheus']}/api/v1/query"
        data = await self._json("GET", url, params={"query": query})
        result: list[dict[str, Any]] = data["data"]["result"]
        return result


def _prepare(
    *,
    workdir: Path,
    ports: Mapping[str, int],
    staging: Traversable,
    prometheus_bin: str,
    alertmanager_bin: str,
    interval_s: float,
    orchestrator_interval_s: float,
    daemon_env: Mapping[str, str],
    seed: int,
    daemon_config: DaemonConfig | None = None,
    replicas: int = 1,
) -> dict[str, _Proc]:
    """Write tokens and configs into `workdir`; the command line of every component."""
    for name in ("webhook_token", "admin_token", "charter_token"):
        _secret(workdir / name)
    # The Charter token as a whole header value, for http actions' `header_files`.
    authorization = workdir / "charter_authorization"
    token = (workdir / "charter_token").read_text(encoding="utf-8").strip()
    authorization.write_text(f"Bearer {token}\n", encoding="utf-8")
    authorization.chmod(0o600)
    rules_dir = workdir / "rules"
    rules_dir.mkdir(exist_ok=True)
    rule_files = staging_rule_files(staging)
    if not rule_files:
        raise StackError(f"no staging rules in {staging / 'prometheus' / 'rules'}")
    for path in rule_files:
        _dump(rules_dir / path.name, stack_rules(_load_yaml(path), interval_s=interval_s))
    prom_yml = _dump(
        workdir / "prometheus.yml",
        stack_prometheus_config(
            _load_yaml(staging / "prometheus" / "prometheus.yml"),
            ports=ports,
            rules_dir=rules_dir,
            interval_s=interval_s,
        ),
    )
    am_yml = _dump(
        workdir / "alertmanager.yml",
        stack_alertmanager_config(
            _load_yaml(staging / "alertmanager" / "alertmanager.yml"),
            daemon_port=[ports[replica_name(i)] for i in range(1, replicas + 1)],
            token_file=workdir / "webhook_token",
        ),
    )
    daemon_settings = _merged(
        stack_daemon_config(
            ports=ports, workdir=workdir, orchestrator_interval_s=orchestrator_interval_s
        ),
        (daemon_config(ports) if callable(daemon_config) else daemon_config) or {},
    )
    shared = "url" in daemon_settings["knowledge"] or "MAPEK_KNOWLEDGE__URL" in daemon_env
    if replicas > 1 and not shared:
        raise StackError("several replicas need a shared store: set knowledge.url")
    daemon_yml = _dump(workdir / "mape-k.yaml", daemon_settings)
    # Inherited MAPEK_* variables would silently change the stack: only daemon_env counts.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MAPEK_")}
    base_env["PYTHONUNBUFFERED"] = "1"
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    python = sys.executable
    return {
        "charter": _Proc(
            name="charter",
            args=[
                python,
                "-m",
                "mape_k",
                "charter-sim",
                "--host=127.0.0.1",
                f"--port={ports['charter']}",
                f"--seed={seed}",
                "--regime=calm",
                f"--token-file={workdir / 'charter_token'}",
            ],
            env=base_env,
            log_path=workdir / "charter.log",
            ready_url=f"{url['charter']}/health",
        ),
        "alertmanager": _Proc(
            name="alertmanager",
            args=[
                alertmanager_bin,
                f"--config.file={am_yml}",
                f"--storage.path={workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                f"--web.external-url={url['alertmanager']}",
                "--cluster.listen-address=",  # no gossip port: stacks side by side
                "--log.level=info",
            ],
            env=base_env,
            log_path=workdir / "alertmanager.log",
            ready_url=f"{url['alertmanager']}/-/ready",
        ),
        "prometheus": _Proc(
            name="prometheus",
            args=[
                prometheus_bin,
                f"--config.file={prom_yml}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                f"--web.external-url={url['prometheus']}",
                "--web.enable-lifecycle",
                "--rules.alert.resend-delay=1s",
                "--log.level=warn",
            ],
            env=base_env,
            log_path=workdir / "prometheus.log",
            ready_url=f"{url['prometheus']}/-/ready",
        ),
    } | {
        name: _Proc(
            name=name,
            args=[python, "-m", "mape_k", "run", f"--config={daemon_yml}"],
            env={**base_env, **daemon_env, **replica_env},
            log_path=workdir / f"{name}.log",
            ready_url=f"{url[name]}/healthz",
            extra_ready=[f"{url[name]}/readyz"],
        )
        for name, replica_env in (
            (
                replica_name(i),
                {}
                if replicas == 1
                else {
                    "MAPEK_SERVER__PORT": str(ports[replica_name(i)]),
                    "MAPEK_HA__REPLICA_ID": replica_name(i),
                },
            )
            for i in range(1, replicas + 1)
        )
    }


def replica_name(index: int) -> str:
    """The stack's daemon components: `mape-k`, then `mape-k-2`, `mape-k-3`..."""
    return "mape-k" if index == 1 else f"mape-k-{index}"
