"""The scenario suite: does the controller help? (`mape-k simulate`, `make quality`).

scenario.py loads the declarative scenarios (mape_k/scenarios/*.yaml); alerts.py simulates
Prometheus rule evaluation and Alertmanager delivery from the shipped staging files;
world.py holds the committee, its fault schedule and the per-call counterfactual;
baselines.py the policies mape-k is compared with; runner.py drives one episode on a
simulated clock; figures.py measures it; suite.py runs many in processes; report.py
writes docs/quality.md and its PNGs.
"""

POLICIES: tuple[str, ...] = ("mape-k", "nothing", "static", "static-refire", "hpa")
