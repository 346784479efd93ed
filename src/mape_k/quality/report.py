"""The report: one table per scenario (a row per policy: median and p90 over seeds), the
confusion table of the daemon's verdicts against the counterfactual, the worst mape-k
episode's command, and a PNG of one representative episode per scenario (matplotlib, the
`quality` extra; without it the report says so and links nothing)."""

from __future__ import annotations

import json
import math
import shlex
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mape_k.quality import POLICIES
from mape_k.quality.runner import OUTCOMES, TRUTHS, Episode
from mape_k.quality.scenario import Scenario

LOSS_MARGIN_PCT = 0.1
NUMBERS = (
    ("ttr_s", "time to recover s"),
    ("lost_pct", "requests lost %"),
    ("actions", "mutating actions"),
    ("oscillations", "oscillations"),
    ("left_over_s", "left throttled / over-provisioned s"),
    ("back_s", "back to baseline s"),
    ("harmful", "harmful actions"),
)


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile: the p90 of 5 seeds is the worst of them, of 10 the 9th."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "∞"
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value)}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def cell(episodes: Sequence[Episode], key: str) -> str:
    """median / p90 of a figure; a time to recover of an unrecovered episode is ∞, a left-over
    time of an episode whose fault lasted to the end is left out (— when none is left)."""
    values: list[float] = []
    for e in episodes:
        value = e.figures[key]
        if value is None:
            if key == "ttr_s":
                values.append(math.inf)
            continue
        values.append(float(value))
    if not values:
        return "—"
    middle = statistics.median_low(values) if math.inf in values else statistics.median(values)
    return f"{_fmt(middle)} / {_fmt(quantile(values, 0.9))}"


def worst(episodes: Sequence[Episode]) -> Episode:
    """The episode that lost the most requests (an unrecovered one first)."""
    return max(episodes, key=lambda e: (not e.figures["recovered"], e.figures["lost_pct"]))


def confusion(episodes: Iterable[Episode]) -> Counter[tuple[str, str]]:
    table: Counter[tuple[str, str]] = Counter()
    for e in episodes:
        for v in e.verifications:
            table[(v["outcome"], v["truth"])] += 1
    return table


def confusion_markdown(table: Counter[tuple[str, str]]) -> list[str]:
    truths = [*TRUTHS, *sorted({t for _, t in table} - set(TRUTHS))]
    rows = [
        "| daemon's verdict \\ counterfactual | " + " | ".join(truths) + " | total |",
        "|---|" + "---:|" * (len(truths) + 1),
    ]
    for outcome in [*OUTCOMES, *sorted({o for o, _ in table} - set(OUTCOMES))]:
        counts = [table[(outcome, t)] for t in truths]
        rows.append(f"| {outcome} | " + " | ".join(str(c) for c in counts) + f" | {sum(counts)} |")
    return rows


def scenario_table(by_policy: dict[str, list[Episode]]) -> list[str]:
    header = "| policy | recovered | " + " | ".join(label for _, label in NUMBERS) + " | seeds |"
    rows = [header, "|---|---:|" + "---:|" * len(NUMBERS) + "---|"]
    for policy in POLICIES:
        episodes = by_policy.get(policy)
        if not episodes:
            continue
        recovered = sum(1 for e in episodes if e.figures["recovered"])
        seeds = sorted({e.seed for e in episodes})
        rows.append(
            f"| {policy} | {recovered}/{len(episodes)} | "
            + " | ".join(cell(episodes, key) for key, _ in NUMBERS)
            + f" | {_seeds(seeds)} |"
        )
    return rows


def _seeds(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def records_command(
    scenario: Scenario, episode: Episode, overrides: Sequence[tuple[str, str]] = ()
) -> str:
    chain = f" --episode {episode.index}" if scenario.episodes > 1 else ""
    shipped = not scenario.source.endswith((".yaml", ".yml"))
    target = scenario.name if shipped else scenario.source
    sets = "".join(f" --set {shlex.quote(f'{key}={value}')}" for key, value in overrides)
    return (
        f"mape-k simulate --scenario {target} --seed {episode.seed}{chain}"
        f" --policy mape-k{sets} --records"
    )


def _calls_line(episode: Episode, limit: int = 6) -> str:
    if not episode.calls:
        return "no mutating call"
    parts = []
    for call in episode.calls[:limit]:
        args = ",".join(f"{k}={_short(v)}" for k, v in call.arguments.items())
        parts.append(f"{call.at - episode.start:.0f} s {call.operation}({args}) {call.verdict}")
    more = len(episode.calls) - limit
    return "; ".join(parts) + (f"; … {more} more" if more > 0 else "")


def _short(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def why_line(episodes: Sequence[Episode]) -> str:
    """mape-k's iterations by result, the guards that held candidates, its calls' truth."""
    results: Counter[str] = Counter()
    held: Counter[str] = Counter()
    calls: Counter[tuple[str, str]] = Counter()
    for e in episodes:
        results.update(e.figures.get("iterations", {}).get("results", {}))
        held.update(e.figures.get("iterations", {}).get("held_by", {}))
        calls.update((c.operation, c.verdict) for c in e.calls)
    parts = [
        "iterations " + ", ".join(f"{k} {v}" for k, v in results.most_common()),
        "held by " + (", ".join(f"{k} {v}" for k, v in held.most_common()) or "nothing"),
        "calls " + (", ".join(f"{op} {v} {n}" for (op, v), n in sorted(calls.items())) or "none"),
    ]
    return "; ".join(parts)


def predictions_lines(episodes: Sequence[Episode]) -> list[str]:
    """The report's line on mape-k's predictions, if a rule predicts."""
    line = predictions_line(episodes)
    return [] if line is None else ["", f"Predictions (mape-k, every seed): {line}."]


def predictions_line(episodes: Sequence[Episode]) -> str | None:
    """mape-k's predictions over every seed (None when no rule predicts): counts,
    precision and recall of the pooled counts, when it first acted and first went over."""
    totals: Counter[str] = Counter()
    for e in episodes:
        for counts in e.figures.get("predictions", {}).values():
            totals.update({k: v for k, v in counts.items() if isinstance(v, int)})
    if not any("predictions" in e.figures for e in episodes):
        return None
    judged = totals["came_true"] + totals["did_not"]
    precision = f"{100 * totals['came_true'] / judged:.0f} %" if judged else "—"
    recall = f"{100 * totals['foreseen'] / totals['onsets']:.0f} %" if totals["onsets"] else "—"
    acted = [e.figures["first_action_s"] for e in episodes if e.figures.get("first_action_s")]
    over = [e.figures["first_over_s"] for e in episodes if e.figures.get("first_over_s")]
    return (
        f"raised {totals['raised']}: came true {totals['came_true']}, did not"
        f" {totals['did_not']}, prevented {totals['prevented']}; precision {precision},"
        f" recall {recall} ({totals['foreseen']}/{totals['onsets']} onsets foreseen);"
        f" first action at {_fmt(statistics.median(acted)) if acted else '—'} s (median),"
        f" a signal first over its threshold in {len(over)}/{len(episodes)} episodes"
    )


def shadow_lines(episodes: Sequence[Episode]) -> list[str]:
    """The report's line on mape-k's would-dos, if it shadowed any: the daemon's estimated
    precision against the counterfactual truth, over the would-dos it scored."""
    rows = [e.figures["shadow"] for e in episodes if e.figures.get("shadow")]
    if not rows:
        return []
    scored = sum(r["scored"] for r in rows)
    estimate = sum((r["estimate"] or 0.0) * r["scored"] for r in rows)
    truth = sum((r["truth"] or 0.0) * r["scored"] for r in rows)
    verdicts: Counter[str] = Counter()
    for r in rows:
        verdicts.update(r["verdicts"])
    if not scored:
        return ["", f"Shadow (mape-k): {sum(r['would_do'] for r in rows)} would-dos, none scored."]
    gap = 100 * (estimate - truth) / scored
    said = ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))
    line = (
        f"Shadow (mape-k, every seed): {sum(r['would_do'] for r in rows)} would-dos, {scored}"
        f" scored ({said}); estimated precision {100 * estimate / scored:.1f} %, counterfactual"
        f" {100 * truth / scored:.1f} % (each would-do's plan applied then, against nothing,"
        f" over 120 s): {gap:+.1f} points."
    )
    return ["", line]


def learning_rows(episodes: Sequence[Episode], size: int = 10) -> list[str]:
    """For a learning scenario: mape-k's figures by block of consecutive episodes."""
    last = max(e.index for e in episodes) + 1
    rows = [
        "| episodes | recovered | time to recover s | requests lost % | harmful actions |",
        "|---|---:|---:|---:|---:|",
    ]
    for low in range(0, last, size):
        block = [e for e in episodes if low <= e.index < low + size]
        recovered = sum(1 for e in block if e.figures["recovered"])
        rows.append(
            f"| {low + 1}..{min(last, low + size)} | {recovered}/{len(block)}"
            f" | {cell(block, 'ttr_s')} | {cell(block, 'lost_pct')} | {cell(block, 'harmful')} |"
        )
    return rows


def draw(path: Path, scenario: Scenario, representatives: dict[str, Episode]) -> bool:
    """One PNG: a column per policy; load / capacity, failure rate, p99; calls marked."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 - the optional `quality` extra

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    policies = [p for p in POLICIES if p in representatives]
    fig, axes = plt.subplots(3, len(policies), figsize=(3.2 * len(policies), 6.4), sharex=True,
                             squeeze=False)  # fmt: skip
    colours = {"harmed": "tab:red", "helped": "tab:green", "no effect": "0.6"}
    for col, policy in enumerate(policies):
        episode = representatives[policy]
        t = [s.t / 60 for s in episode.samples]
        load, fail, p99 = axes[0][col], axes[1][col], axes[2][col]
        load.plot(t, [s.offered for s in episode.samples], lw=0.6, label="offered")
        load.plot(t, [s.capacity for s in episode.samples], lw=1.0, label="capacity")
        throttled = [s.throttle if s.throttle is not None else math.nan for s in episode.samples]
        load.plot(t, throttled, lw=1.0, ls="--", label="throttle")
        fail.plot(t, [s.failure_rate for s in episode.samples], lw=0.6, color="tab:red")
        p99.plot(t, [s.p99_s for s in episode.samples], lw=0.6, color="tab:purple")
        p99.set_yscale("log")
        for call in episode.calls:
            x = (call.at - episode.start) / 60
            for ax in (load, fail, p99):
                ax.axvline(x, color=colours.get(call.verdict, "0.6"), lw=0.8, alpha=0.8)
        f = episode.figures
        load.set_title(
            f"{policy}\nlost {f['lost_pct']:.1f} %, {f['actions']} actions, {f['harmful']} harmful",
            fontsize=8,
        )
        for ax in (load, fail, p99):
            ax.tick_params(labelsize=7)
        p99.set_xlabel("minutes", fontsize=7)
    axes[0][0].set_ylabel("ops/s", fontsize=7)
    axes[1][0].set_ylabel("failure rate", fontsize=7)
    axes[2][0].set_ylabel("p99 s", fontsize=7)
    axes[0][0].legend(fontsize=6, loc="upper left")
    seed = next(iter(representatives.values())).seed
    fig.suptitle(
        f"{scenario.name} (seed {seed}); calls: green helped, red harmed, grey no effect"
        " (counterfactual, 120 s)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def write_json(directory: Path, episodes: Iterable[Episode]) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for e in episodes:
        name = f"{e.scenario}--{e.policy}--seed{e.seed}--ep{e.index}.json"
        (directory / name).write_text(json.dumps(e.as_dict(), indent=1) + "\n", encoding="utf-8")
        n += 1
    return n


METHOD = """\
Generated by `make quality` (`mape-k simulate --all --report docs/quality.md`); do not edit
by hand. How the suite works, and how to write a scenario: [docs/scenarios.md](scenarios.md).

Each **episode** runs one scenario (mape_k/scenarios/*.yaml) for one **policy** and one
**seed** on a simulated clock (1 s steps, nothing sleeps): the in-process committee model
(mape_k/sim/committee.py), its faults and load shape, the shipped alert rules evaluated
every 30 s on a 30 s scrape with their `for:`, Alertmanager's grouping (`group_wait`,
`group_interval` from the shipped route), and the policy acting through the mock Charter
client. Every policy sees the same committee, the same seed, the same load.

- **mape-k**: the real daemon (`app.build`: monitor, analyzer, planner, guards, executor,
  knowledge on a fresh SQLite store), shipped defaults plus the scenario's settings,
  `run_once` at every 30 s grid slot and on each alert delivery (debounced);
- **nothing**: no action;
- **static**: each alert rule's rising edge (as Alertmanager delivers it) runs the first
  configured candidate for the rule's cause once: no inhibition, cooldown or verification
  (what prometheus-am-executor does);
- **static-refire**: the same action at every rule evaluation while the rule fires;
- **hpa**: Kubernetes HPA semantics on utilisation (saturation): every 15 s
  desired = ceil(size x utilisation / 0.7), 10 % tolerance, scale-down stabilised over
  300 s, scale-up at most max(+100 %, +4) per period, min = the starting size.

**Figures** per episode: *recovered* / *time to recover* — for each disturbance (a fault
injected, a load shape starting), from its onset (the first second a rule signal of
causes.py is over its threshold) to the start of the stretch after its last abnormal one
in which every rule signal stays at or under its threshold for at least 60 s (∞ when it
ends abnormal; 0 when it never went over; the worst disturbance counts);
*requests lost* — (failed + shed by a throttle) / offered over the episode; *mutating
actions* — calls that reached the committee; *oscillations* — direction reversals of the
size or of the throttle; *left throttled / over-provisioned* — seconds with a throttle set
or more members than at the start after the last fault is over (— when a fault lasted to
the end); *back to baseline* — seconds from the last fault being over until the committee
is at its starting size with no throttle and stays so to the end (∞: not back by the end);
*harmful actions* — by counterfactual: before each mutating call the committee
is copied (its RNG included) and the next 120 s are replayed with and without that call
(scheduled faults in both, no other action in either); the call is harmful when it loses
more requests (by more than max(1, 0.1 % of those offered)), helpful when it loses fewer.
Cells are median / p90 over the seeds (nearest rank).

The **confusion table** puts each verification the daemon recorded (the outcome it learns
from) beside the counterfactual truth of the same execution's calls.
"""


def losses(
    scenarios: Sequence[Scenario],
    results: dict[str, dict[str, list[Episode]]],
    overrides: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Where mape-k loses more requests than the best baseline, worst first, and why."""
    rows: list[tuple[float, str, str]] = []
    for scenario in scenarios:
        by_policy = results.get(scenario.name, {})
        mapek = by_policy.get("mape-k")
        others = {p: eps for p, eps in by_policy.items() if p != "mape-k" and eps}
        if not mapek or not others:
            continue
        own = statistics.median(e.figures["lost_pct"] for e in mapek)
        best, policy = min(
            (statistics.median(e.figures["lost_pct"] for e in eps), p) for p, eps in others.items()
        )
        if own - best > LOSS_MARGIN_PCT:
            line = (
                f"- **{scenario.name}**: mape-k {own:.2f} % lost, {policy} {best:.2f} %."
                f" {why_line(mapek)}. Worst: `{records_command(scenario, worst(mapek), overrides)}`"
            )
            rows.append((own - best, scenario.name, line))
    if not rows:
        return ["## Where mape-k loses", "", "Nowhere by more than the margin.", ""]
    return [
        "## Where mape-k loses",
        "",
        (
            f"Scenarios where mape-k's median loses more than {LOSS_MARGIN_PCT} percentage"
            " points more requests than the best baseline, the largest gap first: its"
            " iterations by result, the guards that held its candidates, its calls by"
            " counterfactual verdict."
        ),
        "",
        *(line for _, _, line in sorted(rows, reverse=True)),
        "",
    ]


def markdown(
    scenarios: Sequence[Scenario],
    results: dict[str, dict[str, list[Episode]]],
    *,
    figures: dict[str, str],
    runtime: str,
    skipped_rules: Sequence[str],
    overrides: Sequence[tuple[str, str]] = (),
) -> str:
    lines = ["# Quality: does the controller help?", "", METHOD]
    lines += [
        (
            f"Run: {runtime}. Alert rules not simulated (expressions beyond `signal >"
            f" threshold`): {', '.join(skipped_rules) or 'none'}."
        ),
        "",
        "## Summary: requests lost % (median over seeds) per scenario and policy",
        "",
        (
            "Bold: the lowest of the row. `mape-k - best` is mape-k's median minus the best"
            " baseline's (positive: mape-k loses more than some baseline)."
        ),
        "",
        "| scenario | " + " | ".join(POLICIES) + " | mape-k - best | mape-k harmful |",
        "|---|" + "---:|" * (len(POLICIES) + 2),
    ]
    for scenario in scenarios:
        by_policy = results.get(scenario.name, {})
        medians = {
            p: statistics.median(e.figures["lost_pct"] for e in eps)
            for p, eps in by_policy.items()
            if eps
        }
        if not medians:
            continue
        best = min(medians.values())
        cells = []
        for p in POLICIES:
            if p not in medians:
                cells.append("—")
                continue
            text = f"{medians[p]:.2f}"
            cells.append(f"**{text}**" if medians[p] == best else text)
        others = [v for p, v in medians.items() if p != "mape-k"]
        gap = medians["mape-k"] - min(others) if "mape-k" in medians and others else math.nan
        harmful = sum(e.figures["harmful"] for e in by_policy.get("mape-k", []))
        lines.append(
            f"| [{scenario.name}](#{scenario.name}) | "
            + " | ".join(cells)
            + f" | {gap:+.2f} | {harmful} |"
        )
    lines += ["", *losses(scenarios, results, overrides)[:-1]]
    everything = [e for by in results.values() for e in by.get("mape-k", [])]
    lines += [
        "",
        "## The daemon's own verdicts against the counterfactual (every scenario)",
        "",
        *confusion_markdown(confusion(everything)),
        "",
        (
            "`no call`: the execution's calls were not found (refused, or made before the"
            " episode). A SUCCESS that `harmed` or did nothing is a lesson learnt wrong."
        ),
        "",
    ]
    for scenario in scenarios:
        by_policy = results.get(scenario.name, {})
        if not by_policy:
            continue
        lines += [f"## {scenario.name}", "", scenario.description, ""]
        lines += scenario_table(by_policy)
        mapek = by_policy.get("mape-k", [])
        if mapek:
            if scenario.episodes > 1:
                lines += ["", "mape-k by block of episodes (one knowledge store per seed):", ""]
                lines += learning_rows(mapek)
            bad = worst(mapek)
            table = confusion(mapek)
            verdicts = ", ".join(f"{o}→{t} {n}" for (o, t), n in sorted(table.items())) or "none"
            lines += predictions_lines(mapek)
            lines += shadow_lines(mapek)
            lines += [
                "",
                f"Why (mape-k, every seed): {why_line(mapek)}.",
                "",
                f"Daemon's verdicts → counterfactual: {verdicts}.",
                "",
                f"Worst mape-k episode: seed {bad.seed}"
                + (f", episode {bad.index + 1}" if scenario.episodes > 1 else "")
                + f", lost {bad.figures['lost_pct']:.2f} %: {_calls_line(bad)}."
                f" Its decision records: `{records_command(scenario, bad, overrides)}`",
            ]
        if scenario.name in figures:
            lines += ["", f"![{scenario.name}]({figures[scenario.name]})"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
