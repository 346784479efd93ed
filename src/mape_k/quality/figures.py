"""The figures of one episode, from its trajectory (one sample a second) and its calls.

- recovered / time to recover: for each disturbance (a fault injected, a load shape
  starting), from its onset (the first sample with a rule signal of causes.CAUSES over its
  threshold, before the next disturbance starts) to its final recovery: the start of the
  all-normal stretch after its last abnormal one, when that stretch lasts RECOVERED_S
  (time_to_recover); the episode's time is the worst disturbance's, and it recovered when
  every disturbance did. A disturbance that never moved a signal recovers in 0 s.
- requests lost %: (failed + shed) / offered over the episode.
- oscillations: direction reversals of the size or of the throttle (tighter/looser).
- left over: seconds throttled or above the starting size after the last fault is over
  (ended by itself or cleared by an action; None when one lasts to the end).
- back to baseline: seconds from the last fault being over until the committee is at (or
  under) its starting size with no throttle, and stays so to the end (0 when it already
  is; ∞ when it is not back by the end; None when a fault lasts to the end).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from mape_k.causes import CAUSES

RECOVERED_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # episode offset, s
    offered: float
    admitted: float
    capacity: float
    failure_rate: float
    p99_s: float
    size: int  # target size (where the last scale heads)
    throttle: float | None
    normal: bool  # every rule signal at or under its threshold
    fault_active: bool  # a fault or the load shape is active now


def faults_over_at(samples: Sequence[Sample]) -> float | None:
    """The first sample time after the last one with a fault active (None: to the end)."""
    last = None
    for index, sample in enumerate(samples):
        if sample.fault_active:
            last = index
    if last is None:
        return samples[0].t if samples else None
    return samples[last + 1].t if last + 1 < len(samples) else None


def all_normal(signals: dict[str, float]) -> bool:
    return all(signals[c.signal] <= c.threshold for c in CAUSES)


def time_to_recover(
    samples: Sequence[Sample], start: float, until: float | None = None
) -> float | None:
    """Seconds from the disturbance's onset to its final recovery; 0 when it never went
    abnormal, None when it did not recover.

    The disturbance's window is [start, until) (until: the next disturbance). Onset: its
    first abnormal sample. Recovery: the start of the all-normal stretch that follows the
    window's last abnormal stretch (followed past `until` while it stays abnormal), if that
    stretch lasts RECOVERED_S — so a blip of noise before the real trouble does not count
    as a recovery, and a disturbance still abnormal at the end is not recovered.
    """
    window = [i for i, s in enumerate(samples) if s.t >= start and (until is None or s.t < until)]
    bad = [i for i in window if not samples[i].normal]
    if not bad:
        return 0.0
    onset = samples[bad[0]].t
    last = bad[-1]
    while last + 1 < len(samples) and not samples[last + 1].normal:
        last += 1
    if last + 1 >= len(samples):
        return None
    run_start = samples[last + 1].t
    run_end = next((s.t for s in samples[last + 1 :] if not s.normal), samples[-1].t)
    return run_start - onset if run_end - run_start >= RECOVERED_S else None


def direction_reversals(values: Sequence[float]) -> int:
    """How often consecutive changes of `values` change sign."""
    reversals = 0
    last = 0
    for before, after in itertools.pairwise(values):
        if after == before:
            continue
        sign = 1 if after > before else -1
        if last and sign != last:
            reversals += 1
        last = sign
    return reversals


def oscillations(samples: Sequence[Sample]) -> int:
    sizes = [float(s.size) for s in samples]
    throttles = [float("inf") if s.throttle is None else s.throttle for s in samples]
    return direction_reversals(sizes) + direction_reversals(throttles)


def back_s(samples: Sequence[Sample], over_at: float | None, start_size: int) -> float | None:
    if over_at is None:
        return None
    back = over_at
    for s in samples:
        if s.t >= over_at and (s.throttle is not None or s.size > start_size):
            back = s.t + 1.0  # the next sample is the first that may be back
    end = samples[-1].t if samples else over_at
    return math.inf if back > end else back - over_at


def left_over_s(samples: Sequence[Sample], over_at: float | None, start_size: int) -> float | None:
    if over_at is None:
        return None
    return float(
        sum(
            1 for s in samples if s.t >= over_at and (s.throttle is not None or s.size > start_size)
        )
    )
