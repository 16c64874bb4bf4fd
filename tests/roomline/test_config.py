"""Strict configuration loading: defaults, errors naming key + file, env/override precedence."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

import pytest

from roomline.config import (
    EMBEDDED_SOURCE,
    Config,
    ConfigError,
    SIPWorkerConfig,
    embedded_yaml,
    load_config,
)
from roomline.errors import RoomlineError
from roomline_harness.paths import ROOT

REPO = ROOT


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_text(tmp_path: Path, text: str, **kw: object) -> Config:
    return load_config(write(tmp_path, text), env=kw.pop("env", {}), **kw)  # type: ignore[arg-type]


def _without_default_trunk(cfg: Config) -> Config:
    """The embedded file adds a LAN trunk + IVR rule (docs/agents.md); the code defaults have none."""
    assert [t["name"] for t in cfg.sip.trunks] == ["lan"]
    assert [r["room_config"]["agents"] for r in cfg.sip.dispatch_rules] == [[{"agent_name": "ivr"}]]
    assert all(ipaddress.ip_network(a).is_private for a in cfg.sip.trunks[0]["allowed_addresses"])
    sip = dataclasses.replace(cfg.sip, trunks=[], dispatch_rules=[])
    return dataclasses.replace(cfg, sip=sip)


def test_embedded_default_equals_code_defaults() -> None:
    cfg = load_config(None, env={})
    assert _without_default_trunk(cfg) == Config(source=EMBEDDED_SOURCE)
    assert cfg.source == "<embedded>"
    assert cfg.dev_mode
    assert cfg.server.port == 7880 and cfg.server.host == "0.0.0.0"
    assert cfg.rtc.port_range_start == 50000 and cfg.rtc.port_range_end == 50999
    assert cfg.sip.workers == "auto" and cfg.sip.worker_count() == 8 and cfg.sip.port == 5060
    assert cfg.sip.blocked_user_agents == ["friendly-scanner", "sipvicious", "sipcli"]
    assert cfg.limits.max_signal_message_size == 1048576


def test_repo_config_file_is_the_packaged_default() -> None:
    # One copy by construction: config/roomline.yaml is a link to the packaged default.
    link = REPO / "config" / "roomline.yaml"
    assert link.is_symlink()
    assert link.resolve() == (REPO / "roomline" / "defaults" / "roomline.yaml").resolve()
    assert link.read_text() == embedded_yaml()
    cfg = load_config(str(REPO / "config" / "roomline.yaml"), env={})
    assert _without_default_trunk(cfg) == Config(source=str(REPO / "config" / "roomline.yaml"))


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg.server.port == 7880 and cfg.source.endswith("x.yaml")


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        "keys: {prodkey: a-very-long-secret-value}\nserver: {port: 9000}\n"
        "sip: {workers: [{sip_port: 5070}], ringing_timeout: 5}\n",
    )
    assert cfg.server.port == 9000 and cfg.server.host == "0.0.0.0"
    assert cfg.sip.workers == [SIPWorkerConfig(sip_port=5070)]
    assert cfg.sip.ringing_timeout == 5.0 and isinstance(cfg.sip.ringing_timeout, float)
    assert not cfg.dev_mode


def test_configerror_is_a_roomline_error() -> None:
    assert issubclass(ConfigError, RoomlineError)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("server: {prot: 7880}\n", "server.prot: unknown key"),
        ("servr: {}\n", "servr: unknown key"),
        ("rtc: {port_range_start: abc}\n", "rtc.port_range_start: expected int, got str 'abc'"),
        ("server: {port: '7880'}\n", "server.port: expected int, got str '7880'"),
        ("server: {port: true}\n", "server.port: expected int, got bool"),
        ("server: {port: 7880.0}\n", "server.port: expected int, got float"),
        ("room: {auto_create: 1}\n", "room.auto_create: expected bool, got int"),
        ("sip: {outbound_tls_verify: 'no'}\n", "sip.outbound_tls_verify: expected bool, got str"),
        ("rtc: {interfaces: 10.0.0.1}\n", "rtc.interfaces: expected list of str"),
        ("keys: [a, b]\n", "keys: expected mapping"),
        ("keys: {k1: 1234567}\n", "keys.k1: expected str, got int"),
        ("server: 7880\n", "server: expected mapping, got int"),
        ("sip: {workers: [{sip_prot: 1}]}\n", "sip.workers[0].sip_prot: unknown key"),
        ("rtc: {ice_servers: [{url: x}]}\n", "rtc.ice_servers[0].url: unknown key"),
    ],
)
def test_bad_key_or_type_names_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert fragment in msg, msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server: {port: 65536}\n", "server.port"),
        ("server: {port: 70000}\n", "server.port"),
        ("rtc: {port_range_start: 51000, port_range_end: 50000}\n", "rtc.port_range_start"),
        ("rtc: {node_ip: not-an-ip}\n", "rtc.node_ip"),
        ("rtc: {interfaces: ['']}\n", "rtc.interfaces[0]"),
        ("rtc: {ice_servers: [{urls: ['http://x']}]}\n", "rtc.ice_servers[0].urls[0]"),
        ("rtc: {ice_servers: [{urls: []}]}\n", "rtc.ice_servers[0].urls"),
        ("room: {empty_timeout: -1}\n", "room.empty_timeout"),
        ("room: {max_participants: -5}\n", "room.max_participants"),
        ("limits: {max_data_packet_size: 0}\n", "limits.max_data_packet_size"),
        ("keys: {}\n", "keys"),
        ("keys: {prod: short}\n", "keys.prod"),
        ("logging: {level: loud}\n", "logging.level"),
        ("logging: {format: xml}\n", "logging.format"),
        ("sip: {answer: never}\n", "sip.answer"),
        ("sip: {media_timeout: -1}\n", "sip.media_timeout"),
        ("sip: {ringing_timeout: 0}\n", "sip.ringing_timeout"),
        ("sip: {workers: []}\n", "sip.workers"),
        ("sip: {bind_address: ''}\n", "sip.bind_address"),
        ("sip: {workers: [{rtp_port_start: 11000, rtp_port_end: 10000}]}\n", "rtp_port_start"),
        (
            "sip: {workers: [{sip_port: 5060}, {sip_port: 5060, rtp_port_start: 20000,"
            " rtp_port_end: 20999}]}\n",
            "sip.workers[1].sip_port",
        ),
        ("sip: {workers: [{}, {sip_port: 5062}]}\n", "sip.workers[1].rtp_port_start"),
        ("sip: {workers: [{rtp_port_start: 50500, rtp_port_end: 50600}]}\n", "rtp_port_start"),
        ("agents: {workers: -1}\n", "agents.workers"),
        ("agents: {registry: {echo: 'not a path'}}\n", "agents.registry.echo"),
    ],
)
def test_impossible_value_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert key in msg, msg


def test_short_secret_error_does_not_echo_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "keys: {prod: s3cr}\n")
    assert "s3cr" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("server:\n  port: 7880\n  host: [unclosed\n", None),
        ("server:\n  port: 7880\n bad_indent: 1\n", 3),
        ("server: {port: 1}\nserver: {port: 2}\n", 2),  # duplicate keys are refused
        ("keys:\n  a: 'x\n", None),
    ],
)
def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, text: str, line: int | None) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert msg.startswith(f"{path}:"), msg
    assert "YAML syntax error" in msg
    prefix = msg.split(": ", 1)[0]
    assert prefix.rsplit(":", 1)[1].isdigit(), msg
    if line is not None:
        assert prefix == f"{path}:{line}", msg


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_text(tmp_path, "- a\n- b\n")


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read"):
        load_config(missing, env={})


def test_env_overrides_file_and_overrides_win(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 9000, host: 127.0.0.1}\n")
    cfg = load_config(path, env={"ROOMLINE_SERVER_PORT": "9001"})
    assert cfg.server.port == 9001 and cfg.server.host == "127.0.0.1"
    cfg = load_config(path, env={"ROOMLINE_SERVER_PORT": "9001"}, overrides={"server.port": 9002})
    assert cfg.server.port == 9002
    cfg = load_config(path, env={}, overrides={"server": {"data_dir": "/tmp/d"}})
    assert cfg.server.port == 9000 and cfg.server.data_dir == "/tmp/d"


def test_env_config_file_and_explicit_path(tmp_path: Path) -> None:
    a = write(tmp_path, "server: {port: 1111}\n", "a.yaml")
    b = write(tmp_path, "server: {port: 2222}\n", "b.yaml")
    assert load_config(None, env={"ROOMLINE_CONFIG": a}).server.port == 1111
    assert load_config(b, env={"ROOMLINE_CONFIG": a}).server.port == 2222


def test_env_value_types() -> None:
    env = {
        "ROOMLINE_KEYS": "k1: a-long-secret-1",
        "ROOMLINE_RTC_INTERFACES": "10.0.0.1, 10.0.0.2",
        "ROOMLINE_RTC_NODE_IP": "203.0.113.7",
        "ROOMLINE_SIP_ENABLED": "false",
        "ROOMLINE_SIP_MEDIA_TIMEOUT": "7",
        "ROOMLINE_SIP_WORKERS": "[{sip_port: 5070, rtp_port_start: 20000, rtp_port_end: 20099}]",
        "ROOMLINE_AGENTS_REGISTRY": "echo=roomline_agents.sdk.echo:run",
        "ROOMLINE_LOGGING_FORMAT": "json",
        "ROOMLINE_UNRELATED_THING": "ignored",
    }
    cfg = load_config(None, env=env)
    assert cfg.keys == {"k1": "a-long-secret-1"} and not cfg.dev_mode
    assert cfg.rtc.interfaces == ["10.0.0.1", "10.0.0.2"]
    assert cfg.rtc.node_ip == "203.0.113.7"
    assert cfg.sip.enabled is False and cfg.sip.media_timeout == 7.0
    assert cfg.sip.workers == [SIPWorkerConfig(5070, 20000, 20099)]
    assert cfg.agents.registry == {"echo": "roomline_agents.sdk.echo:run"}
    assert cfg.logging.format == "json"
    assert cfg.source == EMBEDDED_SOURCE


def test_env_keys_pair_form_replaces_file_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "keys: {filekey: file-secret-123}\n")
    cfg = load_config(path, env={"ROOMLINE_KEYS": "k1=secret-one,k2=secret=two=="})
    assert cfg.keys == {"k1": "secret-one", "k2": "secret=two=="}


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"ROOMLINE_SERVER_PORT": "abc"},
            "environment ROOMLINE_SERVER_PORT: server.port: expected int",
        ),
        (
            {"ROOMLINE_SERVER_PROT": "1"},
            "environment ROOMLINE_SERVER_PROT: server.prot: unknown key",
        ),
        (
            {"ROOMLINE_SERVER_PORT": "70000"},
            "environment ROOMLINE_SERVER_PORT: server.port: port must",
        ),
        ({"ROOMLINE_SIP_ENABLED": "maybe"}, "environment ROOMLINE_SIP_ENABLED: sip.enabled"),
        ({"ROOMLINE_KEYS": "nonsense"}, "environment ROOMLINE_KEYS: keys"),
        ({"ROOMLINE_KEYS": "k=abc"}, "environment ROOMLINE_KEYS: keys.k: secret is too short"),
    ],
)
def test_env_errors_name_variable(tmp_path: Path, env: dict[str, str], fragment: str) -> None:
    path = write(tmp_path, "server: {host: 127.0.0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert fragment in str(info.value), str(info.value)


def test_error_origin_points_at_the_file_when_env_set_something_else(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 99999}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"ROOMLINE_SERVER_HOST": "127.0.0.1"})
    assert str(info.value).startswith(f"{path}: server.port: ")


def test_override_error_names_override_source() -> None:
    with pytest.raises(ConfigError, match=r"^command line: server\.port: port must"):
        load_config(None, env={}, overrides={"server.port": -1}, overrides_source="command line")


TRUNK = {
    "name": "carrier",
    "numbers": ["+15550100"],
    "allowed_addresses": ["192.0.2.0/24"],
    "auth_username": "pbx",
    "auth_password": "trunk-password",
}
RULE = {
    "rule": {"dispatch_rule_individual": {"room_prefix": "call-"}},
    "trunk_ids": [],
    "name": "everyone",
}


def test_trunks_and_dispatch_rules_parse(tmp_path: Path) -> None:
    text = json.dumps({"sip": {"trunks": [TRUNK], "dispatch_rules": [RULE]}})
    cfg = load_text(tmp_path, text)
    (trunk,) = cfg.sip.inbound_trunks()
    assert trunk.numbers == ["+15550100"] and trunk.auth_username == "pbx"
    (rule,) = cfg.sip.dispatch_rule_infos()
    assert rule.rule.dispatch_rule_individual.room_prefix == "call-"


@pytest.mark.parametrize(
    ("sip", "key"),
    [
        ({"trunks": [{**TRUNK, "numbrs": ["1"]}]}, "sip.trunks[0].numbrs"),
        ({"trunks": [TRUNK, {"numbers": "+1555"}]}, "sip.trunks[1].numbers"),
        ({"trunks": [{"krisp_enabled": "yes"}]}, "sip.trunks[0].krisp_enabled"),
        ({"trunks": ["carrier"]}, "sip.trunks[0]"),
        (
            {"dispatch_rules": [{"rule": {"dispatch_rule_direkt": {}}}]},
            "sip.dispatch_rules[0].rule",
        ),
    ],
)
def test_bad_trunk_or_rule_names_field(tmp_path: Path, sip: dict[str, object], key: str) -> None:
    path = write(tmp_path, json.dumps({"sip": sip}))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert msg.startswith(f"{path}: {key}"), msg


def test_redacted_masks_every_secret(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "keys": {"prodkey": "production-secret-xyz"},
            "rtc": {
                "ice_servers": [
                    {
                        "urls": ["turn:t.example:3478"],
                        "username": "u",
                        "credential": "turn-credential",
                    }
                ]
            },
            "sip": {"trunks": [TRUNK]},
        }
    )
    cfg = load_text(tmp_path, text)
    red = cfg.redacted()
    dumped = json.dumps(red)
    for secret in ("production-secret-xyz", "turn-credential", "trunk-password"):
        assert secret not in dumped
    assert red["keys"] == {"prodkey": "***"}
    assert red["sip"]["trunks"][0]["auth_password"] == "***"
    assert red["server"]["port"] == 7880 and red["dev_mode"] is False
    # Redaction must not mutate the live config.
    assert cfg.keys == {"prodkey": "production-secret-xyz"}
    assert cfg.sip.trunks[0]["auth_password"] == "trunk-password"


def test_max_calls_per_trunk(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "sip:\n  max_calls_per_trunk: 3\n"))
    assert cfg.sip.max_calls_per_trunk == 3
    with pytest.raises(ConfigError, match=r"x\.yaml: sip\.max_calls_per_trunk: must be >= 0"):
        load_config(write(tmp_path, "sip:\n  max_calls_per_trunk: -1\n"))


def test_server_port_0_means_any_free_port(tmp_path: Path) -> None:
    """``server.port: 0`` is valid (the kernel picks; ``roomline listening`` logs the port)."""
    assert load_config(write(tmp_path, "server: {port: 0}\n")).server.port == 0
