"""Fixtures shared by every test package. Helpers (servers, peers, ports) live in roomline_harness/."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomline_harness.server import Server, start_server, stop_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One appliance per test module (SIP disabled), on loopback, HTTP on a kernel-chosen port."""
    srv = start_server(tmp_path_factory.mktemp("roomline"))
    yield srv
    stop_server(srv)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path: Unix socket paths (108 bytes) and SIPp's pcap and
    scenario arguments break on pytest's long tmp_path."""
    d = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
