"""Shared helpers of the benchmarks: percentiles, markdown tables, machine info, results.

No benchmark logic here. A benchmark module prints markdown on stdout and, with
`--json FILE`, writes its verdict rows there for the runner's summary table.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One row of the summary: a measured value beside its target."""

    benchmark: str
    metric: str
    measured: str
    target: str
    ok: bool

    @property
    def word(self) -> str:
        return "PASS" if self.ok else "MISS"


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1) -> str:
    """A markdown table; the first `left` columns are left-aligned, the rest right-aligned."""
    align = ["---" if i < left else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    return table(
        ["benchmark", "metric", "measured", "target", "verdict"],
        [(v.benchmark, v.metric, v.measured, v.target, f"**{v.word}**") for v in verdicts],
        left=2,
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    try:
        uname = subprocess.run(
            ["uname", "-a"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        uname = " ".join(platform.uname())
    return {
        "uname": uname,
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "cpu": cpu_model(),
    }


def rss_bytes() -> int:
    """This process's resident set size (VmRSS) after a full collection."""
    gc.collect()
    return proc_rss_bytes(os.getpid())


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc/PID/stat, in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)


def write_json(path: str | None, verdicts: Sequence[Verdict]) -> None:
    if path:
        Path(path).write_text(json.dumps([asdict(v) for v in verdicts]))


def read_json(path: Path) -> list[Verdict]:
    if not path.exists() or not path.read_text().strip():
        return []
    return [Verdict(**row) for row in json.loads(path.read_text())]


def quiet_logs() -> None:
    """Daemon logs at info, rendered as JSON into /dev/null: the cost stays, the noise goes."""
    from mape_k import logs  # noqa: PLC0415

    logs.configure(level="info", fmt="json", stream=open(os.devnull, "w"))  # noqa: SIM115, PTH123


def python() -> str:
    return sys.executable
