"""The pjsua2 AudioMediaPort that taps a call's audio: mono, 16-bit, 20 ms frames.

The worker creates it at the conference bridge's clock rate (16 kHz), so pjmedia never resamples
between the bridge and the port. Both callbacks run on the pjmedia conference-bridge clock thread
with the GIL taken by SWIG, 100 times a second per call, so they do as little as possible: a deque
append/pop, one memmove and (rx) a wake-up of the asyncio loop. The asyncio side drains ``rx`` and
keeps ``tx`` at its target depth; both deques are bounded (``tx`` bounds the room → phone latency).
``active`` is cleared on DISCONNECTED *before* the port is released, and :meth:`BridgePort.close`
unregisters it from the bridge while the worker still holds it.

Lifetime: end a port with :meth:`BridgePort.close`, never by dropping the last Python
reference. pjmedia keeps calling a port that is still in the conference bridge (``put_frame`` with
NONE frames every tick even with no connections) until ``~AudioMediaPort`` clears its back
pointer under the port's group lock, and SWIG's destructor wrapper releases the GIL while that
C++ destructor runs. Dropping the last reference therefore ran the destructor from inside the
Python object's deallocation: a clock-thread callback blocked on the GIL got in, ran a method on
the dying object (refcount 0 -> 1 -> 0) and deallocated it a second time: a double free that
corrupted the small-object allocator. :meth:`close` runs the destructor while this object is
still referenced, so a callback racing with it only sees ``active`` false; afterwards pjmedia can
no longer reach the object and it may be freed on any thread.
"""

from __future__ import annotations

import collections
import ctypes
import threading
from collections.abc import Callable
from typing import Any

import pjsua2 as pj

from bridge.worker.sched import clock_thread_started
from roomline.wire import FRAME_MS, SAMPLE_RATE

#: rx holds up to 2 s (the asyncio side drains every tick; a stall beyond that drops old audio).
RX_FRAMES = 100
#: tx holds at most 4 frames = 80 ms (the pump keeps it at ``tx_target``, normally one frame).
TX_FRAMES = 4
#: Highest ``tx_target`` an underrun can raise it to (frames).
TX_MAX_TARGET = 3
#: Ticks without an underrun after which ``tx_target`` steps back down by one (10 s).
TX_RELAX_TICKS = 500

_P = ctypes.c_void_p
_FRAME_AUDIO = pj.PJMEDIA_FRAME_TYPE_AUDIO
_bv_resize = pj._pjsua2.ByteVector_resize

#: Native threads that already hold a Python thread state of their own (see :func:`pin_thread`).
_pinned: set[int] = set()


def pin_thread() -> None:
    """Keep the calling native thread's Python thread state alive between callbacks.

    SWIG's director wrappers take the GIL with ``PyGILState_Ensure`` and give it back with
    ``PyGILState_Release``. On pjmedia's clock thread, which Python did not start, that creates
    a fresh ``PyThreadState`` for every callback and destroys it afterwards: two callbacks per
    call per 20 ms tick, each paying the allocation, initialisation and teardown (and losing
    per-thread state such as a profiler). One extra ``PyGILState_Ensure`` that is never released
    keeps the state's counter above zero, so later callbacks only take and drop the GIL. The
    first call on a native thread also gives it the clock thread's scheduling class
    (:mod:`bridge.worker.sched`). Must be called with the GIL held (inside a callback); cheap
    to call again (a set look-up).
    """
    tid = threading.get_ident()
    if tid not in _pinned:
        _pinned.add(tid)
        # The conference clock is the worker's one thread whose wake-ups must preempt
        # (bridge/worker/sched.py).
        clock_thread_started()
        ctypes.pythonapi.PyGILState_Ensure()


def bv_to_bytes(bv: Any) -> bytes:
    """Copy a SWIG ``ByteVector`` to bytes in O(1) Python work.

    Reads the libstdc++ ``std::vector`` layout ``[begin, end, capacity]`` behind the SWIG pointer
    (``bytes(bv)`` iterates per element: ~1 ms for 1920 B). Guarded by a unit test.
    """
    addr = int(bv.this)
    begin = _P.from_address(addr).value
    end = _P.from_address(addr + ctypes.sizeof(_P)).value
    if not begin or not end:
        return b""
    return ctypes.string_at(begin, end - begin)


def bytes_into_bv(bv: Any, data: bytes) -> None:
    """Resize ``bv`` to ``len(data)`` and memmove the bytes in (same layout assumption)."""
    _bv_resize(bv, len(data))  # ByteVector.resize minus its Python frame
    if data:
        begin = _P.from_address(int(bv.this)).value
        assert begin is not None
        ctypes.memmove(begin, data, len(data))


class BridgePort(pj.AudioMediaPort):  # type: ignore[misc]
    """Mono s16 tap at the bridge's clock rate: ``rx`` gets phone audio, ``tx`` feeds the phone.

    ``on_rx`` (optional) is called on the clock thread after each received frame: the worker uses
    it to wake its asyncio loop once per conference tick (see ``Worker._clock_wake``), so the
    media pump encodes the phone's audio right after the bridge delivered it.

    Towards the phone, while the call is in its room, ``produce`` is set: the bridge's request
    for a frame mixes it on the spot (room jitter buffers → decoders → mix, under the room leg's
    lock), so nothing is queued and a late asyncio loop or a burst of catch-up ticks of the
    clock cannot underrun. Otherwise (PIN prompt) the pump keeps ``tx`` at ``tx_target``: 1 frame,
    raised by one (up to :data:`TX_MAX_TARGET`) after an underrun, lowered again after
    :data:`TX_RELAX_TICKS` ticks without one.
    """

    def __init__(
        self, name: str, rate: int = SAMPLE_RATE, on_rx: Callable[[], None] | None = None
    ) -> None:
        super().__init__()
        self.rate = rate
        self.frame_bytes = rate * FRAME_MS // 1000 * 2
        self.rx: collections.deque[bytes] = collections.deque(maxlen=RX_FRAMES)
        self.tx: collections.deque[bytes] = collections.deque(maxlen=TX_FRAMES)
        self.silence = bytes(self.frame_bytes)
        self.on_rx = on_rx
        #: Called on the clock thread for this tick's frame when ``tx`` is empty (thread-safe
        #: producer: the room leg's locked mixer); None = play ``tx`` / silence.
        self.produce: Callable[[], bytes] | None = None
        self.produced = 0
        self.rx_frames = 0
        self.tx_frames = 0
        self.underruns = 0
        #: Whether the pump ever queued audio (underruns before that are not counted).
        self.started = False
        self.tx_target = 1
        self._clean_ticks = 0
        self.active = True
        self.closed = False
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, rate, 1, FRAME_MS * 1000, 16)
        self.createPort(name, fmt)

    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802 (pjsua2 name)
        pin_thread()
        if not getattr(self, "active", False):
            return
        if frame.type == _FRAME_AUDIO:
            self.rx.append(bv_to_bytes(frame.buf))
            self.rx_frames += 1
        on_rx = self.on_rx  # close() may clear it from the asyncio thread
        if on_rx is not None:
            on_rx()

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802 (pjsua2 name)
        pin_thread()
        if not getattr(self, "active", False):
            return  # frame type stays NONE: the bridge treats it as silence
        tx = self.tx
        if tx:
            data = tx.popleft()
            self._clean_ticks += 1
            if self._clean_ticks >= TX_RELAX_TICKS and self.tx_target > 1:
                self.tx_target -= 1
                self._clean_ticks = 0
        else:
            # ``tx`` is empty on every tick of a call in its room (checked, not caught: an
            # IndexError per call and tick was measurable).
            produce = self.produce
            if produce is not None:
                # Mix this tick's frame now, on the clock thread: no queue, no underrun.
                try:
                    data = produce()
                except Exception:  # never let an exception unwind into pjmedia
                    data = self.silence
                self.produced += 1
            else:
                data = self.silence
                if self.started:
                    self.underruns += 1
                    self._clean_ticks = 0
                    if self.tx_target < TX_MAX_TARGET:
                        self.tx_target += 1
        self.tx_frames += 1
        frame.type = _FRAME_AUDIO
        bytes_into_bv(frame.buf, data)

    def fill(self, produce: Callable[[], bytes]) -> None:
        """Top ``tx`` up to ``tx_target`` frames from ``produce`` (asyncio thread)."""
        tx = self.tx
        while len(tx) < self.tx_target:
            tx.append(produce())
        self.started = True

    def close(self) -> None:
        """Silence the port and destroy its pjmedia side now (from a pj-registered thread).

        Blocks until a callback in progress has returned (the destructor takes the port's group
        lock). Idempotent; the port must not be used afterwards. Also drops ``on_rx`` and
        ``produce`` (the worker's wake-up and the room leg's mixer).
        """
        self.active = False
        self.on_rx = None
        self.produce = None
        if self.closed:
            return
        self.closed = True
        # SWIG's delete wrapper disowns ``this`` (the later Python deallocation does not touch C++)
        # and runs ~AudioMediaPort: remove from the bridge, then no more callbacks.
        pj.AudioMediaPort.__swig_destroy__(self)
