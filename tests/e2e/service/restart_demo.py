"""The remediation the test's `exec` action runs: restart the demo service.

`python restart_demo.py WORKDIR TARGET INSTANCE`: TARGET must be `demo` and INSTANCE
`127.0.0.1:PORT` (the alert's labels, as the daemon passed them, one argv element each).
Kills the running service (by its pid file) if any, starts a new one on that port and
exits 0 once it answers, 1 if it does not within 10 s. Each call is appended to
WORKDIR/restarts.log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> int:
    workdir, target, instance = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    with (workdir / "restarts.log").open("a") as log:
        log.write(f"{target} {instance}\n")
    host, _, port = instance.partition(":")
    if target != "demo" or host != "127.0.0.1" or not port.isdigit():
        print(f"refusing to restart {target} at {instance}")
        return 2
    pidfile = workdir / "demo.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        pidfile.unlink()
    service = Path(__file__).with_name("demo_service.py")
    subprocess.Popen(
        [sys.executable, str(service), port, str(pidfile)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{instance}/metrics", timeout=1) as answer:
                if answer.status == 200:
                    print(f"restarted {target} at {instance}")
                    return 0
        except OSError:
            time.sleep(0.05)  # a readiness poll of the process just started
    print(f"{target} did not come up at {instance}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
