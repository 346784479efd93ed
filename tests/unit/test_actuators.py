"""User-defined actions: strict templates, the exec and http actuators, the executor on the
one actuator interface, and hostile alert labels refused with the reason in the record."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from builders import cause, policy
from builders import settings as settings_for
from mape_k.actuators import exec as exec_actuator
from mape_k.actuators import http as http_actuator
from mape_k.actuators import template
from mape_k.actuators.user import UserActuator, prepare, template_values
from mape_k.app import build
from mape_k.config import ActionSpec, ExecActuator, HttpActuator, load_settings
from mape_k.errors import ActuatorRejected, ActuatorTimeout, ActuatorUnavailable, ConfigError
from mape_k.integrations.alertmanager import Alert
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop.actions import Unresolvable
from mape_k.loop.execute import Executor
from mape_k.models import (
    ActionType,
    ExecutionStatus,
    RemediationAction,
    action_name,
    is_builtin,
)

HOSTILE = {
    "an option": "--config=/etc/passwd",
    "a bare option": "-rf",
    "a command substitution": "$(id)",
    "a shell sequence": "web; rm -rf /",
    "10 kB": "a" * 10_000,
    "a newline": "web\nx",
    "a trailing newline": "web\n",
    "a path out": "../../etc/shadow",
    "a space": "web server",
    "empty": "",
}


# --- templates -----------------------------------------------------------------------


async def no_journal(_execution: object) -> None:
    """The executor's journal where a test does not read it."""


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_value_never_renders(value: str) -> None:
    with pytest.raises(template.TemplateError, match=r"\{labels.unit\}"):
        template.render_argv(["restart", "{labels.unit}"], {"labels.unit": value}, {})


def test_a_value_is_one_argv_element_and_a_url_gets_it_percent_encoded() -> None:
    values = {"target": "web-1", "labels.unit": "api@2.service", "labels.path": "a/b"}
    argv = template.render_argv(["/bin/x", "--unit={labels.unit}", "{target}"], values, {})
    assert argv == ["/bin/x", "--unit=api@2.service", "web-1"]
    url = template.render_url("http://h:1/svc/{labels.path}?t={target}", values, {})
    assert url == "http://h:1/svc/a%2Fb?t=web-1"
    assert template.render("{{literal}} {target}", values, {}) == "{literal} web-1"


def test_a_missing_label_or_unknown_variable_is_refused_naming_it() -> None:
    with pytest.raises(template.TemplateError, match=r"\{labels.unit\} has no value"):
        template.render("{labels.unit}", {}, {})
    with pytest.raises(template.TemplateError, match="not a template variable"):
        template.parse("{secret}")
    with pytest.raises(template.TemplateError, match="not closed"):
        template.parse("{target")


def test_a_per_variable_pattern_narrows_or_widens_what_passes() -> None:
    patterns = {"labels.unit": r"^[a-z]+\.service$"}
    assert template.render("{labels.unit}", {"labels.unit": "web.service"}, patterns)
    with pytest.raises(template.TemplateError, match="does not match"):
        template.render("{labels.unit}", {"labels.unit": "web"}, patterns)
    wide = {"annotations.summary": r"^[ -~]{1,200}$"}
    text = "Web is down (5xx)"
    assert template.render("{annotations.summary}", {"annotations.summary": text}, wide) == text
    # The fixed rules hold under any pattern: no control characters, no leading '-'.
    for value in ("a\nb", "-x"):
        with pytest.raises(template.TemplateError):
            template.render("{annotations.summary}", {"annotations.summary": value}, wide)


# --- configuration -------------------------------------------------------------------

EXEC = {"type": "exec", "argv": ["/bin/true", "{target}"]}


def _load(tmp_path: Path, planner: dict[str, Any]) -> Any:
    path = tmp_path / "mapek.yaml"
    path.write_text(json.dumps({"planner": planner}))
    return load_settings(path, {}, {})[0]


def test_a_user_defined_action_loads_and_is_named_by_remediations(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        {
            "actions": {
                "restart_web": {"cost": 0.2, "benefit": 0.8, "settle_s": 5, "actuator": EXEC}
            },
            "remediations": {"service_down": [[{"type": "restart_web"}]]},
        },
    )
    assert settings.planner.actions["restart_web"].actuator.argv == ("/bin/true", "{target}")
    assert settings.planner.actions["scale_up"].actuator is None  # the built-ins stay
    [[candidate]] = settings.planner.remediations["service_down"]
    assert candidate.type == "restart_web"
    assert not is_builtin(candidate.type)
    assert action_name("scale_up") is ActionType.SCALE_UP


@pytest.mark.parametrize(
    ("planner", "message"),
    [
        ({"remediations": {"x": [[{"type": "nope"}]]}}, "neither a built-in action"),
        ({"actions": {"web": {"cost": 0, "benefit": 1, "settle_s": 1}}}, "needs an actuator"),
        (
            {"actions": {"scale_up": {"cost": 0, "benefit": 1, "settle_s": 1, "actuator": EXEC}}},
            "built-in Charter action",
        ),
        (
            {
                "actions": {
                    "web": {
                        "cost": 0,
                        "benefit": 1,
                        "settle_s": 1,
                        "actuator": {"type": "exec", "argv": ["restart", "{target}"]},
                    }
                }
            },
            "absolute path",
        ),
        (
            {
                "actions": {
                    "web": {
                        "cost": 0,
                        "benefit": 1,
                        "settle_s": 1,
                        "actuator": {"type": "exec", "argv": ["/bin/x", "{password}"]},
                    }
                }
            },
            "not a template variable",
        ),
        (
            {
                "actions": {
                    "web": {
                        "cost": 0,
                        "benefit": 1,
                        "settle_s": 1,
                        "actuator": {"type": "http", "url": "http://{labels.host}/x"},
                    }
                }
            },
            "host and port may not be templated",
        ),
        (
            {
                "actions": {
                    "web": {"cost": 0, "benefit": 1, "settle_s": 1, "actuator": EXEC},
                },
                "remediations": {"x": [[{"type": "web"}]]},
                "default_remediations": [[{"type": "web", "parameters": {"a": [1]}}]],
            },
            "must be a string, number or boolean",
        ),
        (
            {
                "actions": {
                    "web": {
                        "cost": 0,
                        "benefit": 1,
                        "settle_s": 1,
                        "actuator": {"type": "exec", "argv": ["/bin/x", "{params.n}"]},
                    }
                },
                "remediations": {"x": [[{"type": "web"}]]},
            },
            "needs parameters n",
        ),
        (
            {
                "actions": {
                    "web": {
                        "cost": 0,
                        "benefit": 1,
                        "settle_s": 1,
                        "actuator": EXEC,
                        "inverse": "scale_down",
                    }
                }
            },
            "not a user-defined action",
        ),
    ],
)
def test_a_bad_user_defined_action_is_refused_at_load(
    tmp_path: Path, planner: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, planner)


# --- exec ----------------------------------------------------------------------------

RECORDER = """
import json, os, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "cwd": os.getcwd(), "env": dict(os.environ)}) + "\\n")
print("restarted", *sys.argv[2:])
"""


def _exec(tmp_path: Path, *args: str, **fields: Any) -> ExecActuator:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    argv = [sys.executable, str(script), str(tmp_path / "calls.jsonl"), *args]
    return ExecActuator(type="exec", argv=tuple(argv), **fields)


def _calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_exec_runs_the_argv_with_only_the_allowed_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEP_ME", "1")
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    config = _exec(tmp_path, env=("KEEP_ME",), set_env={"MODE": "x"}, cwd=tmp_path)
    argv = [*config.argv, "web"]
    result = await exec_actuator.run(config, argv, operation="restart_web", key="k")
    [call] = _calls(tmp_path)
    assert call["argv"] == ["web"]
    assert call["cwd"] == str(tmp_path)
    assert call["env"].get("KEEP_ME") == "1"
    assert call["env"].get("MODE") == "x"
    assert "SECRET_TOKEN" not in call["env"]
    assert result.current["exit_code"] == 0
    assert result.current["output"].strip() == "restarted web"


async def test_exec_fails_on_its_exit_code_bounds_its_output_and_kills_on_timeout(
    tmp_path: Path,
) -> None:
    failing = ExecActuator(
        type="exec", argv=(sys.executable, "-c", "import sys; print('x' * 50000); sys.exit(3)")
    )
    with pytest.raises(ActuatorRejected, match="exited with 3"):
        await exec_actuator.run(failing, list(failing.argv), operation="a", key="k")
    chatty = ExecActuator(
        type="exec", argv=(sys.executable, "-c", "print('y' * 50000)"), max_output_bytes=100
    )
    result = await exec_actuator.run(chatty, list(chatty.argv), operation="a", key="k")
    assert result.current["output"].startswith("y" * 100)
    assert "more bytes not kept" in result.current["output"]
    slow = ExecActuator(
        type="exec", argv=(sys.executable, "-c", "import time; time.sleep(60)"), timeout_s=0.3
    )
    with pytest.raises(ActuatorTimeout, match="killed"):
        await exec_actuator.run(slow, list(slow.argv), operation="a", key="k")


# --- the executor on the actuator interface ------------------------------------------


def _specs(tmp_path: Path) -> dict[str, ActionSpec]:
    return {
        "restart_web": ActionSpec(
            cost=0.1,
            benefit=0.9,
            settle_s=1,
            actuator=_exec(tmp_path, "restart", "{target}", "{labels.unit}"),
            inverse="stop_web",
            knob="web",
            moves="up",
        ),
        "stop_web": ActionSpec(
            cost=0.1, benefit=0.1, settle_s=1, actuator=_exec(tmp_path, "stop", "{target}")
        ),
        "broken": ActionSpec(
            cost=0.1,
            benefit=0.1,
            settle_s=1,
            actuator=ExecActuator(type="exec", argv=("/bin/false",)),
        ),
    }


def _user_policy(*names: str, labels: dict[str, str] | None = None) -> Any:
    base = policy(cause=cause("service_down", "web"))
    hostile_cause = base.cause.__class__(**{**_fields(base.cause), "labels": labels or {}})
    actions = tuple(RemediationAction(action_type=n, target="web") for n in names)
    return base.__class__(**{**_fields(base), "cause": hostile_cause, "actions": actions})


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def test_prepare_refuses_a_hostile_label_naming_the_action_and_the_variable(
    tmp_path: Path,
) -> None:
    specs = _specs(tmp_path)
    ok = prepare(_user_policy("restart_web", labels={"unit": "web.service"}), specs)
    assert ok.actions[0].sets is not None
    with pytest.raises(Unresolvable, match=r"restart_web refused: \{labels.unit\}"):
        prepare(_user_policy("restart_web", labels={"unit": "$(id)"}), specs)
    with pytest.raises(Unresolvable, match="has no value"):
        prepare(_user_policy("restart_web"), specs)


async def test_a_failed_user_action_rolls_back_the_done_ones_through_their_inverse(
    tmp_path: Path,
) -> None:
    specs = _specs(tmp_path)
    journal: list[Any] = []

    async def record(execution: Any) -> None:
        journal.append(execution)

    executor = Executor(
        charter=None,
        config=load_settings(None, {}, {})[0].executor,
        actions=specs,
        journal=record,
    )
    planned = prepare(_user_policy("restart_web", "broken", labels={"unit": "web.service"}), specs)
    execution = await executor.execute_policy(planned)
    assert execution.status is ExecutionStatus.ROLLED_BACK
    assert [c["argv"] for c in _calls(tmp_path)] == [
        ["restart", "web", "web.service"],
        ["stop", "web"],  # the inverse, same values
    ]
    first = execution.actions[0]
    assert first.status is ExecutionStatus.ROLLED_BACK
    assert first.result["current"]["argv"][-3:] == ["restart", "web", "web.service"]
    assert "exited with 1" in (execution.actions[1].error or "")


async def test_a_built_in_action_without_a_charter_fails_cleanly(tmp_path: Path) -> None:
    executor = Executor(
        charter=None,
        config=load_settings(None, {}, {})[0].executor,
        actions=_specs(tmp_path),
        journal=no_journal,
    )
    planned = policy(cause=cause())
    resolved = planned.__class__(
        **{
            **_fields(planned),
            "actions": tuple(
                a.__class__(**{**_fields(a), "sets": ()})
                for a in (RemediationAction(ActionType.RESTART_SERVICE, "charter"),)
            ),
        }
    )
    execution = await executor.execute_policy(resolved)
    assert execution.status is ExecutionStatus.FAILED
    assert "no Charter" in (execution.actions[0].error or "")


# --- http ----------------------------------------------------------------------------


def _http(**fields: Any) -> HttpActuator:
    base: dict[str, Any] = {"type": "http", "url": "http://runbook.test/hooks/{target}"}
    return HttpActuator(**{**base, **fields})


async def test_http_sends_the_rendered_call_with_its_idempotency_key_and_secret(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "token"
    secret.write_text("Bearer s3cret\n")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"accepted": True})

    config = _http(
        header_files={"Authorization": secret},
        headers={"X-Cause": "{cause}"},
        body={"service": "{target}", "unit": "{labels.unit}", "n": 3},
    )
    spec = ActionSpec(cost=0, benefit=1, settle_s=1, actuator=config, idempotent=True)
    actuator = UserActuator(lambda: {"page": spec}, transport=httpx.MockTransport(handler))
    planned = _user_policy("page", labels={"unit": "a/b"})
    result = await actuator.apply(planned.actions[0], planned, "p:0:page")
    [request] = seen
    assert str(request.url) == "http://runbook.test/hooks/web"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["Idempotency-Key"] == "p:0:page"
    assert request.headers["X-Cause"] == "service_down"
    assert json.loads(request.content) == {"service": "web", "unit": "a/b", "n": 3}
    assert result.current == {"status": 202, "body": {"accepted": True}}
    assert "s3cret" not in json.dumps(result.current)


@pytest.mark.parametrize(
    ("method", "idempotent", "calls"),
    [("POST", False, 1), ("POST", True, 3), ("PUT", False, 3), ("GET", False, 3)],
)
async def test_http_retries_a_503_only_when_a_repeat_is_safe(
    method: str, idempotent: bool, calls: int
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, text="busy")

    async def no_sleep(_: float) -> None:
        return None

    request = http_actuator.HttpRequest(method=method, url="http://runbook.test/x")
    with pytest.raises(ActuatorUnavailable, match="answered 503"):
        await http_actuator.call(
            _http(method=method),
            request,
            operation="page",
            key="k",
            idempotent=idempotent,
            transport=httpx.MockTransport(handler),
            sleep=no_sleep,
        )
    assert len(seen) == calls


async def test_http_an_unexpected_status_is_a_rejection_never_retried() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(409, text="conflict")

    request = http_actuator.HttpRequest(method="PUT", url="http://runbook.test/x")
    with pytest.raises(ActuatorRejected, match="answered 409"):
        await http_actuator.call(
            _http(),
            request,
            operation="page",
            key="k",
            idempotent=True,
            transport=httpx.MockTransport(handler),
        )
    assert len(seen) == 1


def test_template_values_hold_the_target_cause_labels_annotations_and_parameters() -> None:
    planned = _user_policy("page", labels={"instance": "10.0.0.1:80"})
    action = RemediationAction("page", "web", parameters={"replicas": 3, "force": True})
    values = template_values(planned, action, "key")
    assert values["target"] == "web"
    assert values["cause"] == "service_down"
    assert values["labels.instance"] == "10.0.0.1:80"
    assert values["params.replicas"] == "3"
    assert values["params.force"] == "true"


# --- through the loop: a hostile alert label is refused, with the reason in the record ---


def _alert(unit: str, fingerprint: str) -> Alert:
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {
                "alertname": "WebDown",
                "cause": "service_down",
                "component": "web",
                "severity": "critical",
                "unit": unit,
            },
            "annotations": {"summary": "web is down", "runbook": "rb-42"},
            "startsAt": "2026-11-22T04:17:10.023Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": fingerprint,
        }
    )


@pytest.mark.parametrize("unit", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_a_hostile_label_gets_the_action_refused_with_a_reason_in_the_record(
    tmp_path: Path, clock: Any, unit: str
) -> None:
    await _run_with_alert(tmp_path, clock, unit, acted=False)


async def test_a_clean_label_runs_the_user_defined_action_through_the_loop(
    tmp_path: Path, clock: Any
) -> None:
    await _run_with_alert(tmp_path, clock, "web.service", acted=True)


async def _run_with_alert(tmp_path: Path, clock: Any, unit: str, *, acted: bool) -> None:
    recorder = _exec(tmp_path, "restart", "{target}", "{labels.unit}", "{annotations.runbook}")
    overrides = {
        "planner.actions": {
            "restart_web": {
                "cost": 0.1,
                "benefit": 0.9,
                "settle_s": 5,
                "actuator": recorder.model_dump(mode="json"),
            }
        },
        "planner.remediations": {"service_down": [[{"type": "restart_web"}]]},
    }
    settings = settings_for(tmp_path, **overrides)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts:
        parts.inbox.offer([_alert(unit, "f1")])
        clock.advance(5)
        record = await parts.orchestrator.run_once()
    calls = _calls(tmp_path)
    if acted:
        assert record["result"] == "acted", record.get("why")
        assert [c["argv"] for c in calls] == [["restart", "web", unit, "rb-42"]]
        return
    assert calls == []  # nothing ran
    assert record["result"] != "acted"
    [data] = [
        d for d in record["guard_decisions"] if d["guard"] == "data" and d["verdict"] == "block"
    ]
    assert "restart_web refused: {labels.unit}" in data["reason"]
    assert len(data["reason"]) < 400  # a 10 kB value is not copied into the record


# --- per-target breaker, reconcile, verification, secrets -----------------------------


async def test_repeated_failures_of_a_user_action_hold_its_target_for_a_human(
    tmp_path: Path, clock: Any
) -> None:
    overrides = {
        "planner.actions": {
            "fix_web": {
                "cost": 0.1,
                "benefit": 0.9,
                "settle_s": 1,
                "actuator": {"type": "exec", "argv": ["/bin/false", "{target}"]},
            }
        },
        "planner.remediations": {"service_down": [[{"type": "fix_web"}]]},
        "guards.cooldown.base_s": 0,
    }
    settings = settings_for(tmp_path, **overrides)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts:
        parts.inbox.offer([_alert("web.service", "f1")])
        results = []
        for _ in range(4):
            clock.advance(5)
            record = await parts.orchestrator.run_once()
            results.append(record["result"])
        hold = parts.orchestrator.envelope.needs_human.get("web")
    assert results[:3] == ["acted"] * 3  # each failed: exit code 1
    assert hold is not None
    assert "fix_web for service_down failed" in hold.reason
    assert results[3] != "acted"  # the target breaker holds it now


async def test_a_target_held_for_a_human_is_escalated_once_through_the_named_action(
    tmp_path: Path, clock: Any
) -> None:
    page = _exec(tmp_path, "page", "{target}", "{cause}", "{labels.unit}")
    overrides = {
        "planner.actions": {
            "fix_web": {
                "cost": 0.1,
                "benefit": 0.9,
                "settle_s": 1,
                "actuator": {"type": "exec", "argv": ["/bin/false", "{target}"]},
            },
            "page_oncall": {
                "cost": 0.0,
                "benefit": 0.0,
                "settle_s": 0,
                "actuator": page.model_dump(mode="json"),
            },
        },
        "planner.remediations": {"service_down": [[{"type": "fix_web"}]]},
        "guards.cooldown.base_s": 0,
        "guards.target_breaker.escalate": "page_oncall",
    }
    settings = settings_for(tmp_path, **overrides)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm")
    async with build(settings, world=world, clock=clock) as parts:
        parts.inbox.offer([_alert("web.service", "f1")])
        for _ in range(5):
            clock.advance(5)
            await parts.orchestrator.run_once()
    assert [c["argv"] for c in _calls(tmp_path)] == [
        ["page", "web", "service_down", "web.service"]  # once, when the hold opened
    ]


def test_escalation_must_name_a_user_defined_action(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="escalate"):
        settings_for(tmp_path, **{"guards.target_breaker.escalate": "restart_service"})


async def test_an_interrupted_user_action_is_never_resent_and_its_done_steps_are_undone(
    tmp_path: Path,
) -> None:
    specs = _specs(tmp_path)
    executor = Executor(
        charter=None,
        config=load_settings(None, {}, {})[0].executor,
        actions=specs,
        journal=no_journal,
    )
    planned = prepare(
        _user_policy("restart_web", "stop_web", labels={"unit": "web.service"}), specs
    )
    started = await executor.execute_policy(planned)
    done, second = started.actions
    interrupted = started.__class__(
        **{
            **_fields(started),
            "id": "interrupted",
            "status": ExecutionStatus.IN_PROGRESS,
            "actions": (
                done,
                second.__class__(**{**_fields(second), "status": ExecutionStatus.IN_PROGRESS}),
            ),
        }
    )
    before = len(_calls(tmp_path))
    reconciled = await executor.reconcile(interrupted)
    assert reconciled.status is ExecutionStatus.ROLLED_BACK
    assert reconciled.actions[1].status is ExecutionStatus.FAILED
    assert "whether it took effect is unknown" in (reconciled.actions[1].error or "")
    assert reconciled.actions[0].status is ExecutionStatus.ROLLED_BACK
    assert [c["argv"] for c in _calls(tmp_path)[before:]] == [["stop", "web"]]  # the undo only


def test_a_user_action_whose_effect_cannot_be_read_is_unknown_never_success(
    tmp_path: Path,
) -> None:
    from builders import execution, observation  # noqa: PLC0415
    from mape_k.loop.execute import PendingVerification  # noqa: PLC0415
    from mape_k.models import OutcomeType  # noqa: PLC0415

    specs = _specs(tmp_path)
    executor = Executor(
        charter=None,
        config=load_settings(None, {}, {})[0].executor,
        actions=specs,
        journal=no_journal,
    )
    done = execution(policy=_ruled_policy())
    pending = PendingVerification(execution=done, due_at=0.0, deadline=10.0)
    # The rule's series vanished (the service is gone from Prometheus): not "cleared".
    outcome, _ = executor.verify_execution(pending, observation(), now=5.0)
    assert outcome is None
    outcome, _ = executor.verify_execution(pending, observation(), now=11.0)
    assert outcome is not None
    assert outcome.outcome is OutcomeType.UNKNOWN
    assert outcome.action_type == "restart_web"


def _ruled_policy() -> Any:
    base = _user_policy("restart_web", labels={"unit": "web.service"})
    ruled = base.cause.__class__(
        **{**_fields(base.cause), "query": "error_ratio", "threshold": 0.5, "value": 0.9}
    )
    return base.__class__(**{**_fields(base), "cause": ruled})


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_value_never_reaches_a_url_or_a_body(value: str) -> None:
    with pytest.raises(template.TemplateError):
        template.render_url("http://h/x/{labels.unit}", {"labels.unit": value}, {})
    with pytest.raises(template.TemplateError):
        template.render_json({"unit": "{labels.unit}"}, {"labels.unit": value}, {})


def test_an_inline_credential_header_is_masked_in_the_effective_config(tmp_path: Path) -> None:
    from mape_k.config import effective_config  # noqa: PLC0415

    http = {
        "type": "http",
        "url": "http://h/x",
        "headers": {"Authorization": "Bearer hunter2", "X-Team": "web"},
    }
    planner = {"actions": {"page": {"cost": 0, "benefit": 1, "settle_s": 1, "actuator": http}}}
    shown = effective_config(_load(tmp_path, planner), {})
    assert shown["planner.actions.page.actuator.headers.Authorization"]["value"] == "**********"
    assert shown["planner.actions.page.actuator.headers.X-Team"]["value"] == "web"
