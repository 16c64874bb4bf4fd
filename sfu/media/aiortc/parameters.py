"""Codec and header-extension choices on aiortc transceivers (aiortc's ``rtcrtpparameters``).

The forwarder never transcodes, so a subscriber must receive the publisher's codec: the subscriber's
m-line offers only that codec, and its negotiated payload type is found by mime type, clock rate and,
for H.264, the same packetization mode and profile. Private names used:
``RTCRtpTransceiver._codecs`` and ``RTCRtpTransceiver._headerExtensions`` (what was negotiated).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiortc import RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from sfu.media.forwarder import SourceInfo

__all__ = [
    "extension_ids",
    "match_payload_type",
    "negotiated_codecs",
    "primary_codec",
    "rtx_payload_types",
    "subscriber_codecs",
]

_H264 = "video/h264"


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs negotiated on ``transceiver`` (empty before negotiation)."""
    codecs: list[RTCRtpCodecParameters] = getattr(transceiver, "_codecs", [])
    return codecs


def extension_ids(transceiver: RTCRtpTransceiver) -> dict[str, int]:
    """Header extension URI → the ID negotiated on ``transceiver``'s RTP session."""
    return {e.uri: e.id for e in getattr(transceiver, "_headerExtensions", [])}


def primary_codec(codecs: list[RTCRtpCodecParameters]) -> RTCRtpCodecParameters | None:
    """The first media (non-RTX) codec: the one the remote side sends with."""
    return next((c for c in codecs if not is_rtx(c)), None)


def rtx_payload_types(codecs: list[RTCRtpCodecParameters]) -> dict[int, int]:
    """RTX payload type → the payload type it retransmits (its ``apt`` parameter)."""
    out: dict[int, int] = {}
    for c in codecs:
        apt = c.parameters.get("apt")
        if is_rtx(c) and isinstance(apt, int) and c.payloadType is not None:
            out[c.payloadType] = apt
    return out


def _h264_profile(parameters: Mapping[str, object]) -> str:
    """H.264 ``profile_idc``: the first byte (two hex digits) of ``profile-level-id``."""
    return str(parameters.get("profile-level-id", "")).lower()[:2]


def _h264_mode(parameters: Mapping[str, object]) -> str:
    return str(parameters.get("packetization-mode", "0"))


def match_payload_type(source: SourceInfo, codecs: list[RTCRtpCodecParameters]) -> int | None:
    """The subscriber PT carrying the publisher's codec (same mime + clock, H.264 same mode)."""
    mime = source.mime.lower()
    candidates = [
        c
        for c in codecs
        if not is_rtx(c) and c.mimeType.lower() == mime and c.clockRate == source.clock_rate
    ]
    if not candidates:
        return None
    if mime == _H264:
        params = dict(source.parameters)
        for c in candidates:
            if _h264_mode(c.parameters) == _h264_mode(params) and _h264_profile(
                c.parameters
            ) == _h264_profile(params):
                return c.payloadType
    return candidates[0].payloadType


def subscriber_codecs(source: SourceInfo) -> list[RTCRtpCodecCapability]:
    """The codec preferences of a subscriber m-line forwarding ``source``: its codec, plus RTX for
    video (so subscriber NACKs can be answered with RTX). Empty if aiortc lacks the codec."""
    caps = RTCRtpSender.getCapabilities(source.kind).codecs
    mime = source.mime.lower()
    chosen = [c for c in caps if c.mimeType.lower() == mime]
    if mime == _H264:
        profile = _h264_profile(dict(source.parameters))
        chosen = [c for c in chosen if _h264_profile(c.parameters) == profile] or chosen
    if chosen and source.kind == "video":
        chosen += [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return chosen
