"""Benchmark 12: scenario suite speed, simulated hours per CPU-minute of a one-fault scenario.

One episode of a one-fault scenario (default `error_burst-calm-persistent`, 20 simulated
minutes) through `quality.runner.run_episode`, in this process, for each policy: CPU time
(`time.process_time`) per episode, best of N after a warm-up episode. The floor is the
same episode with the `nothing` policy: the simulated committee, the alert path and the
driver alone, with the daemon built but never run. Usage:
python -m bench.scenario_speed [--scenario NAME] [--episodes N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import Verdict, quiet_logs, table, write_json
from mape_k.quality import scenario as scenarios
from mape_k.quality.runner import run_episode
from mape_k.quality.suite import quiet

TARGET = 1000.0  # simulated hours per CPU-minute, mape-k policy
POLICIES = ("nothing", "mape-k", "static", "hpa")


def cpu_per_episode(scenario: scenarios.Scenario, policy: str, episodes: int) -> float:
    """Best CPU seconds of `episodes` episodes (seeds 2..), after one warm-up (seed 1)."""
    asyncio.run(run_episode(scenario, policy, 1))
    best = float("inf")
    for seed in range(2, episodes + 2):
        started = time.process_time()
        asyncio.run(run_episode(scenario, policy, seed))
        best = min(best, time.process_time() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="error_burst-calm-persistent")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    quiet_logs()
    quiet()
    scenario = scenarios.load(args.scenario)
    hours = scenario.duration_s / 3600
    cpu = {policy: cpu_per_episode(scenario, policy, args.episodes) for policy in POLICIES}
    speed = {policy: hours / (seconds / 60) for policy, seconds in cpu.items()}
    floor = speed["nothing"]
    rows = [
        [
            policy + (" (floor: the simulator and driver alone)" if policy == "nothing" else ""),
            f"{cpu[policy] * 1000:.0f}",
            f"{speed[policy]:.0f}",
            f"{cpu[policy] / cpu['nothing']:.2f}x",
        ]
        for policy in POLICIES
    ]
    ours = speed["mape-k"]
    ok = ours >= TARGET
    print(f"### 12. Scenario speed ({args.scenario}, {scenario.duration_s / 60:g} simulated min)\n")
    print(table(["policy", "CPU ms / episode", "sim-hours / CPU-min", "CPU / floor"], rows))
    print(
        f"\nTarget: >= {TARGET:g} simulated hours per CPU-minute for the mape-k policy -> "
        f"{ours:.0f}: **{'PASS' if ok else 'MISS'}** (the floor, policy `nothing`: "
        f"{floor:.0f}). Best of {args.episodes} episodes after a warm-up, in-process "
        "(run_episode with its counterfactual ledger, as the suite runs it), logs at info "
        "to /dev/null.\n"
    )
    write_json(
        args.json,
        [
            Verdict(
                "12 scenario speed",
                f"sim-hours per CPU-minute, {args.scenario}",
                f"{ours:.0f} (floor {floor:.0f}: {cpu['mape-k'] / cpu['nothing']:.2f}x its CPU)",
                f">= {TARGET:g}",
                ok,
            )
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
