"""bridge/worker/dtmf.py: RFC 4733 telephone-events and SIP INFO dtmf-relay."""

from __future__ import annotations

import pytest

from bridge.worker.dtmf import DtmfError, code_to_digit, digit_to_code
from roomline_harness.sip.dtmf import DtmfReceiver, TelephoneEvent, generate_digit, parse_dtmf_relay


def test_dtmf_codes() -> None:
    assert [digit_to_code(d) for d in "09*#AbCd"] == [0, 9, 10, 11, 12, 13, 14, 15]
    assert code_to_digit(11) == "#"
    for bad in ("x", "", "12"):
        with pytest.raises(DtmfError):
            digit_to_code(bad)
    with pytest.raises(DtmfError):
        code_to_digit(16)


def test_dtmf_generate_and_fold_by_timestamp() -> None:
    rx = DtmfReceiver()
    out = []
    for i, d in enumerate("1234*#"):
        ts = 1000 + i * 4000
        pkts = list(generate_digit(d))
        assert pkts[0][0] is True and not any(m for m, _, _ in pkts[1:])
        ends = [TelephoneEvent.parse(p) for _, _, p in pkts if TelephoneEvent.parse(p).end]
        assert len(ends) == 3 and ends[0].duration == 2000
        for _, _, payload in pkts + pkts[-1:]:  # plus a retransmitted end packet
            ev = rx.feed(ts, payload)
            if ev:
                out.append(ev.digit)
    assert "".join(out) == "1234*#"


def test_dtmf_same_digit_twice_is_two_events() -> None:
    rx = DtmfReceiver()
    p = TelephoneEvent(5, False, 10, 160).encode()
    assert rx.feed(100, p) and rx.feed(100, p) is None and rx.feed(900, p)


def test_dtmf_event_invalid_truncated() -> None:
    with pytest.raises(DtmfError):
        TelephoneEvent.parse(b"\x01\x02")
    with pytest.raises(DtmfError):
        TelephoneEvent(1, False, 64, 0).encode()
    assert DtmfReceiver().feed(1, TelephoneEvent(16, False, 0, 0).encode()) is None  # flash


def test_dtmf_relay() -> None:
    assert parse_dtmf_relay("Signal=5\r\nDuration=160\r\n") == ("5", 160)
    assert parse_dtmf_relay(b"signal= #\n") == ("#", 250)
    assert parse_dtmf_relay("Signal=11\r\n") == ("#", 250)
    assert parse_dtmf_relay("Signal=a\r\n") == ("A", 250)
    for bad in ("Duration=100", "Signal=x", "Signal=5\nDuration=abc", "garbage", b"\xff"):
        with pytest.raises(DtmfError):
            parse_dtmf_relay(bad)
