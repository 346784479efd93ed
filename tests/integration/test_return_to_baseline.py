"""Return to baseline, end to end on the simulated committee: back to the size before a
load spike within 10 minutes of its end, and no reversal on flapping load."""

from __future__ import annotations

import pytest

from mape_k.quality.runner import run_episode
from mape_k.quality.scenario import load

pytestmark = pytest.mark.timeout(60)


async def test_the_committee_is_back_to_its_size_within_10_minutes_of_a_spikes_end():
    scenario = load("load_spike-calm-finite")
    episode = await run_episode(scenario, "mape-k", seed=1, counterfactual=False, keep_records=True)
    assert episode.figures["recovered"]
    assert episode.figures["back_s"] is not None
    assert episode.figures["back_s"] <= 600
    sizes = [c.arguments.get("size") for c in episode.calls if c.operation == "scale_committee"]
    assert sizes[0] > 3
    assert sizes[-1] == 3  # the size before the fault
    # the return went through the decision pipeline like any cause
    returned = [
        r for r in episode.records if r.get("execution") and "excess_capacity" in r["choice"]["why"]
    ]
    assert returned
    waited = [r for r in episode.records if "return to baseline:" in r["choice"]["why"]]
    assert waited, "the records say why a return waits"


async def test_flapping_load_gets_no_size_or_throttle_reversal():
    episode = await run_episode(load("flapping_load"), "mape-k", seed=1, counterfactual=False)
    assert episode.figures["oscillations"] == 0
