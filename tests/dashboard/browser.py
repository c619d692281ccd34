"""Headless Chromium driven over the Chrome DevTools Protocol: just what the dashboard tests use.

Debian's ``chromium`` package is enough (no chromedriver, no downloaded browser): the browser
is started with ``--remote-debugging-port=0`` and writes the port it chose to
``DevToolsActivePort`` in its fresh profile directory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "the dashboard tests need Chromium: install it with `apt-get install -y chromium` "
    "(Debian/Ubuntu; the package's own browser download is not used)"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


class ChromiumMissing(RuntimeError):
    pass


class BrowserError(RuntimeError):
    pass


def find_chromium(path: str | None = None) -> str:
    """The Chromium executable on ``path`` (default PATH), or ChromiumMissing naming the fix."""
    for name in CANDIDATES:
        found = shutil.which(name, path=path)
        if found:
            return found
    raise ChromiumMissing(INSTALL_HINT)


class Browser:
    """One Chromium process and its DevTools connection; ``async with Browser(dir) as b``."""

    def __init__(self, profile: Path, executable: str | None = None) -> None:
        self.profile = profile
        self.executable = executable or find_chromium()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Browser:
        self.process = self._launch()
        port, path = await self._devtools_address()
        self.connection: ClientConnection = await connect(
            f"ws://127.0.0.1:{port}{path}", max_size=None
        )
        self._reader = asyncio.create_task(self._read())
        return self

    def _launch(self) -> subprocess.Popen[bytes]:
        self.profile.mkdir(parents=True, exist_ok=True)
        with (self.profile.parent / "chromium.log").open("wb") as log:
            return subprocess.Popen(
                [self.executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def __aexit__(self, *exc_info: Any) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close")
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        with contextlib.suppress(Exception):
            await self.connection.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    async def _devtools_address(self) -> tuple[str, str]:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.profile.parent / "chromium.log").read_text(errors="replace")
                raise BrowserError(f"Chromium exited with {self.process.returncode}:\n{log}")
            lines = marker.read_text().splitlines() if marker.exists() else []
            if len(lines) >= 2:
                return lines[0], lines[1]
            await asyncio.sleep(0.05)
        raise BrowserError("Chromium did not open its DevTools port within 30 s")

    async def _read(self) -> None:
        async for raw in self.connection:
            message = json.loads(raw)
            future = self._pending.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)
            elif "method" in message:
                self.events.append(message)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        await self.connection.send(json.dumps(message))
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def new_page(self, width: int = 1280, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    def errors(self) -> list[str]:
        """Uncaught exceptions, console errors and browser log errors (CSP violations...)."""
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + seconds
        while True:
            with contextlib.suppress(BrowserError):  # e.g. the page is still navigating
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still false after {seconds} s")
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the viewport)."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                         "scale": 1},
            },
        )  # fmt: skip
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        return path
