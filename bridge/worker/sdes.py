"""What an INVITE's SDP offer says about SRTP (SDES), and whether a trunk's policy accepts it.

pjsua2 sets SRTP per account, not per call, and builds the SDP answer when the INVITE arrives,
before the supervisor has matched a trunk. So the worker's one account runs SRTP as *optional*
(``srtpUse = PJMEDIA_SRTP_OPTIONAL``, SDES only, ``srtpSecureSignaling = 0`` so SDES works over
UDP like LiveKit's): pjmedia answers an offer carrying a usable ``a=crypto`` with SRTP (in the
offer's profile, ``RTP/SAVP`` or ``RTP/AVP``) and a plain offer with plain RTP. What is left per
trunk (LiveKit ``media_encryption``) is refusing the offers the trunk's policy does not allow,
with 488 Not Acceptable Here, before answering: :func:`refusal`.

Sans-I/O and pjsua-free, so it is unit-tested directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SDES_SUITES", "MediaOffer", "parse_offer", "refusal"]

#: The SDES crypto suites pjmedia (this wheel's libsrtp) and LiveKit both support.
SDES_SUITES = frozenset(
    {
        "AES_CM_128_HMAC_SHA1_80",
        "AES_CM_128_HMAC_SHA1_32",
        "AES_256_CM_HMAC_SHA1_80",
        "AES_256_CM_HMAC_SHA1_32",
    }
)
_CRYPTO_RE = re.compile(r"^a=crypto:\s*\d+\s+(?P<suite>[A-Za-z0-9_]+)\s+inline:", re.IGNORECASE)
_MEDIA_RE = re.compile(r"^m=(?P<type>\S+)\s+(?P<port>\d+)(?:/\d+)?\s+(?P<proto>\S+)")


@dataclass(frozen=True, slots=True)
class MediaOffer:
    """The SRTP side of an offer's first active audio stream.

    ``has_sdp`` False: the INVITE carried no SDP (a late offer: the worker offers in its 200).
    ``srtp``: it has an ``a=crypto`` line with a suite of :data:`SDES_SUITES`, so the answer
    will be SRTP. ``srtp_only``: its profile is secure (``RTP/SAVP``, ``RTP/SAVPF``,
    ``UDP/TLS/RTP/SAVP``), so the caller will not take plain RTP.
    """

    has_sdp: bool = True
    srtp: bool = False
    srtp_only: bool = False

    @property
    def kind(self) -> str:
        """For logs: ``none`` (no SDP), ``plain``, ``sdes`` (optional) or ``savp`` (SRTP only)."""
        if not self.has_sdp:
            return "none"
        if self.srtp_only:
            return "savp"
        return "sdes" if self.srtp else "plain"


def _body(msg: str) -> str:
    parts = re.split(r"\r?\n\r?\n", msg, maxsplit=1)
    return parts[1] if len(parts) == 2 else ""


def parse_offer(msg: str) -> MediaOffer:
    """The :class:`MediaOffer` of a whole SIP message (``rdata.wholeMsg``: headers and body)."""
    body = _body(msg)
    if "m=" not in body:
        return MediaOffer(has_sdp=False)
    in_audio = False
    found = False
    profile = ""
    suites: list[str] = []
    for raw in re.split(r"\r?\n", body):
        line = raw.strip()
        m = _MEDIA_RE.match(line)
        if m is not None:
            if found:
                break  # only the first active audio stream counts (the one pjsua answers)
            in_audio = m.group("type").lower() == "audio" and m.group("port") != "0"
            if in_audio:
                found = True
                profile = m.group("proto").upper()
            continue
        if in_audio:
            c = _CRYPTO_RE.match(line)
            if c is not None:
                suites.append(c.group("suite").upper())
    if not found:
        return MediaOffer()
    return MediaOffer(
        srtp=any(s in SDES_SUITES for s in suites),
        srtp_only="SAVP" in profile,
    )


def refusal(policy: str, offer: MediaOffer) -> str | None:
    """Why a trunk with SRTP ``policy`` (``disable``/``allow``/``require``) refuses ``offer``.

    None = acceptable. ``require``: the offer must carry usable SDES crypto (a late offer is
    refused too: the caller could pick plain RTP in its ACK). ``disable``: an SRTP-only offer is
    refused (an offer with optional crypto in ``RTP/AVP`` is still answered, see docs).
    """
    if policy == "require" and not offer.srtp:
        return "encryption-required" if offer.has_sdp else "encryption-required-no-offer"
    if policy == "disable" and offer.srtp_only:
        return "encryption-disabled"
    if policy == "allow" and offer.srtp_only and not offer.srtp:
        return "no-common-crypto"
    return None
