"""Running cells of the suite (scenario x policy x seeds), in parallel processes.

A job is one (scenario, policy, seed): the scenario's episodes in a row, on one knowledge
store (one episode for most scenarios; a learning scenario runs many). Jobs are
independent and deterministic, so they run in a process pool; results come back as plain
episode objects (the trajectory only for the representative seed, to draw).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mape_k.quality import scenario as scenarios
from mape_k.quality.runner import Episode, run_episode
from mape_k.quality.scenario import Scenario


@dataclass(frozen=True, slots=True)
class Job:
    scenario: str  # name or path (loaded in the worker)
    policy: str
    seed: int
    keep_samples: bool = False
    keep_records: bool = False
    last_episode: int | None = None  # stop the chain after this episode (None: all)
    counterfactual: bool = True
    overrides: tuple[tuple[str, str], ...] = ()  # `--set KEY=VALUE` as given (hashable)
    store: Path | None = None  # keep the chain's knowledge store here (None: a scratch file)


async def run_chain(job: Job, scenario: Scenario | None = None) -> list[Episode]:
    """The job's episodes in a row, sharing one knowledge store."""
    found = scenario or scenarios.load(job.scenario)
    overrides = scenarios.parse_overrides(job.overrides)
    last = found.episodes - 1 if job.last_episode is None else job.last_episode
    episodes: list[Episode] = []
    with tempfile.TemporaryDirectory(prefix="mape-k-chain-") as scratch:
        store = job.store or Path(scratch) / "knowledge.sqlite3"
        for index in range(last + 1):
            final = index == last
            episodes.append(
                await run_episode(
                    found,
                    job.policy,
                    job.seed,
                    index=index,
                    knowledge=store,
                    keep_records=job.keep_records and final,
                    keep_samples=job.keep_samples and final,
                    counterfactual=job.counterfactual,
                    overrides=overrides,
                )
            )
    return episodes


class _Discard:
    """A stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def quiet() -> None:
    """The daemon's logs go nowhere (errors included: the episode's records tell)."""
    from mape_k import logs  # noqa: PLC0415

    logs.configure(level="error", fmt="json", stream=_Discard())


def _run_job(job: Job) -> list[Episode]:
    return asyncio.run(run_chain(job))


def _cost(name: str) -> float:
    found = scenarios.load(name)
    return found.duration_s * found.episodes


def run_jobs(
    jobs: Iterable[Job],
    *,
    workers: int = 1,
    progress: Callable[[Job, int, int], None] | None = None,
) -> dict[Job, list[Episode]]:
    """Every job's episodes; in `workers` processes (1: in this process)."""
    todo = list(jobs)
    if workers > 1:
        # the longest first (learning chains, long episodes): the pool's tail is short
        costs = {job.scenario: _cost(job.scenario) for job in todo}
        todo.sort(key=lambda job: -costs[job.scenario])
    out: dict[Job, list[Episode]] = {}
    if workers <= 1:
        for n, job in enumerate(todo, 1):
            out[job] = asyncio.run(run_chain(job))
            if progress is not None:
                progress(job, n, len(todo))
        return out
    with ProcessPoolExecutor(max_workers=workers, initializer=quiet) as pool:
        for n, (job, episodes) in enumerate(zip(todo, pool.map(_run_job, todo), strict=True), 1):
            out[job] = episodes
            if progress is not None:
                progress(job, n, len(todo))
    return out
