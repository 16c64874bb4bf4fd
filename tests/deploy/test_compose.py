"""docker-compose.yml and Dockerfile: validated by Debian's docker-compose, consistent with config."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from roomline.config import load_config
from roomline_harness.paths import ROOT

REPO = ROOT
COMPOSE = shutil.which("docker-compose")


def compose_config() -> dict[str, Any]:
    assert COMPOSE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOMLINE_", "COMPOSE_"))}
    proc = subprocess.run(
        [COMPOSE, "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert isinstance(data, dict)
    return data


def published(service: dict[str, Any]) -> set[tuple[int, int, str]]:
    """(published, target, protocol) for every port, whichever syntax compose printed."""
    out: set[tuple[int, int, str]] = set()
    for port in service["ports"]:
        if isinstance(port, dict):
            out.add((int(port["published"]), int(port["target"]), port.get("protocol", "tcp")))
        else:  # "host:container/proto", possibly a range
            spec, _, proto = str(port).partition("/")
            host, _, container = spec.rpartition(":")
            hs, _, he = host.partition("-")
            cs, _, _ = container.partition("-")
            for i in range(int(he or hs) - int(hs) + 1):
                out.add((int(hs) + i, int(cs) + i, proto or "tcp"))
    return out


@pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose not installed (.ci/setup --test installs it)"
)
def test_compose_ports_and_mounts() -> None:
    data = compose_config()
    service = data["services"]["roomline"]
    ports = published(service)

    cfg = load_config(None, env={})  # the embedded defaults the image ships with
    expected = {(cfg.server.port, cfg.server.port, "tcp")}
    expected |= {(p, p, "udp") for p in range(cfg.rtc.port_range_start, cfg.rtc.port_range_end + 1)}
    # The SIP front: UDP+TCP on sip.port, TLS on sip.tls_port, and every worker's RTP; the
    # workers' own SIP ports are loopback-only and must not be published.
    sip = cfg.sip
    expected |= {(sip.port, sip.port, "udp"), (sip.port, sip.port, "tcp")}
    expected |= {(sip.tls_port, sip.tls_port, "tcp")}
    expected |= {(p, p, "udp") for p in range(sip.rtp_port_start, sip.rtp_port_end + 1)}
    assert ports == expected
    workers = range(sip.worker_base_port, sip.worker_base_port + sip.worker_count())
    assert not any(p in workers for p, _, _ in ports)
    assert (7880, 7880, "tcp") in ports and (5060, 5060, "udp") in ports
    assert (50000, 50000, "udp") in ports and (50999, 50999, "udp") in ports
    assert (10000, 10000, "udp") in ports and (10999, 10999, "udp") in ports

    volumes = service["volumes"]
    config_mount = f"{REPO / 'config'}:/etc/roomline:ro"
    assert config_mount in volumes
    data_dir = service["environment"]["ROOMLINE_SERVER_DATA_DIR"]
    assert any(str(v).startswith(f"roomline-data:{data_dir}") for v in volumes)
    assert "roomline-data" in data["volumes"]
    assert service["command"] == ["serve", "--config", "/etc/roomline/roomline.yaml"]
    # The mounted file is the repository default, and it loads.
    assert load_config(str(REPO / "config" / "roomline.yaml"), env={}).server.port == 7880


def test_dockerfile_uses_ci_setup_and_serves_mounted_config() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim-bookworm"
    assert any(line.startswith("RUN .ci/setup") for line in lines)
    assert "kamailio kamailio-tls-modules" in text  # the SIP front
    assert 'CMD ["serve", "--config", "/etc/roomline/roomline.yaml"]' in lines
    assert 'ENTRYPOINT ["roomline"]' in lines
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "node_modules" in ignored
