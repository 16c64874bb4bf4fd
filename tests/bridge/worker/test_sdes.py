"""bridge/worker/sdes.py: the SRTP side of an SDP offer and the per-trunk 488 policy."""

from __future__ import annotations

import pytest

from bridge.worker.sdes import MediaOffer, parse_offer, refusal

HEAD = "INVITE sip:+1@h SIP/2.0\r\nCall-ID: c\r\nContent-Type: application/sdp\r\n\r\n"
SDP = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
CRYPTO = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"


def msg(*media: str) -> str:
    return HEAD + SDP + "".join(media)


def test_parse_offer_kinds() -> None:
    assert parse_offer(HEAD) == MediaOffer(has_sdp=False)
    assert parse_offer(HEAD).kind == "none"
    plain = parse_offer(msg("m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"))
    assert plain == MediaOffer() and plain.kind == "plain"
    opt = parse_offer(msg("m=audio 4000 RTP/AVP 0\r\n", CRYPTO))
    assert opt == MediaOffer(srtp=True) and opt.kind == "sdes"
    savp = parse_offer(msg("m=audio 4000 RTP/SAVP 0\r\n", CRYPTO))
    assert savp == MediaOffer(srtp=True, srtp_only=True) and savp.kind == "savp"
    # LF-only line ends, lower-case suite, SAVPF
    lf = (HEAD + SDP + "m=audio 4000 RTP/SAVPF 0\n" + CRYPTO.lower()).replace("\r\n", "\n")
    assert parse_offer(lf) == MediaOffer(srtp=True, srtp_only=True)


def test_parse_offer_only_first_active_audio_stream_counts() -> None:
    # crypto on video or on a disabled audio stream does not make the audio stream SRTP
    assert parse_offer(
        msg("m=video 5000 RTP/AVP 96\r\n", CRYPTO, "m=audio 4000 RTP/AVP 0\r\n")
    ) == (MediaOffer())
    assert (
        parse_offer(msg("m=audio 0 RTP/SAVP 0\r\n", CRYPTO, "m=audio 4000 RTP/AVP 0\r\n"))
        == MediaOffer()
    )
    assert (
        parse_offer(msg("m=audio 4000 RTP/AVP 0\r\n", "m=audio 4002 RTP/SAVP 0\r\n", CRYPTO))
        == MediaOffer()
    )


def test_parse_offer_unsupported_suite_is_not_srtp() -> None:
    gcm = "a=crypto:1 AEAD_AES_256_GCM inline:abcd\r\n"
    assert parse_offer(msg("m=audio 4000 RTP/SAVP 0\r\n", gcm)) == MediaOffer(srtp_only=True)
    # DTLS-SRTP (fingerprint, no a=crypto) is not SDES either
    dtls = "a=fingerprint:sha-256 AA:BB\r\n"
    assert parse_offer(msg("m=audio 4000 UDP/TLS/RTP/SAVP 0\r\n", dtls)) == MediaOffer(
        srtp_only=True
    )


@pytest.mark.parametrize(
    ("policy", "offer", "refused"),
    [
        ("disable", MediaOffer(), None),
        ("disable", MediaOffer(srtp=True), None),  # optional crypto: pjsua answers it (docs)
        ("disable", MediaOffer(srtp=True, srtp_only=True), "encryption-disabled"),
        ("disable", MediaOffer(has_sdp=False), None),
        ("allow", MediaOffer(), None),
        ("allow", MediaOffer(srtp=True), None),
        ("allow", MediaOffer(srtp=True, srtp_only=True), None),
        ("allow", MediaOffer(srtp_only=True), "no-common-crypto"),
        ("require", MediaOffer(), "encryption-required"),
        ("require", MediaOffer(srtp_only=True), "encryption-required"),
        ("require", MediaOffer(srtp=True), None),
        ("require", MediaOffer(srtp=True, srtp_only=True), None),
        ("require", MediaOffer(has_sdp=False), "encryption-required-no-offer"),
    ],
)
def test_refusal(policy: str, offer: MediaOffer, refused: str | None) -> None:
    assert refusal(policy, offer) == refused
