"""The pjsua2 AudioMediaPort that taps a call's audio at 48 kHz, mono, 16-bit, 20 ms frames.

Both callbacks run on the pjmedia conference-bridge clock thread with the GIL taken by SWIG, 100
times a second per call, so they do as little as possible: a deque append/pop and one memmove.
The asyncio side drains ``rx`` and keeps ``tx`` topped up; both deques are bounded (``tx`` bounds
the room → phone latency). ``active`` is cleared on DISCONNECTED *before* the port is released:
the bridge may still call in while the port is being removed.

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
from typing import Any

import pjsua2 as pj

from roomline.wire import FRAME_BYTES, FRAME_MS, SAMPLE_RATE

#: rx holds up to 2 s (the asyncio side drains every 10 ms; a stall beyond that drops old audio).
RX_FRAMES = 100
#: tx holds up to 4 frames = 80 ms: 2–4 frames ride out a late poll of the asyncio thread, a
#: longer queue would only add room → phone latency.
TX_FRAMES = 4

_P = ctypes.c_void_p


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
    bv.resize(len(data))
    if data:
        begin = _P.from_address(int(bv.this)).value
        assert begin is not None
        ctypes.memmove(begin, data, len(data))


class BridgePort(pj.AudioMediaPort):  # type: ignore[misc]
    """48 kHz mono s16 tap: ``rx`` gets phone audio, ``tx`` feeds audio to the phone."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.rx: collections.deque[bytes] = collections.deque(maxlen=RX_FRAMES)
        self.tx: collections.deque[bytes] = collections.deque(maxlen=TX_FRAMES)
        self.silence = bytes(FRAME_BYTES)
        self.rx_frames = 0
        self.tx_frames = 0
        self.underruns = 0
        self.active = True
        self.closed = False
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, SAMPLE_RATE, 1, FRAME_MS * 1000, 16)
        self.createPort(name, fmt)

    def close(self) -> None:
        """Silence the port and destroy its pjmedia side now (from a pj-registered thread).

        Blocks until a callback in progress has returned (the destructor takes the port's group
        lock). Idempotent; the port must not be used afterwards.
        """
        self.active = False
        if self.closed:
            return
        self.closed = True
        # SWIG's delete wrapper disowns ``this`` (the later Python deallocation does not touch C++)
        # and runs ~AudioMediaPort: remove from the bridge, then no more callbacks.
        pj.AudioMediaPort.__swig_destroy__(self)

    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802 (pjsua2 name)
        if not getattr(self, "active", False):
            return
        if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
            self.rx.append(bv_to_bytes(frame.buf))
            self.rx_frames += 1

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802 (pjsua2 name)
        if not getattr(self, "active", False):
            return  # frame type stays NONE: the bridge treats it as silence
        try:
            data = self.tx.popleft()
        except IndexError:
            data = self.silence
            self.underruns += 1
        self.tx_frames += 1
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        bytes_into_bv(frame.buf, data)
