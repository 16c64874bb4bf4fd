"""sfu.local.g711: the µ-law tables of the local channel's narrowband sidecar, against FFmpeg."""

from __future__ import annotations

import av
import numpy as np
import pytest

from sfu.local.g711 import ULAW_FRAME_BYTES, G711Error, ulaw_decode, ulaw_encode

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def ffmpeg_decode(codes: bytes) -> np.ndarray:
    dec = av.CodecContext.create("pcm_mulaw", "r")
    dec.sample_rate = 8000
    dec.layout = "mono"
    [frame] = dec.decode(av.Packet(codes))
    return np.asarray(frame.to_ndarray()[0], np.int16)


def ffmpeg_encode(pcm: np.ndarray) -> bytes:
    enc = av.CodecContext.create("pcm_mulaw", "w")
    enc.sample_rate, enc.format, enc.layout = 8000, "s16", "mono"
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*enc.encode(frame), *enc.encode(None)])


def test_decoding_is_ffmpegs_for_every_code() -> None:
    assert np.array_equal(ulaw_decode(ALL_CODES, 256), ffmpeg_decode(ALL_CODES))


def test_a_decoded_value_encodes_back_to_the_same_value() -> None:
    """What makes the sidecar exact: samples on the µ-law grid survive encode + decode."""
    grid = ulaw_decode(ALL_CODES, 256)
    assert np.array_equal(ulaw_decode(ulaw_encode(grid), 256), grid)
    # and the codes themselves, except µ-law's two zeros (0x7F and 0xFF both decode to 0)
    back = ulaw_encode(grid)
    assert [c for c in range(256) if back[c] != c] == [0x7F]


def test_encoding_picks_one_of_the_two_grid_values_around_each_sample() -> None:
    grid = np.sort(np.unique(ulaw_decode(ALL_CODES, 256).astype(np.int32)))
    got = ulaw_decode(ulaw_encode(ALL_SAMPLES), len(ALL_SAMPLES)).astype(np.int32)
    x = ALL_SAMPLES.astype(np.int32)
    hi = np.searchsorted(grid, x)  # first grid value >= x
    below = grid[np.maximum(hi - 1, 0)]
    above = grid[np.minimum(hi, len(grid) - 1)]
    assert np.all((got == below) | (got == above) | (got == x))
    # FFmpeg rounds to the nearer value; the classic decision levels differ only near the
    # segment boundaries, and then by one code.
    ff = np.frombuffer(ffmpeg_encode(ALL_SAMPLES), np.uint8).astype(np.int32)
    ours = np.frombuffer(ulaw_encode(ALL_SAMPLES), np.uint8).astype(np.int32)
    differ = ff != ours
    assert 0 < differ.sum() <= 1024
    assert np.all(np.abs(ff[differ] - ours[differ]) == 1)


def test_speech_like_signal_round_trips_exactly_once_on_the_grid() -> None:
    rng = np.random.default_rng(7)
    x = np.clip(rng.normal(0, 4000, 8000), -32768, 32767).astype(np.int16)
    once = ulaw_decode(ulaw_encode(x), len(x))
    twice = ulaw_decode(ulaw_encode(once), len(x))
    assert not np.array_equal(once, x)  # the first quantisation loses something
    assert np.array_equal(twice, once)  # the second loses nothing


def test_decode_invalid_length() -> None:
    with pytest.raises(G711Error, match="161 bytes, expected 160"):
        ulaw_decode(bytes(ULAW_FRAME_BYTES + 1))


def test_decode_truncated() -> None:
    with pytest.raises(G711Error, match="expected 160"):
        ulaw_decode(bytes(ULAW_FRAME_BYTES)[:-7])
