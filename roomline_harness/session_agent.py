"""An ``AgentSession`` voice agent built only from parts that run offline (a livekit-agents worker script).

Not imported by the harness: :data:`roomline_harness.agent_appliance.SESSION_WORKER` is this file's
text, which the tests write to ``agent.py`` and run with the livekit-agents interpreter
(``python agent.py start``). The pipeline is the stock one (``AgentSession`` + ``Agent``, room I/O,
turn handling, transcription output); only the models are small stand-ins:

* VAD: ``silero.VAD.load()`` from the livekit-plugins-silero wheel (loaded in ``prewarm``);
* STT: :class:`EnergySTT` reports "hello" for any buffered utterance with energy in it;
* LLM: :class:`FixedLLM` streams a fixed sentence (``E2E_GREETING``) word by word;
* TTS: :class:`EspeakTTS` speaks with ``espeak-ng`` (a subprocess writing a WAV).

The agent links to the first SIP participant of its room (the phone caller), greets it with
``generate_reply`` and stays in the conversation. It notes what happens in ``E2E_OUT`` (one line per
event, tagged with ``E2E_TAG``): ``joined``, ``linked``, ``state <new>``, ``said <text>``.
"""

from __future__ import annotations

import array
import asyncio
import math
import os
import pathlib
import tempfile
import time
import wave
from typing import Any

from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    Agent,
    AgentSession,
    APIConnectOptions,
    JobContext,
    JobProcess,
    NotGivenOr,
    WorkerOptions,
    WorkerType,
    cli,
    llm,
    stt,
    tts,
    utils,
)
from livekit.agents.voice import room_io
from livekit.plugins import silero

OUT = pathlib.Path(os.environ["E2E_OUT"])
TAG = os.environ.get("E2E_TAG", "w")
GREETING = os.environ.get(
    "E2E_GREETING", "Hello, you have reached the roomline test agent. How can I help you today?"
)
ESPEAK = os.environ.get("E2E_ESPEAK", "espeak-ng")


def note(line: str) -> None:
    with OUT.open("a") as f:
        f.write(f"{TAG} {time.time():.3f} {line}\n")


class EnergySTT(stt.STT):
    """Batch STT stand-in: "hello" for an utterance whose RMS is over -50 dBFS, else nothing.

    ``AgentSession`` wraps a non-streaming STT in ``stt.StreamAdapter`` with the session's VAD, so
    this is only called with the audio of one VAD-detected utterance.
    """

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))

    async def _recognize_impl(
        self,
        buffer: Any,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        pcm = array.array("h", bytes(frame.data))
        rms = math.sqrt(sum(s * s for s in pcm) / max(1, len(pcm))) / 32768.0
        text = "hello" if rms > 10 ** (-50 / 20) else ""
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid(),
            alternatives=[
                stt.SpeechData(language="en", text=text, confidence=1.0 if text else 0.0)
            ],
        )


class FixedLLM(llm.LLM):
    """LLM stand-in: every answer is :data:`GREETING`, streamed one word per chunk."""

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> llm.LLMStream:
        return FixedLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class FixedLLMStream(llm.LLMStream):
    async def _run(self) -> None:
        request_id = utils.shortuuid()
        words = GREETING.split(" ")
        for i, word in enumerate(words):
            content = word if i == len(words) - 1 else word + " "
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id, delta=llm.ChoiceDelta(role="assistant", content=content)
                )
            )
            await asyncio.sleep(0.01)  # a token stream, not one blob


class EspeakTTS(tts.TTS):
    """Non-streaming TTS stand-in: ``espeak-ng -w out.wav TEXT`` (22.05 kHz mono 16-bit).

    ``AgentSession`` wraps it in ``tts.StreamAdapter``, which splits the LLM's text into sentences.
    """

    def __init__(self) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False), sample_rate=22050, num_channels=1
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return EspeakStream(tts=self, input_text=text, conn_options=conn_options)


class EspeakStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "say.wav")
            proc = await asyncio.create_subprocess_exec(
                ESPEAK, "-w", path, self.input_text, stderr=asyncio.subprocess.PIPE
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {err.decode()}")
            with wave.open(path) as w:
                rate, pcm = w.getframerate(), w.readframes(w.getnframes())
        output_emitter.initialize(
            request_id=utils.shortuuid(), sample_rate=rate, num_channels=1, mime_type="audio/pcm"
        )
        output_emitter.push(pcm)
        output_emitter.flush()


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    note(f"joined {ctx.job.id} {ctx.room.name} {ctx.room.local_participant.identity}")
    caller = await ctx.wait_for_participant(kind=rtc.ParticipantKind.PARTICIPANT_KIND_SIP)
    note(f"linked {caller.identity}")
    session: AgentSession[None] = AgentSession(
        vad=ctx.proc.userdata["vad"], stt=EnergySTT(), llm=FixedLLM(), tts=EspeakTTS()
    )

    @session.on("agent_state_changed")
    def _state(ev: Any) -> None:
        note(f"state {ev.new_state}")

    @session.on("conversation_item_added")
    def _said(ev: Any) -> None:
        if ev.item.role == "assistant":
            note(f"said {ev.item.text_content}")

    await session.start(
        agent=Agent(instructions="You are a friendly phone agent."),
        room=ctx.room,
        room_options=room_io.RoomOptions(participant_identity=caller.identity),
    )
    session.generate_reply(instructions="Greet the caller.")


if __name__ == "__main__":
    cli.run_app(
        WorkerOptions(
            entrypoint_fnc=entrypoint,
            prewarm_fnc=prewarm,
            agent_name=os.environ.get("E2E_AGENT_NAME", ""),
            worker_type=WorkerType.ROOM,
            load_fnc=lambda *a: 0.0,  # load gating off (shared 2-core box)
            port=0,
            num_idle_processes=int(os.environ.get("E2E_IDLE", "1")),
            drain_timeout=2,
            initialize_process_timeout=60.0,
            max_retry=3,
        )
    )
