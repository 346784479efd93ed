"""Scenarios of the quality suite: small declarative YAML files, loaded and checked here.

A scenario names a regime of the simulated committee, the faults injected (kind, when,
how strong, how long, repeated), an optional shape of the offered load (a ramp, pulses),
daemon settings that differ from the shipped defaults (a wrong prior, no good candidate),
how long an episode lasts and how many episodes share one knowledge store. Every error is
one line naming the file and the field. The shipped scenarios are package data
(mape_k/scenarios/*.yaml): `mape-k simulate --scenario NAME` or `--scenario PATH`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mape_k.causes import FAULT, FAULT_KINDS
from mape_k.errors import ConfigError
from mape_k.sim.committee import REGIMES

MAX_DURATION_S = 7 * 86_400.0
MAX_EPISODES = 1000


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: str
    at_s: float
    magnitude: float
    duration_s: float  # 0 = persistent (until an action or the end clears it)
    every_s: float | None = None  # repeated every this many seconds ...
    count: int = 1  # ... this many times

    def injections(self) -> list[tuple[float, str, float, float]]:
        """(offset s, kind, magnitude, duration s) of every injection."""
        step = self.every_s or 0.0
        return [
            (self.at_s + i * step, self.kind, self.magnitude, self.duration_s)
            for i in range(self.count)
        ]


@dataclass(frozen=True, slots=True)
class LoadShape:
    """A factor on the offered load at episode offset t (1 outside [start_s, end_s))."""

    ramp_per_min: float = 0.0  # +this fraction of the base load per minute since start_s
    pulse_every_s: float | None = None  # pulses of `pulse_factor` ...
    pulse_width_s: float = 0.0  # ... this long, every pulse_every_s
    pulse_factor: float = 1.0
    start_s: float = 0.0
    end_s: float | None = None

    def factor(self, offset: float) -> float:
        if offset < self.start_s or (self.end_s is not None and offset >= self.end_s):
            return 1.0
        since = offset - self.start_s
        value = 1.0 + self.ramp_per_min * since / 60.0
        if self.pulse_every_s and since % self.pulse_every_s < self.pulse_width_s:
            value *= self.pulse_factor
        return value


@dataclass(frozen=True, slots=True)
class ShapeAt:
    """A LoadShape on the committee's clock (picklable and deep-copyable, unlike a lambda)."""

    shape: LoadShape
    start: float

    def __call__(self, t: float) -> float:
        return self.shape.factor(t - self.start)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    regime: str
    duration_s: float
    faults: tuple[FaultSpec, ...] = ()
    load: LoadShape | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # dotted daemon overrides
    episodes: int = 1  # episodes in a row on one knowledge store (learning scenarios)
    seeds: int = 5  # default number of seeds per policy
    expect_no_actions: bool = False  # an invariant the smoke test checks (no fault)
    source: str = ""

    def injections(self) -> list[tuple[float, str, float, float]]:
        return sorted(i for f in self.faults for i in f.injections())

    def disturbances(self) -> list[float]:
        """Offsets where something starts going wrong: injections and the load shape."""
        starts = [i[0] for i in self.injections()]
        if self.load is not None:
            starts.append(self.load.start_s)
        return sorted(starts)

    def fault_over_s(self) -> float | None:
        """Offset after which no injection or load shape is active by itself any more;
        None when one lasts to the end (persistent faults end when an action clears them)."""
        ends: list[float] = []
        for offset, _, _, duration in self.injections():
            if duration <= 0:
                return None
            ends.append(offset + duration)
        if self.load is not None:
            if self.load.end_s is None:
                return None
            ends.append(self.load.end_s)
        return max(ends, default=0.0)


_TOP = {
    "name",
    "description",
    "regime",
    "duration_s",
    "faults",
    "load",
    "settings",
    "episodes",
    "seeds",
    "expect_no_actions",
}
_FAULT = {"kind", "at_s", "magnitude", "duration_s", "every_s", "count"}
_LOAD = {
    "ramp_per_min",
    "pulse_every_s",
    "pulse_width_s",
    "pulse_factor",
    "start_s",
    "end_s",
}


def _number(where: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if value < low or (strict and value == low):
        raise ConfigError(f"{where}: must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


def _integer(where: str, value: Any, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: must be a whole number in {low}..{high}, got {value!r}")
    return value


def _unknown(where: str, data: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise ConfigError(
            f"{where}: unknown field {extra[0]!r} (expected one of {', '.join(sorted(known))})"
        )


def _fault(where: str, data: Any, duration: float) -> FaultSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping with a kind, got {data!r}")
    _unknown(where, data, _FAULT)
    kind = data.get("kind")
    if kind not in FAULT_KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(FAULT_KINDS)}")
    at = _number(f"{where}.at_s", data.get("at_s", 0.0))
    if at >= duration:
        raise ConfigError(f"{where}.at_s: {at:g} is not before duration_s {duration:g}")
    magnitude = _number(f"{where}.magnitude", data.get("magnitude", FAULT[kind].magnitude))
    if not 0 < magnitude <= 1:
        raise ConfigError(f"{where}.magnitude: must be in (0, 1], got {magnitude:g}")
    every = data.get("every_s")
    every_s = None if every is None else _number(f"{where}.every_s", every, strict=True)
    count = _integer(f"{where}.count", data.get("count", 1), low=1, high=10_000)
    if count > 1 and every_s is None:
        raise ConfigError(f"{where}.every_s: needed when count > 1")
    return FaultSpec(
        kind=kind,
        at_s=at,
        magnitude=magnitude,
        duration_s=_number(f"{where}.duration_s", data.get("duration_s", 0.0)),
        every_s=every_s,
        count=count,
    )


def _load(where: str, data: Any) -> LoadShape:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {data!r}")
    _unknown(where, data, _LOAD)
    every = data.get("pulse_every_s")
    end = data.get("end_s")
    shape = LoadShape(
        ramp_per_min=_number(f"{where}.ramp_per_min", data.get("ramp_per_min", 0.0), low=-1.0),
        pulse_every_s=None
        if every is None
        else _number(f"{where}.pulse_every_s", every, strict=True),
        pulse_width_s=_number(f"{where}.pulse_width_s", data.get("pulse_width_s", 0.0)),
        pulse_factor=_number(f"{where}.pulse_factor", data.get("pulse_factor", 1.0)),
        start_s=_number(f"{where}.start_s", data.get("start_s", 0.0)),
        end_s=None if end is None else _number(f"{where}.end_s", end),
    )
    if shape.pulse_every_s is not None and not 0 < shape.pulse_width_s < shape.pulse_every_s:
        raise ConfigError(f"{where}.pulse_width_s: must be in (0, pulse_every_s)")
    return shape


def parse(data: Any, *, source: str) -> Scenario:
    """A checked Scenario from YAML data; ConfigError (one line, `source: field: why`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return _parse(data, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(data: dict[str, Any], source: str) -> Scenario:
    _unknown("scenario", data, _TOP)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("name: must be a non-empty string")
    regime = data.get("regime", "calm")
    if regime not in REGIMES:
        raise ConfigError(f"regime: {regime!r} is not one of {', '.join(REGIMES)}")
    duration = _number("duration_s", data.get("duration_s"), strict=True)
    if duration > MAX_DURATION_S:
        raise ConfigError(f"duration_s: at most {MAX_DURATION_S:g} (a week), got {duration:g}")
    faults_data = data.get("faults", [])
    if not isinstance(faults_data, list):
        raise ConfigError("faults: must be a list")
    faults = tuple(_fault(f"faults[{i}]", f, duration) for i, f in enumerate(faults_data))
    load = None if data.get("load") is None else _load("load", data["load"])
    settings = data.get("settings", {})
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ConfigError("settings: must be a mapping of dotted setting names to values")
    expect = data.get("expect_no_actions", False)
    if not isinstance(expect, bool):
        raise ConfigError(f"expect_no_actions: must be true or false, got {expect!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description: must be a string")
    return Scenario(
        name=name,
        description=" ".join(description.split()),
        regime=regime,
        duration_s=duration,
        faults=faults,
        load=load,
        settings=dict(settings),
        episodes=_integer("episodes", data.get("episodes", 1), low=1, high=MAX_EPISODES),
        seeds=_integer("seeds", data.get("seeds", 5), low=1, high=1000),
        expect_no_actions=expect,
        source=source,
    )


def split_overrides(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`--set KEY=VALUE` items as (key, VALUE text); ConfigError naming a malformed one."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (a dotted setting name)")
        pairs.append((key, value))
    return tuple(pairs)


def parse_overrides(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """(key, VALUE text) pairs as dotted settings, each VALUE parsed as YAML (a later
    repeat of a key wins); ConfigError naming the key of a VALUE that is not YAML."""
    out: dict[str, Any] = {}
    for key, text in pairs:
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML") from None
    return out


def shipped_dir() -> Path:
    return Path(str(resources.files("mape_k") / "scenarios"))


def shipped_names() -> list[str]:
    return sorted(p.stem for p in shipped_dir().glob("*.yaml"))


def load(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        candidate = shipped_dir() / f"{name_or_path}.yaml"
        if not candidate.is_file():
            names = shipped_names()
            near = [n for n in names if name_or_path in n][:5] or names[:5]
            raise ConfigError(
                f"no scenario {name_or_path!r} (shipped: {len(names)}, e.g. {', '.join(near)};"
                " or give a file path)"
            )
        path = candidate
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML") from exc
    return parse(data, source=str(path) if path.parent != shipped_dir() else path.stem)


def load_all() -> list[Scenario]:
    return [load(name) for name in shipped_names()]
