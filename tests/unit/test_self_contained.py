"""The repository is self-contained: no path in src/, tests/, bench/ or the build points outside.

A user's clone has nothing beside it, so a test, a benchmark or the package reading
`../shared/...` (or any `..` that climbs above the checkout) fails for them. The check reads
every tracked file of those folders and resolves what looks like a path: `Path(__file__)`
chains in Python (`.parent`, `.parents[N]`, then `/ "seg"` parts), `..` segments in string
literals, and the relative `rule_files` of promtool's test files.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("src", "tests", "bench", ".ci", "deploy", "Makefile", "Dockerfile", "pyproject.toml")
# Captured data (paths of the capture machine), and this file's own examples of bad paths.
SKIPPED = ("tests/fixtures/", "tests/unit/test_self_contained.py")

_FILE_CHAIN = re.compile(
    r"Path\(__file__\)(?:\.resolve\(\))?(?P<ups>(?:\.parent\b|\.parents\[\d+\])*)"
    r"(?P<parts>(?:\s*/\s*[\"'][^\"']*[\"'])*)"
)
_UP = re.compile(r"\.parent\b|\.parents\[(\d+)\]")
_PART = re.compile(r"[\"']([^\"']*)[\"']")
_DOTDOT = re.compile(r"[\"'`\s=(](?:\.\./)+[\w.-]+|[\"']\.\.[\"']")


def _inside(path: Path) -> bool:
    return path.resolve().is_relative_to(ROOT)


def escapes(relpath: str, text: str) -> list[str]:
    """The path expressions in `text` (a file at `relpath`) that resolve outside ROOT."""
    here = (ROOT / relpath).parent
    found: list[str] = []
    if relpath.endswith(".py"):
        for match in _FILE_CHAIN.finditer(text):
            base = ROOT / relpath
            for up in _UP.finditer(match.group("ups")):
                base = base.parents[int(up.group(1))] if up.group(1) else base.parent
            for part in _PART.findall(match.group("parts")):
                base /= part
            if not _inside(base):
                found.append(match.group(0))
    for match in _DOTDOT.finditer(text):
        literal = match.group(0).strip("\"'`=( \n\t")
        if literal == ".." or not _inside(here / literal):
            found.append(match.group(0).strip())
    if "shared/fixtures" in text or re.search(r"/\s*[\"']shared[\"']", text):
        found.append("shared/fixtures")
    if relpath.endswith(".test.yml"):
        document = yaml.safe_load(text) or {}
        found.extend(f for f in document.get("rule_files", []) if not _inside(here / f))
    return found


def _tracked() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [p for p in listing if not p.startswith(SKIPPED) and (ROOT / p).is_file()]


def test_no_tracked_file_points_outside_the_repository() -> None:
    files = _tracked()
    assert any(p.startswith("src/") for p in files)
    bad: dict[str, list[str]] = {}
    for relpath in files:
        try:
            text = (ROOT / relpath).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        if hits := escapes(relpath, text):
            bad[relpath] = hits
    assert bad == {}


@pytest.mark.parametrize(
    ("relpath", "text"),
    [
        ("tests/conftest.py", 'F = Path(__file__).resolve().parents[1].parent / "shared" / "x"'),
        ("tests/unit/t.py", 'F = Path(__file__).parents[2] / ".." / "shared" / "fixtures"'),
        ("tests/unit/server/h.py", "F = Path(__file__).parents[4]"),
        ("bench/common.py", 'FIXTURES = REPO.parent / "shared" / "fixtures"'),
        ("Makefile", "test:\n\tcp ../../other/file ."),
        ("tests/promtool/x.test.yml", "rule_files:\n- ../../../rules.yml\n"),
    ],
)
def test_the_check_catches_paths_that_climb_out(relpath: str, text: str) -> None:
    assert escapes(relpath, text)


@pytest.mark.parametrize(
    ("relpath", "text"),
    [
        ("tests/unit/t.py", 'ROOT = Path(__file__).resolve().parents[2] / "docs"'),
        ("tests/promtool/x.test.yml", "rule_files:\n- ../../src/mape_k/staging/r.yml\n"),
        ("src/mape_k/a.py", '"""Models shared by the phases."""'),
    ],
)
def test_the_check_accepts_paths_inside(relpath: str, text: str) -> None:
    assert escapes(relpath, text) == []
