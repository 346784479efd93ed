"""The options of `mape-k simulate` (imported by cli.py's parser: keep it light)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mape_k.quality import POLICIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME|PATH",
        help="a shipped scenario's name or a scenario file (repeatable)",
    )
    p.add_argument("--all", action="store_true", help="every shipped scenario")
    p.add_argument("--list", action="store_true", help="list the shipped scenarios")
    p.add_argument("--policy", choices=(*POLICIES, "all"), default="all")
    p.add_argument("--seeds", type=int, help="seeds 1..N per policy (default: the scenario's)")
    p.add_argument("--seed", type=int, help="this one seed")
    p.add_argument(
        "--episode", type=int, help="in a learning scenario: run the chain up to this episode"
    )
    p.add_argument(
        "--records",
        action="store_true",
        help="print the decision records (mape-k) or the calls (a baseline) of one episode",
    )
    p.add_argument(
        "--store",
        type=Path,
        metavar="FILE",
        help="with --records: keep the episode's knowledge store in FILE, a new file"
        " (for `mape-k replay`)",
    )
    p.add_argument("--json-dir", type=Path, help="write one JSON file per episode here")
    p.add_argument("--report", type=Path, help="write the markdown report here")
    p.add_argument(
        "--figures", type=Path, help="PNG directory (default: quality/ beside the report)"
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument(
        "--no-counterfactual", action="store_true", help="skip the per-call counterfactual"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help=(
            "a dotted daemon setting for the mape-k policy of every scenario, over the"
            " scenario's own settings; VALUE is YAML (repeatable)"
        ),
    )
