"""The real-browser harness (tests/browser_support.py) against a page with a strict CSP.

A tiny aiohttp app, served from a background thread with its own event loop, answers a
page whose Content-Security-Policy allows scripts from 'self' only: the external /app.js
must run, the inline script must be refused, and the refusal must show in
console_errors(), which is how the console's tests will see a CSP mistake.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from browser_support import Browser, start_browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CSP = "default-src 'self'; script-src 'self'"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>harness</title>
<script src="/app.js"></script></head>
<body>
<p id="external">waiting</p>
<p id="inline">untouched</p>
<script>
  window.inlineRan = true;
  document.getElementById("inline").textContent = "INLINE-RAN";
</script>
</body></html>
"""
APP_JS = """document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("external").textContent = "external script ran";
});
"""


def _app() -> web.Application:
    async def page(_: web.Request) -> web.Response:
        return web.Response(
            text=PAGE, content_type="text/html", headers={"Content-Security-Policy": CSP}
        )

    async def app_js(_: web.Request) -> web.Response:
        return web.Response(text=APP_JS, content_type="application/javascript")

    async def favicon(_: web.Request) -> web.Response:
        return web.Response(status=204)  # no 404 in the console log

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/app.js", app_js)
    app.router.add_get("/favicon.ico", favicon)
    return app


class ThreadedServer:
    """An aiohttp app on 127.0.0.1 (port 0: the kernel picks a free one) in its own thread."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    handle = ThreadedServer(_app())
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    handle = start_browser(tmp_path / "screenshots")
    print(f"chromium start-up: {handle.startup_s:.2f}s")
    yield handle
    handle.quit()


def test_external_script_runs_inline_script_is_refused_and_reported(
    server: ThreadedServer, browser: Browser
) -> None:
    browser.get(server.url + "/")

    assert browser.wait_text("#external", "external script ran").text == "external script ran"
    assert browser.wait_for("#inline").text == "untouched"
    assert "INLINE-RAN" not in browser.wait_for("body").text
    assert browser.driver.execute_script("return window.inlineRan === undefined") is True

    errors = browser.console_errors()
    csp = [e for e in errors if "Content Security Policy" in e["message"]]
    assert len(csp) == 1, errors
    assert "inline script" in csp[0]["message"]
    assert "script-src 'self'" in csp[0]["message"]
    assert errors == csp  # nothing else went wrong on the page
    assert browser.console_errors() == errors  # kept across calls, not drained

    shot = browser.shot("csp-page")
    assert shot == browser.screenshot_dir / "csp-page.png"
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert shot.stat().st_size > 1000
