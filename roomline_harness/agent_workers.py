"""Helpers to run an unmodified livekit-agents worker (a subprocess) in tests.

livekit-agents 1.8.x pins an older ``livekit`` (rtc) than the appliance's test venv, so the worker
may run from another interpreter: ``ROOMLINE_AGENTS_PYTHON``, else this one if it can import
``livekit.agents``, else ``.venv-agents/bin/python`` (made by ``.ci/setup --test``), else
``/tmp/agents-venv/bin/python``. Tests skip when none has it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

FALLBACK_PYTHON = "/tmp/agents-venv/bin/python"
SETUP_PYTHON = Path(__file__).resolve().parents[1] / ".venv-agents" / "bin" / "python"


def agents_python() -> str | None:
    candidates = [
        os.environ.get("ROOMLINE_AGENTS_PYTHON", ""),
        sys.executable,
        str(SETUP_PYTHON),
        FALLBACK_PYTHON,
    ]
    for py in candidates:
        if not py or not Path(py).exists():
            continue
        probe = subprocess.run(
            [py, "-c", "import livekit.agents; print(livekit.agents.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0 and probe.stdout.startswith("1."):
            return py
    return None


async def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def start_worker(
    py: str, script: str, workdir: Path, url: str, extra_env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """``python agent.py start --url URL`` in ``workdir``, output to ``workdir/worker.log``."""
    (workdir / "agent.py").write_text(script)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "PYTHON"))},
        "LIVEKIT_URL": url,
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "secret",
        # Skip preloading the local VAD/EOT models into the forkserver (shared doc §6).
        "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0",
        **extra_env,
    }
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [py, "agent.py", "start", "--url", url, "--log-level", "DEBUG"],
            cwd=workdir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log_path


async def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group (it drains for its drain_timeout), SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, 20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
