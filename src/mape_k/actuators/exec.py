"""The `exec` actuator: run a program with an argv list (never a shell), bounded.

The argv is rendered by the strict templates (one value, one element, checked); the
program runs in its own session with stdin closed, the configured working directory and
only the allow-listed environment; stdout and stderr are read to the end (so the program
never blocks on a full pipe) and the head of them, `max_output_bytes`, is kept for the
journal. Past `timeout_s` the whole process group is killed. An exit code outside
`success_exit_codes` fails the action, with the output in the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping

from mape_k.config import ExecActuator
from mape_k.errors import ActuatorRejected, ActuatorTimeout, ActuatorUnavailable
from mape_k.integrations.charter.base import ActionResult

CHUNK = 65536


def environment(config: ExecActuator, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed variables of `source` (the daemon's environment) plus the fixed ones."""
    source = os.environ if source is None else source
    env = {name: source[name] for name in config.env if name in source}
    env.update(config.set_env)
    return env


async def _read_head(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, int]:
    """The first `limit` bytes of `stream`, and how many it had in all (read to EOF)."""
    head = bytearray()
    total = 0
    while chunk := await stream.read(CHUNK):
        total += len(chunk)
        if len(head) < limit:
            head += chunk[: limit - len(head)]
    return bytes(head), total


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def run(config: ExecActuator, argv: list[str], *, operation: str, key: str) -> ActionResult:
    """Run `argv`; its result (argv, exit code, bounded output) or an ActuatorError."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=config.cwd,
            env=environment(config),
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as exc:
        raise ActuatorUnavailable(
            f"cannot run {argv[0]}: {exc.strerror or exc}", operation=operation
        ) from exc
    assert process.stdout is not None
    try:
        async with asyncio.timeout(config.timeout_s):
            head, total = await _read_head(process.stdout, config.max_output_bytes)
            code = await process.wait()
    except TimeoutError:
        _kill(process)
        await process.wait()
        raise ActuatorTimeout(
            f"{argv[0]} still running after {config.timeout_s:g} s: killed", operation=operation
        ) from None
    except asyncio.CancelledError:
        _kill(process)
        raise
    output = head.decode("utf-8", errors="replace")
    if total > len(head):
        output += f"\n... ({total - len(head)} more bytes not kept)"
    if code not in config.success_exit_codes:
        tail = output.strip()[-300:]
        raise ActuatorRejected(
            f"{argv[0]} exited with {code}" + (f": {tail}" if tail else ""), operation=operation
        )
    return ActionResult(
        operation=operation,
        idempotency_key=key,
        current={"argv": argv, "exit_code": code, "output": output},
    )
