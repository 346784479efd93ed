"""Benchmark 8: seconds for the worst config files to be rejected (target < 1 s each).

Each hostile file (a YAML alias bomb that would expand to gigabytes, 5,000-deep nesting, a
Latin-1 file, 1 MiB of comments, `.inf`) goes through `mape-k check-config` as a fresh
process, the way an operator or a SIGHUP meets it; the floor is the same command on the
shipped config (interpreter start and imports). Also the in-process `load_settings` time,
which is what a SIGHUP reload spends on the event loop.
Usage: python -m bench.config_rejection [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Verdict, table, write_json

sys.path.insert(0, str(REPO / "tests"))
from fakes import alias_bomb
from mape_k.config import load_settings
from mape_k.errors import ConfigError

TARGET_S = 1.0
FILES: dict[str, bytes] = {
    "alias bomb (9 levels x 9 refs)": alias_bomb().encode(),
    "5,000-deep flow nesting": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "Latin-1 bytes": "x: caf\xe9\n".encode("latin-1"),
    "1 MiB of comments": b"#" * (1 << 20) + b"\n",
    "interval_s: .inf": b"orchestrator: {interval_s: .inf}\n",
}


def check_config(path: Path) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPEK_")}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mape_k", "check-config", str(path)],
        capture_output=True,
        timeout=120,
        check=False,
        env=env,
    )
    return time.perf_counter() - started, result.returncode


def in_process(path: Path) -> float:
    started = time.perf_counter()
    with contextlib.suppress(ConfigError):
        load_settings(path, {})
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    floor_s, _ = check_config(REPO / "config" / "mape_k_config.yaml")
    rows = []
    worst = worst_in_process = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-config-") as tmp:
        for name, content in FILES.items():
            path = Path(tmp) / "bad.yaml"
            path.write_bytes(content)
            wall, code = check_config(path)
            loading = in_process(path)
            worst, worst_in_process = max(worst, wall), max(worst_in_process, loading)
            row = [name, len(content), code, f"{wall:.2f}", f"{wall - floor_s:+.2f}"]
            rows.append([*row, f"{loading * 1000:.1f}"])
    beyond = worst - floor_s
    ok = beyond < TARGET_S and worst_in_process < TARGET_S and all(r[2] == 1 for r in rows)
    print("### 8. Config rejection (hostile files through `mape-k check-config`)\n")
    print(
        table(["file", "bytes", "exit", "wall s", "s beyond the floor", "load_settings ms"], rows)
    )
    print(
        f"\nFloor: `check-config` of the shipped config, {floor_s:.2f} s (interpreter and"
        f" imports, on this machine now). Target: every file rejected (exit 1, one line) in"
        f" < {TARGET_S:g} s beyond the floor and in-process -> worst {beyond:+.2f} s beyond"
        f" the floor, {worst_in_process * 1000:.1f} ms in-process:"
        f" **{'PASS' if ok else 'MISS'}**.\n"
    )
    write_json(
        args.json,
        [
            Verdict(
                "8 config rejection",
                "worst hostile config, check-config wall time",
                f"{beyond:+.2f} s beyond the floor ({floor_s:.2f} s);"
                f" {worst_in_process * 1000:.1f} ms in-process",
                f"< {TARGET_S:g} s",
                ok,
            )
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
