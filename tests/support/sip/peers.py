"""Run the pjsua2 test phone (tests/support/sip/phone.py) as a subprocess and collect its events."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from tests.support.paths import ROOT


async def run_phone(args: list[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Run the phone to completion; returns its ``PHONE`` events in order."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.sip.phone",
        *args,
        cwd=str(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    events = []
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("PHONE "):
            events.append(json.loads(line[6:]))
    return events


def digits(events: list[dict[str, Any]]) -> str:
    return "".join(e["digit"] for e in events if e["event"] == "dtmf")


def disconnected(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((e for e in events if e["event"] == "disconnected"), None)
