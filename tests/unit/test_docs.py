"""Documentation that is generated or promised stays true."""

from __future__ import annotations

from pathlib import Path

from mape_k.config import RESTART_REQUIRED, reference_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_generated_from_the_models():
    on_disk = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert on_disk == reference_markdown(), "docs/configuration.md drifted: run `make docs`"


def test_every_setting_is_documented_in_the_reference():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for key in ("prometheus.url", "charter.mode", "server.port", "knowledge.path", "guards.frozen"):
        assert f"`{key}`" in text


def test_operations_lists_every_setting_a_reload_cannot_apply():
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    reload_section = text[text.index("## Reload the config (SIGHUP)") :]
    for path in RESTART_REQUIRED:
        assert f"`{path}" in reload_section, f"docs/operations.md: {path} needs a restart"
