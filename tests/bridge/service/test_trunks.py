"""bridge/service/trunks.py: number and address matching, inbound trunk selection and validation."""

from __future__ import annotations

import pytest

from bridge.service.trunks import (
    TrunkConflict,
    TrunkMatch,
    match_address,
    match_numbers,
    normalize_number,
    validate_trunk,
    validate_trunk_conflicts,
)
from roomline.errors import InvalidRequest
from roomline_harness.sip_rules import (
    CALLED,
    CALLER,
    CARRIER_IP,
    call,
    match,
    trunk,
)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("+15551230001", "+15551230001"),
        ("15551230001", "+15551230001"),
        ("+1 (555) 123-0001", "+15551230001"),
        ("alice", "alice"),
        ("*97", "*97"),
        ("", ""),
    ],
)
def test_normalize_number(raw: str, norm: str) -> None:
    assert normalize_number(raw) == norm


def test_match_numbers() -> None:
    assert match_numbers(CALLER, [])
    assert match_numbers("15551230001", [CALLER])
    assert match_numbers(CALLER, ["+1 555 123 0001"])
    assert not match_numbers("+15551230002", [CALLER])
    assert match_numbers("alice", ["alice"])


@pytest.mark.parametrize(
    ("src", "masks", "ok"),
    [
        (CARRIER_IP, [], True),
        (CARRIER_IP, [CARRIER_IP], True),
        (CARRIER_IP, ["203.0.113.0/24"], True),
        (CARRIER_IP, ["203.0.113.8/29"], False),
        (CARRIER_IP, ["198.51.100.0/24", "203.0.113.7"], True),
        (CARRIER_IP, ["198.51.100.1"], False),
        ("2001:db8::5", ["2001:db8::/32"], True),
        ("2001:db8::5", ["[2001:db8::5]"], True),
        ("::ffff:203.0.113.7", ["203.0.113.0/24"], True),  # dual-stack socket
        (CARRIER_IP, ["carrier.example.net"], True),  # hostname == From host
        (CARRIER_IP, ["other.example.net"], False),
        (CARRIER_IP, ["10.0.0.0/33"], False),  # invalid mask never matches
        (CARRIER_IP, ["bad entry,with comma"], True),  # unusable entries ignored (LiveKit)
        ("not-an-ip", ["203.0.113.0/24"], False),  # fail closed
    ],
)
def test_match_address(src: str, masks: list[str], ok: bool) -> None:
    assert match_address(src, "carrier.example.net", masks) is ok


# --- trunk selection --------------------------------------------------------------------------


def test_specific_trunk_beats_default() -> None:
    default = trunk("ST_default", allowed_addresses=[CARRIER_IP])
    specific = trunk("ST_specific", numbers=[CALLED])
    res = match([default, specific])
    assert res.kind is TrunkMatch.SPECIFIC and res.trunk is not None
    assert res.trunk.sip_trunk_id == "ST_specific"


def test_called_number_normalized() -> None:
    res = match([trunk("ST_a", numbers=["1 (555) 987-0000"])])
    assert res.trunk is not None and res.trunk.sip_trunk_id == "ST_a"


def test_default_trunk_when_number_not_listed() -> None:
    res = match([trunk("ST_other", numbers=["+15550000000"]), trunk("ST_def", numbers=[])])
    assert res.kind is TrunkMatch.DEFAULT and res.trunk is not None
    assert res.trunk.sip_trunk_id == "ST_def"


def test_no_trunk_and_empty() -> None:
    assert match([]).kind is TrunkMatch.EMPTY
    res = match([trunk("ST_x", numbers=["+15550000000"])])
    assert res.kind is TrunkMatch.NONE and res.trunk is None


def test_ip_allowlist_filters_trunk() -> None:
    t = trunk("ST_ip", numbers=[CALLED], allowed_addresses=["198.51.100.0/24"])
    assert match([t]).trunk is None
    assert match([t], call(src_ip="198.51.100.20")).trunk is not None


def test_allowed_numbers_filters_trunk() -> None:
    t = trunk("ST_an", numbers=[CALLED], allowed_numbers=["+15551230009"])
    assert match([t]).trunk is None
    assert match([t], call(from_user="+15551230009")).trunk is not None


def test_two_specific_trunks_conflict() -> None:
    with pytest.raises(TrunkConflict):
        match([trunk("ST_1", numbers=[CALLED]), trunk("ST_2", numbers=[CALLED])])


def test_two_default_trunks_conflict() -> None:
    with pytest.raises(TrunkConflict):
        match([trunk("ST_1", allowed_addresses=[CARRIER_IP]), trunk("ST_2")])


def test_allowlist_disambiguates_same_number() -> None:
    a = trunk("ST_a", numbers=[CALLED], allowed_addresses=["203.0.113.0/24"])
    b = trunk("ST_b", numbers=[CALLED], allowed_addresses=["198.51.100.0/24"])
    res = match([a, b])
    assert res.trunk is not None and res.trunk.sip_trunk_id == "ST_a"


# --- trunk validation -------------------------------------------------------------------------


def test_validate_trunk_requires_some_security() -> None:
    with pytest.raises(InvalidRequest, match="for security"):
        validate_trunk(trunk(""))
    validate_trunk(trunk("", numbers=[CALLED]))
    validate_trunk(trunk("", allowed_addresses=["10.0.0.0/8"]))
    validate_trunk(trunk("", auth_username="u", auth_password="p"))


@pytest.mark.parametrize(
    "addr", ["10.0.0.0/33", "300.1.1.1", "1.2.3", "2001:db8::/129", "a b", "sip:x@y", "10.0.0.1/x"]
)
def test_validate_trunk_bad_address(addr: str) -> None:
    with pytest.raises(InvalidRequest, match=r"allowed_addresses\[0\]"):
        validate_trunk(trunk("", allowed_addresses=[addr]))


@pytest.mark.parametrize("addr", ["10.0.0.0/8", "10.1.2.3/8", "2001:db8::/32", "sbc.carrier.net"])
def test_validate_trunk_good_address(addr: str) -> None:
    validate_trunk(trunk("", allowed_addresses=[addr]))


@pytest.mark.parametrize("num", ["", " +1555", "+1555\n", "a@b", "x;y", "<1>", "9" * 200])
def test_validate_trunk_garbage_numbers(num: str) -> None:
    with pytest.raises(InvalidRequest, match=r"trunk.numbers\[0\]"):
        validate_trunk(trunk("", numbers=[num]))


def test_validate_trunk_half_credentials() -> None:
    with pytest.raises(InvalidRequest, match="auth_password"):
        validate_trunk(trunk("", numbers=[CALLED], auth_username="u"))


def test_trunk_conflicts_like_livekit() -> None:
    validate_trunk_conflicts([trunk("ST_1", numbers=["+1555"]), trunk("ST_2", numbers=["+1666"])])
    with pytest.raises(InvalidRequest, match="conflicting"):
        validate_trunk_conflicts(
            [trunk("ST_1", numbers=["+1555"]), trunk("ST_2", numbers=["1555"])]
        )
    # Same number, disjoint allowed callers: fine.
    validate_trunk_conflicts(
        [
            trunk("ST_1", numbers=["+1555"], allowed_numbers=["+1000"]),
            trunk("ST_2", numbers=["+1555"], allowed_numbers=["+2000"]),
        ]
    )
    with pytest.raises(InvalidRequest):
        validate_trunk_conflicts(
            [
                trunk("ST_1", numbers=["+1555"], allowed_numbers=["+1000"]),
                trunk("ST_2", numbers=["+1555"], allowed_numbers=["1000"]),
            ]
        )
    with pytest.raises(InvalidRequest):  # two default trunks
        validate_trunk_conflicts(
            [trunk("ST_1", auth_username="a", auth_password="b"), trunk("ST_2")]
        )
