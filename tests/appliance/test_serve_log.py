"""``roomline serve`` writes one parseable stream: its own events and its workers' output lines."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import Server, start_server, stop_server


def metric(server: Server, name: str) -> float:
    """The first sample of ``name`` in /metrics, 0 if absent."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
    return 0.0


def test_serve_log_is_json_lines_including_worker_processes(tmp_path: Path) -> None:
    """One agent job process and one bridge worker (pjsua2); /healthz is OK once it is ready."""
    rtp_start, rtp_end = free_udp_range(20)
    worker = {"sip_port": free_port(), "rtp_port_start": rtp_start, "rtp_port_end": rtp_end}
    sip = {"enabled": True, "bind_address": "127.0.0.1", "workers": [worker]}
    server = start_server(tmp_path, agents={"workers": 1}, sip=sip)
    try:
        deadline = time.monotonic() + 30
        # Both workers up and talking: the warm job process, and the bridge worker's ready message.
        while not (
            metric(server, "roomline_agent_idle_processes") >= 1
            and metric(server, "roomline_sip_worker_max_calls") >= 1
        ):
            assert time.monotonic() < deadline, "workers not ready"
            time.sleep(0.1)
    finally:
        stop_server(server)
    assert server.process.returncode == 0, server.log_text()[-4000:]
    lines = [line for line in server.log_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) and "event" in e and "level" in e for e in events)
    for name in ("agent-job", "bridge.worker"):
        mine = [e for e in events if e.get("process") == name]
        assert any(e["event"] == "process started" for e in mine), (name, lines)
        exited = [e for e in mine if e["event"] == "process exited"]
        assert exited and all(e["status"] == "exit code 0" for e in exited), (name, lines)
    # The bridge worker's own output (pjsua's console log on stdout) comes through as events.
    pjsua = [
        e for e in events if e.get("process") == "bridge.worker" and e.get("stream") == "stdout"
    ]
    assert pjsua and all(isinstance(e["pid"], int) for e in pjsua), lines
