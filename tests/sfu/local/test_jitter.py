"""bridge/worker/jitter.py: reordering, loss concealment, bounded latency."""

from __future__ import annotations

import pytest

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
