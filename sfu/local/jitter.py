"""Adaptive, bounded playout buffer for audio received over the local channel (sans-I/O).

Packets from the room arrive with network and scheduling jitter. This buffer reorders by RTP
sequence number, drops late and duplicate packets, never holds more than ``max_frames`` (older
frames are skipped so latency stays bounded), and tells the caller when to conceal a lost frame
(Opus PLC / repeat). It serves two kinds of consumer:

* with a playout clock (a bridge call: the pjsua bridge pulls one 20 ms frame per tick), call
  :meth:`JitterBuffer.pop` once per tick: playing starts once ``level`` frames are queued, and
  the buffer says to play silence while it re-buffers after a long gap;
* without one (an agent's track, which hands frames on as they arrive), call
  :meth:`JitterBuffer.pop_ready` after each push: in-order frames come out at once, and a missing
  frame is concealed once a frame ``target`` sequence numbers later has arrived.

Adaptation (:meth:`pop` only): when the buffer runs dry while playing (a *stall*: the next frame
is late, nothing newer has arrived) it conceals *without* moving on, so the late frame still plays
when it comes, which adds one frame of delay, and its wanted depth ``level`` grows by one (up to
``max_level``). A frame missing while newer ones are queued is a loss: concealed and skipped.
After ``relax_ticks`` ticks without a stall ``level`` steps back down (not below ``target``), and
at the end of each window in which the buffer never held fewer than ``level + 1`` frames one frame
is dropped, so on a clean link it settles back at ``target`` (1 frame = at most 20 ms of
buffering). A stall within ``RECUR_WINDOWS`` windows of a shrink doubles the window (up to 40 s):
lateness that recurs keeps its frame for longer, and the window halves again once it has settled
for as long. :meth:`pop_ready` never adapts: its ``level`` stays at ``target``.

Arrival times (``now`` given to :meth:`push` and :meth:`pop`, in seconds) make the shrink safe:
a frame is dropped only if, over the whole window, every frame played at least ``FRAME_S +
SHRINK_GUARD_S`` after it arrived, i.e. each would still have been on time one frame earlier,
with a margin for scheduling jitter. Without it a stream whose packets arrive just before the
tick (two clocks in phase, which happens to one call in a few between two bridge workers) was
shrunk back onto the edge after every window and stalled again a few seconds later. Such a stream
now keeps its extra frame; a stall caused by a one-off hiccup is still taken back. For the same
reason playing starts one tick later when the first frame arrived less than ``SHRINK_GUARD_S``
before the tick: the extra frame is then taken in the silence before the stream starts, not by
a stall.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Sequence distance beyond which a packet is treated as a stream restart rather than reordering.
_RESTART_GAP = 1000
#: Consecutive frames concealed before the buffer gives up on a gap: 60 ms of PLC bridges a short
#: hiccup; longer gaps are talk pauses, a dead stream or a restarted one.
_MAX_CONCEAL = 3
#: Ticks of a shrink window: without a stall for this long (5 s), ``level`` steps down by one and a
#: surplus frame is dropped.
RELAX_TICKS = 250
#: A stall within this many windows of a shrink means the lateness recurs: the buffer's window
#: doubles (up to :data:`MAX_RELAX_TICKS`), so the frame it needs is kept for longer.
RECUR_WINDOWS = 3
#: Longest shrink window (40 s).
MAX_RELAX_TICKS = 8 * RELAX_TICKS
#: One frame's duration (s): dropping a queued frame makes every later frame play this much sooner.
FRAME_S = 0.020
#: Margin (s) a frame must have left after a shrink: more than the scheduling jitter of a busy
#: 2-core host between a packet's arrival and the bridge clock's tick.
SHRINK_GUARD_S = 0.004


class Kind(enum.Enum):
    PLAY = "play"  # payload is the next frame
    CONCEAL = "conceal"  # a frame is missing: run packet-loss concealment
    SILENCE = "silence"  # nothing to play (not started / re-buffering)


@dataclass(frozen=True)
class Playout:
    kind: Kind
    payload: bytes = b""
    #: The ``tag`` the frame was pushed with (what its consumer needs to decode it).
    tag: int = 0


@dataclass
class JitterStats:
    received: int = 0
    played: int = 0
    concealed: int = 0
    late: int = 0
    duplicate: int = 0
    overflow_dropped: int = 0
    underruns: int = 0
    stalls: int = 0
    shrunk: int = 0
    #: Frames that played less than :data:`SHRINK_GUARD_S` after they arrived (close to a stall).
    tight: int = 0
    #: Shrink windows refused because a frame would have been too close to its tick.
    kept: int = 0
    #: Starts put off by one tick because the first frame had just arrived.
    deferred: int = 0
    #: Stalls that came soon after a shrink and doubled the shrink window.
    recurred: int = 0
    level: int = 0


def _diff(a: int, b: int) -> int:
    """Signed distance a - b in 16-bit sequence space."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


class JitterBuffer:
    """Reorders and paces one track's RTP payloads; see the module docstring."""

    def __init__(
        self,
        target_frames: int = 1,
        max_frames: int = 10,
        max_level: int = 6,
        relax_ticks: int = RELAX_TICKS,
    ) -> None:
        if not 1 <= target_frames <= max_frames:
            raise ValueError("need 1 <= target_frames <= max_frames")
        self.target = target_frames
        self.max = max_frames
        self.max_level = max(target_frames, min(max_level, max_frames))
        self.relax_ticks = relax_ticks
        #: Current shrink window (ticks): ``relax_ticks``, doubled while stalls recur.
        self.relax = relax_ticks
        self._relax_cap = max(MAX_RELAX_TICKS, relax_ticks)
        self._since_shrink: int | None = None  # ticks played since the last shrink
        #: Current wanted depth (frames): ``target`` on a clean link, more after stalls.
        self.level = target_frames
        #: seq → (payload, arrival time or None, tag)
        self._frames: dict[int, tuple[bytes, float | None, int]] = {}
        self._next: int | None = None  # next sequence number to play
        self._playing = False
        self._empty_ticks = 0
        self._skipped_ahead = False  # _trim moved _next: the frames before it are not "lost"
        self._window = 0
        self._min_depth = max_frames
        self._min_slack = float("inf")  # least arrival → play time of the window (s)
        self._after_stall = False
        self._start_deferred = False
        self.stats = JitterStats(level=target_frames)

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, seq: int, payload: bytes, now: float | None = None, tag: int = 0) -> None:
        """Queue a frame; ``now`` is its arrival time (see the module docstring). ``tag`` is
        opaque to the buffer and comes back with the frame's :class:`Playout`."""
        seq &= 0xFFFF
        self.stats.received += 1
        if self._next is not None:
            d = _diff(seq, self._next)
            if abs(d) > _RESTART_GAP:
                self._frames.clear()
                self._next = None
                self._playing = False
            elif d < 0 and self._playing:
                self.stats.late += 1  # its slot was already played or concealed
                return
        if seq in self._frames:
            self.stats.duplicate += 1
            return
        self._frames[seq] = (payload, now, tag)
        if self._next is None or _diff(seq, self._next) < 0:
            self._next = seq
        self._trim()

    def _newest(self) -> int:
        assert self._next is not None
        return max(self._frames, key=lambda s: _diff(s, self._next or 0))

    def _trim(self) -> None:
        """Skip ahead when the span held exceeds ``max`` frames (bounded latency)."""
        if self._next is None or not self._frames:
            return
        newest = self._newest()
        span = _diff(newest, self._next) + 1
        if span <= self.max:
            return
        new_next = (newest - self.level + 1) & 0xFFFF
        for s in list(self._frames):
            if _diff(s, new_next) < 0:
                del self._frames[s]
                self.stats.overflow_dropped += 1
        self._next = new_next
        self._skipped_ahead = True

    def pop(self, now: float | None = None) -> Playout:
        """The frame for this 20 ms tick; ``now`` is the tick's time (see the module docstring)."""
        if self._next is None:
            return Playout(Kind.SILENCE)
        if not self._playing:
            span = _diff(self._newest(), self._next) + 1 if self._frames else 0
            if span < self.level:
                return Playout(Kind.SILENCE)
            first = self._frames.get(self._next)
            if first is not None and first[1] is not None and now is not None:
                if now - first[1] < SHRINK_GUARD_S and not self._start_deferred:
                    self._start_deferred = True  # once per start, whatever the clock says
                    # The stream's frames land just before our tick: start one tick later, in
                    # the silence before playing, rather than stall (and conceal) on the first
                    # late one. A stream not in phase is shrunk back after a window.
                    self.stats.deferred += 1
                    return Playout(Kind.SILENCE)
            self._playing = True
            self._empty_ticks = 0
            self._window = 0
            self._min_depth = self.max
            self._min_slack = float("inf")
            self._after_stall = False
            self._start_deferred = False
        if not self._frames:
            self._empty_ticks += 1
            if self._empty_ticks > _MAX_CONCEAL:
                # Sustained underrun: stop, wait for `level` frames again.
                # The sender paused (or died): forget the position so the next packet,
                # whatever its sequence number, starts a fresh buffering phase.
                self._playing = False
                self._next = None
                self.stats.underruns += 1
                # A gap this long is a pause (or a dead sender), not lateness: take back the
                # cushion its first empty tick added.
                if self.level > self.target:
                    self.level -= 1
                    self.stats.level = self.level
                return Playout(Kind.SILENCE)
            if self._empty_ticks == 1:
                # A stall: the frame is late. Hold the position (it still plays when it comes)
                # and want one more frame of cushion from now on.
                self.stats.stalls += 1
                if self._since_shrink is not None and (
                    self._since_shrink < RECUR_WINDOWS * self.relax
                ):
                    # Late again soon after the frame was given back: keep it longer next time.
                    self.relax = min(2 * self.relax, self._relax_cap)
                    self.stats.recurred += 1
                self._since_shrink = None
                self.level = min(self.level + 1, self.max_level)
                self.stats.level = self.level
                self._window = 0
                self._min_depth = self.max
                self._min_slack = float("inf")
                self._after_stall = True
            self.stats.concealed += 1
            return Playout(Kind.CONCEAL)
        self._empty_ticks = 0
        entry = self._frames.get(self._next)
        if self._after_stall:
            # The late frame itself: it came between two ticks, so its short wait says nothing
            # about the frames after it, which now play one frame later than before the stall.
            self._after_stall = entry is None
        elif entry is not None and now is not None and entry[1] is not None:
            slack = now - entry[1]
            if slack < self._min_slack:
                self._min_slack = slack
            if slack < SHRINK_GUARD_S:
                self.stats.tight += 1
        self._adapt(len(self._frames))
        seq = self._next
        self._next = (seq + 1) & 0xFFFF
        entry = self._frames.pop(seq, None)
        if entry is None:
            self.stats.concealed += 1
            return Playout(Kind.CONCEAL)
        self.stats.played += 1
        return Playout(Kind.PLAY, entry[0], entry[2])

    def _adapt(self, depth: int) -> None:
        """Shrink towards ``target`` after a window without stalls (see the module docstring)."""
        if depth < self._min_depth:
            self._min_depth = depth
        if self._since_shrink is not None:
            self._since_shrink += 1
        self._window += 1
        if self._window < self.relax:
            return
        if self.level > self.target:
            self.level -= 1
            self.stats.level = self.level
        if self._min_depth > self.level and self._next is not None:
            if self._min_slack < FRAME_S + SHRINK_GUARD_S:
                # A frame of the window would have been too close to its tick one frame sooner.
                self.stats.kept += 1
            else:
                # One frame more than wanted was queued the whole window: drop the oldest.
                self._frames.pop(self._next, None)
                self._next = (self._next + 1) & 0xFFFF
                self.stats.shrunk += 1
                self._since_shrink = 0
        elif (
            self.relax > self.relax_ticks
            and self._since_shrink is not None
            and self._since_shrink >= RECUR_WINDOWS * self.relax
        ):
            # The frame was given back long ago and no stall followed: remember less. (Before
            # any shrink the buffer still holds the frame its last stall added: keep the window.)
            self.relax = max(self.relax_ticks, self.relax // 2)
        self._window = 0
        self._min_depth = self.max
        self._min_slack = float("inf")

    def pop_ready(self) -> list[Playout]:
        """For a consumer without a playout clock: every frame that can be played now, in order.

        A missing frame is concealed once a frame ``target`` sequence numbers later is held (with
        ``target=1``, as soon as any later frame arrives); a gap of more than ``_MAX_CONCEAL``
        frames is skipped without concealment.
        """
        out: list[Playout] = []
        if self._skipped_ahead and self._frames and self._next not in self._frames:
            # Overflow moved the position into a gap: resume at the oldest frame held instead
            # of concealing frames that were skipped on purpose.
            nxt = self._next
            self._next = min(self._frames, key=lambda s: _diff(s, nxt or 0))
        self._skipped_ahead = False
        while self._frames and self._next is not None:
            entry = self._frames.pop(self._next, None)
            if entry is not None:
                self._playing = True
                self._next = (self._next + 1) & 0xFFFF
                self.stats.played += 1
                out.append(Playout(Kind.PLAY, entry[0], entry[2]))
                continue
            nxt = self._next
            oldest = min(self._frames, key=lambda s: _diff(s, nxt))
            if _diff(oldest, nxt) > _MAX_CONCEAL:
                self._next = oldest  # a pause or a restart, not a loss: nothing to conceal
                continue
            if _diff(self._newest(), nxt) < self.target:
                break  # the missing frame may still arrive out of order
            self._next = (nxt + 1) & 0xFFFF
            self.stats.concealed += 1
            out.append(Playout(Kind.CONCEAL))
        return out
