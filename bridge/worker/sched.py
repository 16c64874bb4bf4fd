"""Scheduling classes of a bridge worker's threads: the conference clock preempts, the rest wait.

A busy worker runs three threads on every 20 ms conference tick:

* pjmedia's **clock thread**: the port callbacks, the room → phone mix, the phone's RTP out;
* the **asyncio thread**: phone → room encoding (woken by the clock thread at the end of each
  tick), the room's packets (one wake-up per packet), SIP;
* pjmedia's **media thread**: the phone's RTP in (one wake-up per packet).

Under ``SCHED_OTHER`` a thread that is woken preempts the running one when the scheduler owes it
more time. Two things came of that. The asyncio thread, woken by the clock thread while the
clock thread still held the GIL, ran at once, found the GIL taken and blocked again: two switches
for nothing. And with eight workers on two CPUs, any worker's wake-ups preempted other workers'
clock threads in the middle of their ticks. A busy worker's clock thread was preempted about
twice per tick.

``SCHED_BATCH`` threads get the same share of the CPU as ``SCHED_OTHER`` ones at the same nice
value, but their wake-ups never preempt a running thread: they run on an idle CPU, or when the
running thread sleeps or its slice ends (sched(7); the kernel's fair-class wake-up check returns
early for them). So the worker's process runs as ``SCHED_BATCH``, set before pjsua starts its
threads, which inherit it, and the clock thread puts itself back in ``SCHED_OTHER`` at its first
port callback (:func:`bridge.worker.port.pin_thread`). Neither change needs a privilege.
Measured in docs/bridge-media.md ("Eleventh pass").
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("bridge.worker.sched")

#: The class of the worker's threads other than the clock thread.
WORKER_POLICY: int = getattr(os, "SCHED_BATCH", -1)
#: The class of the conference clock thread.
CLOCK_POLICY: int = getattr(os, "SCHED_OTHER", -1)


def set_thread_policy(policy: int, tid: int = 0) -> bool:
    """Put thread ``tid`` (0: the calling thread) in scheduling class ``policy`` at priority 0;
    False if the platform lacks it or the kernel refused (the thread then keeps its class)."""
    if policy < 0 or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        # On Linux the id names one thread, not the whole process.
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except OSError as exc:
        log.info("scheduling class %d not set for thread %d: %s", policy, tid, exc)
        return False
    return True


def batch_worker() -> bool:
    """At worker start, before pjsua creates a thread: every thread of the process so far (the
    main thread, and a BLAS pool numpy may have started at import) runs as
    :data:`WORKER_POLICY`, and threads started later inherit it. False if one was refused."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return set_thread_policy(WORKER_POLICY)
    # A list, not a generator: every thread is tried even when one is refused.
    return all([set_thread_policy(WORKER_POLICY, tid) for tid in tids])


def clock_thread_started() -> bool:
    """On a native thread's first port callback (the conference clock): :data:`CLOCK_POLICY`.

    Python's own threads (the asyncio thread runs in the main one) keep the worker's class.
    """
    if threading.current_thread() is threading.main_thread():
        return False
    return set_thread_policy(CLOCK_POLICY)


def thread_policies(pid: int) -> dict[int, tuple[str, int]]:
    """Thread id → (name, scheduling class) of every thread of process ``pid`` (from /proc).

    For tests and diagnostics; threads that exit while being read are left out.
    """
    out: dict[int, tuple[str, int]] = {}
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "tid (comm) state ...": comm may hold spaces and parentheses, so split at the last ")";
        # the fields after it start at field 3 and the policy is field 41 (proc(5)).
        head, _, rest = stat.rpartition(")")
        name = head.partition("(")[2]
        out[int(tid)] = (name, int(rest.split()[38]))
    return out
