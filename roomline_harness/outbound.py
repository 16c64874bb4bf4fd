"""The appliance for outbound-call tests and benchmarks: two bridge workers, a test agent, and
every port inside 37000-37999 (tests/bridge/test_outbound_e2e.py, bench/bench_outbound.py)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from roomline_harness.paths import ROOT
from roomline_harness.server import Server

PORT_LO, PORT_HI = 37000, 37999
BLOCK = 200


def _free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@dataclass
class Ports:
    base: int

    @property
    def http(self) -> int:
        return self.base

    def worker_sip(self, i: int) -> int:
        return self.base + 1 + i

    @property
    def front(self) -> int:
        """The Kamailio front's SIP port (front mode)."""
        return self.base + 3

    @property
    def front_tls(self) -> int:
        """The front's TLS port (front mode with ``sip.tls_cert_file``/``tls_key_file``)."""
        return self.base + 6

    @property
    def front_workers(self) -> int:
        """First loopback worker port in front mode (two workers)."""
        return self.base + 4

    @property
    def rtc(self) -> tuple[int, int]:
        return self.base + 10, self.base + 73

    def worker_rtp(self, i: int) -> tuple[int, int]:
        start = self.base + 80 + 40 * i
        return start, start + 39

    def sipp(self, n: int) -> tuple[int, int]:
        """SIPp's SIP port and media port (it uses media, media+2) for test number ``n``."""
        return self.base + 160 + n % 10, self.base + 170 + 2 * (n % 15)


def pick_ports() -> Ports:
    blocks = list(range(PORT_LO, PORT_HI - BLOCK + 2, BLOCK))
    random.shuffle(blocks)
    for base in blocks:
        if all(_free(p) for p in (base, base + 1, base + 2, base + 10, base + 80, base + 160)):
            return Ports(base)
    raise RuntimeError("no free port block in 37000-37999")


def start_appliance(
    tmp: Path, ports: Ports, front: bool = False, sip_extra: dict[str, Any] | None = None
) -> Server:
    """The appliance: direct workers on ``worker_sip(i)``, or with ``front`` the Kamailio front
    on :attr:`Ports.front` and loopback workers from ``front_workers``. ``sip_extra`` adds to
    (or replaces) the ``sip`` config, e.g. the front's TLS files."""
    data_dir = tmp / "data"
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": ports.http, "data_dir": str(data_dir)},
        "rtc": {
            "interfaces": ["127.0.0.1"],
            "node_ip": "127.0.0.1",
            "port_range_start": ports.rtc[0],
            "port_range_end": ports.rtc[1],
        },
        "logging": {"level": "info", "format": "json"},
        "agents": {
            "workers": 1,
            "registry": {"outbound_test": "tests.bridge.outbound_agent:entrypoint"},
        },
        "sip": {
            "enabled": True,
            "bind_address": "127.0.0.1",
            "workers": [
                {
                    "sip_port": ports.worker_sip(i),
                    "rtp_port_start": ports.worker_rtp(i)[0],
                    "rtp_port_end": ports.worker_rtp(i)[1],
                }
                for i in range(2)
            ],
        },
    }
    if front:
        cfg["sip"] = {
            "enabled": True,
            "bind_address": "127.0.0.1",
            "workers": 2,
            "port": ports.front,
            "worker_base_port": ports.front_workers,
            "rtp_port_start": ports.worker_rtp(0)[0],
            "rtp_port_end": ports.worker_rtp(1)[1],
        }
    cfg["sip"].update(sip_extra or {})
    worker_ports = (
        [ports.front_workers, ports.front_workers + 1]
        if front
        else [ports.worker_sip(i) for i in range(2)]
    )
    config_path = tmp / "roomline.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp / "roomline.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=env,
        )
    server = Server(ports.http, data_dir, config_path, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"roomline exited early:\n{server.log_text()}")
        try:
            with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=1) as resp:
                text = resp.read().decode()
            if text.count("roomline_sip_worker_max_calls{") == 2 and all(
                f'roomline_sip_worker_max_calls{{sip_port="{p}"}} 0' not in text
                for p in worker_ports
            ):
                if front:
                    time.sleep(2.0)  # the front marks the workers up once they answer OPTIONS
                return server
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"roomline did not become ready:\n{server.log_text()}")
