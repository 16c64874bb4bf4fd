"""The pjsua2 test phone (roomline_harness/sip/phone.py) as a subprocess, and its ``PHONE`` events."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from roomline_harness.paths import ROOT


class PhoneProcess:
    """The test phone in its own process; :meth:`wait` returns its ``PHONE`` events in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, args: list[str]) -> PhoneProcess:
        """Start ``python -m roomline_harness.sip.phone *args`` with this checkout importable."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "roomline_harness.sip.phone",
            *args,
            cwd=str(ROOT),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def wait(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait for the phone to finish (killed after ``timeout`` s); its events in order."""
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.kill()
            out, _ = await self.proc.communicate()
        return [
            json.loads(line[6:])
            for line in out.decode(errors="replace").splitlines()
            if line.startswith("PHONE ")
        ]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def run_phone(args: list[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Run the phone to completion; returns its ``PHONE`` events in order."""
    phone = await PhoneProcess.start(args)
    return await phone.wait(timeout)


def digits(events: list[dict[str, Any]]) -> str:
    return "".join(e["digit"] for e in events if e["event"] == "dtmf")


def disconnected(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((e for e in events if e["event"] == "disconnected"), None)
