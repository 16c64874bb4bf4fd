"""The whole appliance (this checkout) plus livekit-agents workers, for the agents tests.

``start_appliance`` runs ``roomline serve`` from this tree on port 0. ``TONE_WORKER`` is an
``livekit.rtc``-only agent: it joins, sets ``lk.agent.state``, publishes a sine at ``E2E_FREQ`` Hz
and notes what it does in ``E2E_OUT`` (one line per event, tagged with ``E2E_TAG``).
``SESSION_WORKER`` is an ``AgentSession`` voice agent from offline parts
(``roomline_harness/session_agent.py``).
"""

from __future__ import annotations

import re
import textwrap
import urllib.request
from pathlib import Path

from roomline_harness.server import Server, start_server

#: The text of ``session_agent.py`` (run by the livekit-agents interpreter, never imported here).
SESSION_WORKER = (Path(__file__).resolve().parent / "session_agent.py").read_text()
#: What its stand-in LLM answers (``E2E_GREETING`` overrides it).
SESSION_GREETING = "Hello, you have reached the roomline test agent. How can I help you today?"

TONE_WORKER = textwrap.dedent(
    """
    import array, asyncio, math, os, pathlib
    from livekit import rtc
    from livekit.agents import JobContext, WorkerOptions, WorkerType, cli

    OUT = pathlib.Path(os.environ["E2E_OUT"])
    TAG = os.environ.get("E2E_TAG", "w")
    FREQ = float(os.environ.get("E2E_FREQ", "440"))
    RATE = 48000

    def note(line):
        with OUT.open("a") as f:
            f.write(f"{TAG} {line}\\n")

    async def entrypoint(ctx: JobContext):
        async def bye(reason=""):
            note(f"shutdown {ctx.job.id}")

        ctx.add_shutdown_callback(bye)
        await ctx.connect()
        lp = ctx.room.local_participant
        source = rtc.AudioSource(RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        await lp.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        await lp.set_attributes({"lk.agent.state": "speaking"})

        def saw(p):
            note(f"saw {ctx.job.id} {p.identity} {int(p.kind)}")

        for p in list(ctx.room.remote_participants.values()):
            saw(p)
        ctx.room.on("participant_connected", saw)
        who = ctx.job.participant.identity if ctx.job.participant.identity else "-"
        note(f"joined {ctx.job.id} {ctx.room.name} {lp.identity} {who}")
        t, n = 0, 480
        while True:
            frame = array.array(
                "h", (int(8000 * math.sin(2 * math.pi * FREQ * (t + i) / RATE)) for i in range(n))
            )
            t += n
            await source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, n))

    if __name__ == "__main__":
        kind = os.environ.get("E2E_WORKER_TYPE", "room")
        cli.run_app(
            WorkerOptions(
                entrypoint_fnc=entrypoint,
                agent_name=os.environ.get("E2E_AGENT_NAME", ""),
                worker_type=WorkerType.PUBLISHER if kind == "publisher" else WorkerType.ROOM,
                load_fnc=lambda *a: 0.0,  # load gating off (shared 2-core box)
                port=0,
                num_idle_processes=int(os.environ.get("E2E_IDLE", "0")),
                drain_timeout=2,
                initialize_process_timeout=60.0,
                max_retry=3,
            )
        )
    """
)


def start_appliance(tmp: Path, **sections: dict[str, object]) -> Server:
    """The appliance for the agents tests: :func:`roomline_harness.server.start_server` (port 0)."""
    return start_server(tmp, **sections)


def metric(server: Server, name: str, labels: str = "") -> float:
    """One sample of /metrics (0 when absent); ``labels`` e.g. ``agent="x"``."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+(\S+)$", line)
        if m and m.group(1) == want:
            return float(m.group(2))
    return 0.0


def workers_registered(server: Server, agent_name: str) -> int:
    return int(metric(server, "roomline_agent_workers", f'agent="{agent_name}"'))
