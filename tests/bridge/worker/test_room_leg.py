"""RoomLeg without a socket: room signals in, mixer inputs and call events out."""

from __future__ import annotations

import numpy as np
import pytest
from livekit.protocol import models, rtc

from bridge.worker.mixer import TAG_ULAW
from bridge.worker.room_leg import RoomLeg, RoomLegEvents
from roomline_harness.audio import tone
from roomline_harness.speech_chain import room_path
from sfu.local.client import ChannelClient
from sfu.local.codec import RtpPacketizer
from sfu.local.g711 import ULAW_RATE, ulaw_decode, ulaw_encode


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.events = RoomLegEvents(
            joined=lambda: self.seen.append("joined"),
            audio=lambda: self.seen.append("audio"),
            left=lambda reason: self.seen.append(f"left:{reason}"),
            dtmf=lambda key: self.seen.append(f"dtmf:{key}"),
        )


def channel() -> ChannelClient:
    """A client that was never connected: writes go nowhere."""
    return ChannelClient(lambda m: None, lambda s, p: None, lambda d: None, lambda r: None)


def participant(
    sid: str, identity: str, tracks: list[str], state: int = models.ParticipantInfo.State.ACTIVE
) -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid=sid,
        identity=identity,
        state=state,  # type: ignore[arg-type]
        tracks=[models.TrackInfo(sid=t, type=models.TrackType.AUDIO) for t in tracks],
    )


def test_unpublished_and_departed_tracks_leave_the_mixer() -> None:
    rec = Recorder()
    leg = RoomLeg(rec.events, identity="caller")
    ch = channel()
    join = rtc.JoinResponse(
        participant=models.ParticipantInfo(identity="caller"),
        other_participants=[participant("PA_a", "alice", ["TR_a1", "TR_a2"])],
    )
    leg._on_signal(ch, rtc.SignalResponse(join=join))
    assert rec.seen == ["joined"]
    pk = RtpPacketizer()
    for sid in ("TR_a1", "TR_a2", "TR_b"):
        leg._on_rtp(sid, pk.packet(b"\xf8\xff\xfe"))
    assert set(leg.mixer.inputs) == {"TR_a1", "TR_a2", "TR_b"}
    assert rec.seen == ["joined", "audio"]

    # alice unpublishes one track; bob (not seen before) shows up with his
    update = rtc.ParticipantUpdate(
        participants=[participant("PA_a", "alice", ["TR_a2"]), participant("PA_b", "bob", ["TR_b"])]
    )
    leg._on_signal(ch, rtc.SignalResponse(update=update))
    assert set(leg.mixer.inputs) == {"TR_a2", "TR_b"}

    # bob leaves the room
    gone = participant("PA_b", "bob", ["TR_b"], models.ParticipantInfo.State.DISCONNECTED)
    leg._on_signal(ch, rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[gone])))
    assert set(leg.mixer.inputs) == {"TR_a2"}
    # The end-of-call line still reports the tracks that went away, with what they received.
    stats = leg.input_stats()
    assert set(stats) == {"TR_a1", "TR_a2", "TR_b"}
    assert all(s["received"] == 1 for s in stats.values()), stats


def test_room_dtmf_is_normalised_for_the_phone() -> None:
    rec = Recorder()
    leg = RoomLeg(rec.events, identity="caller")
    leg._on_data(models.DataPacket(sip_dtmf=models.SipDTMF(code=12, digit="a")))
    leg._on_data(models.DataPacket(sip_dtmf=models.SipDTMF(code=11, digit="")))
    leg._on_data(models.DataPacket(sip_dtmf=models.SipDTMF(code=99, digit="?")))
    assert rec.seen == ["dtmf:A", "dtmf:#"]


def test_room_leave_ends_the_leg() -> None:
    rec = Recorder()
    leg = RoomLeg(rec.events)
    leg._on_signal(channel(), rtc.SignalResponse(leave=rtc.LeaveRequest()))
    assert rec.seen == ["left:removed from room"]


async def test_room_answer_before_connect_returns_can_already_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The channel dispatches the SFU's answer as soon as it is read, which can be before
    ``connect`` returns; what the answer sets off (the call going active and publishing
    ``sip.callStatus``) must already find the leg's channel."""
    sent: list[rtc.SignalRequest] = []

    async def connect(
        self: ChannelClient, path: str, token: str, room: str = "", **_: object
    ) -> None:
        answer = rtc.JoinResponse(participant=models.ParticipantInfo(identity="caller"))
        self._on_signal(rtc.SignalResponse(join=answer))  # read before connect returned

    monkeypatch.setattr(ChannelClient, "connect", connect)
    monkeypatch.setattr(ChannelClient, "send_signal", lambda self, req: sent.append(req))
    rec = Recorder()
    leg = RoomLeg(
        RoomLegEvents(
            joined=lambda: leg.set_call_status("active"),
            audio=rec.events.audio,
            left=rec.events.left,
            dtmf=rec.events.dtmf,
        ),
        identity="caller",
    )
    assert await leg.join("/nonexistent.sock", "token", "room")
    kinds = [r.WhichOneof("message") for r in sent]
    assert kinds == ["add_track", "update_metadata"]
    assert sent[1].update_metadata.attributes["sip.callStatus"] == "active"


def _on_grid(seconds: float) -> np.ndarray:
    """A G.711 caller's audio as an 8 kHz bridge hands it over: µ-law decoded samples."""
    x = tone(440.0, seconds, ULAW_RATE, 6000.0) + tone(1230.0, seconds, ULAW_RATE, 3000.0)
    return ulaw_decode(ulaw_encode(x.astype(np.int16)), len(x))


def _aligned(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    c = np.correlate(y[: len(x)], x[: ULAW_RATE // 2], mode="valid")
    lag = int(np.argmax(c))
    return y[lag : lag + len(x)]


def test_g711_caller_reaches_an_8khz_listener_sample_exact() -> None:
    """Leg A (8 kHz bridge, G.711 phone) sends µ-law beside Opus; leg B on an 8 kHz bridge
    plays it: B's phone gets A's samples unchanged, so its G.711 encoder reproduces A's codes."""
    x = _on_grid(2.0)
    y = _aligned(room_path(x.astype(np.float64), 8000, bridge_rate=8000), x)
    body = slice(ULAW_RATE // 10, len(x) - ULAW_RATE // 10)
    assert np.array_equal(y[body], x[body].astype(np.float64))
    # Through Opus instead (the path before the sidecar, or a listener on a 16 kHz bridge) the
    # same audio comes out close but off the µ-law grid.
    z = _aligned(room_path(x.astype(np.float64), 8000, bridge_rate=8000, sidecar=False), x)
    ref = x[body].astype(np.float64)
    assert not np.array_equal(z[body], ref)
    err_db = 10 * np.log10(np.sum((z[body] - ref) ** 2) / np.sum(ref**2))
    assert -40 < err_db < -10, err_db


def test_16khz_listener_decodes_opus_and_ignores_the_sidecar() -> None:
    rec = Recorder()
    leg = RoomLeg(rec.events, identity="caller", rate=16000)
    assert not leg.ulaw_in
    pkt = RtpPacketizer().packet(b"\xf8\xff\xfe", audio_level=40, ulaw=bytes(160))
    leg._on_rtp("TR_a", pkt)
    frame = leg.mixer.inputs["TR_a"].jitter._frames
    assert [(p, tag) for p, _, tag in frame.values()] == [(b"\xf8\xff\xfe", 0)]
    # an 8 kHz leg queues the sidecar, tagged; one of the wrong size falls back to Opus
    nb = RoomLeg(rec.events, identity="caller2", rate=ULAW_RATE)
    nb._on_rtp("TR_a", pkt)
    nb._on_rtp("TR_b", RtpPacketizer().packet(b"\xf8\xff\xfe", ulaw=bytes(80)))
    got = {sid: list(i.jitter._frames.values())[0] for sid, i in nb.mixer.inputs.items()}
    assert got["TR_a"][0] == bytes(160) and got["TR_a"][2] == TAG_ULAW
    assert got["TR_b"][0] == b"\xf8\xff\xfe" and got["TR_b"][2] == 0
