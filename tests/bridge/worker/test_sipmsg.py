"""bridge/worker/sipmsg.py: SIP header parsing (_invalid, _truncated, limits)."""

from __future__ import annotations

import pytest

from bridge.worker.sipmsg import SipParseError, parse_headers, parse_name_addr, via_transport

INVITE = (
    "INVITE sip:+15550100@10.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/TCP 1.2.3.4:5060;branch=z9hG4bK1\r\n"
    'f: "Alice" <sip:+15551234@carrier.example;user=phone>;tag=abc123\r\n'
    "To: <sip:+15550100@10.0.0.1>\r\n"
    "Call-ID: xyz@1.2.3.4\r\n"
    "X-Long: first\r\n  second\r\n"
    "Record-Route: <sip:a>\r\nRecord-Route: <sip:b>\r\n"
    "\r\n"
    "v=0\r\n"
)


def test_sip_headers() -> None:
    start, h = parse_headers(INVITE)
    assert start.startswith("INVITE")
    assert h["From"].startswith('"Alice"') and h["X-Long"] == "first second"
    assert h["Record-Route"] == "<sip:a>, <sip:b>"
    frm = parse_name_addr(h["From"])
    assert (frm.user, frm.host, frm.tag) == ("+15551234", "carrier.example", "abc123")
    assert parse_name_addr("tel:+1555").user == "+1555"
    assert parse_name_addr("sip:host.only").host == "host.only"
    assert via_transport(h["Via"]) == "tcp" and via_transport(None) == "udp"


@pytest.mark.parametrize("msg", ["", "INVITE x\r\nno colon here\r\n\r\n", "X\r\n: v\r\n\r\n"])
def test_sip_headers_invalid(msg: str) -> None:
    with pytest.raises(SipParseError):
        parse_headers(msg)


def test_sip_headers_truncated_and_limits() -> None:
    start, h = parse_headers(INVITE[:60])  # cut mid-header: still parses what is there
    assert start.startswith("INVITE") and "Via" in h
    with pytest.raises(SipParseError):
        parse_headers("INVITE x\r\n" + "X-A: b\r\n" * 200)
    with pytest.raises(SipParseError):
        parse_name_addr("<http://x>")
