"""`make bench`: run every benchmark, each in a fresh process, print and optionally append.

`python -m bench [--append docs/benchmarks.md] [--only NAME ...]` runs benchmarks 1, 2, 4,
6-12 (bench/*.py here), bench/analysis_scaling.py (3) and, when present, bench/recovery.py
(5); prints each table, then a summary; with --append, appends one section holding the
machine, the command, the date, the summary and every table. Measurements, not tests:
the exit status is 0 even when a target is missed (a crashed benchmark gives 1).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import REPO, Verdict, machine, read_json, verdict_table

BENCH = REPO / "bench"
# (name, argv after the interpreter, takes --json)
MODULES: list[tuple[str, list[str], bool]] = [
    ("reaction_latency", ["-m", "bench.reaction_latency"], True),
    ("webhook_ingest", ["-m", "bench.webhook_ingest"], True),
    ("analysis_scaling", [str(BENCH / "analysis_scaling.py"), "--repeat", "3"], False),
    ("memory_churn", ["-m", "bench.memory_churn"], True),
    ("recovery", [str(BENCH / "recovery.py")], False),
    ("monitor_fanout", ["-m", "bench.monitor_fanout"], True),
    ("idle_cost", ["-m", "bench.idle_cost"], True),
    ("config_rejection", ["-m", "bench.config_rejection"], True),
    ("api_fuzz", ["-m", "bench.api_fuzz"], True),
    ("stalled_connections", ["-m", "bench.stalled_connections"], True),
    ("store_budget", ["-m", "bench.store_budget"], True),
    ("scenario_speed", ["-m", "bench.scenario_speed"], True),
]
TIMEOUT_S = 900
_LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}\S* +\[|^\{\"")


def _analysis_verdicts(output: str) -> list[Verdict]:
    """benchmark 3 prints its own verdict line (its targets and words); turn it into rows."""
    match = re.search(
        r"10k: ([\d.]+) ms = ([\d.]+) baseline passes of ([\d.]+) ms "
        r"\(target <= (\d+) passes: (ok|MISSED)\); .*?"
        r"worst growth / the baseline's there: ([\d.]+)x \(target <= ([\d.]+)x: (ok|MISSED)\)",
        output,
    )
    if match is None:
        return [Verdict("3 analysis scaling", "output", "unparsed", "-", ok=False)]
    ten_k, passes, floor, max_passes, passes_word, excess, max_excess, growth_word = match.groups()
    return [
        Verdict(
            "3 analysis scaling",
            "Analyze+Plan, 10k violations / one baseline pass",
            f"{passes} passes ({ten_k} ms vs {floor} ms)",
            f"<= {max_passes} passes",
            passes_word == "ok",
        ),
        Verdict(
            "3 analysis scaling",
            "growth per 10x violations / the baseline's growth",
            f"{excess}x",
            f"<= {max_excess}x",
            growth_word == "ok",
        ),
    ]


def _recovery_verdicts(output: str) -> list[Verdict]:
    """benchmark 5 prints "target <= 1.5x floor: ok for every fault" or "MISSED for ..."."""
    match = re.search(r"target <= ([\d.]+)x floor: (.*)", output)
    if match is None:
        return [Verdict("5 time to recover", "output", "unparsed", "-", ok=False)]
    found = match.group(2).strip()
    return [
        Verdict(
            "5 time to recover",
            "recovery / floor, per fault kind",
            found,
            f"<= {match.group(1)}x floor",
            found.startswith("ok"),
        )
    ]


def run_one(
    name: str, argv: list[str], takes_json: bool, scratch: Path
) -> tuple[str, list[Verdict]]:
    json_path = scratch / f"{name}.json"
    command = [sys.executable, *argv, *(["--json", str(json_path)] if takes_json else [])]
    started = time.monotonic()
    print(f"--- {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return f"### {name}\n\ntimed out after {TIMEOUT_S} s\n", [
            Verdict(name, "run", "timed out", "-", ok=False)
        ]
    elapsed = time.monotonic() - started
    print(f"--- {name}: {elapsed:.0f} s, exit {done.returncode}", file=sys.stderr, flush=True)
    # Keep the markdown: drop log lines a benchmark's subprocesses print on stdout.
    kept = [line for line in done.stdout.splitlines() if not _LOG_LINE.match(line)]
    output = "\n".join(kept).strip() + "\n"
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        output += f"\n**{name} failed (exit {done.returncode})**:\n\n```\n{tail}\n```\n"
        return output, [Verdict(name, "run", f"crashed (exit {done.returncode})", "-", ok=False)]
    if name == "analysis_scaling":
        output = "### 3. Analyze + Plan scaling\n\n" + output
        return output, _analysis_verdicts(output)
    if name == "recovery":
        output = "### 5. Time to recover\n\n" + output
        return output, _recovery_verdicts(output)
    if not takes_json:
        return output, []
    return output, read_json(json_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", type=Path, help="markdown file to append the run to")
    parser.add_argument("--only", nargs="*", help="run only these benchmarks (by name)")
    args = parser.parse_args()
    started = datetime.now(UTC)
    sections: list[str] = []
    verdicts: list[Verdict] = []
    crashed = False
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name, argv, takes_json in MODULES:
            if args.only and name not in args.only:
                continue
            if name == "recovery" and not (BENCH / "recovery.py").exists():
                continue
            output, found = run_one(name, argv, takes_json, Path(tmp))
            crashed = crashed or any(v.metric == "run" for v in found)
            print(output, flush=True)
            sections.append(output)
            verdicts.extend(found)
    summary = verdict_table(verdicts)
    print("### Summary\n")
    print(summary)
    if args.append is not None:
        info = machine()
        command = "python -m bench " + " ".join(sys.argv[1:])
        text = [
            "",
            f"## Run of {started.strftime('%Y-%m-%d %H:%M UTC')}",
            "",
            f"- command: `{command.strip()}` (`make bench`)",
            f"- machine: `{info['uname']}`",
            f"- CPU: {info['cpu']}, nproc {info['nproc']}; Python {info['python']}",
            f"- wall time of the run: {(datetime.now(UTC) - started).total_seconds():.0f} s",
            "",
            "### Summary",
            "",
            summary,
            "",
            *sections,
        ]
        args.append.parent.mkdir(parents=True, exist_ok=True)
        with args.append.open("a", encoding="utf-8") as out:
            out.write("\n".join(text))
        print(f"\nappended to {args.append}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
