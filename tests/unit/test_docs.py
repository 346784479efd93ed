"""Documentation that is generated or promised stays true."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mape_k import cli
from mape_k.config import RESTART_REQUIRED, load_settings, reference_markdown

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


def _worked_examples() -> list[str]:
    text = (ROOT / "docs" / "remediate-your-service.md").read_text(encoding="utf-8")
    examples = text[text.index("## Worked examples") :]
    return re.findall(r"```yaml\n(.*?)```", examples, flags=re.DOTALL)


def test_every_worked_example_of_remediate_your_service_is_a_config_check_config_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("MAPEK_"):
            monkeypatch.delenv(name)
    examples = _worked_examples()
    assert len(examples) == 4  # systemd, Kubernetes, Docker, a runbook webhook
    for index, example in enumerate(examples):
        path = tmp_path / f"example-{index}.yaml"
        path.write_text(example, encoding="utf-8")
        assert cli.main(["check-config", str(path)]) == 0, capsys.readouterr().err
        settings, _ = load_settings(path, {})
        assert any(spec.actuator is not None for spec in settings.planner.actions.values())
