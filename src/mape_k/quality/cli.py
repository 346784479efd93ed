"""`mape-k simulate`: run scenarios against mape-k and the baselines, print or write the report.

Its options are in quality/options.py (light: `mape-k --help` does not import the daemon)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from typing import Any

from mape_k.errors import ConfigError
from mape_k.quality import POLICIES, report
from mape_k.quality import scenario as scenarios
from mape_k.quality.alerts import load_config
from mape_k.quality.runner import Episode, check_overrides
from mape_k.quality.suite import Job, run_chain, run_jobs


def _selected(args: argparse.Namespace) -> list[scenarios.Scenario]:
    if args.all:
        return scenarios.load_all()
    if not args.scenario:
        raise ConfigError("--scenario NAME|PATH, --all or --list is needed")
    return [scenarios.load(s) for s in args.scenario]


def _seeds(args: argparse.Namespace, found: scenarios.Scenario) -> list[int]:
    if args.seed is not None:
        return [args.seed]
    count = args.seeds if args.seeds is not None else found.seeds
    if count < 1:
        raise ConfigError(f"--seeds must be >= 1, got {count}")
    return list(range(1, count + 1))


def simulate(args: argparse.Namespace) -> int:  # noqa: C901, PLR0912, PLR0915 - the modes, in order
    if args.list:
        for found in scenarios.load_all():
            print(f"{found.name}: {found.description}")
        return 0
    selected = _selected(args)
    policies = list(POLICIES) if args.policy == "all" else [args.policy]
    try:
        overrides = scenarios.split_overrides(args.overrides)
        check_overrides(scenarios.parse_overrides(overrides), selected)
    except ConfigError as exc:
        # before any episode: a usage error, like argparse's (exit 2)
        print(f"mape-k simulate: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.store is not None and not args.records:
        print("mape-k simulate: --store needs --records (one episode)", file=sys.stderr)
        return 2
    if args.records:
        return _records(args, selected, policies, overrides)
    jobs: list[Job] = []
    where: dict[Job, scenarios.Scenario] = {}
    for found in selected:
        seeds = _seeds(args, found)
        for policy in policies:
            for seed in seeds:
                job = Job(
                    scenario=found.source
                    if found.source.endswith((".yaml", ".yml"))
                    else found.name,
                    policy=policy,
                    seed=seed,
                    keep_samples=seed == seeds[0] or args.json_dir is not None,
                    last_episode=args.episode,
                    counterfactual=not args.no_counterfactual,
                    overrides=overrides,
                )
                jobs.append(job)
                where[job] = found
    started = time.perf_counter()

    def progress(job: Job, n: int, total: int) -> None:
        print(f"[{n}/{total}] {job.scenario} {job.policy} seed {job.seed}", file=sys.stderr)

    done = run_jobs(jobs, workers=max(1, args.jobs), progress=progress)
    elapsed = time.perf_counter() - started
    results: dict[str, dict[str, list[Episode]]] = {}
    representatives: dict[str, dict[str, Episode]] = {}
    for job, episodes in done.items():
        name = where[job].name
        results.setdefault(name, {}).setdefault(job.policy, []).extend(episodes)
        final = episodes[-1]
        if final.samples and job.seed == _seeds(args, where[job])[0]:
            representatives.setdefault(name, {})[job.policy] = final
    if args.json_dir is not None:
        written = report.write_json(
            args.json_dir, [e for by in results.values() for eps in by.values() for e in eps]
        )
        print(f"wrote {written} episode files to {args.json_dir}", file=sys.stderr)
    runtime = (
        f"{len(jobs)} jobs, {sum(len(e) for e in done.values())} episodes in {elapsed:.0f} s"
        f" with {args.jobs} worker(s) on {platform.machine()} nproc {os.cpu_count()},"
        f" Python {platform.python_version()}"
    )
    if overrides:
        runtime += "; mape-k settings overridden (--set): " + ", ".join(
            f"`{key}={value}`" for key, value in overrides
        )
    if args.report is None:
        for found in selected:
            by_policy = results.get(found.name, {})
            print(f"## {found.name}\n")
            print("\n".join(report.scenario_table(by_policy)))
            mapek = by_policy.get("mape-k")
            if mapek:
                print()
                print("\n".join(report.confusion_markdown(report.confusion(mapek))))
                command = report.records_command(found, report.worst(mapek), overrides)
                print(f"\nworst mape-k episode: `{command}`")
            print()
        print(runtime, file=sys.stderr)
        return 0
    figure_dir = args.figures or args.report.parent / "quality"
    figures: dict[str, str] = {}
    for found in selected:
        reps = representatives.get(found.name)
        path = figure_dir / f"{found.name}.png"
        if reps and report.draw(path, found, reps):
            figures[found.name] = os.path.relpath(path, args.report.parent)
    if selected and not figures:
        print("matplotlib missing (pip install 'mape-k[quality]'): no figures", file=sys.stderr)
    text = report.markdown(
        selected,
        results,
        figures=figures,
        runtime=runtime,
        skipped_rules=load_config().skipped,
        overrides=overrides,
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text, encoding="utf-8")
    print(
        f"wrote {args.report} ({len(figures)} figures in {figure_dir}); {runtime}", file=sys.stderr
    )
    return 0


def _records(
    args: argparse.Namespace,
    selected: list[scenarios.Scenario],
    policies: list[str],
    overrides: tuple[tuple[str, str], ...] = (),
) -> int:
    if len(selected) != 1 or len(policies) != 1 or args.seed is None:
        raise ConfigError("--records needs one --scenario, one --policy and one --seed")
    if args.store is not None and args.store.exists():
        raise ConfigError(f"--store {args.store}: exists; give a new file")
    found = selected[0]
    job = Job(
        scenario=found.name,
        policy=policies[0],
        seed=args.seed,
        keep_records=True,
        last_episode=args.episode,
        counterfactual=not args.no_counterfactual,
        overrides=overrides,
        store=args.store,
    )
    episode = asyncio.run(run_chain(job, found))[-1]
    rows: list[Any] = episode.records if policies[0] == "mape-k" else []
    for record in rows:
        print(json.dumps(record, default=str))
    for call in episode.calls:
        print(json.dumps({"call": {**call.as_dict(), "at_s": round(call.at - episode.start, 1)}}))
    print(json.dumps({"figures": episode.figures}))
    return 0
