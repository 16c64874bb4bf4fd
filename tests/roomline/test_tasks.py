"""TaskSet: tasks held while they run, failures logged once, all cancelled on stop."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from roomline.tasks import TaskSet


async def test_tasks_are_held_until_done_and_cancelled_together() -> None:
    tasks = TaskSet("test")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def quick() -> int:
        return 1

    long_task = tasks.spawn(forever())
    short = tasks.spawn(quick())
    assert await short == 1
    await started.wait()
    await asyncio.sleep(0)
    assert len(tasks) == 1 and list(tasks) == [long_task]
    await tasks.close()
    assert long_task.cancelled() and len(tasks) == 0


async def test_a_failure_is_logged_with_its_owner_and_name() -> None:
    tasks = TaskSet("owner-x")

    async def boom() -> None:
        raise ValueError("bad thing")

    with structlog.testing.capture_logs() as logs:
        task = tasks.spawn(boom(), "the boom")
        with pytest.raises(ValueError):
            await task
        await asyncio.sleep(0)
    failures = [e for e in logs if e["event"] == "background task failed"]
    assert failures == [
        {
            "event": "background task failed",
            "log_level": "error",
            "owner": "owner-x",
            "task": "the boom",
            "error": "ValueError('bad thing')",
        }
    ]
    assert len(tasks) == 0


async def test_cancel_without_waiting() -> None:
    tasks = TaskSet("test")
    t = tasks.spawn(asyncio.sleep(3600))
    tasks.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
