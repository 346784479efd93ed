"""The scheduler: when the loop iterates.

`Scheduler.run()` calls `iterate` every `interval_s` on a fixed grid (no drift, missed
slots skipped) and never two at once; `trigger()` wakes it early (leading edge at once,
then at most one more per `trigger_debounce_s`); between iterations, a `watch` pass every
`watch_interval_s` may call it. `stop()` lets the iteration in progress
finish; `cancel()` is the last resort when that overran its bound. The decisions about
time are pure functions (`schedule`, `advance_grid`), tested on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from mape_k.config import OrchestratorConfig

log = structlog.get_logger(__name__)


class Scheduler:
    def __init__(
        self,
        iterate: Callable[[], Awaitable[None]],
        config: OrchestratorConfig,
        *,
        watch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._iterate = iterate
        self._watch = watch  # between iterations; it calls trigger() when it finds news
        self.config = config  # read each pass: a SIGHUP reload may change it
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._triggered = False
        self._last_start_mono = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._busy_since: float | None = None

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="mapek-loop")
        return self._task

    async def stop(self) -> None:
        """Finish the current iteration (if any) and return; the caller bounds the wait."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    async def cancel(self) -> None:
        """Last resort when `stop()` overran its bound: cancel the loop task."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def trigger(self, reason: str = "alert") -> None:
        """Wake the loop early. Returns at once; bursts collapse into one iteration."""
        log.debug("iteration_triggered", reason=reason)
        self._triggered = True
        self._wake.set()

    def wake(self) -> None:
        """Re-read the timing now (a reload changed it)."""
        self._wake.set()

    def busy_for(self) -> float:
        """Seconds the current iteration has been running (0 when idle)."""
        if self._busy_since is None:
            return 0.0
        return asyncio.get_running_loop().time() - self._busy_since

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        watched_at: float | None = None  # when the last iteration or watch pass ended
        while not self._stopping.is_set():
            now = loop.time()
            run_now, wake_at = schedule(
                now=now,
                next_at=next_at,
                triggered=self._triggered,
                last_start=self._last_start_mono,
                debounce_s=self.config.trigger_debounce_s,
            )
            if run_now:
                self._triggered = False
                self._last_start_mono = now
                self._busy_since = now
                try:
                    await self._iterate()
                finally:
                    self._busy_since = None
                next_at = advance_grid(next_at, loop.time(), self.config.interval_s)
                watched_at = loop.time()
                continue
            # read each pass: a reload turns the watch on, off or to another interval at once
            watch = self._watch
            watch_at = (
                float("inf")
                if watch is None or watched_at is None
                else next_watch(watched_at, self.config)
            )
            if watch is not None and now >= watch_at:
                await watch()  # it calls trigger() on a finding: the next pass runs it
                watched_at = loop.time()
                continue
            wake_at = min(wake_at, watch_at)
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    await self._wake.wait()
            except TimeoutError:
                pass


def schedule(
    *, now: float, next_at: float, triggered: bool, last_start: float, debounce_s: float
) -> tuple[bool, float]:
    """(run an iteration now?, else when to wake up). Pure, for the loop and its tests.

    A trigger runs at once unless an iteration started less than `debounce_s` ago; then it
    runs when the debounce ends (leading edge plus one trailing run, never a burst).
    """
    trigger_at = last_start + debounce_s if triggered else float("inf")
    if now >= next_at or now >= trigger_at:
        return True, now
    return False, min(next_at, trigger_at)


def advance_grid(next_at: float, now: float, interval_s: float) -> float:
    """The next slot on the fixed grid after `now`: no drift, missed slots skipped."""
    while next_at <= now:
        next_at += interval_s
    return next_at


def next_watch(now: float, config: OrchestratorConfig) -> float:
    """When the next watch pass is due after a pass or an iteration ending at `now`:
    `watch_interval_s` later, never when it is 0 or not shorter than the grid."""
    every = config.watch_interval_s
    return now + every if 0 < every < config.interval_s else float("inf")
