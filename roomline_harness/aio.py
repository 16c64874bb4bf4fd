"""asyncio helpers for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` every 50 ms until it is true; AssertionError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(job: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run ``job()`` as a task for the duration of the block (a publisher's frame feed), then
    cancel it and wait for it to end, so nothing is left capturing into a closed source."""
    task = asyncio.create_task(job())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def paced(period: float = 0.02) -> AsyncIterator[tuple[int, float]]:
    """Ticks 0, 1, 2, … on an absolute schedule, ``period`` seconds apart from the first, each
    with how late it came (seconds; 0 when on time). A sender paced by it, as a phone or a
    browser sends a frame every 20 ms, never drifts: a late tick is followed by early ones."""
    loop = asyncio.get_running_loop()
    start, i = loop.time(), 0
    while True:
        delay = start + i * period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i, max(0.0, -delay)
        i += 1
