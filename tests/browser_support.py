"""Drive Debian's Chromium through Debian's chromedriver for real-browser tests.

`start_browser(screenshot_dir)` starts a headless Chromium (`/usr/bin/chromium`, driven by
`/usr/bin/chromedriver` given to selenium's Service explicitly: Selenium Manager never runs,
nothing is downloaded) with a fixed 1280x900 window and a throw-away profile, and returns a
`Browser`: get(url), shot(name), wait_for(css), wait_text(css, text), console_errors(),
quit(). Both binaries come from `make deps` (the Debian packages chromium and
chromium-driver); without them start_browser raises, it does not skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM_BIN = "/usr/bin/chromium"
CHROMEDRIVER_BIN = "/usr/bin/chromedriver"
WINDOW = (1280, 900)
WAIT_S = 10.0


class BrowserNotFoundError(RuntimeError):
    """Chromium or chromedriver missing: `make deps` installs chromium and chromium-driver."""


def _require(path: str) -> str:
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        raise BrowserNotFoundError(
            f"{path} not found: run `make deps` (as root it apt-installs chromium and "
            "chromium-driver)"
        )
    return path


class Browser:
    """A headless Chromium session. quit() is idempotent and removes the profile."""

    def __init__(
        self, driver: webdriver.Chrome, *, screenshot_dir: Path, profile: Path, startup_s: float
    ) -> None:
        self.driver = driver
        self.screenshot_dir = screenshot_dir
        self.startup_s = startup_s  # from starting chromedriver to a session ready for get()
        self._profile = profile
        self._severe: list[dict[str, Any]] = []
        self._quit = False

    def get(self, url: str) -> None:
        """Load `url` and wait for the document (selenium's normal page-load strategy)."""
        self.driver.get(url)

    def shot(self, name: str) -> Path:
        """Save a PNG of the viewport as `screenshot_dir/<name>.png` and return its path."""
        self.screenshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.screenshot_dir / f"{name}.png"
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"chromium could not write the screenshot {path}")
        return path

    def wait_for(self, css: str, timeout: float = WAIT_S) -> WebElement:
        """The first element matching `css`, once it is in the document (else TimeoutException)."""
        element: WebElement = WebDriverWait(self.driver, timeout).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, css)),
            message=f"no element {css!r} after {timeout}s",
        )
        return element

    def wait_text(self, css: str, text: str, timeout: float = WAIT_S) -> WebElement:
        """The element matching `css`, once its text contains `text` (else TimeoutException)."""
        WebDriverWait(self.driver, timeout).until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text),
            message=f"{css!r} does not contain {text!r} after {timeout}s",
        )
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def console_errors(self) -> list[dict[str, Any]]:
        """Every SEVERE browser console entry so far (CSP violations, uncaught errors, failed
        loads): dicts with level, message, source, timestamp. Chromium hands each entry out
        once, so they are kept here and each call returns all of them."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        self._severe += [e for e in entries if e.get("level") == "SEVERE"]
        return list(self._severe)

    def quit(self) -> None:
        """End the session and chromedriver, then remove the temporary profile."""
        if self._quit:
            return
        self._quit = True
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.quit()


def chrome_options(profile: Path) -> webdriver.ChromeOptions:
    """Headless, no sandbox (the tests run as root), /tmp instead of a small /dev/shm."""
    options = webdriver.ChromeOptions()
    options.binary_location = _require(CHROMIUM_BIN)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def start_browser(screenshot_dir: Path) -> Browser:
    """Start Chromium under chromedriver; the session is ready when this returns."""
    driver_path = _require(CHROMEDRIVER_BIN)
    profile = Path(tempfile.mkdtemp(prefix="mapek-chromium-"))
    started = time.monotonic()
    try:
        driver = webdriver.Chrome(
            service=Service(executable_path=driver_path), options=chrome_options(profile)
        )
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    return Browser(
        driver,
        screenshot_dir=screenshot_dir,
        profile=profile,
        startup_s=time.monotonic() - started,
    )
