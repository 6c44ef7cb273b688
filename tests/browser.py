"""A page in headless Chromium that a test can click: the DevTools protocol over its websocket.

`--dump-dom` shows what a page renders on its own; this drives it as a person does (click a
button, move a slider, press a key) and reads the DOM back. The protocol's websocket is spoken
with aiohttp (a dependency already); no browser-automation package is needed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from test_live_page import CHROMIUM, FLAGS


class PageError(RuntimeError):
    """The page threw, or what a test waited for did not happen in time."""


class Page:
    """One Chromium tab at `url`, window `width` x `height` px; use as a context manager."""

    def __init__(self, tmp_path: Path, url: str, width: int = 1366, height: int = 900):
        if CHROMIUM is None:
            pytest.skip("chromium is not installed (make system-deps installs it)")
        profile = tmp_path / "cdp-profile"
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                *FLAGS,
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        try:
            port = self._port(profile / "DevToolsActivePort")
            self.loop.run_until_complete(self._connect(port))
            self.call("Page.navigate", url=url)
            base = url.split("#")[0]
            self.wait(
                f"location.href.startsWith({json.dumps(base)}) && document.readyState === 'complete'"
            )
        except BaseException:
            self.close()
            raise

    def _port(self, active: Path, timeout_s: float = 30.0) -> int:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if active.is_file() and active.read_text().strip():
                return int(active.read_text().split()[0])
            if self.proc.poll() is not None:
                raise PageError(f"chromium exited ({self.proc.returncode}) before it listened")
            time.sleep(0.1)
        raise PageError("chromium did not open its DevTools port")

    async def _connect(self, port: int) -> None:
        self.session = aiohttp.ClientSession()
        for _ in range(100):
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

    async def _send(self, method: str, params: dict) -> dict:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive(timeout=60)).data)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise PageError(f"{method}: {msg['error']}")
                return msg["result"]

    def call(self, method: str, **params) -> dict:
        """One DevTools protocol command (e.g. Page.captureScreenshot); its result."""
        return self.loop.run_until_complete(self._send(method, params))

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in r:
            raise PageError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout_s: float = 20.0):
        """Poll `expression` until it is truthy; its value. PageError naming it after timeout."""
        end, error = time.monotonic() + timeout_s, ""
        while True:
            try:
                value = self.eval(expression)
            except PageError as exc:  # e.g. an element the page has not built yet
                value, error = None, f" (last: {exc})"
            if value:
                return value
            if time.monotonic() > end:
                raise PageError(f"waited {timeout_s:g} s for: {expression}{error}")
            time.sleep(0.2)

    def click(self, selector: str) -> None:
        """Click the element a CSS selector names (it must exist and be enabled)."""
        ok = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e || e.disabled) return false; e.click(); return true; })()"
        )
        if not ok:
            raise PageError(f"nothing enabled to click at {selector}")

    def key(self, key: str) -> None:
        """Press a key on the page (keydown as the browser sends it)."""
        self.call("Input.dispatchKeyEvent", type="keyDown", key=key, text=key)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key)

    def text(self, selector: str) -> str:
        return self.eval(
            f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''"
        )

    def close(self) -> None:
        async def _close():
            if getattr(self, "ws", None) is not None:
                await self.ws.close()
            if getattr(self, "session", None) is not None:
                await self.session.close()

        try:
            self.loop.run_until_complete(_close())
        finally:
            self.loop.close()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
