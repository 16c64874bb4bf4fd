"""Scheduling classes of the worker's threads (bridge/worker/sched.py), on real threads.

Each case runs in a thread of its own (``set_thread_policy`` changes the calling thread only) or,
for :func:`batch_worker`, which sets every thread of its process, in a child process: the test
process's own threads keep their class.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from bridge.worker.sched import (
    CLOCK_POLICY,
    WORKER_POLICY,
    clock_thread_started,
    set_thread_policy,
    thread_policies,
)

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="needs Linux scheduling classes"
)

T = TypeVar("T")


def in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a new Python thread; its result (or its exception, re-raised here)."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            err.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if err:
        raise err[0]
    return out[0]


def test_policies_are_batch_for_the_worker_and_other_for_the_clock() -> None:
    assert WORKER_POLICY == os.SCHED_BATCH
    assert CLOCK_POLICY == os.SCHED_OTHER


def test_set_thread_policy_sets_the_calling_thread_only() -> None:
    before = os.sched_getscheduler(0)
    got = in_thread(lambda: (set_thread_policy(os.SCHED_BATCH), os.sched_getscheduler(0)))
    assert got == (True, os.SCHED_BATCH)
    assert os.sched_getscheduler(0) == before


def test_batch_worker_sets_every_thread_of_the_process() -> None:
    """In a child process: the worker's main thread and a thread started before the call (as
    numpy's BLAS pool is, at import) both end up SCHED_BATCH."""
    code = (
        "import os, threading\n"
        "from bridge.worker.sched import batch_worker, thread_policies\n"
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait); t.start()\n"
        "ok = batch_worker()\n"
        "print(ok, sorted(p for _, p in thread_policies(os.getpid()).values()))\n"
        "stop.set(); t.join()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == f"True {[os.SCHED_BATCH] * 2}", out.stderr


def test_threads_started_later_inherit_the_class() -> None:
    """What the worker relies on: pjsua's threads start after ``batch_worker`` and inherit it."""

    def start_child() -> int:
        set_thread_policy(WORKER_POLICY)
        return in_thread(lambda: os.sched_getscheduler(0))

    assert in_thread(start_child) == os.SCHED_BATCH


def test_clock_thread_returns_to_other() -> None:
    def clock() -> tuple[bool, int]:
        set_thread_policy(WORKER_POLICY)
        return clock_thread_started(), os.sched_getscheduler(0)

    assert in_thread(clock) == (True, os.SCHED_OTHER)


def test_clock_hook_leaves_the_main_thread_alone() -> None:
    # The asyncio thread is the main thread: a port callback run there keeps the worker's class.
    before = os.sched_getscheduler(0)
    assert clock_thread_started() is False
    assert os.sched_getscheduler(0) == before


def test_refused_class_is_reported_not_raised_invalid() -> None:
    def bad() -> tuple[bool, bool, int]:
        set_thread_policy(WORKER_POLICY)
        return set_thread_policy(12345), set_thread_policy(-1), os.sched_getscheduler(0)

    assert in_thread(bad) == (False, False, os.SCHED_BATCH)


def test_thread_policies_reads_names_and_classes() -> None:
    ready = threading.Event()
    done = threading.Event()
    tids: list[int] = []
    # A name with a space and parentheses: /proc's stat line must be split at the last ")".
    name = "a) (b c"

    def named() -> None:
        tid = threading.get_native_id()
        with open(f"/proc/self/task/{tid}/comm", "w") as f:
            f.write(name)
        set_thread_policy(WORKER_POLICY)
        tids.append(tid)
        ready.set()
        done.wait(10)

    t = threading.Thread(target=named)
    t.start()
    try:
        assert ready.wait(10)
        seen = thread_policies(os.getpid())
        assert seen[tids[0]] == (name, os.SCHED_BATCH)
        assert seen[threading.get_native_id()][1] == os.sched_getscheduler(0)
    finally:
        done.set()
        t.join(10)


def test_thread_policies_of_a_missing_process_raises() -> None:
    with pytest.raises(FileNotFoundError):
        thread_policies(2**22 + 12345)  # above pid_max's largest value on Linux
