"""Benchmark 9: fuzz cases tried against the daemon's OpenAPI document, and 5xx seen (target 0).

The real daemon (`mape-k run --mock`, webhook and admin tokens from files, a fresh knowledge
file) on a free 127.0.0.1 port, attacked by schemathesis (`--checks all`) with the document
it serves at GET /openapi.json: every phase that applies, a fixed number of examples per
operation, a fixed seed, a wall-clock bound, each security scheme given its own token.
Counted from schemathesis's NDJSON event report: cases and answers by status class per
operation; every 5xx, a 503 the document declares as a state (/readyz while the fuzzer's
own POST /api/v1/freeze holds, say) told apart from a 500 or an undeclared 5xx; every other
failed check (undocumented status, response schema, valid input refused, ...) with one
request and response. The daemon must be alive after the run and its log JSON only, with
no http_handler_failed. Needs schemathesis (the `dev` extra).
Usage: python -m bench.api_fuzz [--max-examples N] [--seed S] [--max-seconds S] [--keep DIR]
                                [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import collections
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Verdict, table, write_json
from bench.idle_cost import process
from bench.webhook_ingest import free_port

NAME = "9 API fuzzing"
WEBHOOK_TOKEN = "bench-fuzz-webhook-token"  # throwaway tokens for a loopback run
ADMIN_TOKEN = "bench-fuzz-admin-token"
SERVER_ERROR_CHECK = "not_a_server_error"  # 5xx are tallied from the answers themselves
FAILED_LEVELS = {"error", "critical"}
SHOWN = 300  # characters of a body shown for a finding


@dataclass
class Operation:
    cases: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)


@dataclass
class Finding:
    """One kind of finding (operation, what, status): how often, and its first example."""

    operation: str
    what: str  # the failed check, or for a 5xx "declared state" / "error"
    status: int | None
    request: str
    response: str
    message: str = ""
    count: int = 0


@dataclass
class Run:
    operations: dict[str, Operation] = field(default_factory=dict)
    server_errors: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)
    failures: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(op.cases for op in self.operations.values())

    def count(self, findings: dict[Any, Finding], what: str | None = None) -> int:
        return sum(f.count for f in findings.values() if what is None or f.what == what)


@dataclass
class Log:
    lines: int = 0
    not_json: int = 0
    failed: int = 0  # http_handler_failed or error-level events
    first: str = ""  # the first line that is not JSON, or the first failure


def _decode(body: Any) -> str:
    if not body:
        return ""
    raw = base64.b64decode(body["$base64"]) if "$base64" in body else str(body).encode()
    text = raw.decode("utf-8", "backslashreplace")
    return text if len(text) <= SHOWN else text[:SHOWN] + f"... ({len(raw):,} bytes)"


def _request_text(request: dict[str, Any]) -> str:
    headers = request.get("headers") or {}
    notes = [
        "token" if "Authorization" in headers else "no token",
        *headers.get("Content-Type", []),
    ]
    target = "/" + request["uri"].split("//", 1)[-1].split("/", 1)[-1]
    body = _decode(request.get("body"))
    return f"{request['method']} {target} ({', '.join(notes)})" + (f" {body}" if body else "")


def _declared(spec: dict[str, Any], label: str) -> set[int]:
    method, path = label.split(" ", 1)
    responses = spec["paths"][path][method.lower()]["responses"]
    return {int(code) for code in responses if code.isdigit()}


def _note(findings: dict[Any, Finding], finding: Finding) -> None:
    key = (finding.operation, finding.what, finding.status)
    findings.setdefault(key, finding).count += 1


def _events(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run stopped at the wall-clock bound


def parse(events: Path, summary: Path, spec: dict[str, Any]) -> Run:
    """Cases, answers and failures from schemathesis's NDJSON events; warnings from its JSON."""
    run = Run()
    if summary.exists():
        warnings = json.loads(summary.read_text(encoding="utf-8")).get("warnings") or {}
        run.warnings = [f"{kind} ({', '.join(ops)})" for kind, ops in warnings.items() if ops]
    for event in _events(events):
        if "PhaseFinished" in event:
            phase = event["PhaseFinished"]
            run.phases[phase["phase"]["name"]] = phase["status"]
        scenario = event.get("ScenarioFinished")
        if scenario is None or "interactions" not in scenario["recorder"]:
            continue
        recorder = scenario["recorder"]
        label = recorder["label"]
        operation = run.operations.setdefault(label, Operation())
        for case_id, interaction in recorder["interactions"].items():
            operation.cases += 1
            response = interaction.get("response")
            status = response["status_code"] if response else None
            request = _request_text(interaction["request"])
            answer = f"{status} {_decode(response.get('content'))}" if response else "no answer"
            if status is not None:
                operation.statuses[status] += 1
            if status is not None and status >= 500:
                declared = status != 500 and status in _declared(spec, label)
                what = "declared state" if declared else "error"
                _note(run.server_errors, Finding(label, what, status, request, answer))
            for check in recorder["checks"].get(case_id, []):
                if check["status"] != "failure" or check["name"] == SERVER_ERROR_CHECK:
                    continue
                failure = check.get("failure_info", {}).get("failure", {})
                what = f"{check['name']} ({failure.get('code', '?')} {failure.get('title', '')})"
                message = " ".join(str(failure.get("message", "")).split())[:SHOWN]
                _note(run.failures, Finding(label, what, status, request, answer, message))
    return run


def log_problems(path: Path) -> Log:
    found = Log()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        found.lines += 1
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            found.not_json += 1
            found.first = found.first or line
            continue
        if event.get("event") == "http_handler_failed" or event.get("level") in FAILED_LEVELS:
            found.failed += 1
            found.first = found.first or line
    return found


def fetch_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as answer:  # a 127.0.0.1 URL only
        return json.loads(answer.read())  # type: ignore[no-any-return]


def healthz_status(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def write_configs(tmp: Path) -> tuple[Path, Path]:
    """The daemon's config (tokens from files) and schemathesis's (a token per scheme)."""
    (tmp / "webhook_token").write_text(WEBHOOK_TOKEN + "\n", encoding="utf-8")
    (tmp / "admin_token").write_text(ADMIN_TOKEN + "\n", encoding="utf-8")
    daemon = tmp / "mape_k.yaml"
    settings = {
        "server": {
            "webhook_token_file": str(tmp / "webhook_token"),
            "admin_token_file": str(tmp / "admin_token"),
        },
        "knowledge": {"path": str(tmp / "knowledge.sqlite3")},
        "logging": {"format": "json", "level": "info"},
    }
    daemon.write_text(json.dumps(settings), encoding="utf-8")  # JSON is YAML
    fuzzer = tmp / "schemathesis.toml"
    fuzzer.write_text(
        f'[auth.openapi.webhookToken]\nbearer = "{WEBHOOK_TOKEN}"\n'
        f'[auth.openapi.adminToken]\nbearer = "{ADMIN_TOKEN}"\n',
        encoding="utf-8",
    )
    return daemon, fuzzer


def schemathesis_argv(url: str, config: Path, reports: Path, args: argparse.Namespace) -> list[str]:
    return [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color"),
        *("run", f"{url}/openapi.json", "--url", url, "--checks", "all"),
        *("--max-examples", str(args.max_examples), "--seed", str(args.seed)),
        # One worker: with two, schemathesis 4.32 ended the webhook's fuzzing after a few
        # cases and called it a success. Every failing case counts, not the first only.
        *("--workers", "1", "--continue-on-failure", "--request-timeout", "10"),
        *("--generation-database", "none", "--report", "ndjson,json"),
        *("--report-ndjson-path", str(reports / "events.ndjson")),
        *("--report-json-path", str(reports / "summary.json")),
    ]


def _cell(text: str) -> str:
    """A value inside a markdown table cell: one line, no pipes."""
    return "`" + " ".join(text.split()).replace("|", "\\|").replace("`", "'") + "`"


def _findings_table(findings: dict[Any, Finding], *, messages: bool) -> str:
    headers = ["operation", "what", "status", "cases", "first request", "first response"]
    rows = [
        [f.operation, f.what, f.status, f.count, _cell(f.request), _cell(f.response)]
        + ([_cell(f.message)] if messages else [])
        for f in sorted(findings.values(), key=lambda f: (f.operation, f.what))
    ]
    return table([*headers, *(["message"] if messages else [])], rows, left=2)


def report(run: Run, spec: dict[str, Any], verdicts: list[Verdict], facts: str) -> None:
    classes = ("2xx", "4xx", "5xx")

    def row(label: str, op: Operation) -> list[object]:
        by_class = collections.Counter(f"{code // 100}xx" for code in op.statuses.elements())
        statuses = ", ".join(f"{code} x{n}" for code, n in sorted(op.statuses.items()))
        return [label, f"{op.cases:,}", *(f"{by_class[c]:,}" for c in classes), statuses]

    total = Operation()
    for op in run.operations.values():
        total.cases += op.cases
        total.statuses.update(op.statuses)
    rows = [row(label, op) for label, op in sorted(run.operations.items())]
    rows.append(["**all**", *(f"**{cell}**" for cell in row("", total)[1:5]), ""])
    documented = sum(len(item) for item in spec["paths"].values())
    print("### 9. API fuzzing (schemathesis against the daemon's OpenAPI document)\n")
    print(table(["operation", "cases", *classes, "statuses"], rows))
    print(
        f"\n{len(run.operations)} of {documented} documented operations tested (schemathesis "
        f"skips the document's own URL), {run.cases:,} cases; {facts}; phases: "
        + ", ".join(f"{name} {status}" for name, status in run.phases.items())
        + ".\n"
    )
    print(
        f"5xx seen: {run.count(run.server_errors)}; 500 or undeclared: "
        f"{run.count(run.server_errors, 'error')} (target 0): **{verdicts[0].word}**."
    )
    if run.server_errors:
        print("\n" + _findings_table(run.server_errors, messages=False))
    print(
        f"\nOther failed checks: {len(run.failures)} kinds, {run.count(run.failures)} cases "
        f"(target 0): **{verdicts[1].word}**."
    )
    if run.failures:
        print("\n" + _findings_table(run.failures, messages=True))
    if run.warnings:
        print("\nschemathesis warnings: " + "; ".join(run.warnings) + ".")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=500, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-seconds", type=float, default=150.0, help="wall-clock bound")
    parser.add_argument("--keep", type=Path, help="copy the reports and logs into this folder")
    parser.add_argument("--json", help="write the verdict rows here (for the runner)")
    args = parser.parse_args()
    if importlib.util.find_spec("schemathesis") is None:
        print("schemathesis is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 1
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPEK_")}
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as name:
        tmp = Path(name)
        daemon_config, fuzzer_config = write_configs(tmp)
        daemon_argv = [sys.executable, "-m", "mape_k", "run", "--mock"]
        daemon_argv += ["--config", str(daemon_config), "--port", str(port)]
        with process(daemon_argv, port, log=tmp / "daemon.log", env=env) as daemon:
            spec = fetch_json(f"{url}/openapi.json")
            started = time.monotonic()
            try:
                done = subprocess.run(
                    schemathesis_argv(url, fuzzer_config, tmp, args),
                    cwd=tmp,  # whatever it leaves behind goes with the temp dir
                    capture_output=True,
                    text=True,
                    timeout=args.max_seconds,
                    check=False,
                    env=env,
                )
                output, ended = done.stdout + done.stderr, f"exit {done.returncode}"
            except subprocess.TimeoutExpired:
                output, ended = "", f"stopped at the {args.max_seconds:g} s bound"
            wall = time.monotonic() - started
            health_after = healthz_status(url)
            alive = daemon.poll() is None
        (tmp / "schemathesis.out").write_text(output, encoding="utf-8")
        run = parse(tmp / "events.ndjson", tmp / "summary.json", spec)
        logged = log_problems(tmp / "daemon.log")
        if args.keep is not None:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
    if not run.operations:
        print(f"schemathesis tested nothing ({ended}):\n{output[-3000:]}", file=sys.stderr)
        return 1
    errors = run.count(run.server_errors, "error")
    declared = run.count(run.server_errors, "declared state")
    bounded = "" if ended.startswith("exit") else f", {ended}"
    healthy = alive and health_after == 200 and not logged.not_json and not logged.failed
    verdicts = [
        Verdict(
            NAME,
            "5xx answers (500 or undeclared) to fuzzed requests",
            f"{errors} in {run.cases:,} cases (+{declared} 503 the document declares{bounded})",
            "0",
            errors == 0,
        ),
        Verdict(
            NAME,
            "other failed checks (status, schema, valid input refused, ...)",
            f"{len(run.failures)} kinds, {run.count(run.failures)} cases",
            "0",
            not run.failures,
        ),
        Verdict(
            NAME,
            "daemon after the run",
            f"{'alive' if alive else 'DEAD'}, /healthz {health_after}, {logged.not_json}"
            f" non-JSON log lines, {logged.failed} handler failures",
            "alive, 200, 0, 0",
            healthy,
        ),
    ]
    facts = (
        f"{wall:.0f} s ({ended}); `--checks all --max-examples {args.max_examples} --seed "
        f"{args.seed}`, 1 worker"
    )
    report(run, spec, verdicts, facts)
    print(
        f"\nDaemon after the run: {verdicts[2].measured}; its log: {logged.lines:,} lines"
        + (f"; the first bad one: {_cell(logged.first[:SHOWN])}" if logged.first else "")
        + f": **{verdicts[2].word}**. Reproduce: `python -m bench.api_fuzz --max-examples "
        f"{args.max_examples} --seed {args.seed} --keep DIR` (DIR gets the reports and logs)."
    )
    write_json(args.json, verdicts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
