"""Background tasks owned by one part of the appliance.

asyncio keeps only a weak reference to a running task, so a task nobody holds can be collected
mid-flight; and a task whose exception nobody retrieves fails silently. Every part that starts
work in the background (a signalling session, the agent service, the local channel, a job
supervisor) therefore keeps its tasks in one :class:`TaskSet`, which holds them while they run,
logs a failure once, and cancels them all when the part stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

from roomline.log import get_logger

log = get_logger(__name__)


class TaskSet:
    """The running background tasks of one owner (named in failure logs)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str = "") -> asyncio.Task[Any]:
        """Run ``coro`` in the background; ``what`` names it in the log if it fails."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, what))
        return task

    def _done(self, task: asyncio.Task[Any], what: str) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed", owner=self.owner, task=what, error=repr(exc))

    def cancel(self) -> None:
        """Cancel every running task (they finish on their next await)."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Cancel every running task and wait until all have finished."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))
