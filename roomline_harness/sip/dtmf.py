"""RFC 4733 telephone-event payloads and SIP INFO ``application/dtmf-relay`` bodies for test peers.

The bridge worker never parses these itself (pjsua2 does); tests use them to build DTMF pcaps for
SIPp and to check what a peer sent. Repeats of one event are folded by **RTP timestamp** (the
marker bit is unreliable: carriers drop or repeat it), and the end packet is sent three times.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from bridge.worker.dtmf import DtmfError, digit_to_code
from roomline.wire import DTMF_DIGITS

#: A tone longer than this (in 8 kHz samples, ~8 s) is refused when parsing INFO bodies; the
#: duration field is 16 bits on the wire, so anything larger is nonsense anyway.
MAX_DURATION = 0xFFFF


@dataclass(frozen=True)
class TelephoneEvent:
    """One RFC 4733 payload: event code, end bit, volume (0..63, -dBm0) and duration (samples)."""

    event: int
    end: bool
    volume: int
    duration: int

    def encode(self) -> bytes:
        if not (0 <= self.event <= 255 and 0 <= self.volume <= 63 and 0 <= self.duration <= 0xFFFF):
            raise DtmfError("telephone-event field out of range")
        return struct.pack(
            "!BBH", self.event, (0x80 if self.end else 0) | self.volume, self.duration
        )

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise DtmfError("telephone-event payload truncated")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)


@dataclass(frozen=True)
class DigitEvent:
    """A digit was detected (first packet of a new event timestamp)."""

    code: int
    digit: str
    timestamp: int


class DtmfReceiver:
    """Folds RFC 4733 packets into digits: one :class:`DigitEvent` per distinct RTP timestamp.

    Feed every telephone-event packet (timestamp + payload). Retransmitted end packets and the
    periodic updates share the event's timestamp and are ignored after the first.
    """

    def __init__(self, history: int = 16) -> None:
        self._seen: list[int] = []
        self._history = history

    def feed(self, timestamp: int, payload: bytes) -> DigitEvent | None:
        ev = TelephoneEvent.parse(payload)
        if ev.event >= len(DTMF_DIGITS):
            return None  # flash-hook and other non-digit events: not DTMF
        if timestamp in self._seen:
            return None
        self._seen.append(timestamp)
        del self._seen[: -self._history]
        return DigitEvent(ev.event, DTMF_DIGITS[ev.event], timestamp)


def generate_digit(
    digit: str,
    *,
    duration_ms: int = 250,
    clock_rate: int = 8000,
    ptime_ms: int = 20,
    volume: int = 10,
    end_repeats: int = 3,
) -> Iterator[tuple[bool, int, bytes]]:
    """Packets for one digit as ``(marker, duration_offset, payload)``.

    All packets share the event's RTP timestamp (the caller assigns it); updates go out every
    ``ptime_ms`` with a growing duration, the final duration is sent ``end_repeats`` times with the
    end bit. The first packet carries the marker.
    """
    code = digit_to_code(digit)
    step = clock_rate * ptime_ms // 1000
    total = clock_rate * duration_ms // 1000
    dur = step
    first = True
    while dur < total:
        yield first, dur, TelephoneEvent(code, False, volume, dur).encode()
        first = False
        dur += step
    for _ in range(end_repeats):
        yield first, total, TelephoneEvent(code, True, volume, total).encode()
        first = False


def parse_dtmf_relay(body: str | bytes) -> tuple[str, int]:
    """Parse a SIP INFO ``application/dtmf-relay`` body → ``(digit, duration_ms)``.

    Format (de-facto, Cisco): ``Signal=5\\r\\nDuration=160\\r\\n``. Keys are case-insensitive;
    Duration is optional (default 250 ms).
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DtmfError("dtmf-relay body is not ASCII") from exc
    signal: str | None = None
    duration = 250
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise DtmfError("dtmf-relay line without '='")
        key, value = key.strip().lower(), value.strip()
        if key == "signal":
            if value == "10":
                value = "*"  # some phones send the event code for * and #
            elif value == "11":
                value = "#"
            digit_to_code(value)
            signal = value.upper()
        elif key == "duration":
            if not value.isdigit() or int(value) > MAX_DURATION:
                raise DtmfError("dtmf-relay Duration is not a valid number")
            duration = int(value)
    if signal is None:
        raise DtmfError("dtmf-relay body has no Signal")
    return signal, duration
