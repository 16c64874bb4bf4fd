"""SIPStore: SQLite persistence across restarts, read-only config objects, stable config ids."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import sip as sip_pb

from bridge.service.store import SIPStore, config_id, new_rule_id, new_trunk_id
from roomline.errors import ConfigError, InvalidRequest, NotFound

CFG_TRUNK: dict[str, Any] = {
    "name": "carrier",
    "numbers": ["+15559870000"],
    "allowedAddresses": ["203.0.113.0/24"],
}
CFG_RULE: dict[str, Any] = {
    "name": "to lobby",
    "rule": {"dispatchRuleDirect": {"roomName": "lobby"}},
}


def test_new_ids_format() -> None:
    assert re.fullmatch(r"ST_[0-9A-Za-z]{12}", new_trunk_id())
    assert re.fullmatch(r"SDR_[0-9A-Za-z]{12}", new_rule_id())
    assert new_trunk_id() != new_trunk_id()


def test_objects_survive_restart(tmp_path: Path) -> None:
    s = SIPStore.open(tmp_path)
    t = sip_pb.SIPInboundTrunkInfo(sip_trunk_id="ST_abc", numbers=["+1555"], auth_password="pw")
    o = sip_pb.SIPOutboundTrunkInfo(sip_trunk_id="ST_out", address="sip.carrier.net")
    r = sip_pb.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="SDR_abc",
        rule=sip_pb.SIPDispatchRule(
            dispatch_rule_direct=sip_pb.SIPDispatchRuleDirect(room_name="lobby")
        ),
    )
    s.put_inbound_trunk(t)
    s.put_outbound_trunk(o)
    s.put_dispatch_rule(r)
    s.close()

    s2 = SIPStore.open(tmp_path)
    assert s2.get_inbound_trunk("ST_abc") == t
    assert s2.get_outbound_trunk("ST_out") == o
    assert s2.get_dispatch_rule("SDR_abc") == r
    assert s2.delete_trunk("ST_abc") == "inbound"
    assert s2.delete_trunk("ST_out") == "outbound"
    s2.delete_dispatch_rule("SDR_abc")
    s2.close()

    s3 = SIPStore.open(tmp_path)
    assert s3.inbound_trunks() == [] and s3.outbound_trunks() == [] and s3.dispatch_rules() == []
    s3.close()


def test_db_file_is_private(tmp_path: Path) -> None:
    SIPStore.open(tmp_path).close()
    mode = stat.S_IMODE(os.stat(tmp_path / "sip.db").st_mode)
    assert mode & 0o077 == 0


def test_update_replaces(tmp_path: Path) -> None:
    s = SIPStore.open(tmp_path)
    s.put_inbound_trunk(sip_pb.SIPInboundTrunkInfo(sip_trunk_id="ST_a", name="one"))
    s.put_inbound_trunk(sip_pb.SIPInboundTrunkInfo(sip_trunk_id="ST_a", name="two"))
    s.close()
    s = SIPStore.open(tmp_path)
    assert [t.name for t in s.inbound_trunks()] == ["two"]
    s.close()


def test_not_found(tmp_path: Path) -> None:
    s = SIPStore.open(tmp_path)
    with pytest.raises(NotFound):
        s.get_inbound_trunk("ST_nope")
    with pytest.raises(NotFound):
        s.delete_trunk("ST_nope")
    with pytest.raises(NotFound):
        s.delete_dispatch_rule("SDR_nope")
    s.close()


def test_config_objects_merged_read_only_with_stable_ids(tmp_path: Path) -> None:
    s = SIPStore.open(tmp_path, config_trunks=[CFG_TRUNK], config_rules=[CFG_RULE])
    (t,) = s.inbound_trunks()
    (r,) = s.dispatch_rules()
    assert t.sip_trunk_id == config_id("ST_", CFG_TRUNK)
    assert re.fullmatch(r"ST_[0-9A-Za-z]{12}", t.sip_trunk_id)
    assert r.sip_dispatch_rule_id.startswith("SDR_")
    assert list(t.allowed_addresses) == ["203.0.113.0/24"]
    assert s.is_read_only(t.sip_trunk_id) and s.is_read_only(r.sip_dispatch_rule_id)
    with pytest.raises(InvalidRequest, match="read-only"):
        s.delete_trunk(t.sip_trunk_id)
    with pytest.raises(InvalidRequest, match="read-only"):
        s.put_inbound_trunk(t)
    with pytest.raises(InvalidRequest, match="read-only"):
        s.delete_dispatch_rule(r.sip_dispatch_rule_id)
    s.close()
    # Same config after a restart: same ids; nothing of it was written to the database.
    s2 = SIPStore.open(tmp_path, config_trunks=[CFG_TRUNK], config_rules=[CFG_RULE])
    assert s2.inbound_trunks()[0].sip_trunk_id == t.sip_trunk_id
    s2.close()
    rows = sqlite3.connect(tmp_path / "sip.db").execute("SELECT count(*) FROM sip_objects")
    assert rows.fetchone()[0] == 0


def test_config_accepts_snake_case_wrapped_and_explicit_ids(tmp_path: Path) -> None:
    trunk = {"trunk": {"sip_trunk_id": "ST_carrier", "numbers": ["+1555"]}}
    rule = {
        "dispatch_rule": {
            "trunk_ids": ["ST_carrier"],
            "rule": {"dispatch_rule_individual": {"room_prefix": "call"}},
        }
    }
    s = SIPStore.open(tmp_path, config_trunks=[trunk], config_rules=[rule])
    assert s.inbound_trunks()[0].sip_trunk_id == "ST_carrier"
    assert list(s.dispatch_rules()[0].trunk_ids) == ["ST_carrier"]
    s.close()


@pytest.mark.parametrize(
    ("trunks", "rules", "where"),
    [
        ([{"numbers": ["+1"], "bogus": 1}], [], r"sip.trunks\[0\]"),
        ([{"numbers": "+1"}], [], r"sip.trunks\[0\]"),
        ([{"allowedAddresses": ["10.0.0.0/33"]}], [], "allowed_addresses"),
        ([{"name": "open to all"}], [], "for security"),
        ([{"sip_trunk_id": "X_1", "numbers": ["+1"]}], [], "must start with ST_"),
        ([{"sip_trunk_id": "ST_1", "numbers": ["+1"]}] * 2, [], "already used"),
        ([{"numbers": ["+1"]}, {"numbers": ["1"], "name": "b"}], [], "conflicting"),
        ([], [{"name": "no rule type"}], "rule type"),
        (
            [],
            [
                {"rule": {"dispatchRuleDirect": {"roomName": "a"}}},
                {"rule": {"dispatchRuleDirect": {"roomName": "b"}}},
            ],
            "already exists",
        ),  # fmt: skip
    ],
)
def test_bad_config_entries(tmp_path: Path, trunks: list, rules: list, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        SIPStore.open(tmp_path, config_trunks=trunks, config_rules=rules)


def test_config_id_collision_with_db(tmp_path: Path) -> None:
    s = SIPStore.open(tmp_path)
    s.put_inbound_trunk(sip_pb.SIPInboundTrunkInfo(sip_trunk_id="ST_same", numbers=["+1"]))
    s.close()
    with pytest.raises(ConfigError, match="already used"):
        SIPStore.open(tmp_path, config_trunks=[{"sipTrunkId": "ST_same", "numbers": ["+2"]}])


def test_corrupt_row_is_reported(tmp_path: Path) -> None:
    SIPStore.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "sip.db")
    db.execute("INSERT INTO sip_objects VALUES ('ST_bad', 'inbound', x'ffffffff', 0)")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="corrupt"):
        SIPStore.open(tmp_path)


def test_id_kinds_do_not_collide(tmp_path: Path) -> None:
    s = SIPStore.open(tmp_path)
    s.put_inbound_trunk(sip_pb.SIPInboundTrunkInfo(sip_trunk_id="ST_x"))
    with pytest.raises(InvalidRequest):
        s.put_outbound_trunk(sip_pb.SIPOutboundTrunkInfo(sip_trunk_id="ST_x"))
    s.close()
