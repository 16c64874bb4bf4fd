"""roomline/jsonlines.py: the strict JSON-lines codec of the worker control channels."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomline.errors import InvalidRequest
from roomline.jsonlines import JsonLinesCodec


class ChannelError(InvalidRequest):
    pass


@dataclass(frozen=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    name: str
    count: int = 0
    ratio: float = 1.0
    flag: bool = False
    note: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Bye:
    TYPE: ClassVar[str] = "bye"


CODEC: JsonLinesCodec[Hello | Bye] = JsonLinesCodec((Hello, Bye), ChannelError, max_line=1 << 16)


def test_round_trip() -> None:
    for msg in (Hello("a", 3, 0.5, True, "n", {"k": "v"}), Hello("b"), Bye()):
        line = CODEC.encode(msg)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert CODEC.decode(line) == msg
    assert CODEC.decode('{"type":"hello","name":"x","ratio":2}') == Hello("x", ratio=2.0)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{nope", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"name":"x"}', "unknown control message type"),
        (b'{"type":["hello"]}', "unknown control message type"),
        (b'{"type":"hello"}', "missing field name"),
        (b'{"type":"hello","name":"x","extra":1}', "unknown fields ['extra']"),
        (b'{"type":"hello","name":1}', "hello.name: bad type int"),
        (b'{"type":"hello","name":"x","count":true}', "hello.count: bad type bool"),
        (b'{"type":"hello","name":"x","ratio":true}', "hello.ratio: bad type bool"),
        (b'{"type":"hello","name":"x","tags":{"k":1}}', "hello.tags: bad type dict"),
        (b'{"type":"hello","name":"x","note":5}', "hello.note: bad type int"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b"x" * ((1 << 16) + 1), "too long"),
    ],
)
def test_decode_invalid(line: bytes, error: str) -> None:
    with pytest.raises(ChannelError, match=None) as info:
        CODEC.decode(line)
    assert error in str(info.value)


def test_decode_truncated_at_every_length() -> None:
    line = CODEC.encode(Hello("a", 3, 0.5, True, "n", {"k": "v"})).rstrip(b"\n")
    for n in range(len(line)):
        with pytest.raises(ChannelError):
            CODEC.decode(line[:n])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_channel_error(data: bytes) -> None:
    try:
        CODEC.decode(data)
    except ChannelError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "name", "count", "ratio", "flag", "note", "tags", "x"]),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
            max_leaves=5,
        )
        | st.sampled_from(["hello", "bye"]),
    )
)
def test_arbitrary_objects_decode_to_a_valid_message_or_raise(obj: dict[str, object]) -> None:
    try:
        msg = CODEC.decode(json.dumps(obj))
    except ChannelError:
        return
    assert CODEC.decode(CODEC.encode(msg)) == msg  # whatever is accepted survives a round trip


async def test_messages_skips_bad_lines_and_keeps_reading() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b'{"type":"bye"}\n' + b"[" * 5000 + b"\n" + b"garbage\n")
    reader.feed_data(CODEC.encode(Hello("after")))
    reader.feed_eof()
    assert [m async for m in CODEC.messages(reader)] == [Bye(), Hello("after")]
