"""The `mape-k` command line: run, once, check-config, status, charter-sim, demo, simulate,
replay.

This module turns arguments into settings (CLI layer of the precedence) and signals into
events (SIGTERM/SIGINT → stop, SIGHUP → reload); everything else lives in app.py.
Exit status: 0 ok, 1 invalid configuration or failed command, 2 usage error, 130 Ctrl-C,
141 (128 + SIGPIPE, what a shell reports for `yes | head`) when the reader of stdout went
away. Every error is one line on stderr, never a traceback; `python -X dev -m mape_k ...`
shows the traceback of an unexpected one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mape_k import __version__
from mape_k.causes import FAULT_KINDS
from mape_k.config import (
    Settings,
    Sources,
    effective_config,
    load_settings,
    read_secret,
    remediation_table,
    service_links,
)
from mape_k.errors import ConfigError, MapekError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mape-k", description="Keeps a Charter service healthy: the MAPE-K loop."
    )
    parser.add_argument("--version", action="version", version=f"mape-k {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def loop_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="YAML file (default: $MAPEK_CONFIG)")
        p.add_argument("--mock", action="store_true", help="mock Charter and mock metrics")
        p.add_argument("--fault", choices=FAULT_KINDS, help="start the mock committee with a fault")
        p.add_argument("--dry-run", action="store_true", help="decide and record; mutate nothing")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any setting, e.g. --set orchestrator.interval_s=5",
        )

    run = sub.add_parser("run", help="run the daemon (loop + HTTP server)")
    loop_options(run)
    run.add_argument("--host", help="server.host")
    run.add_argument("--port", type=int, help="server.port")

    once = sub.add_parser("once", help="one iteration; a JSON summary on stdout")
    loop_options(once)

    check = sub.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("file", type=Path)

    status = sub.add_parser("status", help="print the daemon's /stats for a terminal")
    status.add_argument("--url", default="http://127.0.0.1:8001", help="the daemon's base URL")
    status.add_argument("--json", action="store_true", help="raw JSON")
    status.add_argument(
        "--token-file",
        type=Path,
        help="the viewer (or admin) token, when the daemon sets server.viewer_token"
        " (default: $MAPEK_TOKEN)",
    )

    sim = sub.add_parser("charter-sim", help="run the Charter simulator service")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8000)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--regime", choices=("calm", "volatile", "spike"), default="calm")
    sim.add_argument("--token-file", type=Path, help="require this bearer token")

    demo = sub.add_parser("demo", help="the whole stack as local processes")
    demo.add_argument("--fault", choices=(*FAULT_KINDS, "none"), default="error_burst")
    demo.add_argument("--once", action="store_true", help="exit after recovery")
    demo.add_argument("--port-offset", type=int, default=0)

    from mape_k.quality.options import add_arguments  # noqa: PLC0415 - its own options

    simulate = sub.add_parser(
        "simulate",
        help="scenarios against mape-k and the baselines on a simulated clock (docs/quality.md)",
    )
    add_arguments(simulate)

    replay = sub.add_parser(
        "replay",
        help="decide a recorded period again with another config (docs/replay.md)",
    )
    replay.add_argument(
        "--store", required=True, help="a SQLite store file or a postgresql:// URL (read only)"
    )
    replay.add_argument("--config", required=True, type=Path, help="the config to replay with")
    replay.add_argument("--since", help="from this time: ISO 8601 (UTC) or Unix seconds")
    replay.add_argument("--until", help="to this time: ISO 8601 (UTC) or Unix seconds")
    replay.add_argument("--json", action="store_true", help="the same as JSON")
    return parser


def _cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in getattr(args, "overrides", []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = _parse_value(value)
    if getattr(args, "mock", False):
        overrides["charter.mode"] = "mock"
    if getattr(args, "dry_run", False):
        overrides["executor.dry_run"] = True
    if getattr(args, "host", None) and args.command == "run":
        overrides["server.host"] = args.host
    if getattr(args, "port", None) is not None and args.command == "run":
        overrides["server.port"] = args.port
    return overrides


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load(args: argparse.Namespace, *, warn: bool = True) -> tuple[Settings, Sources]:
    """Settings from the arguments, the environment and the file; `warn` once per process."""
    config = args.config or (
        Path(os.environ["MAPEK_CONFIG"]) if "MAPEK_CONFIG" in os.environ else None
    )
    loaded = load_settings(config, os.environ, _cli_overrides(args))
    if warn:
        _warn_service_links()
    return loaded


def _warn_service_links() -> None:
    """One line on stderr (logging is not configured yet) naming what the loader ignored."""
    names = service_links(os.environ)
    if names:
        _stderr_line(
            f"warning: ignoring Kubernetes service-link variables {', '.join(names)}"
            " (a Service named mapek; `enableServiceLinks: false` in the pod spec drops them)"
        )


def _check_config(args: argparse.Namespace) -> int:
    settings, sources = load_settings(args.file, os.environ)
    _warn_service_links()
    print(f"# {args.file}: valid. Effective configuration (source in brackets):")
    for path, item in effective_config(settings, sources).items():
        source = item["source"]
        mark = "" if source.startswith(("defaults", "file:")) else "   <-- " + source
        print(f"{path} = {json.dumps(item['value'])}{mark}")
    print(
        "# Effective remediations (planner.remediations merged with the built-ins per cause):"
        " cause = candidates in order, [benefit override]   (source)"
    )
    for cause, candidates, source in remediation_table(settings, sources):
        print(f"{cause} = {candidates}   ({source})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from mape_k.app import run  # noqa: PLC0415 - keep `check-config` and `--help` light

    settings, _ = load(args)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        reload = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        return await run(
            settings,
            stop=stop,
            reload=reload,
            reloader=lambda: load(args, warn=False)[0],
            fault=args.fault,
        )

    return asyncio.run(main())


def _once(args: argparse.Namespace) -> int:
    from mape_k.app import run_once  # noqa: PLC0415

    settings, sources = load(args)
    summary = asyncio.run(run_once(settings, fault=args.fault, sources=sources))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _status(args: argparse.Namespace) -> int:
    from mape_k.status import fetch_status, render_status  # noqa: PLC0415

    token = os.environ.get("MAPEK_TOKEN") or None
    if args.token_file is not None:
        token = read_secret(None, args.token_file, file_key="--token-file")
    stats = asyncio.run(fetch_status(args.url, token=token))
    print(json.dumps(stats, indent=2) if args.json else render_status(stats))
    return 0


def _sim_token(path: Path | None) -> str | None:
    if path is None:
        return None
    # An empty file is an error there: it must not silently turn authentication off.
    return read_secret(None, path, file_key="--token-file")


def _charter_sim(args: argparse.Namespace) -> int:
    from mape_k.sim import service  # noqa: PLC0415

    token = _sim_token(args.token_file)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.serve(
            host=args.host,
            port=args.port,
            seed=args.seed,
            regime=args.regime,
            token=token,
            stop=stop,
        )

    try:
        asyncio.run(main())
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MapekError(
            f"--host/--port: cannot listen on {args.host}:{args.port}: {reason}"
        ) from exc
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mape_k.demo import main as demo_main  # noqa: PLC0415

    return asyncio.run(demo_main(fault=args.fault, once=args.once, port_offset=args.port_offset))


def _simulate(args: argparse.Namespace) -> int:
    from mape_k.quality.cli import simulate  # noqa: PLC0415
    from mape_k.quality.suite import quiet  # noqa: PLC0415

    quiet()  # the daemon's logs of thousands of simulated iterations would drown the answer
    return simulate(args)


def _replay(args: argparse.Namespace) -> int:
    from mape_k.replay import command  # noqa: PLC0415

    status, text = command(args)
    if status == 0:
        print(text)
    else:
        _stderr_line(text)
    return status


COMMANDS = {
    "run": _run,
    "once": _once,
    "check-config": _check_config,
    "status": _status,
    "charter-sim": _charter_sim,
    "demo": _demo,
    "simulate": _simulate,
    "replay": _replay,
}


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _dispatch(argv)
        finally:
            # Output still buffered must fail here, where it is handled, not at interpreter exit.
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`mape-k check-config FILE | head`): nothing to report.
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _dispatch(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except ConfigError as exc:
        _stderr_line(f"invalid configuration: {exc}")
    except MapekError as exc:
        _stderr_line(str(exc))
    except OSError as exc:
        _stderr_line(_os_error(exc))
    except Exception as exc:
        if sys.flags.dev_mode:
            raise
        _stderr_line(
            f"unexpected error: {type(exc).__name__}: {exc}"
            " (a bug; `python -X dev -m mape_k ...` shows the traceback)"
        )
    return 1


def _stderr_line(message: str) -> None:
    """One line on stderr, whatever the message holds; a closed stderr is not an error."""
    with contextlib.suppress(OSError, ValueError):
        print(f"mape-k: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _os_error(exc: OSError) -> str:
    if exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
