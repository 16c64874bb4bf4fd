"""Drive headless Chromium from pytest: an asyncio client for ``roomline_harness/web/driver.js`` (playwright-core).

One JSON command per line on the driver's stdin, one JSON answer per line on its stdout. Every call has
a timeout, and :meth:`Browser.close` always ends the Node process (and with it Chromium).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from roomline_harness.paths import ROOT

DRIVER = Path(__file__).resolve().parent / "driver.js"
CHROMIUM = os.environ.get("ROOMLINE_CHROMIUM", "/usr/bin/chromium")


def missing_requirements() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (run .ci/setup --test)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (run .ci/setup --test)"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (run .ci/setup --test)"
    if not (ROOT / "sfu" / "web" / "vendor" / "livekit-client.umd.js").is_file():
        return "livekit-client bundle missing in sfu/web/vendor (run .ci/setup --test)"
    return None


class BrowserError(RuntimeError):
    """A driver command failed (the message is the Playwright error)."""


class Browser:
    """One Chromium with one page."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._next_id = 1

    @classmethod
    async def launch(cls, user_data_dir: Path, timeout: float = 30.0) -> Browser:
        user_data_dir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            str(user_data_dir),
            cwd=str(ROOT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,  # console dumps can be long lines
        )
        browser = cls(proc)
        try:
            ready = await browser._read(0, timeout)
        except BaseException:
            await browser.close()
            raise
        if ready != "ready":
            await browser.close()
            raise BrowserError(f"driver did not start: {ready!r}")
        return browser

    async def _read(self, want_id: int, timeout: float) -> Any:
        assert self._proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
            if not line:
                raise BrowserError("driver exited")
            msg = json.loads(line)
            if msg.get("id") not in (want_id, None):
                continue  # a late answer to a command that timed out
            if not msg.get("ok"):
                raise BrowserError(msg.get("error", "unknown driver error"))
            return msg.get("result")

    async def call(self, op: str, timeout: float = 20.0, **args: Any) -> Any:
        assert self._proc.stdin is not None
        cmd_id = self._next_id
        self._next_id += 1
        self._proc.stdin.write((json.dumps({"id": cmd_id, "op": op, **args}) + "\n").encode())
        await self._proc.stdin.drain()
        return await self._read(cmd_id, timeout)

    async def goto(self, url: str) -> int:
        return int(await self.call("goto", url=url))

    async def fill(self, selector: str, value: str) -> None:
        await self.call("fill", selector=selector, value=value)

    async def click(self, selector: str) -> None:
        await self.call("click", selector=selector)

    async def eval(self, expression: str, timeout: float = 20.0) -> Any:
        """Value of a JS expression in the page (awaited; must be JSON-serialisable)."""
        return await self.call("eval", timeout=timeout, expression=expression)

    async def wait(self, expression: str, timeout: float = 15.0) -> Any:
        """Wait until a JS expression is truthy in the page; returns its value."""
        return await self.call(
            "wait", timeout=timeout + 5, expression=expression, ms=timeout * 1000
        )

    async def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.call("screenshot", path=str(path))

    async def console(self) -> list[str]:
        return list(await self.call("console", timeout=5))

    async def close(self) -> None:
        proc = self._proc
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call("close", timeout=10)
        if proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
