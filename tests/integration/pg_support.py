"""Start a real PostgreSQL (Debian's, /usr/lib/postgresql/N/bin) for the store's tests.

`start_postgres()` creates a throwaway cluster in a new directory under /tmp (initdb: a
directory the server's user can reach, which pytest's root-only tmp_path is not), runs the
postmaster on 127.0.0.1 on a free port with its unix socket in the same directory, and
returns once it accepts connections (`pg_isready`, bounded polling) with a database
`mapek`. PostgreSQL refuses to run as root: as root the cluster belongs to Debian's
`postgres` user (created by the package) and the server runs as it; otherwise as the
current user. Authentication is `trust`, on loopback only, for a cluster that lives as
long as the test: no password to leak, nothing reachable from outside.

The handle stops (fast shutdown, bounded), kills (SIGKILL of the postmaster: a crash),
restarts, and pauses / resumes the postmaster and its backends (SIGSTOP / SIGCONT: a
stalled database, connections hang) — what the HA tests do to a running store.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from prom_support import free_port

READY_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0
_POLL_S = 0.1
USER = "mapek"  # the cluster's superuser, and the role the tests connect as
DATABASE = "mapek"


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL binaries: `make deps` installs Debian's postgresql."""


def pg_bin() -> Path:
    """The newest /usr/lib/postgresql/N/bin holding initdb and postgres."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresNotFoundError(
            "no PostgreSQL under /usr/lib/postgresql: run `make deps` (apt-get install postgresql)"
        )
    return found[-1]


def _owner() -> tuple[int, int] | None:
    """(uid, gid) the server must run as when we are root; None: as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresNotFoundError(
            "running as root and there is no `postgres` user: run `make deps`"
        ) from exc
    return entry.pw_uid, entry.pw_gid


class PostgresProcess:
    """A running throwaway cluster; `stop()` (or the context manager) ends it."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.bin = pg_bin()
        self.owner = _owner()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "postgres.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        kwargs = {} if self.owner is None else {"user": self.owner[0], "group": self.owner[1]}
        return subprocess.run(
            argv,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**os.environ, "PGCONNECT_TIMEOUT": "3"},
            **kwargs,  # type: ignore[arg-type]
        )

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.owner is not None:
            os.chown(self.root, *self.owner)
        self._run(
            str(self.bin / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-instructions",
        )

    def start(self) -> None:
        log = self.log.open("ab")
        kwargs = {} if self.owner is None else {"user": self.owner[0], "group": self.owner[1]}
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            **kwargs,  # type: ignore[arg-type]
        )
        log.close()
        self.wait_ready()

    def wait_ready(self, deadline_s: float = READY_DEADLINE_S) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
                check=False,
                timeout=5,
            )
            if ready.returncode == 0:
                return
            time.sleep(_POLL_S)  # polling another process's start-up, bounded
        raise RuntimeError(
            f"postgres not ready in {deadline_s:g} s: {self.log.read_text()[-2000:]}"
        )

    def psql(self, sql: str, *, database: str = DATABASE, timeout: float = 10.0) -> str:
        """Run `sql` with psql (tab-separated, no headers); CalledProcessError on failure."""
        out = self._run(
            str(self.bin / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            USER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
            timeout=timeout,
        )
        return out.stdout.strip()

    def _pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, walwriter...), from /proc."""
        if self.process is None:
            return []
        parent = self.process.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == parent:  # field 4 of stat: the parent's pid
                children.append(int(stat.parent.name))
        return [parent, *children]

    def _signal_all(self, sig: signal.Signals) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):  # a backend that just exited
                os.kill(pid, sig)

    def pause(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); the backends notice and exit."""
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a paused cluster must be able to die
            self.process.kill()
            self.process.wait(STOP_DEADLINE_S)
        self._reap_backends()

    def _reap_backends(self) -> None:
        """Wait (bounded) for the dead postmaster's backends to exit: a new postmaster
        refuses to start while one still holds the shared memory."""
        deadline = time.monotonic() + STOP_DEADLINE_S
        while time.monotonic() < deadline:
            if not any(self._is_backend(p) for p in Path("/proc").glob("[0-9]*")):
                return
            time.sleep(_POLL_S)  # backends exiting after their postmaster died, bounded

    def _is_backend(self, proc: Path) -> bool:
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return False
        return cmdline.startswith(b"postgres:") and proc.stat().st_uid == (
            self.owner[0] if self.owner else os.getuid()
        )

    def close(self) -> None:
        """Stop it and remove the cluster's directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL past the deadline."""
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_postgres() -> PostgresProcess:
    """A fresh cluster in a new directory, running, with the database `mapek`."""
    handle = PostgresProcess(Path(tempfile.mkdtemp(prefix="mapek-pg-")), free_port())
    try:
        handle.init()
        handle.start()
        handle.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
    except BaseException:
        handle.close()
        raise
    return handle
