"""sfu/local/framing.py: local-channel frames split anywhere, _invalid, _truncated."""

from __future__ import annotations

import pytest

from sfu.local.framing import FrameDecoder, FrameError, Kind, decode_rtp, encode_frame, encode_rtp


def test_frames_split_anywhere() -> None:
    data = encode_frame(Kind.SIGNAL, b"abc") + encode_rtp("TR_x", b"\x80rtp") + encode_frame(3, b"")
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        got += dec.feed(data[i : i + 1])
    assert got[0] == (1, b"abc") and got[2] == (3, b"")
    assert decode_rtp(got[1][1]) == ("TR_x", b"\x80rtp")


def test_frames_invalid_truncated() -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\0\0\0\0\x01")  # zero length
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\xff\xff\xff\xff\x01")  # absurd length
    assert FrameDecoder().feed(encode_frame(1, b"abcdef")[:-1]) == []  # truncated: waits
    for bad in (b"", b"\x05ab", b"\x02\xff\xfe"):
        with pytest.raises(FrameError):
            decode_rtp(bad)
    with pytest.raises(FrameError):
        encode_rtp("x" * 300, b"")
