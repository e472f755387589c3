"""Open an HTML file in a real headless Chromium and report what a reader would meet: images that
did not load, console errors, uncaught exceptions; and take a full-page screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the browser
reads NUL-terminated JSON commands on its fd 3 and answers on fd 4), so nothing beyond the
standard library and the ``chromium`` binary (Debian package ``chromium``, or
``chromium-headless-shell``) is needed. ``BRATS_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Binaries tried in this order (first on PATH wins) when ``BRATS_CHROMIUM`` is unset.
CHROMIUM_NAMES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Run by the child before Chromium: the DevTools pipe ends (argv 1, 2) become fds 3 and 4.
_ON_FDS_3_AND_4 = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execvp(sys.argv[3], sys.argv[3:])"

#: Evaluated in the page after its load event: every <img> with whether it loaded.
IMAGES_JS = """Array.from(document.images, (img) => ({
  src: (img.getAttribute("src") || "").slice(0, 120), complete: img.complete,
  width: img.naturalWidth, height: img.naturalHeight}))"""


def find_chromium() -> str | None:
    """The Chromium binary to use, or ``None`` when there is none."""
    named = os.environ.get("BRATS_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@dataclass
class PageLoad:
    """What a page did in the browser.

    Attributes:
        url: the page's ``file://`` URL.
        images: one dict per ``<img>``: ``src`` (first 120 characters), ``complete``, ``width``,
            ``height`` (natural size; 0 when the image did not decode).
        console: every console/log message as ``"<level>: <text> (<url>)"``.
        errors: the error-level ones among them, and uncaught exceptions.
        screenshot: the PNG written, if one was asked for.
    """

    url: str
    images: list[dict[str, Any]] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        return [img for img in self.images if not img["complete"] or img["width"] <= 0 or img["height"] <= 0]


class _DevTools:
    """A DevTools-protocol session with one headless Chromium over a pipe."""

    def __init__(self, binary: str, workdir: Path, width: int, height: int) -> None:
        self.stderr_path = workdir / "chromium.log"
        cmd_read, self._cmd_write = os.pipe()
        self._resp_read, resp_write = os.pipe()
        # the child's ends moved above fd 4, so that putting them on 3 and 4 cannot overwrite one with the other
        low = (cmd_read, resp_write)
        cmd_read, resp_write = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in low)
        for fd in low:
            os.close(fd)
        args = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-pipe", f"--user-data-dir={workdir / 'profile'}",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                f"--window-size={width},{height}", "about:blank"]
        with self.stderr_path.open("wb") as log:  # a tiny Python puts the pipe ends on fds 3 and 4, then execs Chromium
            self.process = subprocess.Popen([sys.executable, "-c", _ON_FDS_3_AND_4, str(cmd_read), str(resp_write), *args],
                                            pass_fds=(cmd_read, resp_write), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=log)
        os.close(cmd_read)
        os.close(resp_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _log_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-2000:] if self.stderr_path.is_file() else ""

    def wait_for(self, predicate: Any, timeout: float) -> dict[str, Any]:
        """Read messages until one satisfies ``predicate`` (events are kept in ``self.events``)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" not in message:
                    self.events.append(message)
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._resp_read], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"Chromium did not answer within {timeout:.0f} s; its log:\n{self._log_tail()}")
            chunk = os.read(self._resp_read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.process.poll()}); its log:\n{self._log_tail()}")
            self._buffer += chunk

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        mid = self._next_id
        answer = self.wait_for(lambda m: m.get("id") == mid, timeout)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.call("Browser.close", timeout=10)
                except (OSError, RuntimeError, TimeoutError):
                    pass
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            for fd in (self._cmd_write, self._resp_read):
                try:
                    os.close(fd)
                except OSError:
                    pass


def _describe(event: dict[str, Any]) -> tuple[str, str] | None:
    """``(level, text)`` of a console, log or exception event; ``None`` for other events."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Log.entryAdded":
        entry = params["entry"]
        return entry["level"], f"{entry.get('source', '')}: {entry['text']} ({entry.get('url', '')})"
    if method == "Runtime.consoleAPICalled":
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        level = {"assert": "error", "warn": "warning"}.get(params["type"], params["type"])
        return level, f"console.{params['type']}: {text}"
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return "error", f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}"
    return None


def open_page(path: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1280, height: int = 900,
              timeout: float = 60.0, binary: str | None = None) -> PageLoad:
    """Load ``path`` in headless Chromium, wait for its load event, and report its images and console.

    Args:
        path: the HTML file.
        screenshot: PNG to write of the whole page (at most 16000 CSS pixels tall).
        width, height: the viewport, CSS pixels.
        timeout: seconds allowed for the page to load.
        binary: the Chromium binary (default: :func:`find_chromium`).
    """
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium binary found (" + ", ".join(CHROMIUM_NAMES) + ")")
    url = Path(path).resolve().as_uri()
    result = PageLoad(url)
    with tempfile.TemporaryDirectory(prefix="brats-chromium-") as workdir:
        browser = _DevTools(binary, Path(workdir), width, height)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                browser.call(f"{domain}.enable", session=session)
            browser.call("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
            browser.events.clear()  # what about:blank did is not the page's
            navigation = browser.call("Page.navigate", {"url": url}, session)
            if navigation.get("errorText"):
                raise RuntimeError(f"{url}: {navigation['errorText']}")
            if not any(e.get("method") == "Page.loadEventFired" for e in browser.events):  # it may have come already
                browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired", timeout)
            images = browser.call("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True}, session)
            result.images = images["result"]["value"]
            if screenshot is not None:
                size = browser.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
                clip = {"x": 0, "y": 0, "width": max(1, size["width"]), "height": min(max(1, size["height"]), 16000), "scale": 1}
                shot = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip},
                                    session, timeout=timeout)
                result.screenshot = Path(screenshot)
                result.screenshot.parent.mkdir(parents=True, exist_ok=True)
                result.screenshot.write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.close()
    for event in browser.events:
        described = _describe(event)
        if described is not None:
            level, text = described
            result.console.append(f"{level}: {text}")
            if level == "error":
                result.errors.append(text)
    return result
