"""Start a real Prometheus (Debian 2.42 binary) for integration and end-to-end tests.

`start_prometheus(tmp_path, scrape_targets=[...])` writes a config into `tmp_path`, runs
`prometheus` on 127.0.0.1 on a free port with its own TSDB directory, and returns once
`/-/ready` answers 200 (bounded polling). The handle stops, kills and restarts it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import yaml

READY_DEADLINE_S = 15.0
STOP_DEADLINE_S = 10.0
_POLL_S = 0.05
_PORT_ATTEMPTS = 3


class PrometheusNotFoundError(RuntimeError):
    """No Prometheus binary: set MAPEK_PROMETHEUS_BIN or install the `prometheus` package."""


def prometheus_binary() -> str:
    """The Prometheus binary: $MAPEK_PROMETHEUS_BIN, `prometheus` on PATH, or /usr/bin."""
    explicit = os.environ.get("MAPEK_PROMETHEUS_BIN")
    candidates = [explicit] if explicit else [shutil.which("prometheus"), "/usr/bin/prometheus"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PrometheusNotFoundError(
        "no prometheus binary (set MAPEK_PROMETHEUS_BIN or apt-get install prometheus)"
    )


def free_port() -> int:
    """A port that was free a moment ago (bound to port 0 on 127.0.0.1, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http_ok(url: str, *, deadline_s: float, process: subprocess.Popen[bytes] | None) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits; bounded by a deadline."""
    deadline = time.monotonic() + deadline_s
    last = "no answer yet"
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode} before {url} was ok")
            try:
                response = client.get(url)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == httpx.codes.OK:
                    return
                last = f"HTTP {response.status_code}"
            time.sleep(_POLL_S)  # polling interval of a readiness probe, not synchronization
    raise TimeoutError(f"{url} not ok after {deadline_s}s ({last})")


def prometheus_config(
    *,
    scrape_targets: Sequence[str] | Mapping[str, Sequence[str]],
    rule_files: Sequence[str | Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    alertmanagers: Sequence[str] = (),
) -> dict[str, object]:
    """The prometheus.yml content. A plain target list becomes the job `test`."""
    jobs = dict(scrape_targets) if isinstance(scrape_targets, Mapping) else {"test": scrape_targets}
    config: dict[str, object] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs.items()
        ],
    }
    if rule_files:
        config["rule_files"] = [str(Path(path).resolve()) for path in rule_files]
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    return config


class PrometheusProcess:
    """A running Prometheus. Same port and TSDB across restart(); stop() is idempotent."""

    def __init__(self, *, binary: str, workdir: Path, config_path: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config_path = config_path
        self.data_dir = workdir / "prom-data"
        self.log_path = workdir / "prometheus.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, port: int | None = None) -> None:
        """Start on `port` (or a free one, retried if another process takes it first)."""
        attempts = 1 if port is not None else _PORT_ATTEMPTS
        for attempt in range(attempts):
            self.port = port if port is not None else free_port()
            self._spawn()
            try:
                wait_http_ok(
                    f"{self.url}/-/ready", deadline_s=READY_DEADLINE_S, process=self._process
                )
            except (RuntimeError, TimeoutError) as exc:
                self.kill()
                if attempt + 1 == attempts:
                    raise RuntimeError(f"prometheus did not start: {exc}\n{self.logs()}") from exc
            else:
                return

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url=http://127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )

    def stop(self) -> None:
        """SIGTERM and wait (bounded); SIGKILL if it does not exit."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL (a crash, as far as Prometheus is concerned) and reap."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(timeout=STOP_DEADLINE_S)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same TSDB."""
        self.stop()
        self.start(port=self.port)

    def reload(self) -> None:
        """Re-read the config and rule files (POST /-/reload)."""
        response = httpx.post(f"{self.url}/-/reload", timeout=5.0)
        response.raise_for_status()

    def write_config(self, config: Mapping[str, object], *, reload: bool = True) -> None:
        """Replace prometheus.yml (atomically) and reload if running."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
        tmp.replace(self.config_path)
        if reload and self.running:
            self.reload()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_prometheus(
    tmp_path: Path,
    *,
    scrape_targets: Sequence[str] | Mapping[str, Sequence[str]],
    rule_files: Sequence[str | Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    alertmanagers: Sequence[str] = (),
) -> PrometheusProcess:
    """Write the config under `tmp_path/prometheus`, start Prometheus, return once ready."""
    workdir = tmp_path / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config = prometheus_config(
        scrape_targets=scrape_targets,
        rule_files=rule_files,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
        alertmanagers=alertmanagers,
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    handle = PrometheusProcess(binary=prometheus_binary(), workdir=workdir, config_path=config_path)
    handle.start()
    return handle
