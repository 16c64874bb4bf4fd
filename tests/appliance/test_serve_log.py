"""``roomline serve`` writes one parseable stream: its own events and its workers' stderr lines."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from tests.support.server import Server, start_server, stop_server


def idle_agent_processes(server: Server) -> int:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("roomline_agent_idle_processes"):
                return int(float(line.split()[-1]))
    return 0


def test_serve_log_is_json_lines_including_worker_processes(tmp_path: Path) -> None:
    server = start_server(tmp_path, agents={"workers": 1})
    try:
        deadline = time.monotonic() + 30
        while idle_agent_processes(server) < 1:  # the warm job process is up and talking
            assert time.monotonic() < deadline, "no idle agent process"
            time.sleep(0.1)
    finally:
        stop_server(server)
    assert server.process.returncode == 0, server.log_text()[-4000:]
    lines = [line for line in server.log_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) and "event" in e and "level" in e for e in events)
    jobs = [e for e in events if e.get("process") == "agent-job"]
    assert any(e["event"] == "process started" for e in jobs), lines
    exited = [e for e in jobs if e["event"] == "process exited"]
    assert exited and all(isinstance(e["pid"], int) for e in exited), lines
