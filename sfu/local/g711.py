"""G.711 µ-law (ITU-T G.711) as lookup tables, for the local channel's narrowband sidecar.

A G.711 caller's audio reaches an 8 kHz bridge worker as µ-law decoded samples: every sample
sits on the µ-law grid. Carried through the room as Opus only, it comes out of the listener's
decoder off that grid, and the listener's own G.711 encoder towards its phone quantises it a
second time (PESQ NB 3.67 against 3.96 for G.711 alone on the espeak-ng sentences,
docs/bridge-media.md). Sent as µ-law as well (:data:`~roomline.wire.ULAW_EXT_ID`), the listener's
worker gets the samples back bit for bit, and its phone's encoder reproduces the caller's codes.

Encoding is one table look-up per sample (65536 entries, built once); decoding one per code. The
tables follow G.711's µ-law segments and bias (132) on the 16-bit linear scale. What the sidecar
needs is that decoding is the same as the phones' (``tests/sfu/local/test_g711.py`` checks it
against FFmpeg's ``pcm_mulaw`` decoder) and that a decoded value encodes back to its own code;
between two grid values an encoder may round either way (FFmpeg picks the nearer one, this table
the classic decision levels: they differ at 512 of the 65536 inputs).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ULAW_FRAME_BYTES", "ULAW_RATE", "G711Error", "ulaw_decode", "ulaw_encode"]

#: The sidecar's sample rate: G.711's.
ULAW_RATE = 8000
#: One 20 ms frame of µ-law: one byte per sample.
ULAW_FRAME_BYTES = ULAW_RATE * 20 // 1000

_BIAS = 0x84
#: Largest magnitude before the bias is added (the top of segment 7).
_CLIP = 32635


class G711Error(ValueError):
    """A µ-law frame that is not one 20 ms frame."""


def _decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _BIAS
    t <<= (u & 0x70) >> 4
    return np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)


def _encode_table() -> np.ndarray:
    s = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), _CLIP) + _BIAS
    # Segment = position of the highest set bit above bit 7 (integer comparisons, no log2).
    exp = np.zeros_like(mag)
    for k in range(1, 8):
        exp += mag >= (0x80 << k)
    mant = (mag >> (exp + 3)) & 0x0F
    codes = (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8)
    table = np.empty(65536, dtype=np.uint8)
    table[s & 0xFFFF] = codes  # indexed by the sample's 16 bits read as unsigned
    return table


_DECODE = _decode_table()
_ENCODE = _encode_table()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """µ-law codes of int16 samples (any length)."""
    # ``take`` is numpy's direct gather; indexing with an array goes through its general
    # fancy-indexing machinery (an iterator per call), about half again as slow per frame.
    return _ENCODE.take(np.ascontiguousarray(pcm, dtype=np.int16).view(np.uint16)).tobytes()


def ulaw_decode(codes: bytes, expect: int = ULAW_FRAME_BYTES) -> np.ndarray:
    """int16 samples of ``expect`` µ-law codes; :class:`G711Error` if the length differs."""
    if len(codes) != expect:
        raise G711Error(f"µ-law frame of {len(codes)} bytes, expected {expect}")
    return _DECODE[np.frombuffer(codes, np.uint8)]
