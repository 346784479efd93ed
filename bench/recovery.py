"""Benchmark 5: time to recover per fault kind in the real stack, beside its floor.

Usage: python bench/recovery.py [--repeat N] [--faults a,b] [--append docs/benchmarks.md]
For each fault kind a fresh local stack (mape_k.stack: real Prometheus and Alertmanager, the
simulator, the daemon; free ports) gets the fault; recovery = the fault's signal back under
its threshold in the simulator after the first remediation. Floor = the signal's onset +
scrape interval + rule evaluation + the rule's `for` + group_wait + the simulator's effect
delay (the model, run in-process, from the fitting action to the signal under threshold).
The ratio uses the alert path (daemon grid 30 s: only the webhook can start the action in
time); the 2 s grid of the demo is shown beside it. Target: measured <= 1.5x floor.
A measurement, not a test: not run by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mape_k.causes import FAULT_KINDS
from mape_k.sim.committee import Committee
from mape_k.stack import (
    DEFAULT_MAGNITUDE,
    FAULT_CAUSE,
    FAULT_SIGNALS,
    Stack,
    StackError,
    parse_duration,
    short_for,
    staging_files,
)

SCRAPE_S = 1.0
EVAL_S = 1.0
GROUP_WAIT_S = 1.0
POLL_S = 0.1
# The alert path alone: with the production 30 s grid, the first action of a run this short
# can only come from the webhook's trigger. Beside it, the demo's 2 s grid (its own rules).
ALERT_PATH_GRID_S = 30.0
DEMO_GRID_S = 2.0
BOUND_S = 90.0
TARGET = 1.5
_DT = 0.1

FIX: dict[str, Callable[[Committee, float], Any]] = {
    "load_spike": lambda c, now: c.scale(c.state().size + 2, now=now),
    "error_burst": lambda c, now: c.restart(now=now),
    "member_crash": lambda c, now: c.restart(now=now),
    "latency_degradation": lambda c, now: c.rebalance(now=now),
    "bad_policy": lambda c, now: c.apply_policy("last_known_good", now=now),
}
FIX_NAME = {
    "load_spike": "scale_up",
    "error_burst": "restart_service",
    "member_crash": "restart_service",
    "latency_degradation": "rebalance_load",
    "bad_policy": "apply_policy",
}


def rule_for_s(cause: str) -> float:
    """The shortest stack `for` among the staging rules carrying this cause."""
    import yaml  # noqa: PLC0415 - only the floor needs it

    path = staging_files() / "prometheus" / "rules" / "charter.rules.yml"
    rules = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"][0]["rules"]
    fors = [
        parse_duration(short_for(r["for"])) if "for" in r else 0.0
        for r in rules
        if r["labels"].get("cause") == cause
    ]
    return min(fors)


def model_times(fault: str, *, pipeline_s: float, seed: int = 7) -> tuple[float, float]:
    """(onset, effect) from the simulator's model: injection to violating, fix to recovered."""
    signal, threshold = FAULT_SIGNALS[fault]
    committee = Committee(seed, "calm", start=0.0)
    now = 0.0
    committee.advance(now)
    committee.inject(fault, DEFAULT_MAGNITUDE[fault], 0.0, now)
    while committee.signals()[signal] <= threshold and now < 60:
        now += _DT
        committee.advance(now)
    onset = now
    fixed_at = onset + pipeline_s
    while now < fixed_at:
        now += _DT
        committee.advance(now)
    FIX[fault](committee, now)
    while committee.signals()[signal] > threshold and now < fixed_at + 120:
        now += _DT
        committee.advance(now)
    return onset, now - fixed_at


async def measure(fault: str, *, grid_s: float) -> dict[str, Any]:
    """One run: a fresh stack, the fault, polled until the signal recovers after an action."""
    signal, threshold = FAULT_SIGNALS[fault]
    with tempfile.TemporaryDirectory(prefix="mape-k-bench-") as scratch:
        async with Stack.start(
            Path(scratch), ports="free", orchestrator_interval_s=grid_s
        ) as stack:
            start = time.monotonic()
            await stack.inject(fault, DEFAULT_MAGNITUDE[fault], 0.0)
            acted: float | None = None
            operation = ""
            while time.monotonic() - start < BOUND_S:
                state = await stack.sim_state()
                now = time.monotonic() - start
                applied = [a for a in state["actions"] if not a["replayed"] and not a["error"]]
                if acted is None and applied:
                    acted, operation = now, applied[0]["operation"]
                if acted is not None and state["signals"][signal] <= threshold:
                    return {"recovered_s": now, "acted_s": acted, "operation": operation}
                await asyncio.sleep(POLL_S)  # sampling another process's state
    return {"recovered_s": None, "acted_s": acted, "operation": operation}


def table(results: dict[str, dict[str, Any]]) -> tuple[str, str]:
    rows = [
        (
            "| fault | fix (model) | first action (stack) | onset s"
            " | scrape+eval+for+group_wait s | effect s | floor s | first action s"
            " | recovered s (alert path) | ratio | target | recovered s (2 s grid) | runs |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    missed = []
    for fault, r in results.items():
        measured = r["recovered_s"]
        ratio = measured / r["floor_s"] if measured is not None else None
        ok = ratio is not None and ratio <= TARGET
        if not ok:
            missed.append(fault)
        rows.append(
            f"| {fault} | {FIX_NAME[fault]} | {r['operation'] or '-'} | {r['onset_s']:.1f}"
            f" | {r['pipeline_s']:.1f} | {r['effect_s']:.1f} | {r['floor_s']:.1f}"
            f" | {r['acted_s']:.1f} | "
            + (f"{measured:.1f}" if measured is not None else "not recovered")
            + " | "
            + (f"{ratio:.2f}x" if ratio is not None else "-")
            + f" | {'ok' if ok else 'MISSED'} | "
            + (f"{r['grid_recovered_s']:.1f}" if r["grid_recovered_s"] is not None else "-")
            + f" | {r['runs']} |"
        )
    verdict = f"target <= {TARGET}x floor: " + (
        "ok for every fault" if not missed else f"MISSED for {', '.join(missed)}"
    )
    return "\n".join(rows), verdict


async def run(faults: list[str], repeat: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for fault in faults:
        pipeline = SCRAPE_S + EVAL_S + rule_for_s(FAULT_CAUSE[fault]) + GROUP_WAIT_S
        onset, effect = model_times(fault, pipeline_s=pipeline)
        runs = [await measure(fault, grid_s=ALERT_PATH_GRID_S) for _ in range(repeat)]
        grid = [await measure(fault, grid_s=DEMO_GRID_S) for _ in range(repeat)]
        recovered = [r["recovered_s"] for r in runs if r["recovered_s"] is not None]
        acted = [r["acted_s"] for r in runs if r["acted_s"] is not None]
        grid_recovered = [r["recovered_s"] for r in grid if r["recovered_s"] is not None]
        results[fault] = {
            "grid_recovered_s": (
                statistics.median(grid_recovered) if len(grid_recovered) == repeat else None
            ),
            "onset_s": onset,
            "pipeline_s": pipeline,
            "effect_s": effect,
            "floor_s": onset + pipeline + effect,
            "recovered_s": statistics.median(recovered) if len(recovered) == repeat else None,
            "acted_s": statistics.median(acted) if acted else float("nan"),
            "operation": runs[0]["operation"],
            "runs": repeat,
        }
        print(f"{fault}: {results[fault]}", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--faults", default=",".join(FAULT_KINDS))
    parser.add_argument("--append", type=Path, help="append the table to this markdown file")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    try:
        results = asyncio.run(run(faults, args.repeat))
    except StackError as exc:
        print(f"bench/recovery.py: {exc}", file=sys.stderr)
        return 1
    output, verdict = table(results)
    print(output)
    print()
    print(verdict)
    if args.append:
        uname = platform.uname()
        command = "python bench/recovery.py " + " ".join(argv or sys.argv[1:])
        header = [
            "",
            f"## Time to recover (benchmark 5, {datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC)",
            "",
            f"- command: `{command.strip()}`",
            (
                f"- machine: `{uname.system} {uname.release} {uname.machine}`, "
                f"nproc {os.cpu_count()}, Python {platform.python_version()}"
            ),
            f"- `uname -a`: `{' '.join(platform.uname())}`",
            (
                "- stack: mape_k.stack (Prometheus 2.42 and Alertmanager 0.25 from Debian,"
                " 1 s scrape and evaluation, `for` shortened to 1-2 s, group_wait 1 s,"
                " daemon grid 30 s so the webhook triggers the action, and 2 s as in the demo);"
                " time from injection to the fault's signal back under its threshold in the"
                " simulator after the first remediation; floor as in the script's docstring"
            ),
            (
                "- the floor counts one full scrape and one full evaluation interval; a fault"
                " waits about half of each on average, so ratios somewhat under 1.0x are expected"
            ),
            "",
        ]
        with args.append.open("a", encoding="utf-8") as out:
            out.write("\n".join([*header, output, "", verdict, ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
