"""Codec choice for subscriber m-lines (sfu.media.aiortc.parameters), without PeerConnections."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.media.aiortc.parameters import (
    match_payload_type,
    primary_codec,
    rtx_payload_types,
    subscriber_codecs,
)
from sfu.media.forwarder import SourceInfo


def h264(pt: int, profile: str, mode: str = "1") -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType="video/H264",
        clockRate=90000,
        payloadType=pt,
        parameters={"packetization-mode": mode, "profile-level-id": profile},
    )


def rtx(pt: int, apt: int) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType="video/rtx", clockRate=90000, payloadType=pt, parameters={"apt": apt}
    )


H264_SOURCE = SourceInfo(
    "video",
    "video/H264",
    90000,
    102,
    parameters=(("packetization-mode", "1"), ("profile-level-id", "42e01f")),
)


def test_h264_payload_type_needs_the_same_mode_and_profile() -> None:
    codecs = [rtx(97, 96), h264(96, "640c1f"), h264(98, "42001f", mode="0"), h264(100, "42e01f")]
    assert match_payload_type(H264_SOURCE, codecs) == 100
    # No exact match: the first H.264 codec is still better than nothing.
    assert match_payload_type(H264_SOURCE, codecs[:2]) == 96


def test_payload_type_needs_the_same_mime_and_clock_rate() -> None:
    opus = SourceInfo("audio", "audio/opus", 48000, 111)
    pcmu = RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, payloadType=0)
    assert match_payload_type(opus, [pcmu]) is None
    odd = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=16000, channels=2, payloadType=109)
    good = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )
    assert match_payload_type(opus, [odd, good]) == 111


def test_primary_codec_skips_rtx_and_rtx_maps_to_its_apt() -> None:
    codecs = [rtx(97, 96), h264(96, "42e01f")]
    primary = primary_codec(codecs)
    assert primary is not None and primary.payloadType == 96
    assert rtx_payload_types(codecs) == {97: 96}


def test_subscriber_codecs_offer_the_publisher_codec_and_rtx() -> None:
    offered = subscriber_codecs(H264_SOURCE)
    mimes = {c.mimeType.lower() for c in offered}
    assert mimes == {"video/h264", "video/rtx"}
    profiles = {
        str(c.parameters.get("profile-level-id", ""))[:2]
        for c in offered
        if c.mimeType.lower() == "video/h264"
    }
    assert profiles == {"42"}
    audio = subscriber_codecs(SourceInfo("audio", "audio/opus", 48000, 111))
    assert [c.mimeType.lower() for c in audio] == ["audio/opus"]
