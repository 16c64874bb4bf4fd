"""DTMF keys ↔ RFC 4733 event codes (sans-I/O).

In the worker pjsua2 itself demuxes telephone-event RTP and SIP INFO and reports keys through
``Call.onDtmfDigit``; the worker only needs to turn keys into the codes of a LiveKit ``SipDTMF``
data packet and back. The alphabet is :data:`roomline.wire.DTMF_DIGITS`, shared with PIN entry
and the agents' IVR.
"""

from __future__ import annotations

from roomline.errors import InvalidRequest
from roomline.wire import DTMF_DIGITS


class DtmfError(InvalidRequest):
    """Not a DTMF key or event code."""


def digit_to_code(digit: str) -> int:
    """``"5"`` → 5, ``"*"`` → 10, ``"#"`` → 11, ``"A"``/``"a"`` → 12 ..."""
    idx = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if idx < 0:
        raise DtmfError(f"not a DTMF digit: {digit!r}")
    return idx


def code_to_digit(code: int) -> str:
    """``11`` → ``"#"``, ``12`` → ``"A"``; :class:`DtmfError` outside 0..15."""
    if not 0 <= code < len(DTMF_DIGITS):
        raise DtmfError(f"not a DTMF event code: {code}")
    return DTMF_DIGITS[code]
