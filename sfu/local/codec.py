"""Opus for the room leg (PyAV/libopus) and the 12-byte RTP header of the local channel.

Encoders take PCM at the rate the caller's audio really has (the bridge worker: 8 kHz for a G.711
call after :class:`Decimator` halves its 16 kHz port frames, 16 kHz for G.722); decoders produce
48 kHz (FFmpeg's libopus wrapper) and decimate to the consumer's rate. The RTP clock is 48 kHz
whatever the PCM rate (RFC 7587). Received packets are parsed with
:func:`sfu.media.rtp.parse_rtp`, the one RTP parser of the code base.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Iterable
from fractions import Fraction

import av
import numpy as np

from roomline.wire import AUDIO_LEVEL_EXT_ID, FRAME_BYTES, FRAME_SAMPLES, OPUS_PT, ULAW_EXT_ID
from roomline.wire import SAMPLE_RATE as RATE

__all__ = [
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "OPUS_COMPLEXITY",
    "OPUS_COMPLEXITY_NB",
    "OPUS_PT",
    "RATE",
    "OpusDecoder",
    "OpusEncoder",
    "RtpPacketizer",
    "audio_level",
]

#: libopus complexity 5 encoded a 20 ms frame in about 190 µs against about 270 µs at 10 on the
#: development machine, with no audible difference for telephone-band input.
OPUS_COMPLEXITY = 5
#: Complexity for 8 kHz (narrowband) input, i.e. a G.711 caller's audio. Measured with
#: ``bench/media_budget.py``/``bench/pesq_chain.py``: about 45–60 µs per frame against 80–105 µs
#: at 5, and the same PESQ NB on the espeak-ng sentences (3.95 vs 3.97 before phone B's G.711,
#: 3.69 vs 3.67 after it): at 8 kHz the analysis that higher complexities buy has little to work
#: on, while its cost is the largest single item of a call's budget.
OPUS_COMPLEXITY_NB = 1
#: RFC 6464 V (voice activity) flag for levels at or above -50 dBov.
VOICE_LEVEL = 50


class OpusEncoder:
    """Mono, 20 ms frames, ``application=voip``; one RTP payload per frame.

    ``rate`` is the PCM input rate (48000, 24000, 16000, 12000 or 8000): libopus encodes what the
    input carries (16 kHz = wideband) and costs less per frame at lower rates; the RTP clock of
    the payloads stays 48 kHz whatever the input rate (RFC 7587).
    """

    def __init__(
        self, bitrate: int = 32000, rate: int = RATE, complexity: int | None = None
    ) -> None:
        if complexity is None:
            complexity = OPUS_COMPLEXITY_NB if rate == 8000 else OPUS_COMPLEXITY
        if not 0 <= complexity <= 10:
            raise ValueError(f"Opus complexity must be 0..10, got {complexity}")
        ctx = av.CodecContext.create("libopus", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        self.rate = rate
        self.frame_samples = rate * FRAME_SAMPLES // RATE
        ctx.sample_rate = rate
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.time_base = Fraction(1, rate)
        ctx.options = {"application": "voip", "compression_level": str(complexity)}
        ctx.open()
        self.complexity = complexity
        self._ctx: av.AudioCodecContext | None = ctx
        self._pts = 0
        # PyAV's public ``encode`` passes every frame through an ``AudioResampler`` whose
        # libavfilter graph re-chunks it to the codec's frame size (Python objects, a graph pull
        # and push, one thread per CPU): about 40 % of the encode in a busy bridge worker. Our
        # frames already have the encoder's format, layout, rate and exactly ``frame_size``
        # samples, so they go to ``avcodec_send_frame`` directly. This is PyAV's own private
        # step after the re-chunking; if a PyAV release drops it, the public path is used.
        send = getattr(ctx, "_send_frame_and_recv", None)
        self._send: Callable[[av.AudioFrame], Iterable[av.Packet]] = ctx.encode
        # On the direct path one frame serves every encode: libopus consumes the samples inside
        # ``avcodec_send_frame`` (the payloads equal those of a new frame per encode, a test
        # checks it), and allocating and freeing an AudioFrame was a sixth of the encode. The
        # public path's re-chunking graph may keep the frame it was given, so there every
        # encode gets a new one.
        self._frame: av.AudioFrame | None = None
        if send is not None and ctx.frame_size == self.frame_samples:
            self._send = send
            self._frame = self._new_frame()

    def encode(self, pcm: bytes) -> list[bytes]:
        """Encode one 20 ms frame of s16 PCM; returns 0..n payloads (normally exactly one)."""
        n = self.frame_samples
        if len(pcm) != 2 * n:
            raise ValueError(f"Opus frame must be {2 * n} bytes, got {len(pcm)}")
        frame = self._frame if self._frame is not None else self._new_frame()
        frame.planes[0].update(pcm)
        frame.pts = self._pts
        self._pts += n
        return [bytes(p) for p in self._send(frame)]

    def _new_frame(self) -> av.AudioFrame:
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.sample_rate = self.rate
        return frame

    def close(self) -> None:
        """Free the codec now (idempotent); :meth:`encode` raises afterwards.

        On the public ``encode`` path PyAV re-chunks every input frame through a libavfilter
        graph that starts a thread per CPU; waiting for the garbage collector to find the encoder
        left a busy bridge worker with dozens of idle threads from calls that had already ended.
        """
        self._ctx = None
        self._frame = None
        self._send = _closed_encoder  # also drops the bound method's reference to the codec


def _closed_encoder(frame: av.AudioFrame) -> list[av.Packet]:
    raise RuntimeError("Opus encoder is closed")


class Decimator:
    """Integer-factor downsampler of int16 frames (windowed-sinc FIR, state kept across frames).

    FFmpeg's libopus wrapper always decodes at 48 kHz, so a 16 kHz consumer decimates by 3 here;
    a G.711 call's 16 kHz bridge frames are decimated by 2 before the 8 kHz Opus encoder. One
    strided matrix-vector product per frame (a few µs for 20 ms), not a general resampler.
    ``cutoff`` is the passband edge as a fraction of the *output* Nyquist rate.
    """

    def __init__(
        self, factor: int, taps: int | None = None, cutoff: float = 0.9, beta: float = 8.0
    ) -> None:
        if taps is None:
            # The transition band of a fixed-length filter is fixed in *input* Hz, so it must
            # grow with the factor to end below the output's Nyquist rate: 48 taps decimating
            # 48 → 8 kHz let a 5 kHz tone through as a 3 kHz alias at -25 dB (a WebRTC speaker
            # heard by a phone on the 8 kHz bridge); 96 take it below -80 dB.
            taps = max(48, 16 * factor)
        self.factor = factor
        self.taps = taps
        n = np.arange(taps) - (taps - 1) / 2
        fc = cutoff / (2 * factor)  # of the input rate
        h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(taps, beta)
        self._h = (h / h.sum()).astype(np.float32)[::-1].copy()
        #: Input history (``taps - 1`` samples) followed by the current frame, reused per frame.
        self._buf = np.zeros(0, np.float32)
        #: Strided (output sample × tap) view of ``_buf``, made once per buffer: building it
        #: (``as_strided``) cost as much as the product itself.
        self._windows = np.zeros((0, taps), np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        keep = self.taps - 1
        buf = self._buf
        if len(buf) != keep + len(x):  # first frame, or another frame size: keep the history
            old = buf[len(buf) - keep :] if len(buf) >= keep else np.zeros(keep, np.float32)
            buf = self._buf = np.empty(keep + len(x), np.float32)
            buf[:keep] = old
            st = buf.strides[0]
            self._windows = np.lib.stride_tricks.as_strided(
                buf,
                shape=(len(x) // self.factor, self.taps),
                strides=(st * self.factor, st),
                writeable=False,
            )
        else:
            buf[:keep] = buf[len(x) :]
        buf[keep:] = x  # int16 → float32 in place
        # np.dot, not @: for this strided view it is about twice as fast (numpy 2, no BLAS path).
        y = np.dot(self._windows, self._h)
        # The ufuncs themselves, not np.clip's Python wrapper.
        np.rint(y, out=y)
        np.minimum(y, 32767.0, out=y)
        np.maximum(y, -32768.0, out=y)
        return y.astype(np.int16)


class OpusDecoder:
    """Decodes one track's Opus payloads to mono int16 frames at ``rate``; conceals losses.

    FFmpeg's libopus decoder always produces 48 kHz; for a lower ``rate`` (the 16 kHz conference
    bridge) the output is decimated by :class:`Decimator`. Concealment repeats the last frame at
    half level once, then plays silence: cheap, and enough for the one or two frames the jitter
    buffer reports missing.
    """

    def __init__(self, rate: int = RATE) -> None:
        if RATE % rate:
            raise ValueError(f"decoder rate must divide {RATE}")
        ctx = av.CodecContext.create("libopus", "r")
        assert isinstance(ctx, av.AudioCodecContext)
        self.rate = rate
        self.frame_samples = rate * FRAME_SAMPLES // RATE
        self._decimate = Decimator(RATE // rate) if rate != RATE else None
        ctx.sample_rate = RATE
        ctx.layout = "mono"
        ctx.open()
        self._ctx = ctx
        self._last: np.ndarray | None = None
        self.errors = 0
        #: Whether decoded frames are packed mono s16 (checked on the first frame; the decoder's
        #: output format does not change), so the samples can be read from the plane directly.
        self._s16_mono: bool | None = None

    def decode(self, payload: bytes | None) -> np.ndarray:
        n = self.frame_samples
        if payload is None:
            last, self._last = self._last, None
            if last is None:
                return np.zeros(n, dtype=np.int16)
            return (last // 2).astype(np.int16)
        try:
            frames = self._ctx.decode(av.Packet(payload))
        except av.FFmpegError:
            self.errors += 1
            return np.zeros(n, dtype=np.int16)
        if len(frames) == 1:
            f = frames[0]
            fast = self._s16_mono
            if fast is None:
                fast = self._s16_mono = f.format.name == "s16" and len(f.layout.channels) == 1
            # A read-only view of the frame's buffer (which it keeps alive): no to_ndarray copy.
            out = (
                np.frombuffer(memoryview(f.planes[0]), np.int16, f.samples)
                if fast
                else _to_mono_s16(f)
            )
        else:
            chunks = [_to_mono_s16(f) for f in frames]
            out = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        if self._decimate is not None and len(out):
            out = self._decimate(out)
        elif not out.flags.writeable:
            out = out.copy()  # callers at 48 kHz get an array of their own, as before
        if len(out) != n:  # other ptimes: fit to our 20 ms grid
            out = np.resize(out, n) if len(out) else np.zeros(n, np.int16)
        self._last = out
        return out


def _to_mono_s16(frame: av.AudioFrame) -> np.ndarray:
    arr = frame.to_ndarray()
    if frame.format.name in ("flt", "fltp"):
        arr = np.clip(arr * 32768.0, -32768, 32767).astype(np.int16)
    elif arr.dtype != np.int16:
        arr = arr.astype(np.int16)
    if frame.format.is_planar:
        return arr[0]
    channels = len(frame.layout.channels)
    return arr.reshape(-1, channels)[:, 0] if channels > 1 else arr.reshape(-1)


def audio_level(pcm: np.ndarray) -> int:
    """RFC 6464 level of an int16 frame: -dBov of its RMS, 0 (loudest) .. 127 (silence)."""
    if not len(pcm):
        return 127
    x = pcm.astype(np.float32)
    ms = float(x.dot(x)) / (len(x) * 1073741824.0)  # the method: no array-function dispatch
    if ms <= 1e-13:
        return 127
    return min(127, max(0, int(round(-10.0 * math.log10(ms)))))


class RtpPacketizer:
    """Builds the room leg's RTP headers: PT 111, 48 kHz clock, +960 per 20 ms frame.

    With ``audio_level`` given, :meth:`packet` adds the RFC 6464 ``ssrc-audio-level`` element as a
    one-byte RFC 8285 header extension with ID :data:`~roomline.wire.AUDIO_LEVEL_EXT_ID` (the ID
    the local channel's SFU side reads, so the room's speaker detection hears the publisher).
    With ``ulaw`` (the frame as µ-law, :mod:`sfu.local.g711`) as well, both elements go into a
    two-byte-form block, the sidecar under :data:`~roomline.wire.ULAW_EXT_ID`.
    """

    def __init__(self, ssrc: int | None = None, payload_type: int = OPUS_PT) -> None:
        self.ssrc = ssrc if ssrc is not None else random.getrandbits(32)
        self.pt = payload_type
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self._first = True

    def packet(
        self,
        payload: bytes,
        samples: int = FRAME_SAMPLES,
        audio_level: int | None = None,
        ulaw: bytes | None = None,
    ) -> bytes:
        m_pt = (0x80 if self._first else 0) | self.pt
        level = -1
        if audio_level is not None:
            level = (0x80 if audio_level <= VOICE_LEVEL else 0) | (audio_level & 0x7F)
        if ulaw is not None:
            if not 0 < len(ulaw) <= 255:
                raise ValueError(f"a two-byte extension element holds 1-255 bytes, not {len(ulaw)}")
            lead = bytes((AUDIO_LEVEL_EXT_ID, 1, level)) if level >= 0 else b""
            lead += bytes((ULAW_EXT_ID, len(ulaw)))
            pad = -(len(lead) + len(ulaw)) % 4  # the block is counted in 32-bit words
            words = (len(lead) + len(ulaw) + pad) // 4
            hdr = b"".join(
                (
                    struct.pack(
                        "!BBHIIHH", 0x90, m_pt, self.seq, self.ts, self.ssrc, 0x1000, words
                    ),
                    lead,
                    ulaw,
                    bytes(pad),
                )
            )
        elif level < 0:
            hdr = struct.pack("!BBHII", 0x80, m_pt, self.seq, self.ts, self.ssrc)
        else:
            hdr = struct.pack(
                "!BBHIIHHBBH",
                0x90,
                m_pt,
                self.seq,
                self.ts,
                self.ssrc,
                0xBEDE,
                1,
                AUDIO_LEVEL_EXT_ID << 4,
                level,
                0,
            )
        self._first = False
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + samples) & 0xFFFFFFFF
        return hdr + payload
