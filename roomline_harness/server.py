"""A real ``roomline serve`` subprocess on loopback, for tests and benchmarks.

The appliance binds HTTP port 0 and writes the port it got to ``--port-file``, so there is no window
between choosing a port and binding it. UDP ranges
(WebRTC media) cannot be bound that way and come from :func:`roomline_harness.net.free_udp_range`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from roomline_harness.net import free_udp_range
from roomline_harness.paths import ROOT

API_KEY = "devkey"
API_SECRET = "secret"
#: Seconds a server may take from exec to answering /healthz.
START_TIMEOUT = 40.0
#: Environment variables meant for the harness, never for ``roomline serve``.
HARNESS_ENV = (
    "ROOMLINE_AGENTS_PYTHON",
    "ROOMLINE_TEST_PORTS",
    "ROOMLINE_TEST_UDP_RANGE",
    "ROOMLINE_CHROMIUM",
)


def roomline_command() -> list[str]:
    """``roomline`` as the console script runs it, but from this checkout: the venv's script may
    have been installed from another tree, so the CLI module is run by this interpreter (with
    :data:`ROOT` first on ``PYTHONPATH``)."""
    return [sys.executable, "-c", "import sys; from appliance.cli import main; sys.exit(main())"]


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

    def log_events(self) -> list[dict[str, object]]:
        """The JSON log lines written so far (non-JSON lines are skipped)."""
        return list(_events(self.log_text()))

    def alive(self) -> bool:
        return self.process.poll() is None


def write_config(path: Path, port: int, data_dir: Path, **sections: dict[str, object]) -> None:
    """Write a test config: loopback only, JSON debug logs, SIP off unless a section enables it."""
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
    """Start ``roomline serve`` on port 0 with a config in ``tmp``; return once /healthz is OK."""
    data_dir = tmp / "data"
    config_path = tmp / "roomline.yaml"
    write_config(config_path, 0, data_dir, **sections)
    log_path = tmp / "roomline.log"
    port_path = tmp / "roomline.port"
    port_path.unlink(missing_ok=True)  # a restart in the same directory must not read the old one
    # This checkout's packages, whatever the installed ``roomline`` script was installed from.
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
    # Harness settings that share the config's ROOMLINE_ prefix; the appliance would read
    # ROOMLINE_AGENTS_PYTHON as the unknown key agents.python and refuse to start.
    for name in HARNESS_ENV:
        env.pop(name, None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*roomline_command(), "serve", "--config", str(config_path)]
            + ["--port-file", str(port_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=env,
        )
    server = Server(0, data_dir, config_path, process, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"roomline exited early:\n{server.log_text()}")
            if not server.port:
                server.port = _read_port(port_path)
            elif _healthy(server):
                return server
            time.sleep(0.05)
    except BaseException:
        stop_server(server)
        raise
    stop_server(server)
    raise RuntimeError(f"roomline did not become healthy:\n{server.log_text()}")


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL if the appliance has not exited within 10 s."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)


def _events(text: str) -> list[dict[str, object]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def _read_port(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):  # not written yet
        return 0


def _healthy(server: Server) -> bool:
    try:
        with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
