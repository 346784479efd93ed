"""Test doubles shared by the test folders (importable: `tests` is on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

# Captured Prometheus / Alertmanager payloads, inside the repository (see its README).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


class FakeClock:
    """A settable clock for anything with time in it: tests advance it explicitly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def alias_bomb(levels: int = 9, fanout: int = 9) -> str:
    """A "billion laughs": each anchor references the previous one `fanout` times."""
    lines = ["a0: &a0 {x: 1, y: 1, z: 1, w: 1}"]
    for i in range(1, levels + 1):
        refs = ", ".join(f"k{j}: *a{i - 1}" for j in range(fanout))
        lines.append(f"a{i}: &a{i} {{{refs}}}")
    lines.append(f"orchestrator: *a{levels}")
    return "\n".join(lines) + "\n"


# What the kubelet injects for a Service named `mapek` (one TCP port, 8001).
K8S_SERVICE_LINKS = {
    "MAPEK_SERVICE_HOST": "10.96.12.34",
    "MAPEK_SERVICE_PORT": "8001",
    "MAPEK_SERVICE_PORT_HTTP": "8001",
    "MAPEK_PORT": "tcp://10.96.12.34:8001",
    "MAPEK_PORT_8001_TCP": "tcp://10.96.12.34:8001",
    "MAPEK_PORT_8001_TCP_ADDR": "10.96.12.34",
    "MAPEK_PORT_8001_TCP_PORT": "8001",
    "MAPEK_PORT_8001_TCP_PROTO": "tcp",
}
