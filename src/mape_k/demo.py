"""`mape-k demo`: the whole stack as local processes, a fault, and the loop fixing it, live.

Starts the stack (stack.py) in a temporary directory, injects the fault, then polls the
simulator's /sim/state, Prometheus's /api/v1/alerts and the daemon's /stats and prints one
line per change: alert → iteration → action → recovery. When nothing changed for
HEARTBEAT_S it says what it is waiting for and for how long, from start-up on. With `once`,
it returns after the recovery (0) or after RECOVERY_BOUND_S (1). Every process it started is
stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mape_k import logs
from mape_k.causes import CAUSES
from mape_k.stack import DEFAULT_MAGNITUDE, FAULT_SIGNALS, Stack, StackError

RECOVERY_BOUND_S = 120.0
POLL_S = 1.0
HEARTBEAT_S = 5.0  # the longest silence: then a line says what the demo is waiting for
# The simulator's signals the daemon's rules watch (name, threshold: violating above).
WATCHED: tuple[tuple[str, float], ...] = tuple((c.signal, c.threshold) for c in CAUSES)


@dataclass
class Recovery:
    """When the fault's signal went back under its threshold after a remediation."""

    fault: str
    injected_at: float
    first_action_at: float | None = None
    recovered_at: float | None = None
    outcome_at: float | None = None
    outcomes: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.recovered_at is not None and self.outcome_at is not None

    def seconds(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.injected_at


class Heartbeat:
    """Prints lines, and when none was printed for HEARTBEAT_S, what is being waited for."""

    def __init__(self, out: TextIO, *, start: float) -> None:
        self.out = out
        self.start = start
        self.waiting_for = "the stack to start"
        self._last = start

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)
        self._last = time.monotonic()

    def wait(self, what: str) -> None:
        """What the demo waits for from now on: the next silent stretch names it."""
        self.waiting_for = what

    async def run(self) -> None:
        """Until cancelled: a line after every HEARTBEAT_S of silence."""
        while True:
            await asyncio.sleep(max(0.0, self._last + HEARTBEAT_S - time.monotonic()))
            now = time.monotonic()
            if now - self._last >= HEARTBEAT_S:
                self.say(f"[{now - self.start:6.1f}s] waiting    for {self.waiting_for}")


class Watcher:
    """Turns successive snapshots of the three endpoints into one line per change."""

    def __init__(self, *, start: float, recovery: Recovery | None) -> None:
        self.start = start
        self.recovery = recovery
        self._violating: set[str] = set()
        self._alerts: dict[str, str] = {}
        self._actions_seen = 0
        self._iterations: set[str] = set()
        self._outcomes: set[str] = set()
        self._inbox = 0
        self._last_iteration = ""
        self._signals: dict[str, float] = {}

    def waiting_for(self) -> str:
        """What the demo waits for next, from the last snapshot."""
        recovery = self.recovery
        if recovery is None:
            return "a fault to be injected (POST /sim/faults on the simulator)"
        name, limit = FAULT_SIGNALS[recovery.fault]
        value = f"{name} = {self._signals.get(name, float('nan')):.3g}"
        if recovery.first_action_at is None:
            return f"mape-k to act on {recovery.fault} ({value}, threshold {limit:g})"
        if recovery.recovered_at is None:
            return f"{name} to fall under {limit:g} after the remediation ({value})"
        return "mape-k to verify the remediation and record its outcome"

    def _line(self, now: float, source: str, text: str) -> str:
        return f"[{now - self.start:6.1f}s] {source:<10} {text}"

    def sim(self, state: dict[str, Any], now: float) -> list[str]:
        lines: list[str] = []
        signals: dict[str, float] = state["signals"]
        self._signals = signals
        violating = {name for name, limit in WATCHED if signals.get(name, 0.0) > limit}
        for name, limit in WATCHED:
            value = signals.get(name, 0.0)
            if name in violating - self._violating:
                lines.append(self._line(now, "charter", f"{name} = {value:.3g} > {limit:g}"))
            elif name in self._violating - violating:
                lines.append(self._line(now, "charter", f"{name} = {value:.3g}: back under"))
        self._violating = violating
        actions: list[dict[str, Any]] = state["actions"]
        for action in actions[self._actions_seen :]:
            args = f" {action['arguments']}" if action["arguments"] else ""
            status = "replayed" if action["replayed"] else (action["error"] or "applied")
            text = f"{action['operation']}{args} ({status})"
            lines.append(self._line(now, "action", text))
            if self.recovery and not action["replayed"] and not action["error"]:
                self.recovery.first_action_at = self.recovery.first_action_at or now
        self._actions_seen = len(actions)
        recovery = self.recovery
        if recovery is not None and recovery.first_action_at is not None:
            name, limit = FAULT_SIGNALS[recovery.fault]
            if recovery.recovered_at is None and signals.get(name, 0.0) <= limit:
                recovery.recovered_at = now
                lines.append(self._line(now, "recovered", f"{name} back under {limit:g}"))
        return lines

    def alerts(self, alerts: list[dict[str, Any]], now: float) -> list[str]:
        lines: list[str] = []
        current = {a["labels"]["alertname"]: a["state"] for a in alerts}
        for name, state in sorted(current.items()):
            if self._alerts.get(name) != state:
                cause = next(
                    (
                        a["labels"].get("cause", "")
                        for a in alerts
                        if a["labels"]["alertname"] == name
                    ),
                    "",
                )
                lines.append(self._line(now, "alert", f"{name} {state} (cause {cause})"))
        gone = sorted(set(self._alerts) - set(current))
        lines.extend(self._line(now, "alert", f"{name} resolved") for name in gone)
        self._alerts = current
        return lines

    def daemon(self, stats: dict[str, Any], now: float) -> list[str]:
        lines: list[str] = []
        inbox = int(stats.get("alerts", {}).get("firing", 0))
        if inbox != self._inbox:
            lines.append(self._line(now, "webhook", f"{inbox} alert(s) firing in mape-k's inbox"))
            self._inbox = inbox
        for record in reversed(stats.get("iterations", [])):
            if record["id"] in self._iterations:
                continue
            self._iterations.add(record["id"])
            for verification in record.get("verifications", []):
                if verification["execution_id"] in self._outcomes:
                    continue
                self._outcomes.add(verification["execution_id"])
                stabilized = verification.get("time_to_stabilize_s")
                took = f" after {stabilized:.1f} s" if stabilized is not None else ""
                text = (
                    f"verified {verification['action_type']} for {verification['cause']}:"
                    f" {verification['outcome'].upper()}{took}"
                )
                lines.append(self._line(now, "knowledge", text))
                if self.recovery is not None:
                    self.recovery.outcomes.append(verification["outcome"])
                    self.recovery.outcome_at = self.recovery.outcome_at or now
            if record.get("result") in (None, "idle"):
                continue
            text = f"{record['result']}: {record.get('choice', {}).get('why', '')}"
            if text != self._last_iteration:  # a held policy repeats; say it once
                lines.append(self._line(now, "iteration", text))
            self._last_iteration = text
        return lines


async def _snapshot(stack: Stack, watcher: Watcher, beat: Heartbeat) -> None:
    now = time.monotonic()
    lines: list[str] = []
    with contextlib.suppress(StackError):
        lines += watcher.alerts(await stack.prometheus_alerts(), now)
    with contextlib.suppress(StackError):
        lines += watcher.daemon(await stack.daemon_stats(), now)
    with contextlib.suppress(StackError):
        lines += watcher.sim(await stack.sim_state(), now)
    for line in lines:
        beat.say(line)
    beat.wait(watcher.waiting_for())


async def run_demo(
    *,
    fault: str,
    once: bool,
    port_offset: int,
    workdir: Path,
    stop: asyncio.Event,
    out: TextIO = sys.stdout,
    bound_s: float = RECOVERY_BOUND_S,
) -> int:
    """The demo in `workdir` until `stop` is set, or until recovery with `once`."""
    beat = Heartbeat(out, start=time.monotonic())
    beat.say(f"mape-k demo: starting the stack in {workdir} ...")
    ticker = asyncio.create_task(beat.run(), name="demo-heartbeat")
    try:
        return await _demo(
            fault,
            once=once,
            port_offset=port_offset,
            workdir=workdir,
            stop=stop,
            beat=beat,
            bound_s=bound_s,
        )
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


async def _demo(
    fault: str,
    *,
    once: bool,
    port_offset: int,
    workdir: Path,
    stop: asyncio.Event,
    beat: Heartbeat,
    bound_s: float,
) -> int:
    async with Stack.start(workdir, port_offset=port_offset, progress=beat.wait) as stack:
        beat.say(f"stack ready in {time.monotonic() - beat.start:.1f} s:")
        for name, url in stack.urls.items():
            beat.say(f"  {name:<12} {url}   (log: {workdir / (name + '.log')})")
        recovery: Recovery | None = None
        t0 = time.monotonic()
        if fault != "none":
            magnitude = DEFAULT_MAGNITUDE[fault]
            await stack.inject(fault, magnitude, 0.0)
            recovery = Recovery(fault=fault, injected_at=t0)
            name, limit = FAULT_SIGNALS[fault]
            beat.say(
                f"injected {fault} (magnitude {magnitude:g}, until remediated);"
                f" watching {name} > {limit:g}"
            )
        else:
            beat.say(f"no fault injected; inject one with POST {stack.urls['charter']}/sim/faults")
        if not once:
            beat.say("Ctrl-C stops the demo and every process it started.")
        watcher = Watcher(start=t0, recovery=recovery)
        while not stop.is_set():
            await _snapshot(stack, watcher, beat)
            if once and recovery is not None and recovery.done:
                took = recovery.seconds() or 0.0
                outcome = ", ".join(recovery.outcomes)
                beat.say(f"RECOVERED: {fault} in {took:.1f} s (outcome recorded: {outcome})")
                return 0
            if once and time.monotonic() - t0 > bound_s:
                beat.say(f"NOT RECOVERED within {bound_s:g} s; logs in {workdir}")
                return 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await stop.wait()
    return 0


async def main(*, fault: str, once: bool, port_offset: int) -> int:
    """`mape-k demo`: see the module docstring. SIGINT / SIGTERM stop it cleanly."""
    logs.configure(level="warning")
    if once and fault == "none":
        print("mape-k demo: --once needs a fault to recover from", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="mape-k-demo-"))
    status = 1
    try:
        status = await run_demo(
            fault=fault, once=once, port_offset=port_offset, workdir=workdir, stop=stop
        )
    except StackError as exc:
        print(f"mape-k demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if status == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"mape-k demo: logs and configs kept in {workdir}", file=sys.stderr)
    if stop.is_set():
        print("stopped; every process of the stack has exited.")
    return status
