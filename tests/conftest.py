"""Shared fixtures: a real ``roomline serve`` process on loopback, and helpers to talk to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "devkey"
API_SECRET = "secret"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_range(size: int) -> tuple[int, int]:
    """A block of UDP ports that is free right now (best effort: probe each port)."""
    for _ in range(50):
        start = free_port(socket.SOCK_DGRAM)
        start -= start % 16
        if start + size >= 65535 or start < 20000:
            continue
        socks = []
        try:
            for port in range(start, start + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start, start + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range")


def roomline_command() -> list[str]:
    """``roomline`` from this checkout (a venv's console script may belong to another tree)."""
    return [sys.executable, "-m", "appliance.cli"]


@dataclass
class Server:
    """A running appliance."""

    port: int
    data_dir: Path
    config_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def write_config(path: Path, port: int, data_dir: Path, **sections: dict[str, object]) -> None:
    rtc_start, rtc_end = free_udp_range(64)
    cfg: dict[str, object] = {
        "server": {"host": "127.0.0.1", "port": port, "data_dir": str(data_dir)},
        "rtc": {
            "interfaces": ["127.0.0.1"],
            "node_ip": "127.0.0.1",
            "port_range_start": rtc_start,
            "port_range_end": rtc_end,
        },
        "logging": {"level": "debug", "format": "json"},
        "sip": {"enabled": False},
    }
    for name, values in sections.items():
        base = cfg.setdefault(name, {})
        assert isinstance(base, dict)
        base.update(values)
    path.write_text(yaml.safe_dump(cfg))


def start_server(tmp: Path, **sections: dict[str, object]) -> Server:
    port = free_port()
    data_dir = tmp / "data"
    config_path = tmp / "roomline.yaml"
    write_config(config_path, port, data_dir, **sections)
    log_path = tmp / "roomline.log"
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*roomline_command(), "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=env,
        )
    server = Server(port, data_dir, config_path, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"roomline exited early:\n{server.log_text()}")
        try:
            with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"roomline did not become healthy:\n{server.log_text()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One appliance per test module (SIP disabled), on loopback with free ports."""
    srv = start_server(tmp_path_factory.mktemp("roomline"))
    yield srv
    stop_server(srv)
