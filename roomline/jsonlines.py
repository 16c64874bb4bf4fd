"""Strict JSON-lines codec for the control channels between the appliance and its worker processes.

The SIP bridge workers (``bridge/control.py``) and the agent job processes (``roomline_agents/control.py``)
each define their messages as frozen dataclasses with a ``TYPE`` class variable; this codec turns
them into one JSON object per line and back. Decoding is strict: an unknown type, an unknown or
missing field, or a field of the wrong type raises the channel's error class, so a version skew
between the two ends fails loudly instead of half-working.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import types
import typing
from collections.abc import AsyncIterator, Iterable
from typing import Any, Generic, TypeVar

import structlog

from roomline.errors import InvalidRequest

M = TypeVar("M")

log = structlog.get_logger(__name__)


class JsonLinesCodec(Generic[M]):
    """Encode/decode the message dataclasses of one control channel."""

    def __init__(
        self, messages: Iterable[type[Any]], error: type[InvalidRequest], max_line: int
    ) -> None:
        self._types: dict[str, type[Any]] = {cls.TYPE: cls for cls in messages}
        self._error = error
        self._max_line = max_line

    def encode(self, msg: M) -> bytes:
        """One JSON line (with trailing newline) for ``msg``."""
        body = {"type": msg.TYPE, **dataclasses.asdict(msg)}  # type: ignore[attr-defined, call-overload]
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    def _check(self, value: Any, tp: Any, where: str) -> Any:
        origin = typing.get_origin(tp)
        if tp is float:
            # JSON has one number type; accept ints for float fields but never bools.
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif tp is int or tp is bool or tp is str:
            if type(value) is tp:
                return value
        elif origin is dict:
            if isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                return dict(value)
        elif origin in (typing.Union, types.UnionType):
            if value is None and type(None) in typing.get_args(tp):
                return None
            for arg in typing.get_args(tp):
                if arg is not type(None):
                    try:
                        return self._check(value, arg, where)
                    except self._error:
                        pass
        raise self._error(f"field {where}: bad type {type(value).__name__}")

    async def messages(self, reader: asyncio.StreamReader) -> AsyncIterator[M]:
        """The messages arriving on ``reader`` until EOF; a bad line is logged and skipped."""
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                yield self.decode(line)
            except self._error as exc:
                log.warning("bad control message", error=exc.message)

    def decode(self, line: bytes | str) -> M:
        """Parse one control line; raises the channel's error class on anything unexpected."""
        if isinstance(line, bytes):
            if len(line) > self._max_line:
                raise self._error("control line too long")
            try:
                line = line.decode()
            except UnicodeDecodeError as exc:
                raise self._error("control line is not UTF-8") from exc
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise self._error("control line is not JSON") from exc
        except RecursionError as exc:  # e.g. 100k nested "[": fits max_line, not the C stack
            raise self._error("control line is nested too deeply") from exc
        if not isinstance(obj, dict):
            raise self._error("control message must be a JSON object")
        kind = obj.pop("type", None)
        cls = self._types.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise self._error("unknown control message type")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(obj) - set(fields)
        if unknown:
            raise self._error(f"{cls.TYPE}: unknown fields {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in obj:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise self._error(f"{cls.TYPE}: missing field {name}")
                continue
            kwargs[name] = self._check(obj[name], hints[name], f"{cls.TYPE}.{name}")
        msg: M = cls(**kwargs)
        return msg
