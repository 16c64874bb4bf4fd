"""Guards the std::vector layout assumption behind the fast ByteVector conversions."""

from __future__ import annotations

import os

import pjsua2 as pj
import pytest

from bridge.worker.port import bv_to_bytes, bytes_into_bv


@pytest.mark.parametrize("size", [0, 1, 320, 1920, 4096])
def test_bv_roundtrip(size: int) -> None:
    data = os.urandom(size)
    bv = pj.ByteVector(list(data))
    assert bv_to_bytes(bv) == data == bytes(bv)
    other = pj.ByteVector()
    bytes_into_bv(other, data)
    assert other.size() == size
    assert bytes(other) == data


def test_bv_shrink_and_grow() -> None:
    bv = pj.ByteVector()
    bytes_into_bv(bv, b"\x01" * 1000)
    bytes_into_bv(bv, b"\x02" * 10)
    assert bytes(bv) == b"\x02" * 10
    assert bv_to_bytes(bv) == b"\x02" * 10
    bytes_into_bv(bv, b"\x03" * 3000)
    assert bv_to_bytes(bv) == b"\x03" * 3000


def test_empty_vector_is_empty_bytes() -> None:
    assert bv_to_bytes(pj.ByteVector()) == b""
