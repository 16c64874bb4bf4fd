"""The signalling layer's own SDP reading (sfu/rtc/sdp.py): real offers, invalid and truncated input."""

from __future__ import annotations

import pytest

from sfu.rtc.sdp import MAX_SDP_SIZE, SdpError, advertise_ip, parse_media_sections

# Trimmed from a libwebrtc (LiveKit Rust SDK) publisher offer captured in roomline's logs.
LIBWEBRTC_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 6562309654223350810 3 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 7 13 14",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63",
        "c=IN IP4 0.0.0.0",
        "a=mid:7",
        "a=recvonly",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:63 red/48000/2",
        "m=video 0 UDP/TLS/RTP/SAVPF 96 97",
        "c=IN IP4 0.0.0.0",
        "a=bundle-only",
        "a=mid:13",
        "a=sendonly",
        "a=msid:- 28587cb5-3b8a-4b55-a2f7-bbbf5ac46bdb",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=ssrc:3223097917 msid:- 28587cb5-3b8a-4b55-a2f7-bbbf5ac46bdb",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:14",
        "",
    ]
)


def test_libwebrtc_offer() -> None:
    audio, video, data = parse_media_sections(LIBWEBRTC_OFFER)
    assert (audio.kind, audio.mid, audio.direction, audio.sending) == (
        "audio",
        "7",
        "recvonly",
        False,
    )
    assert audio.codecs == ("opus", "red")
    assert (video.mid, video.direction, video.port, video.bundle_only) == (
        "13",
        "sendonly",
        0,
        True,
    )
    assert video.sending  # port 0 + bundle-only is not a rejected m-line
    assert video.track_id == "28587cb5-3b8a-4b55-a2f7-bbbf5ac46bdb" and video.stream_id == "-"
    assert data.kind == "application" and data.index == 2


def test_plan_b_ssrc_msid_and_session_direction() -> None:
    sdp = "v=0\r\na=inactive\r\nm=audio 9 RTP/AVP 0\r\na=ssrc:1 msid:stream track-1\r\n"
    (m,) = parse_media_sections(sdp)
    assert (m.track_id, m.stream_id, m.direction) == ("track-1", "stream", "inactive")


def test_rejected_port_zero_is_not_sending() -> None:
    (m,) = parse_media_sections("v=0\r\nm=audio 0 RTP/AVP 0\r\na=sendonly\r\n")
    assert not m.sending


@pytest.mark.parametrize(
    "sdp, message",
    [
        ("", "v="),
        ("hello", "v="),
        ("v=0\r\nm=audio\r\n", "m= line"),
        ("v=0\r\nm=audio x RTP/AVP 0\r\n", "port"),
        ("v=0\r\nthis is not sdp\r\n", "malformed SDP line"),
        ("v=0\r\n" + "a=x\r\n" * (MAX_SDP_SIZE // 4), "larger"),
    ],
)
def test_invalid(sdp: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        parse_media_sections(sdp)


def test_truncated_offer() -> None:
    truncated = LIBWEBRTC_OFFER[: LIBWEBRTC_OFFER.index("m=video") + len("m=video 0 UDP")]
    with pytest.raises(SdpError, match="m= line"):
        parse_media_sections(truncated)


def test_advertise_ip_rewrites_host_candidates_only() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "c=IN IP4 10.0.0.5",
            "a=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host",
            "a=candidate:2 1 udp 1694498815 198.51.100.9 50000 typ srflx raddr 10.0.0.5 rport 50000",
            "c=IN IP4 0.0.0.0",
        ]
    )
    out = advertise_ip(sdp, "203.0.113.7").split("\r\n")
    assert out[1] == "c=IN IP4 203.0.113.7"
    assert out[2] == "a=candidate:1 1 udp 2130706431 203.0.113.7 50000 typ host"
    assert out[3].endswith("typ srflx raddr 10.0.0.5 rport 50000")  # left alone
    assert out[4] == "c=IN IP4 0.0.0.0"
