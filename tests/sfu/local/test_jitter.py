"""sfu/local/jitter.py: reordering, loss concealment, bounded latency, adaptation."""

from __future__ import annotations

import pytest

from sfu.local import jitter
from sfu.local.jitter import JitterBuffer
from sfu.local.jitter import Kind as JKind


def _drain(jb: JitterBuffer, n: int) -> list[tuple[JKind, bytes]]:
    return [(p.kind, p.payload) for p in (jb.pop() for _ in range(n))]


def test_jitter_reorders_and_waits_for_target() -> None:
    jb = JitterBuffer(target_frames=3, max_frames=10)
    assert jb.pop().kind is JKind.SILENCE
    jb.push(102, bytes([102]))
    assert jb.pop().kind is JKind.SILENCE  # spans 1 frame < target 3
    jb.push(100, bytes([100]))  # reordered: now spans 100..102
    assert _drain(jb, 1) == [(JKind.PLAY, bytes([100]))]
    jb.push(101, bytes([101]))  # arrives just in time
    assert [p for _, p in _drain(jb, 2)] == [bytes([101]), bytes([102])]


def test_jitter_conceals_loss_then_rebuffers() -> None:
    jb = JitterBuffer(3, 10)
    for s in (1, 2, 4, 5):
        jb.push(s, bytes([s]))
    kinds = [k for k, _ in _drain(jb, 4)]
    assert kinds == [JKind.PLAY, JKind.PLAY, JKind.CONCEAL, JKind.PLAY]
    kinds = [k for k, _ in _drain(jb, 6)]  # 5, then concealment, then silence
    assert kinds[0] is JKind.PLAY and kinds[-1] is JKind.SILENCE
    assert jb.stats.underruns == 1
    # the sender resumes with any sequence number: buffering starts again
    for s in (7, 8, 9):
        jb.push(s, b"x")
    assert _drain(jb, 1)[0][0] is JKind.PLAY


def test_jitter_bounded_latency_late_duplicate_wrap() -> None:
    jb = JitterBuffer(3, 10)
    for s in range(65530, 65530 + 30):
        jb.push(s & 0xFFFF, b"x")
    assert len(jb) <= 10 and jb.stats.overflow_dropped > 0
    first = jb.pop()
    assert first.kind is JKind.PLAY
    jb.push(65530, b"late")
    jb.push((65530 + 29) & 0xFFFF, b"dup")
    assert jb.stats.late == 1 and jb.stats.duplicate == 1
    with pytest.raises(ValueError):
        JitterBuffer(5, 2)


def test_jitter_settles_at_one_frame_on_a_clean_link() -> None:
    jb = JitterBuffer(1, 10, relax_ticks=50)
    for seq in range(1000):
        jb.push(seq, bytes([seq & 0xFF]))
        assert jb.pop().kind is JKind.PLAY
        assert len(jb) == 0  # nothing waits: one frame of buffering
    assert jb.level == 1 and jb.stats.stalls == 0 and jb.stats.concealed == 0


def test_jitter_grows_on_stalls_then_shrinks_back() -> None:
    jb = JitterBuffer(1, 10, relax_ticks=50)
    seq = grown = 0
    for tick in range(600):
        # ticks 100..300: every 10th packet comes one tick late (arrives with the next one)
        late = 100 <= tick < 300 and tick % 10 == 0
        if not late:
            jb.push(seq, b"x")
            if 100 <= tick - 1 < 300 and (tick - 1) % 10 == 0:
                jb.push(seq - 1, b"x")  # the late one
        seq += 1
        jb.pop()
        grown = max(grown, jb.level)
    assert grown >= 2  # it grew a frame of cushion on the first stall
    assert jb.stats.stalls < 5  # ... after which late packets stopped stalling it
    assert jb.level == 1 and jb.stats.shrunk >= 1  # clean again: back to one frame
    assert jb.stats.late == 0  # every late packet was still played


def test_jitter_pause_is_not_a_stall() -> None:
    jb = JitterBuffer(1, 10)
    for s in range(10):
        jb.push(s, b"x")
        jb.pop()
    for _ in range(10):  # the sender pauses: conceal, then re-buffer
        jb.pop()
    assert jb.stats.underruns == 1 and jb.level == 1


def _run_clocked(
    jb: JitterBuffer,
    ticks: int,
    offset: float,
    late_every: int,
    late_by: float,
    timed: bool,
    first_offset: float | None = None,
    late_until: int | None = None,
) -> list[int]:
    """Frames sent by one 20 ms clock and played by another: frame n arrives ``offset`` s after
    tick n (negative: before it), except every ``late_every``-th frame, which arrives ``late_by``
    s after its tick (only before frame ``late_until`` if given), and frame 0, which arrives
    ``first_offset`` after tick 0 if given. Returns the buffer's depth before each tick's pop."""

    def late(n: int) -> bool:
        return n % late_every == late_every - 1 and (late_until is None or n < late_until)

    arrivals = sorted(
        (n * 0.02 + (late_by if late(n) else offset), n)
        for n in range(1 if first_offset is not None else 0, ticks)
    )
    if first_offset is not None:
        arrivals.insert(0, (first_offset, 0))
    depths: list[int] = []
    i = 0
    for tick in range(ticks):
        now = tick * 0.02
        while i < len(arrivals) and arrivals[i][0] <= now:
            t, n = arrivals[i]
            jb.push(n, b"x", t if timed else None)
            i += 1
        depths.append(len(jb))
        jb.pop(now if timed else None)
    return depths


def test_jitter_keeps_the_extra_frame_for_a_stream_in_phase_with_the_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Frames come 1 ms before their tick, and one in 100 comes 2 ms after it: two clocks almost
    # in phase. The first frame came early (10 ms), so playing starts at once. After the first
    # stall the buffer must keep its extra frame, since one frame sooner would put every frame
    # back on the edge.
    jb = JitterBuffer(1, 10, relax_ticks=50)
    _run_clocked(
        jb, 3000, offset=-0.001, late_every=100, late_by=0.002, timed=True, first_offset=-0.010
    )
    assert jb.stats.stalls == 1 and jb.stats.shrunk == 0 and jb.stats.deferred == 0
    assert jb.stats.kept >= 20  # the windows since the stall refused to shrink
    # Tight frames: 1–98, the ones before the first stall (1 ms from arrival to play).
    assert jb.stats.late == 0 and jb.stats.tight == 98
    # The same stream without arrival times, and without the longer window that recurring
    # stalls bring: shrunk after each window, it stalls again and again.
    monkeypatch.setattr(jitter, "RECUR_WINDOWS", 0)
    untimed = JitterBuffer(1, 10, relax_ticks=50)
    _run_clocked(untimed, 3000, offset=-0.001, late_every=100, late_by=0.002, timed=False)
    assert untimed.stats.stalls > 10 and untimed.stats.shrunk > 10


def test_jitter_starts_a_tick_later_when_the_first_frame_lands_at_the_tick() -> None:
    # The same in-phase stream from its first frame: the buffer starts one tick later (in the
    # silence before playing) and never stalls or conceals.
    jb = JitterBuffer(1, 10, relax_ticks=50)
    depths = _run_clocked(jb, 3000, offset=-0.001, late_every=100, late_by=0.002, timed=True)
    assert (jb.stats.deferred, jb.stats.stalls, jb.stats.concealed) == (1, 0, 0)
    # kept: every window without a late frame (a late one leaves a single frame queued)
    assert jb.stats.shrunk == 0 and jb.stats.kept >= 25 and jb.stats.tight == 0
    # Two frames queued at each tick, one when the late frame is due: never empty.
    assert jb.stats.played == 2999 and min(depths[2:]) == 1
    assert depths[2:].count(2) >= 0.98 * len(depths[2:])


def test_jitter_gives_back_the_frame_after_a_one_off_hiccup() -> None:
    # Frames come 10 ms before their tick; one (frame 599) comes 5 ms after its tick.
    jb = JitterBuffer(1, 10, relax_ticks=50)
    depths = _run_clocked(jb, 1000, offset=-0.010, late_every=600, late_by=0.005, timed=True)
    assert jb.stats.stalls == 1 and jb.stats.shrunk == 1 and jb.stats.kept == 0
    assert jb.level == 1 and jb.stats.tight == 0
    assert depths[599] == 0 and depths[610] == 2  # the stall, then a frame more held
    assert set(depths[700:]) == {1}  # back to one frame of buffering


def test_jitter_arrival_times_do_not_change_a_clean_stream() -> None:
    jb = JitterBuffer(1, 10, relax_ticks=50)
    depths = _run_clocked(jb, 1000, offset=-0.010, late_every=10**6, late_by=0.0, timed=True)
    assert set(depths[1:]) == {1}
    assert (jb.stats.stalls, jb.stats.kept, jb.stats.shrunk, jb.stats.tight) == (0, 0, 0, 0)


def test_jitter_keeps_the_frame_longer_when_stalls_recur(monkeypatch: pytest.MonkeyPatch) -> None:
    # Frames come 10 ms early, but one in 120 comes 5 ms late, for the first 1500 frames. Each
    # shrink 50 ticks after a stall would put the next late frame 70 ticks later on the edge.
    def run() -> tuple[JitterBuffer, list[int]]:
        jb = JitterBuffer(1, 10, relax_ticks=50)
        depths = _run_clocked(
            jb, 4000, offset=-0.010, late_every=120, late_by=0.005, timed=True, late_until=1500
        )
        return jb, depths

    jb, depths = run()
    assert jb.stats.stalls <= 4 and jb.stats.recurred >= 1
    # Once the late frames stop, the frame is given back and the window settles again.
    assert depths[-1] == 1 and jb.relax == 50 and jb.stats.shrunk >= 2
    # Without the longer memory every late frame after a shrink stalls.
    monkeypatch.setattr(jitter, "RECUR_WINDOWS", 0)
    forgetful, _ = run()
    assert forgetful.stats.recurred == 0 and forgetful.stats.stalls >= 10


def test_jitter_defers_a_start_once_whatever_the_clock_says() -> None:
    # A clock that does not advance (an offline run faster than real time): every frame looks
    # as if it just arrived. The start is put off one tick, never more.
    jb = JitterBuffer(1, 10)
    kinds = []
    for seq in range(100):
        jb.push(seq, b"x", 5.0)
        kinds.append(jb.pop(5.0).kind)
    assert kinds[0] is JKind.SILENCE and set(kinds[1:]) == {JKind.PLAY}
    assert jb.stats.deferred == 1 and jb.stats.played == 99 and jb.stats.stalls == 0
