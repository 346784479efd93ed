"""The installed package works on its own: a wheel in a fresh venv runs the demo to recovery.

The wheel is built from a copy of what the Dockerfile copies (pyproject.toml, README.md,
src/), installed into a new venv outside the repository, and `mape-k demo --once` runs from
a working directory outside it too, so nothing can be found through the source tree: the
staging rules and configs the stack generates from must be package data.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

import pytest
from prom_support import free_port

from mape_k.demo import HEARTBEAT_S
from mape_k.stack import BASE_PORTS, port_in_use

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PIP_S = 300.0
DEMO_S = 150.0
PROBE = """
import importlib.resources as r, mape_k
root = r.files("mape_k") / "staging"
print(mape_k.__file__)
print(*sorted(p.name for p in (root / "prometheus" / "rules").iterdir()))
print((root / "alertmanager" / "alertmanager.yml").is_file())
print(*sorted(p.name for p in (root.parent / "openapi").iterdir() if p.name[-5:] == ".yaml"))
from mape_k.console import views
print(*sorted(views._environment().list_templates()))
print(*sorted(p.name for p in (root.parent / "console" / "static").iterdir()))
"""


def free_offset() -> int:
    """A --port-offset whose five ports (staging 3000-9093 shifted) are all free now, kept
    below Linux's ephemeral range (32768-) so outgoing connections do not take them."""
    start = free_port() % 97  # a different block each run
    for offset in range(10_000 + start, 23_000, 97):
        if not any(port_in_use(base + offset) for base in BASE_PORTS.values()):
            return offset
    pytest.fail("no free block of five ports below 32768")


def _run(args: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{args[:4]} exited {result.returncode}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel (and its dependencies); its bin/ directory."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    dist = base / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    _run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(dist), str(source)], cwd=base, timeout=PIP_S
    )
    [wheel] = dist.glob("mape_k-*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    _run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "--disable-pip-version-check",
            "--quiet",
            "install",
            str(wheel),
        ],
        cwd=base,
        timeout=PIP_S,
    )
    return bin_dir


def test_the_wheel_carries_the_staging_files_openapi_documents_and_console(
    installed: Path,
) -> None:
    listing = _run(
        [
            str(installed / "python"),
            "-c",
            PROBE,
        ],
        cwd=installed,
        timeout=30,
        # The runner's PYTHONPATH (a source tree) must not be what the probe imports.
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
    ).splitlines()
    assert not Path(listing[0]).resolve().is_relative_to(ROOT), listing[0]
    assert listing[1].split() == ["charter.rules.yml", "mapek.rules.yml"]
    assert listing[2] == "True"
    assert listing[3].split() == ["charter-api.yaml", "daemon-api.yaml"]
    templates = sorted(p.name for p in (ROOT / "src/mape_k/console/templates").glob("*.html"))
    assert listing[4].split() == templates
    assert listing[5].split() == ["console.css", "console.js"]


def test_the_installed_demo_recovers_and_is_never_silent_for_long(
    installed: Path, tmp_path: Path
) -> None:
    offset = free_offset()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAPEK_", "PYTHON"))}
    env["PATH"] = f"{installed}{os.pathsep}{env.get('PATH', '')}"
    command = [str(installed / "mape-k"), "demo", "--once", "--fault", "member_crash"]
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(
        [*command, f"--port-offset={offset}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        killer = threading.Timer(DEMO_S, process.kill)  # a hung demo ends the read loop below
        killer.start()
        try:
            assert process.stdout is not None
            started = time.monotonic()
            lines.extend((time.monotonic() - started, line.rstrip()) for line in process.stdout)
            code = process.wait()
        finally:
            killer.cancel()
            process.kill()
    output = "\n".join(f"{at:6.1f} {line}" for at, line in lines)
    assert code == 0, output[-4000:]
    assert "RECOVERED: member_crash" in output, output[-4000:]
    arrivals = [0.0, *(at for at, _ in lines)]
    longest = max(b - a for a, b in itertools.pairwise(arrivals))
    assert longest <= HEARTBEAT_S + 1.5, f"{longest:.1f} s without a line:\n{output}"
