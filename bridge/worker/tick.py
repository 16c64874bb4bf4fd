"""When the worker's asyncio loop services its calls: once per conference tick, after the last port.

The conference bridge's clock thread delivers every port's frame of a tick in one pass (the
``onFrameReceived`` callbacks, a few hundred µs apart), then sleeps until the next tick, 20 ms
later. The worker's loop should run once per tick, right after the last delivery: then each
call's frame of the tick is encoded and sent in the same batch, and the loop does not compete for
the GIL with the clock thread while that thread is still serving ports. A timer covers ticks in
which the wake-up did not come (a port that missed its frame, a port count that just changed).

This is the decision alone, on times the caller passes (sans I/O); :class:`bridge.worker.worker.Worker`
owns the loop, the timer and the clock thread's callback. The rules:

* A callback more than :data:`TICK_GAP_S` after the previous one starts a new tick. The count
  of the tick's deliveries restarts there, and only there: a service run by the timer in the
  middle of a tick does not shift the count into the next tick (it did, when the service reset
  the count: about one service in ten then pumped part of a tick, and the rest of that tick's
  frames waited 20 ms for the next one).
* The wake-up is due at exactly the ``ports``-th delivery of a tick, once.
* The timer services the loop only if no service ran for :data:`MISSED_TICKS` periods while
  ports are open (clock wake-ups are expected, so a timer-driven service would only be an extra,
  empty one), or for three quarters of a period when no port is open (the timer is then what
  drives pjsua's polling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A gap between two deliveries longer than this starts a new tick. The deliveries of one tick
#: come within a millisecond or two of each other; ticks are 20 ms apart.
TICK_GAP_S = 0.005
#: With ports open, the timer services the loop only after this many periods without a service.
MISSED_TICKS = 1.5
#: With no port open, the timer services the loop after this fraction of its period.
POLL_FRACTION = 0.75


@dataclass
class TickStats:
    """How the loop was woken (for tests and the end-of-call log)."""

    #: Services the clock thread asked for (one per tick when all goes well).
    clock: int = 0
    #: Services the timer ran while ports were open, because no wake-up came in time (with no
    #: port open the timer is what drives the loop, and those services are not counted).
    timer: int = 0
    #: Ticks that ended without a wake-up (a port missed its frame, or the count changed).
    short_ticks: int = 0

    def log_line(self) -> str:
        """The counters as the worker logs them at each call's end (see :meth:`parse`)."""
        return (
            f"worker loop so far: {self.clock} services woken by the clock, {self.timer} by the"
            f" timer, {self.short_ticks} ticks without a wake-up"
        )

    @classmethod
    def parse(cls, text: str) -> TickStats | None:
        """The counters of a :meth:`log_line` found in ``text`` (a log event), or None."""
        m = _LOG_LINE.search(text)
        if m is None:
            return None
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))


_LOG_LINE = re.compile(
    r"worker loop so far: (\d+) services woken by the clock, (\d+) by the timer,"
    r" (\d+) ticks without a wake-up"
)


class TickGate:
    """Decides when the clock thread wakes the loop, and when the timer must stand in for it.

    :meth:`delivered` runs on the clock thread, the other methods on the asyncio thread; every
    method runs under the GIL and touches only plain attributes, as the worker's callbacks did.
    """

    def __init__(self) -> None:
        #: Ports registered with the conference bridge (each delivers one frame per tick).
        self.ports = 0
        self.stats = TickStats()
        self._count = 0
        self._woke = False
        self._last_delivery = float("-inf")
        self._last_service = float("-inf")

    def delivered(self, now: float) -> bool:
        """A port received this tick's frame at ``now``; True when the loop should be woken."""
        if now - self._last_delivery > TICK_GAP_S:
            if self._count and not self._woke:
                self.stats.short_ticks += 1
            self._count = 0
            self._woke = False
        self._last_delivery = now
        self._count += 1
        if self._count != self.ports:
            return False
        self._woke = True
        self.stats.clock += 1
        return True

    def serviced(self, now: float) -> None:
        """The loop ran its service at ``now`` (however it was woken)."""
        self._last_service = now

    def timer_due(self, now: float, period: float) -> bool:
        """The poll timer of ``period`` fired at ``now``: should it run the service itself?"""
        if self.ports <= 0:
            return now - self._last_service >= period * POLL_FRACTION
        if now - self._last_service < period * MISSED_TICKS:
            return False
        self.stats.timer += 1
        return True
