"""Digest auth: RFC vectors, real UA header shapes, nonce binding/expiry, bad input."""

from __future__ import annotations

import hashlib
import re

import pytest

from bridge.service.digest import (
    AuthOutcome,
    DigestAuthenticator,
    DigestError,
    compute_response,
    parse_digest,
    password_fingerprint,
)

NOW = 1_750_000_000.0
URI = "sip:+15550100@pbx.example.com"


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def challenge_params(header: str) -> dict[str, str]:
    assert header.startswith("Digest ")
    return {k: v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', header)}


def ua_answer(
    challenge: str,
    user: str,
    password: str,
    *,
    uri: str = URI,
    method: str = "INVITE",
    use_qop: bool = True,
    cnonce: str = "5b2f1c0a",
    nc: str = "00000001",
) -> str:
    """What a SIP UA (pjsip, SIPp `[authentication]`) sends, computed independently by hand."""
    p = challenge_params(challenge)
    ha1 = md5(f"{user}:{p['realm']}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if use_qop and "qop" in p:
        resp = md5(f"{ha1}:{p['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        # pjsip's layout: quoted strings except algorithm/qop/nc tokens.
        return (
            f'Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", '
            f'uri="{uri}", response="{resp}", algorithm=MD5, cnonce="{cnonce}", '
            f"qop=auth, nc={nc}"
        )
    resp = md5(f"{ha1}:{p['nonce']}:{ha2}")
    # SIPp's layout for a qop-less challenge.
    return (
        f'Digest username="{user}",realm="{p["realm"]}",uri="{uri}",'
        f'nonce="{p["nonce"]}",response="{resp}",algorithm=MD5'
    )


# --- published vectors ----------------------------------------------------------------------


def test_rfc2617_example_vector() -> None:
    # RFC 2617 §3.5.
    assert (
        compute_response(
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_example_vectors(algorithm: str, expected: str) -> None:
    # RFC 7616 §3.9.1.
    assert (
        compute_response(
            username="Mufasa",
            realm="http-auth@example.org",
            password="Circle of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            qop="auth",
            nc="00000001",
            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            algorithm=algorithm,
        )
        == expected
    )


def test_no_qop_formula_matches_rfc2069() -> None:
    ha1, ha2 = md5("bob:LiveKit:s3cret"), md5("INVITE:" + URI)
    assert compute_response(
        username="bob", realm="LiveKit", password="s3cret", method="INVITE", uri=URI, nonce="n1"
    ) == md5(f"{ha1}:n1:{ha2}")


def test_parse_rfc2617_header() -> None:
    cred = parse_digest(
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
        'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert cred.username == "Mufasa"
    assert cred.qop == "auth" and cred.nc == "00000001" and cred.cnonce == "0a4f113b"
    assert cred.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    assert cred.algorithm == "MD5"


def test_parse_escaped_quote_and_case_insensitive_names() -> None:
    cred = parse_digest(r'digest USERNAME="a\"b", Realm="r", NONCE="n", uri="sip:x", response="00"')
    assert cred.username == 'a"b' and cred.realm == "r" and cred.nonce == "n"


# --- challenge / verify flow ----------------------------------------------------------------


def test_challenge_then_correct_answer_accepted() -> None:
    auth = DigestAuthenticator()
    first = auth.verify(None, call_id="c1", username="bob", password="pw", realm="LiveKit", now=NOW)
    assert first.outcome is AuthOutcome.CHALLENGE and first.status == 407
    assert first.challenge is not None
    p = challenge_params(first.challenge)
    assert p["realm"] == "LiveKit" and p["algorithm"] == "MD5" and p["qop"] == "auth"
    assert auth.pending == 1
    res = auth.verify(
        ua_answer(first.challenge, "bob", "pw"),
        call_id="c1",
        username="bob",
        password="pw",
        realm="LiveKit",
        now=NOW + 0.2,
    )
    assert res.ok and res.status == 200
    assert auth.pending == 0


def test_qopless_challenge_like_livekit() -> None:
    auth = DigestAuthenticator(qop=None)
    ch = auth.verify(None, call_id="c1", username="u", password="p", now=NOW).challenge
    assert ch is not None and "qop" not in ch
    answer = ua_answer(ch, "u", "p", use_qop=False)
    assert auth.verify(answer, call_id="c1", username="u", password="p", now=NOW + 1).ok


def test_rfc2069_answer_to_qop_challenge_is_accepted() -> None:
    auth = DigestAuthenticator()
    ch = auth.challenge("c1", "LiveKit", NOW)
    answer = ua_answer(ch, "u", "p", use_qop=False)
    assert auth.verify(answer, call_id="c1", username="u", password="p", now=NOW).ok


def test_wrong_password_rejected_401() -> None:
    auth = DigestAuthenticator()
    ch = auth.challenge("c1", "LiveKit", NOW)
    res = auth.verify(
        ua_answer(ch, "bob", "guess"), call_id="c1", username="bob", password="pw", now=NOW
    )
    assert res.outcome is AuthOutcome.WRONG_RESPONSE and res.status == 401
    assert res.challenge is None


def test_wrong_username_rejected_401() -> None:
    auth = DigestAuthenticator()
    ch = auth.challenge("c1", "LiveKit", NOW)
    res = auth.verify(
        ua_answer(ch, "eve", "pw"), call_id="c1", username="bob", password="pw", now=NOW
    )
    assert res.outcome is AuthOutcome.WRONG_USER and res.status == 401


def test_wrong_realm_rejected() -> None:
    auth = DigestAuthenticator()
    ch = auth.challenge("c1", "Other", NOW)
    res = auth.verify(
        ua_answer(ch, "bob", "pw"),
        call_id="c1",
        username="bob",
        password="pw",
        realm="LiveKit",
        now=NOW,
    )
    assert res.status == 401


def test_nonce_bound_to_call_id() -> None:
    auth = DigestAuthenticator()
    ch = auth.challenge("call-A", "LiveKit", NOW)
    res = auth.verify(
        ua_answer(ch, "bob", "pw"), call_id="call-B", username="bob", password="pw", now=NOW
    )
    assert res.outcome is AuthOutcome.BAD_CREDENTIALS and res.status == 401


def test_nonce_from_other_instance_rejected() -> None:
    ch = DigestAuthenticator().challenge("c1", "LiveKit", NOW)
    res = DigestAuthenticator().verify(
        ua_answer(ch, "bob", "pw"), call_id="c1", username="bob", password="pw", now=NOW
    )
    assert res.outcome is AuthOutcome.BAD_CREDENTIALS


def test_forged_nonce_rejected() -> None:
    auth = DigestAuthenticator()
    ch = auth.challenge("c1", "LiveKit", NOW)
    forged = re.sub(r'nonce="[^"]*"', 'nonce="18f0000000000.AAAAAAAAAAAAAAAAAAAAAAAA"', ch)
    res = auth.verify(
        ua_answer(forged, "bob", "pw"), call_id="c1", username="bob", password="pw", now=NOW
    )
    assert res.outcome is AuthOutcome.BAD_CREDENTIALS


def test_expired_nonce_gets_stale_challenge() -> None:
    auth = DigestAuthenticator(nonce_ttl=60)
    ch = auth.challenge("c1", "LiveKit", NOW)
    res = auth.verify(
        ua_answer(ch, "bob", "pw"), call_id="c1", username="bob", password="pw", now=NOW + 61
    )
    assert res.outcome is AuthOutcome.STALE and res.status == 407
    assert res.challenge is not None and "stale=TRUE" in res.challenge
    # The fresh nonce works.
    ok = auth.verify(
        ua_answer(res.challenge, "bob", "pw"),
        call_id="c1",
        username="bob",
        password="pw",
        now=NOW + 62,
    )
    assert ok.ok


def test_expired_nonce_with_wrong_password_is_401_not_stale() -> None:
    auth = DigestAuthenticator(nonce_ttl=60)
    ch = auth.challenge("c1", "LiveKit", NOW)
    res = auth.verify(
        ua_answer(ch, "bob", "nope"), call_id="c1", username="bob", password="pw", now=NOW + 61
    )
    assert res.status == 401


def test_verification_survives_pending_table_eviction() -> None:
    auth = DigestAuthenticator(max_pending=3)
    ch = auth.challenge("victim", "LiveKit", NOW)
    for i in range(10):  # a flood of unauthenticated INVITEs
        auth.challenge(f"flood-{i}", "LiveKit", NOW)
    assert auth.pending == 3
    res = auth.verify(
        ua_answer(ch, "bob", "pw"), call_id="victim", username="bob", password="pw", now=NOW
    )
    assert res.ok


def test_pending_table_bounded_evicts_oldest_and_expires() -> None:
    auth = DigestAuthenticator(max_pending=2)
    auth.challenge("a", "r", NOW)
    auth.challenge("b", "r", NOW + 1)
    auth.challenge("c", "r", NOW + 2)
    assert auth.pending == 2
    assert auth.expired(NOW + 31.5) == ["b"]
    assert auth.expired(NOW + 40) == ["c"]
    assert auth.pending == 0


def test_sha256_and_md5_sess_answers() -> None:
    auth = DigestAuthenticator()
    nonce = challenge_params(auth.challenge("c1", "LiveKit", NOW))["nonce"]
    for algo in ("SHA-256", "MD5-sess", "SHA-256-sess"):
        resp = compute_response(
            username="u",
            realm="LiveKit",
            password="p",
            method="INVITE",
            uri=URI,
            nonce=nonce,
            algorithm=algo,
            qop="auth",
            nc="00000001",
            cnonce="abc",
        )
        header = (
            f'Digest username="u", realm="LiveKit", nonce="{nonce}", uri="{URI}", '
            f'response="{resp}", algorithm={algo}, qop=auth, nc=00000001, cnonce="abc"'
        )
        assert auth.verify(header, call_id="c1", username="u", password="p", now=NOW).ok


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Basic Ym9iOnB3",
        "Digest",
        "Digest username=",
        'Digest username="bob", realm="r", nonce="n", uri="u"',  # no response
        'Digest username="bob" realm="r" nonce="n" uri="u" response="x"',  # no commas
        'Digest username="bob, realm="r", nonce="n", uri="u", response="x"',  # unbalanced
        'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
        "Digest " + "x" * 5000,
        "\x00\x01\x02",
        "",
    ],
)
def test_parse_invalid(header: str) -> None:
    with pytest.raises(DigestError):
        parse_digest(header)


@pytest.mark.parametrize(
    "header",
    [
        "Digest garbage",
        'Digest username="bob", realm="LiveKit", nonce="zz", uri="u", response="x"',
        'Digest username="bob", realm="LiveKit", nonce="1.x", uri="u", response="x", '
        "algorithm=SHA-512",
        'Digest username="bob", realm="LiveKit", nonce="1", uri="u", response="x", '
        'qop=auth-int, nc=1, cnonce="c"',
        'Digest username="bob", realm="LiveKit", nonce=',
    ],
)
def test_verify_malformed_is_401_and_authenticator_keeps_working(header: str) -> None:
    auth = DigestAuthenticator()
    ch = auth.challenge("c1", "LiveKit", NOW)
    res = auth.verify(header, call_id="c1", username="bob", password="pw", now=NOW)
    assert res.status == 401 and not res.ok
    good = auth.verify(
        ua_answer(ch, "bob", "pw"), call_id="c1", username="bob", password="pw", now=NOW
    )
    assert good.ok


def test_unsupported_algorithm_in_compute() -> None:
    with pytest.raises(DigestError):
        compute_response(
            username="u", realm="r", password="p", method="M", uri="u", nonce="n", algorithm="X"
        )


def test_password_fingerprint_is_truncated_hash() -> None:
    fp = password_fingerprint("hunter2")
    assert fp == hashlib.sha256(b"hunter2").hexdigest()[:8]
    assert "hunter2" not in fp
