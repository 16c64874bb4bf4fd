"""roomline configuration: one dataclass tree, defaults in code, strict loading.

Layers, lowest precedence first: the defaults below, one YAML file (``--config`` or
``ROOMLINE_CONFIG``, else the embedded ``roomline/defaults/roomline.yaml``), environment variables
``ROOMLINE_<SECTION>_<KEY>``, then explicit overrides (command-line flags). Loading is strict: an
unknown key, a wrong type or an impossible value raises :class:`~roomline.errors.ConfigError` naming the
dotted key and where it came from, because a typo that silently falls back to a default is how
appliances end up open to the internet.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import sip as sip_pb

from roomline.errors import ConfigError

__all__ = [
    "AgentsConfig",
    "Config",
    "ConfigError",
    "DEV_KEYS",
    "EMBEDDED_SOURCE",
    "IceServerConfig",
    "LimitsConfig",
    "LoggingConfig",
    "RTCConfig",
    "RoomDefaults",
    "SIPConfig",
    "SIPWorkerConfig",
    "ServerConfig",
    "embedded_yaml",
    "load_config",
]

#: The well-known development key pair (same as ``livekit-server --dev``). Anyone can mint tokens
#: with it, so :attr:`Config.dev_mode` is surfaced loudly at start-up.
DEV_KEYS: dict[str, str] = {"devkey": "secret"}

#: ``Config.source`` when no file was given.
EMBEDDED_SOURCE = "<embedded>"

#: Shortest API secret accepted. LiveKit recommends 32+ characters; 6 keeps the well-known
#: ``devkey: secret`` pair valid while rejecting obviously empty or placeholder secrets.
MIN_SECRET_LENGTH = 6

ENV_PREFIX = "ROOMLINE_"
ENV_CONFIG_FILE = "ROOMLINE_CONFIG"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")
SIP_ANSWER_MODES = ("immediate", "wait_for_audio")
#: Calls one bridge worker takes: the PyPI pjsua2 wheel is built with ``PJSUA_MAX_CALLS`` = 4.
#: ``sip.workers: auto`` sizes with it; the front uses each worker's detected cap once known.
CALLS_PER_WORKER = 4
#: Most workers ``sip.workers`` may ask for.
MAX_SIP_WORKERS = 64
#: Fewest RTP ports one worker's slice may have (RTP+RTCP per call, and some slack).
MIN_RTP_PORTS_PER_WORKER = 10
ICE_URL_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
_AGENT_TARGET_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_REDACTED = "***"


@dataclass(slots=True)
class ServerConfig:
    """HTTP/WebSocket edge: signalling, Twirp API, health and metrics."""

    host: str = "0.0.0.0"
    #: 0 = any free port; the bound port is logged in the ``roomline listening`` event.
    port: int = 7880
    data_dir: str = "./data"


@dataclass(slots=True)
class IceServerConfig:
    """A STUN/TURN server advertised to clients in the JoinResponse."""

    urls: list[str] = field(default_factory=list)
    username: str = ""
    credential: str = ""


@dataclass(slots=True)
class RTCConfig:
    """WebRTC transport: advertised address, bound interfaces and the UDP port range."""

    node_ip: str = ""  # advertised IP; empty = auto-detect
    interfaces: list[str] = field(default_factory=list)  # IPs ICE binds; empty = all non-loopback
    port_range_start: int = 50000
    port_range_end: int = 50999
    ice_servers: list[IceServerConfig] = field(default_factory=list)


@dataclass(slots=True)
class RoomDefaults:
    """Defaults for auto-created rooms (timeouts in seconds; 0 participants = unlimited)."""

    auto_create: bool = True
    empty_timeout: int = 300
    departure_timeout: int = 20
    max_participants: int = 0


@dataclass(slots=True)
class LimitsConfig:
    """Every resource cap in one place; each bounds memory or CPU an untrusted peer can consume."""

    max_participants_per_room: int = 1000
    max_tracks_per_participant: int = 16
    max_metadata_size: int = 65536
    max_attributes_size: int = 65536
    max_identity_length: int = 256
    max_name_length: int = 256
    max_room_name_length: int = 256
    max_api_body_size: int = 1048576
    max_signal_message_size: int = 1048576
    max_data_packet_size: int = 65536


@dataclass(slots=True)
class LoggingConfig:
    """Log level and renderer (``auto`` = JSON unless stderr is a terminal)."""

    level: str = "info"
    format: str = "auto"


@dataclass(slots=True)
class SIPWorkerConfig:
    """One bridge worker process: its SIP listening port and its RTP port range."""

    sip_port: int = 5060
    rtp_port_start: int = 10000
    rtp_port_end: int = 10999


def _default_blocked_user_agents() -> list[str]:
    # Scanners that hammer every public SIP port looking for open trunks (toll fraud).
    return ["friendly-scanner", "sipvicious", "sipcli"]


@dataclass(slots=True)
class SIPConfig:
    """SIP/PSTN bridge: listening address, workers, call timers, trunks and dispatch rules.

    ``trunks`` items are LiveKit ``SIPInboundTrunkInfo`` JSON, ``dispatch_rules`` items are
    ``SIPDispatchRuleInfo`` JSON, ``outbound_trunks`` items ``SIPOutboundTrunkInfo`` JSON; all are
    validated at load time.
    """

    enabled: bool = True
    #: Public SIP (the Kamailio front): UDP and TCP on ``port``, TLS on ``tls_port`` when both
    #: ``tls_cert_file`` and ``tls_key_file`` are set. Also the address RTP binds to.
    bind_address: str = "0.0.0.0"
    public_ip: str = ""
    port: int = 5060
    tls_port: int = 5061
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: Outbound calls over TLS trunks (front mode with TLS): the front checks the carrier's
    #: certificate against ``outbound_tls_ca_file`` ("" = the system CA store) unless
    #: ``outbound_tls_verify`` is false (self-signed carriers; any certificate is then accepted).
    outbound_tls_verify: bool = True
    outbound_tls_ca_file: str = ""
    #: Bridge worker processes behind the front: a count, or ``auto`` (enough
    #: :data:`CALLS_PER_WORKER`-call workers for ``target_calls``). A list of
    #: ``{sip_port, rtp_port_start, rtp_port_end}`` mappings is the older direct mode: no front,
    #: each worker listens on its own public port.
    workers: Any = "auto"
    target_calls: int = 32
    #: Workers listen on 127.0.0.1 only, on ``worker_base_port`` + 0, 1, 2 ...
    worker_base_port: int = 5070
    #: RTP goes directly phone <-> worker: this range is split evenly between the workers.
    rtp_port_start: int = 10000
    rtp_port_end: int = 10999
    #: Carrier IPs or CIDRs: exempt from the flood limits, may OPTIONS-ping the front.
    trusted_addresses: list[str] = field(default_factory=list)
    #: Flood limits: more than ``pike_reqs_density`` requests in ``pike_sampling_time`` seconds
    #: from one IP bans it for ``ban_seconds``.
    pike_sampling_time: int = 2
    pike_reqs_density: int = 30
    ban_seconds: int = 300
    #: True: bridge workers run a 16 kHz conference clock and offer G.722 (wideband) before
    #: G.711. False: an 8 kHz clock and G.711 only, for trunks that carry nothing else (most
    #: PSTN carriers): no 8 ↔ 16 kHz resampling per call, about a fifth less CPU per call.
    wideband: bool = True
    #: Front mode with ``wideband: true``: how many workers run the 16 kHz clock (the rest run
    #: 8 kHz, G.711 only). The front sends a caller whose offer carries G.722 (or no offer) to a
    #: 16 kHz worker first and any other caller (G.711 only: most PSTN trunks) to an 8 kHz one;
    #: each pool takes the other's overflow. ``auto`` = half the workers, rounded up; 0..count.
    wideband_workers: Any = "auto"
    answer: str = "immediate"
    ringing_timeout: float = 30.0
    media_timeout: float = 15.0
    max_call_duration: float = 10800.0
    hide_inbound_port: bool = False
    #: Concurrent calls allowed per inbound trunk (0 = no limit); over it a call gets 486.
    max_calls_per_trunk: int = 0
    blocked_user_agents: list[str] = field(default_factory=_default_blocked_user_agents)
    trunks: list[dict[str, Any]] = field(default_factory=list)
    dispatch_rules: list[dict[str, Any]] = field(default_factory=list)
    #: Outbound trunks: LiveKit ``SIPOutboundTrunkInfo`` JSON (read-only over the API).
    outbound_trunks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def front_enabled(self) -> bool:
        """True unless ``workers`` is the older list of directly reachable workers."""
        return not isinstance(self.workers, list)

    def worker_count(self) -> int:
        """How many bridge workers run (``auto`` resolved from ``target_calls``)."""
        if isinstance(self.workers, list):
            return len(self.workers)
        if self.workers == "auto":
            return max(1, -(-self.target_calls // CALLS_PER_WORKER))
        return int(self.workers)

    def wideband_worker_count(self) -> int:
        """How many workers run the 16 kHz bridge clock (the first ones; the rest run 8 kHz).

        Direct mode keeps one clock for every worker (no front routes by codec): all of them
        with ``wideband``, none without. In front mode ``wideband_workers`` splits them.
        """
        n = self.worker_count()
        if not self.wideband:
            return 0
        if isinstance(self.workers, list):
            return n
        if self.wideband_workers == "auto":
            return -(-n // 2)
        return int(self.wideband_workers)

    def inbound_trunks(self) -> list[sip_pb.SIPInboundTrunkInfo]:
        """The configured trunks as protobuf messages (already validated at load time)."""
        return [_parse_proto(t, sip_pb.SIPInboundTrunkInfo) for t in self.trunks]

    def dispatch_rule_infos(self) -> list[sip_pb.SIPDispatchRuleInfo]:
        """The configured dispatch rules as protobuf messages (already validated at load time)."""
        return [_parse_proto(r, sip_pb.SIPDispatchRuleInfo) for r in self.dispatch_rules]


@dataclass(slots=True)
class AgentsConfig:
    """In-appliance agent workers; ``registry`` maps agent name -> ``"module.path:callable"``."""

    workers: int = 1
    registry: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Config:
    """The whole roomline configuration. Build it with :func:`load_config`."""

    keys: dict[str, str] = field(default_factory=lambda: dict(DEV_KEYS))
    server: ServerConfig = field(default_factory=ServerConfig)
    rtc: RTCConfig = field(default_factory=RTCConfig)
    room: RoomDefaults = field(default_factory=RoomDefaults)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sip: SIPConfig = field(default_factory=SIPConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    source: str = EMBEDDED_SOURCE

    @property
    def dev_mode(self) -> bool:
        """True iff the only API key is the public development pair ``devkey: secret``."""
        return self.keys == DEV_KEYS

    def redacted(self) -> dict[str, Any]:
        """A plain dict of the config with every secret masked; safe to log."""
        data = dataclasses.asdict(self)
        data["keys"] = {k: _REDACTED for k in self.keys}
        for ice in data["rtc"]["ice_servers"]:
            if ice.get("credential"):
                ice["credential"] = _REDACTED
        for trunk in [*data["sip"]["trunks"], *data["sip"]["outbound_trunks"]]:
            for name in ("auth_password", "authPassword"):
                if name in trunk:
                    trunk[name] = _REDACTED
        data["dev_mode"] = self.dev_mode
        return data


# Keys excluded from files/env: provenance, not configuration.
_NOT_CONFIGURABLE = frozenset({"source"})


# --------------------------------------------------------------------------------------------------
# Loading


def embedded_yaml() -> str:
    """Text of the default config shipped as package data (``roomline/defaults/roomline.yaml``)."""
    return (
        resources.files("roomline").joinpath("defaults/roomline.yaml").read_text(encoding="utf-8")
    )


def load_config(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    overrides_source: str = "overrides",
) -> Config:
    """Load, merge and validate the configuration.

    ``path`` names the YAML file (``None``: ``ROOMLINE_CONFIG`` from ``env``, else the embedded
    default). ``env`` defaults to :data:`os.environ`. ``overrides`` is a nested mapping
    (``{"server": {"port": 7881}}``) or uses dotted keys (``{"server.port": 7881}``); it wins over
    everything. Raises :class:`ConfigError` naming the dotted key and its origin.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get(ENV_CONFIG_FILE) or None

    if path is None:
        source = EMBEDDED_SOURCE
        text = embedded_yaml()
    else:
        source = path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None

    origins = _Origins(default=source)
    merged = _parse_yaml(text, source)

    for dotted, value, origin in _env_layer(env):
        _set_dotted(merged, dotted, value)
        origins.record(dotted, origin)

    for dotted, value in _flatten_overrides(overrides or {}):
        _set_dotted(merged, dotted, value)
        origins.record(dotted, overrides_source)

    cfg = _build(Config, merged, "", origins)
    cfg.source = source
    _validate(cfg, origins)
    return cfg


class _Origins:
    """Remembers which layer set each dotted key, so errors point at the file or env var."""

    def __init__(self, default: str) -> None:
        self.default = default
        self._by_key: dict[str, str] = {}

    def record(self, dotted: str, origin: str) -> None:
        self._by_key[dotted] = origin

    def of(self, dotted: str) -> str:
        # Longest recorded prefix wins: "sip.trunks[0].numbers" came from whoever set "sip.trunks".
        parts = re.findall(r"\[\d+\]|[^.\[]+", dotted)
        for n in range(len(parts), 0, -1):
            prefix = "".join(
                p if p.startswith("[") or i == 0 else "." + p for i, p in enumerate(parts[:n])
            )
            if prefix in self._by_key:
                return self._by_key[prefix]
        return self.default

    def error(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(f"{self.of(dotted)}: {dotted}: {message}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - strict SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {_type_name(data)}")
    return data


def _sections() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {
        f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name not in _NOT_CONFIGURABLE
    }


def _env_layer(env: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """Translate ``ROOMLINE_<SECTION>_<KEY>`` variables into (dotted key, value, origin)."""
    sections = _sections()
    out: list[tuple[str, Any, str]] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        origin = f"environment {name}"
        raw = env[name]
        section = next((s for s in sections if rest == s or rest.startswith(s + "_")), None)
        if section is None:
            continue  # not ours (other tools may share the prefix)
        tp = sections[section]
        if rest == section:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"{origin}: {section}: is a section; set {name}_<KEY> instead")
            out.append((section, _env_value(raw, tp, section, origin), origin))
            continue
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{origin}: {rest.replace('_', '.', 1)}: unknown key")
        key = rest[len(section) + 1 :]
        hints = typing.get_type_hints(tp)
        if key not in hints:
            raise ConfigError(f"{origin}: {section}.{key}: unknown key")
        dotted = f"{section}.{key}"
        out.append((dotted, _env_value(raw, hints[key], dotted, origin), origin))
    return out


def _env_value(raw: str, tp: Any, dotted: str, origin: str) -> Any:
    """Turn an environment string into a value of (roughly) type ``tp``; _build checks the rest."""
    raw = raw.strip()
    try:
        if tp is str:
            return raw
        if tp is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{origin}: {dotted}: expected {_hint_name(tp)}, got {raw!r}") from None
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw else None  # noqa: S506
    except yaml.YAMLError:
        value = raw
    origin_ = typing.get_origin(tp)
    if origin_ is list and typing.get_args(tp) == (str,) and not isinstance(value, list):
        # Comma-separated convenience form: ROOMLINE_RTC_INTERFACES=10.0.0.1,10.0.0.2
        return [p.strip() for p in raw.split(",") if p.strip()]
    if origin_ is dict and not isinstance(value, dict):
        # k=v convenience form: ROOMLINE_KEYS=k1=s1,k2=s2 (first '=' splits; secrets may hold '=')
        pairs: dict[str, str] = {}
        for part in (p.strip() for p in raw.split(",")):
            if not part:
                continue
            k, sep, v = part.partition("=")
            if not sep or not k.strip():
                raise ConfigError(
                    f"{origin}: {dotted}: expected 'key: value' YAML or k1=v1,k2=v2, got {part!r}"
                )
            pairs[k.strip()] = v.strip()
        return pairs
    return value


def _flatten_overrides(overrides: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    sections = _sections()
    out: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        top = dotted.split(".", 1)[0]
        is_section = "." not in dotted and dataclasses.is_dataclass(sections.get(top))
        if is_section and isinstance(value, Mapping):
            out.extend(_flatten_overrides(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------------------------------
# Typed construction


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _hint_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "mapping"
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_hint_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {_type_name(value)} {text}"


def _build(cls: Any, data: Any, path: str, origins: _Origins) -> Any:
    """Construct dataclass ``cls`` from ``data``, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise origins.error(path or "<top level>", f"expected mapping, {_got(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in _NOT_CONFIGURABLE]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            hint = ", ".join(names)
            raise origins.error(dotted, f"unknown key (valid keys here: {hint})")
        kwargs[key] = _convert(hints[key], value, dotted, origins)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, dotted: str, origins: _Origins) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, dotted, origins)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise origins.error(dotted, f"expected {_hint_name(tp)}, {_got(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{dotted}[{i}]", origins) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise origins.error(dotted, f"expected mapping, {_got(value)}")
        key_tp, val_tp = typing.get_args(tp)
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise origins.error(dotted, f"keys must be strings, got {_type_name(k)} {k!r}")
            out[k] = v if val_tp is Any else _convert(val_tp, v, f"{dotted}.{k}", origins)
        return out
    if tp is Any:
        return value
    # bool is an int subclass in Python; "port: true" must not become port 1.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # the one coercion allowed: 30 -> 30.0
        ok = isinstance(value, float)
    elif tp is str:
        ok = isinstance(value, str)
    elif isinstance(tp, types.UnionType):  # pragma: no cover - no unions in the schema today
        ok = True
    else:  # pragma: no cover - guards schema additions
        raise TypeError(f"unsupported config type {tp!r} at {dotted}")
    if not ok:
        raise origins.error(dotted, f"expected {_hint_name(tp)}, {_got(value)}")
    return value


# --------------------------------------------------------------------------------------------------
# Value validation


def _parse_proto(data: Mapping[str, Any], cls: type[Message]) -> Any:
    msg = cls()
    json_format.ParseDict(dict(data), msg, ignore_unknown_fields=False)
    return msg


def _check_proto(items: list[dict[str, Any]], cls: type[Message], dotted: str, o: _Origins) -> None:
    for i, item in enumerate(items):
        where = f"{dotted}[{i}]"
        try:
            _parse_proto(item, cls)
        except json_format.ParseError as exc:
            # Re-parse key by key to name the offending field rather than the whole item.
            for key, value in item.items():
                try:
                    _parse_proto({key: value}, cls)
                except json_format.ParseError as field_exc:
                    reason = str(field_exc).splitlines()[0]
                    raise o.error(f"{where}.{key}", f"invalid {cls.__name__}: {reason}") from None
            raise o.error(where, f"invalid {cls.__name__}: {str(exc).splitlines()[0]}") from None


def _check_port(value: int, dotted: str, o: _Origins, *, allow_any: bool = False) -> None:
    if allow_any and value == 0:
        return
    if not 1 <= value <= 65535:
        low = 0 if allow_any else 1
        raise o.error(dotted, f"port must be in {low}..65535, got {value}")


def _check_range(start: int, end: int, prefix: str, names: tuple[str, str], o: _Origins) -> None:
    _check_port(start, f"{prefix}.{names[0]}", o)
    _check_port(end, f"{prefix}.{names[1]}", o)
    if start > end:
        raise o.error(f"{prefix}.{names[0]}", f"{start} is greater than {names[1]} {end}")


def _check_ip(value: str, dotted: str, o: _Origins, *, allow_empty: bool) -> None:
    if not value and allow_empty:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise o.error(dotted, f"expected an IP address, got {value!r}") from None


def _check_non_negative(obj: Any, prefix: str, names: tuple[str, ...], o: _Origins) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise o.error(f"{prefix}.{name}", f"must be >= 0, got {getattr(obj, name)}")


def _check_positive(obj: Any, prefix: str, names: tuple[str, ...], o: _Origins) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise o.error(f"{prefix}.{name}", f"must be > 0, got {getattr(obj, name)}")


def _validate(cfg: Config, o: _Origins) -> None:
    if not cfg.keys:
        raise o.error("keys", "at least one API key is required")
    for key, secret in cfg.keys.items():
        if not key.strip():
            raise o.error("keys", "API key names must not be empty")
        # Never echo the secret itself, not even in an error.
        if len(secret) < MIN_SECRET_LENGTH:
            raise o.error(
                f"keys.{key}",
                f"secret is too short ({len(secret)} chars, minimum {MIN_SECRET_LENGTH}; "
                "32+ recommended)",
            )

    if not cfg.server.host:
        raise o.error("server.host", "must not be empty")
    _check_port(cfg.server.port, "server.port", o, allow_any=True)
    if not cfg.server.data_dir:
        raise o.error("server.data_dir", "must not be empty")

    rtc = cfg.rtc
    _check_ip(rtc.node_ip, "rtc.node_ip", o, allow_empty=True)
    for i, ip in enumerate(rtc.interfaces):
        _check_ip(ip, f"rtc.interfaces[{i}]", o, allow_empty=False)
    _check_range(
        rtc.port_range_start, rtc.port_range_end, "rtc", ("port_range_start", "port_range_end"), o
    )
    for i, ice in enumerate(rtc.ice_servers):
        if not ice.urls:
            raise o.error(f"rtc.ice_servers[{i}].urls", "at least one URL is required")
        for j, url in enumerate(ice.urls):
            if not url.startswith(ICE_URL_SCHEMES):
                raise o.error(
                    f"rtc.ice_servers[{i}].urls[{j}]",
                    f"expected a stun:/stuns:/turn:/turns: URL, got {url!r}",
                )

    _check_non_negative(
        cfg.room, "room", ("empty_timeout", "departure_timeout", "max_participants"), o
    )
    _check_positive(
        cfg.limits, "limits", tuple(f.name for f in dataclasses.fields(LimitsConfig)), o
    )

    if cfg.logging.level.lower() not in LOG_LEVELS:
        raise o.error(
            "logging.level", f"expected one of {', '.join(LOG_LEVELS)}, got {cfg.logging.level!r}"
        )
    if cfg.logging.format not in LOG_FORMATS:
        raise o.error(
            "logging.format",
            f"expected one of {', '.join(LOG_FORMATS)}, got {cfg.logging.format!r}",
        )

    _validate_sip(cfg, o)

    if cfg.agents.workers < 0:
        raise o.error("agents.workers", f"must be >= 0, got {cfg.agents.workers}")
    for name, target in cfg.agents.registry.items():
        if not name:
            raise o.error("agents.registry", "agent names must not be empty")
        if not _AGENT_TARGET_RE.match(target):
            raise o.error(
                f"agents.registry.{name}", f"expected 'module.path:callable', got {target!r}"
            )


def _validate_sip(cfg: Config, o: _Origins) -> None:
    sip = cfg.sip
    _check_ip(sip.bind_address, "sip.bind_address", o, allow_empty=False)
    _check_ip(sip.public_ip, "sip.public_ip", o, allow_empty=True)
    if sip.answer not in SIP_ANSWER_MODES:
        raise o.error(
            "sip.answer", f"expected one of {', '.join(SIP_ANSWER_MODES)}, got {sip.answer!r}"
        )
    _check_positive(sip, "sip", ("ringing_timeout", "media_timeout", "max_call_duration"), o)
    _check_non_negative(sip, "sip", ("max_calls_per_trunk",), o)
    _check_sip_workers(cfg, o)
    _check_wideband_workers(cfg, o)
    if isinstance(sip.workers, list):
        _validate_direct_workers(cfg, o)
    else:
        _validate_front(cfg, o)

    for i, ua in enumerate(sip.blocked_user_agents):
        if not ua:
            raise o.error(f"sip.blocked_user_agents[{i}]", "must not be empty")
    _check_proto(sip.trunks, sip_pb.SIPInboundTrunkInfo, "sip.trunks", o)
    _check_proto(sip.dispatch_rules, sip_pb.SIPDispatchRuleInfo, "sip.dispatch_rules", o)
    _check_proto(sip.outbound_trunks, sip_pb.SIPOutboundTrunkInfo, "sip.outbound_trunks", o)


_WORKERS_HELP = (
    "expected a worker count (e.g. 8), 'auto' (from sip.target_calls), or the older list of "
    "{sip_port, rtp_port_start, rtp_port_end} mappings"
)


def _check_sip_workers(cfg: Config, o: _Origins) -> None:
    """``sip.workers``: a count, ``auto``, or a list of worker mappings (direct mode)."""
    sip = cfg.sip
    w = sip.workers
    if isinstance(w, list):
        if sip.enabled and not w:
            raise o.error("sip.workers", "at least one worker is required when sip.enabled is true")
        sip.workers = [
            _build(SIPWorkerConfig, item, f"sip.workers[{i}]", o) for i, item in enumerate(w)
        ]
        return
    if isinstance(w, str):
        if w.strip().lower() != "auto":
            if w.strip().isdigit():
                sip.workers = w = int(w.strip())
            else:
                raise o.error("sip.workers", f"{_WORKERS_HELP}, got {w!r}")
        else:
            sip.workers = "auto"
            _check_positive(sip, "sip", ("target_calls",), o)
            if sip.worker_count() > MAX_SIP_WORKERS:
                raise o.error(
                    "sip.target_calls",
                    f"{sip.target_calls} calls need {sip.worker_count()} workers, more than "
                    f"{MAX_SIP_WORKERS}",
                )
            return
    if isinstance(w, bool) or not isinstance(w, int):
        raise o.error("sip.workers", f"{_WORKERS_HELP}, {_got(w)}")
    if not 1 <= w <= MAX_SIP_WORKERS:
        raise o.error("sip.workers", f"expected 1..{MAX_SIP_WORKERS} workers, got {w}")


def _check_wideband_workers(cfg: Config, o: _Origins) -> None:
    """``sip.wideband_workers``: ``auto`` or a count 0..workers (front mode, wideband on)."""
    sip = cfg.sip
    w = sip.wideband_workers
    if isinstance(w, str):
        text = w.strip().lower()
        if text == "auto":
            sip.wideband_workers = "auto"
            return
        if not text.isdigit():
            raise o.error(
                "sip.wideband_workers",
                f"expected 'auto' (half the workers) or a count of 16 kHz workers, got {w!r}",
            )
        sip.wideband_workers = w = int(text)
    if isinstance(w, bool) or not isinstance(w, int):
        raise o.error(
            "sip.wideband_workers",
            f"expected 'auto' (half the workers) or a count of 16 kHz workers, {_got(w)}",
        )
    if isinstance(sip.workers, list):
        raise o.error(
            "sip.wideband_workers",
            "needs the front (sip.workers a count or auto): with the older list of workers no "
            "front routes calls by codec, every worker runs the clock sip.wideband says; "
            "leave it at auto",
        )
    n = sip.worker_count()
    if not 0 <= w <= n:
        raise o.error("sip.wideband_workers", f"expected 0..{n} (sip.workers), got {w}")
    if w and not sip.wideband:
        raise o.error(
            "sip.wideband_workers",
            f"{w} contradicts sip.wideband: false (every worker then runs 8 kHz, G.711 only); "
            "set it to 0 or auto, or turn sip.wideband on",
        )


def _validate_direct_workers(cfg: Config, o: _Origins) -> None:
    """The older direct mode: each listed worker listens publicly on its own SIP port."""
    sip = cfg.sip
    # Every UDP range must be disjoint: two sockets cannot share a port.
    ranges: list[tuple[int, int, str]] = [
        (cfg.rtc.port_range_start, cfg.rtc.port_range_end, "rtc.port_range_start")
    ]
    sip_ports: dict[int, str] = {}
    for i, w in enumerate(sip.workers):
        prefix = f"sip.workers[{i}]"
        _check_port(w.sip_port, f"{prefix}.sip_port", o)
        if w.sip_port in sip_ports:
            raise o.error(
                f"{prefix}.sip_port",
                f"port {w.sip_port} is already used by {sip_ports[w.sip_port]}",
            )
        sip_ports[w.sip_port] = f"{prefix}.sip_port"
        _check_range(
            w.rtp_port_start, w.rtp_port_end, prefix, ("rtp_port_start", "rtp_port_end"), o
        )
        here = f"{prefix}.rtp_port_start"
        for start, end, other in ranges:
            if w.rtp_port_start <= end and start <= w.rtp_port_end:
                raise o.error(here, f"RTP range overlaps the range of {other}")
        ranges.append((w.rtp_port_start, w.rtp_port_end, here))
    for port, where in sip_ports.items():
        for start, end, other in ranges:
            if start <= port <= end:
                raise o.error(where, f"port {port} lies inside the UDP range of {other}")


def _validate_front(cfg: Config, o: _Origins) -> None:
    """Front mode: Kamailio on ``sip.port`` (and ``tls_port``), workers on loopback ports."""
    sip = cfg.sip
    n = sip.worker_count()
    _check_port(sip.port, "sip.port", o)
    tls = bool(sip.tls_cert_file or sip.tls_key_file)
    if tls:
        if not (sip.tls_cert_file and sip.tls_key_file):
            missing = "sip.tls_key_file" if sip.tls_cert_file else "sip.tls_cert_file"
            raise o.error(missing, "sip.tls_cert_file and sip.tls_key_file go together")
        _check_port(sip.tls_port, "sip.tls_port", o)
        if sip.tls_port == sip.port:
            raise o.error("sip.tls_port", f"{sip.tls_port} is already sip.port")
    _check_port(sip.worker_base_port, "sip.worker_base_port", o)
    last = sip.worker_base_port + n - 1
    if last > 65535:
        raise o.error("sip.worker_base_port", f"{n} workers from here run past port 65535")
    for name, port in (("sip.port", sip.port), ("sip.tls_port", sip.tls_port if tls else -1)):
        if sip.worker_base_port <= port <= last:
            raise o.error(
                "sip.worker_base_port",
                f"worker ports {sip.worker_base_port}-{last} include {name} {port}",
            )
    _check_range(sip.rtp_port_start, sip.rtp_port_end, "sip", ("rtp_port_start", "rtp_port_end"), o)
    per_worker = (sip.rtp_port_end - sip.rtp_port_start + 1) // n
    if per_worker < MIN_RTP_PORTS_PER_WORKER:
        raise o.error(
            "sip.rtp_port_end",
            f"the RTP range {sip.rtp_port_start}-{sip.rtp_port_end} gives each of {n} workers "
            f"{per_worker} ports; at least {MIN_RTP_PORTS_PER_WORKER} are needed",
        )
    rtc = cfg.rtc
    if sip.rtp_port_start <= rtc.port_range_end and rtc.port_range_start <= sip.rtp_port_end:
        raise o.error("sip.rtp_port_start", "the SIP RTP range overlaps rtc.port_range_start..end")
    udp = [
        ("sip.port", sip.port),
        *((("sip.tls_port", sip.tls_port),) if tls else ()),
        ("sip.worker_base_port", sip.worker_base_port),
    ]
    for name, port in udp:
        for start, end, other in (
            (sip.rtp_port_start, sip.rtp_port_end, "sip.rtp_port_start"),
            (rtc.port_range_start, rtc.port_range_end, "rtc.port_range_start"),
        ):
            hi = port + (n - 1 if name == "sip.worker_base_port" else 0)
            if port <= end and start <= hi:
                raise o.error(name, f"port {port} lies inside the UDP range of {other}")
    for i, addr in enumerate(sip.trusted_addresses):
        try:
            ipaddress.ip_network(addr, strict=False)
        except ValueError:
            raise o.error(
                f"sip.trusted_addresses[{i}]", f"expected an IP address or network, got {addr!r}"
            ) from None
    _check_positive(sip, "sip", ("pike_sampling_time", "pike_reqs_density", "ban_seconds"), o)
