"""Persistent store of SIP trunks and dispatch rules (SQLite, stdlib ``sqlite3``).

Objects created through the Twirp SIP API live in ``<server.data_dir>/sip.db`` as serialized
protobufs and survive restarts. Trunks and rules from the configuration file (``sip.trunks``,
``sip.dispatch_rules``, LiveKit JSON form) are merged in *read-only*: the API lists them but
refuses to change or delete them. A config entry without an id gets a stable one derived from a
hash of its content (``ST_``/``SDR_`` + 12 base62 characters), so restarting with the same file
yields the same ids; give ``sip_trunk_id`` explicitly when rules must reference a config trunk.

All objects are cached in memory (a deployment has tens, not millions); reads never touch the
disk, which keeps INVITE matching free of I/O. Writes commit before returning. The file holds
SIP passwords, so it is created with mode 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import sip as sip_pb

from roomline.errors import ConfigError, InvalidRequest, NotFound
from roomline.ids import random_id

from .dispatch import validate_rule, validate_rule_conflicts
from .outbound_trunks import validate_outbound_trunk
from .trunks import validate_trunk, validate_trunk_conflicts

__all__ = [
    "DB_FILENAME",
    "RULE_PREFIX",
    "SIPStore",
    "TRUNK_PREFIX",
    "config_id",
    "new_rule_id",
    "new_trunk_id",
]

DB_FILENAME = "sip.db"
TRUNK_PREFIX = "ST_"
RULE_PREFIX = "SDR_"

_KIND_INBOUND = "inbound"
_KIND_OUTBOUND = "outbound"
_KIND_RULE = "rule"
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

M = TypeVar("M", bound=Message)


def new_trunk_id() -> str:
    """A fresh ``ST_`` id (12 random base62 characters)."""
    return TRUNK_PREFIX + random_id()


def new_rule_id() -> str:
    """A fresh ``SDR_`` id (12 random base62 characters)."""
    return RULE_PREFIX + random_id()


def config_id(prefix: str, entry: Mapping[str, Any]) -> str:
    """Stable id for a config entry: ``prefix`` + base62 of SHA-256 of its canonical JSON."""
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
    n = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:12], "big")
    chars = []
    for _ in range(12):
        n, r = divmod(n, 62)
        chars.append(_B62[r])
    return prefix + "".join(chars)


def _parse_entry(entry: Mapping[str, Any], cls: type[M], wrapper: str, where: str) -> M:
    data = dict(entry)
    # Accept the CLI/API request form too: {"trunk": {...}} / {"dispatch_rule": {...}}.
    if set(data) == {wrapper} and isinstance(data[wrapper], Mapping):
        data = dict(data[wrapper])
    msg = cls()
    try:
        json_format.ParseDict(data, msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ConfigError(f"{where}: {str(exc).splitlines()[0]}") from None
    return msg


def _config_check(check: Any, arg: Any, where: str) -> None:
    try:
        check(arg)
    except InvalidRequest as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


class SIPStore:
    """Trunks (inbound and outbound) and dispatch rules: SQLite-backed plus read-only config ones.

    Returned messages are the cached objects; callers must treat them as read-only (the service
    copies before changing and writes back with ``put_*``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config_trunks: Iterable[Mapping[str, Any]] = (),
        config_rules: Iterable[Mapping[str, Any]] = (),
        config_outbound_trunks: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Create it private before sqlite opens it: the file will hold SIP passwords.
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sip_objects ("
            " id TEXT PRIMARY KEY, kind TEXT NOT NULL, data BLOB NOT NULL,"
            " created_at REAL NOT NULL)"
        )
        self._inbound: dict[str, sip_pb.SIPInboundTrunkInfo] = {}
        self._outbound: dict[str, sip_pb.SIPOutboundTrunkInfo] = {}
        self._rules: dict[str, sip_pb.SIPDispatchRuleInfo] = {}
        self._readonly: set[str] = set()
        self._load_db()
        self._load_config(config_trunks, config_rules, config_outbound_trunks)

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], **config: Any) -> SIPStore:
        """Open ``<data_dir>/sip.db``; ``config`` as for the constructor."""
        return cls(Path(data_dir) / DB_FILENAME, **config)

    def close(self) -> None:
        self._db.close()

    # --- loading --------------------------------------------------------------------------

    def _load_db(self) -> None:
        rows = self._db.execute(
            "SELECT id, kind, data FROM sip_objects ORDER BY created_at, id"
        ).fetchall()
        for obj_id, kind, data in rows:
            try:
                if kind == _KIND_INBOUND:
                    self._inbound[obj_id] = sip_pb.SIPInboundTrunkInfo.FromString(data)
                elif kind == _KIND_OUTBOUND:
                    self._outbound[obj_id] = sip_pb.SIPOutboundTrunkInfo.FromString(data)
                elif kind == _KIND_RULE:
                    self._rules[obj_id] = sip_pb.SIPDispatchRuleInfo.FromString(data)
            except DecodeError as exc:
                raise ConfigError(f"{self.path}: stored SIP object {obj_id} is corrupt") from exc

    def _load_config(
        self,
        trunks: Iterable[Mapping[str, Any]],
        rules: Iterable[Mapping[str, Any]],
        outbound: Iterable[Mapping[str, Any]],
    ) -> None:
        for i, entry in enumerate(trunks):
            t = _parse_entry(entry, sip_pb.SIPInboundTrunkInfo, "trunk", f"sip.trunks[{i}]")
            t.sip_trunk_id = t.sip_trunk_id or config_id(TRUNK_PREFIX, entry)
            self._add_config(t.sip_trunk_id, TRUNK_PREFIX, f"sip.trunks[{i}]")
            _config_check(validate_trunk, t, f"sip.trunks[{i}]")
            self._inbound[t.sip_trunk_id] = t
        for i, entry in enumerate(outbound):
            where = f"sip.outbound_trunks[{i}]"
            o = _parse_entry(entry, sip_pb.SIPOutboundTrunkInfo, "trunk", where)
            o.sip_trunk_id = o.sip_trunk_id or config_id(TRUNK_PREFIX, entry)
            self._add_config(o.sip_trunk_id, TRUNK_PREFIX, where)
            _config_check(validate_outbound_trunk, o, where)
            self._outbound[o.sip_trunk_id] = o
        for i, entry in enumerate(rules):
            where = f"sip.dispatch_rules[{i}]"
            r = _parse_entry(entry, sip_pb.SIPDispatchRuleInfo, "dispatch_rule", where)
            r.sip_dispatch_rule_id = r.sip_dispatch_rule_id or config_id(RULE_PREFIX, entry)
            self._add_config(r.sip_dispatch_rule_id, RULE_PREFIX, where)
            _config_check(validate_rule, r, where)
            self._rules[r.sip_dispatch_rule_id] = r
        # Conflicts among config entries are the file's fault; report them at startup. Conflicts
        # with API-created objects surface per call (TrunkConflict) instead of blocking startup.
        ro_trunks = [t for t in self._inbound.values() if t.sip_trunk_id in self._readonly]
        _config_check(validate_trunk_conflicts, ro_trunks, "sip.trunks")
        ro_rules = [r for r in self._rules.values() if r.sip_dispatch_rule_id in self._readonly]
        _config_check(validate_rule_conflicts, ro_rules, "sip.dispatch_rules")

    def _add_config(self, obj_id: str, prefix: str, where: str) -> None:
        if not obj_id.startswith(prefix):
            raise ConfigError(f"{where}: id {obj_id!r} must start with {prefix}")
        if obj_id in self._readonly or self._exists(obj_id):
            raise ConfigError(f"{where}: id {obj_id} is already used")
        self._readonly.add(obj_id)

    def _exists(self, obj_id: str) -> bool:
        return obj_id in self._inbound or obj_id in self._outbound or obj_id in self._rules

    # --- queries --------------------------------------------------------------------------

    def is_read_only(self, obj_id: str) -> bool:
        """True for trunks/rules that come from the configuration file."""
        return obj_id in self._readonly

    def inbound_trunks(self) -> list[sip_pb.SIPInboundTrunkInfo]:
        return list(self._inbound.values())

    def outbound_trunks(self) -> list[sip_pb.SIPOutboundTrunkInfo]:
        return list(self._outbound.values())

    def dispatch_rules(self) -> list[sip_pb.SIPDispatchRuleInfo]:
        return list(self._rules.values())

    def get_inbound_trunk(self, trunk_id: str) -> sip_pb.SIPInboundTrunkInfo:
        try:
            return self._inbound[trunk_id]
        except KeyError:
            raise NotFound(f"SIP inbound trunk {trunk_id!r} does not exist") from None

    def get_outbound_trunk(self, trunk_id: str) -> sip_pb.SIPOutboundTrunkInfo:
        try:
            return self._outbound[trunk_id]
        except KeyError:
            raise NotFound(f"SIP outbound trunk {trunk_id!r} does not exist") from None

    def get_dispatch_rule(self, rule_id: str) -> sip_pb.SIPDispatchRuleInfo:
        try:
            return self._rules[rule_id]
        except KeyError:
            raise NotFound(f"SIP dispatch rule {rule_id!r} does not exist") from None

    def trunk_exists(self, trunk_id: str) -> bool:
        return trunk_id in self._inbound or trunk_id in self._outbound

    # --- writes ---------------------------------------------------------------------------

    def _check_writable(self, obj_id: str, what: str) -> None:
        if obj_id in self._readonly:
            raise InvalidRequest(
                f"{what} {obj_id} is defined in the configuration file and is read-only; "
                "edit the file instead"
            )

    def _write(self, obj_id: str, kind: str, msg: Message) -> None:
        self._db.execute(
            "INSERT INTO sip_objects (id, kind, data, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, data = excluded.data",
            (obj_id, kind, msg.SerializeToString(), time.time()),
        )

    def put_inbound_trunk(self, info: sip_pb.SIPInboundTrunkInfo) -> None:
        """Insert or replace an inbound trunk (its ``sip_trunk_id`` must be set)."""
        self._check_writable(info.sip_trunk_id, "SIP trunk")
        if info.sip_trunk_id in self._outbound or info.sip_trunk_id in self._rules:
            raise InvalidRequest(f"id {info.sip_trunk_id} is already used")
        self._write(info.sip_trunk_id, _KIND_INBOUND, info)
        self._inbound[info.sip_trunk_id] = info

    def put_outbound_trunk(self, info: sip_pb.SIPOutboundTrunkInfo) -> None:
        """Insert or replace an outbound trunk (its ``sip_trunk_id`` must be set)."""
        self._check_writable(info.sip_trunk_id, "SIP trunk")
        if info.sip_trunk_id in self._inbound or info.sip_trunk_id in self._rules:
            raise InvalidRequest(f"id {info.sip_trunk_id} is already used")
        self._write(info.sip_trunk_id, _KIND_OUTBOUND, info)
        self._outbound[info.sip_trunk_id] = info

    def put_dispatch_rule(self, info: sip_pb.SIPDispatchRuleInfo) -> None:
        """Insert or replace a dispatch rule (its ``sip_dispatch_rule_id`` must be set)."""
        self._check_writable(info.sip_dispatch_rule_id, "SIP dispatch rule")
        if (
            info.sip_dispatch_rule_id in self._inbound
            or info.sip_dispatch_rule_id in self._outbound
        ):
            raise InvalidRequest(f"id {info.sip_dispatch_rule_id} is already used")
        self._write(info.sip_dispatch_rule_id, _KIND_RULE, info)
        self._rules[info.sip_dispatch_rule_id] = info

    def delete_trunk(self, trunk_id: str) -> str:
        """Delete an inbound or outbound trunk; returns ``"inbound"`` or ``"outbound"``."""
        if not self.trunk_exists(trunk_id):
            raise NotFound(f"SIP trunk {trunk_id!r} does not exist")
        self._check_writable(trunk_id, "SIP trunk")
        self._db.execute("DELETE FROM sip_objects WHERE id = ?", (trunk_id,))
        if self._inbound.pop(trunk_id, None) is not None:
            return _KIND_INBOUND
        self._outbound.pop(trunk_id, None)
        return _KIND_OUTBOUND

    def delete_dispatch_rule(self, rule_id: str) -> sip_pb.SIPDispatchRuleInfo:
        """Delete a dispatch rule and return it."""
        rule = self.get_dispatch_rule(rule_id)
        self._check_writable(rule_id, "SIP dispatch rule")
        self._db.execute("DELETE FROM sip_objects WHERE id = ?", (rule_id,))
        del self._rules[rule_id]
        return rule
