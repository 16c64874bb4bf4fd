"""A pjsua2 "test phone" run as its own process (pjsua2 is process-global and capped at 4 calls).

    python -m roomline_harness.sip.phone --dest sip:room@127.0.0.1:5080 --port 25001 --tone 1000 \
        --record heard.wav --duration 8 --dtmf 1234*# --dtmf-at 3 --hold-at 4 --resume-at 5

Dials (or, with ``--answer``, waits for one INVITE and answers it: 180, then 200 after
``--ring-ms``), plays a tone (from a generated WAV, looped), records what it hears to a WAV (16 kHz),
sends DTMF (RFC 4733 or SIP INFO), holds/resumes, hangs up after ``--duration`` seconds (unless the
far end hangs up first). ``--worker-media`` configures pjmedia like the bridge worker (jitter
buffer, frame time, resampler quality), for the "G.711 through pjmedia alone" PESQ reference.
``--tls`` dials over SIP/TLS (no server certificate check), or with ``--answer --tls-cert
--tls-key`` listens for TLS with that certificate; ``--srtp
optional|mandatory`` offers SDES SRTP (pjmedia: ``RTP/AVP`` + ``a=crypto``, resp. ``RTP/SAVP``).
Reports on stdout as JSON lines prefixed ``PHONE `` (pjsua's own log goes elsewhere or is
silenced): ``state``, ``media``, ``dtmf`` (received digits), ``disconnected`` (status code,
reason, whether we hung up), ``answer_sdp`` (status line and body of the final response to each
INVITE and re-INVITE, as received), ``rx`` (each SIP message of the call as received: first line,
CSeq, source ``ip:port``, Contact), ``hold`` / ``resume`` (with ``at``, the wall-clock time the
re-INVITE was sent), ``dtmf_sent``, ``jbuf`` (the stream's jitter-buffer counters as last polled,
before ``disconnected``), ``offer`` (callee mode: the INVITE's request line, top
Via and SDP body), ``done``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any

import pjsua2 as pj

from roomline_harness.audio import tone, write_wav

RATE = 16000
#: Seconds between SIP INFO key presses (one INFO per digit, each after the last one was sent).
INFO_KEY_INTERVAL = 0.25
#: Seconds between polls of the call's jitter-buffer counters (the bridge worker's tick does the same).
JBUF_POLL_S = 0.25


def report(event: str, **kw: Any) -> None:
    sys.stdout.write("PHONE " + json.dumps({"event": event, **kw}) + "\n")
    sys.stdout.flush()


class PhoneCall(pj.Call):  # type: ignore[misc]
    def __init__(self, phone: Phone, acc: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.phone = phone

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        ci = self.getInfo()
        if self.phone.call is not None and self is not self.phone.call:
            # The call a REFER made us place (pjsua accepts REFERs): reported, never ends us.
            report("transfer_call", state=ci.stateText, code=ci.lastStatusCode)
            return
        report("state", state=ci.stateText, code=ci.lastStatusCode)
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.phone.answered_at is None:
            self.phone.answered_at = time.monotonic()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            if self.phone.jbuf:
                report("jbuf", **self.phone.jbuf)
            report(
                "disconnected",
                code=ci.lastStatusCode,
                reason=ci.lastReason,
                local_hangup=self.phone.hung_up,
            )
            self.phone.finished = True

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        ci = self.getInfo()
        for mi in ci.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO:
                report("media", status=int(mi.status))
                if mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    self.phone.media_index = mi.index
                    am = self.getAudioMedia(mi.index)
                    if self.phone.player is not None:
                        self.phone.player.startTransmit(am)
                    if self.phone.recorder is not None:
                        am.startTransmit(self.phone.recorder)

    def onCallTransferRequest(self, prm: Any) -> None:  # noqa: N802
        # Accept (pjsua's default 202) and place the new call as an object of our own, so its
        # end is not taken for the end of the call under test.
        report("refer", target=str(prm.dstUri))
        new = PhoneCall(self.phone, self.phone.account)
        self.phone.others.append(new)
        prm.newCall = new

    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802
        report("dtmf", digit=prm.digit, method=int(prm.method))

    def onCallTsxState(self, prm: Any) -> None:  # noqa: N802
        # Every message of the call as received, with where it came from (tests check that
        # in-dialog traffic went through the SIP front), and the final response to each of our
        # INVITEs (the SDP answer is checked by tests).
        e = prm.e
        if e.type != pj.PJSIP_EVENT_TSX_STATE or e.body.tsxState.type != pj.PJSIP_EVENT_RX_MSG:
            return
        rdata = e.body.tsxState.src.rdata
        msg = str(rdata.wholeMsg)
        first, _, rest = msg.partition("\n")
        head = rest.split("\r\n\r\n", 1)[0].splitlines()
        cseq = next((ln for ln in head if ln.lower().startswith("cseq:")), "")
        contact = next((ln for ln in head if ln.lower().startswith(("contact:", "m:"))), "")
        key = (first.strip(), cseq.strip())
        if key not in self.phone.seen_rx:  # once per message, not per transaction state
            self.phone.seen_rx.add(key)
            report(
                "rx",
                first=first.strip(),
                cseq=cseq.partition(":")[2].strip(),
                src=str(rdata.srcAddress),
                contact=contact.partition(":")[2].strip(),
            )
        if "INVITE" in cseq and first.startswith("SIP/2.0 ") and not first.startswith("SIP/2.0 1"):
            body = msg.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in msg else ""
            report("answer_sdp", status=first.strip(), sdp=body)


class CalleeAccount(pj.Account):  # type: ignore[misc]
    """Callee mode: takes the first INVITE (later ones get 486) and rings."""

    def __init__(self, phone: Phone) -> None:
        super().__init__()
        self.phone = phone

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        op = pj.CallOpParam()
        if self.phone.call is not None:
            busy = pj.Call(self, prm.callId)
            op.statusCode = 486
            busy.hangup(op)
            self.phone.others.append(busy)
            return
        call = PhoneCall(self.phone, self, prm.callId)
        msg = str(prm.rdata.wholeMsg)
        body = msg.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in msg else ""
        report(
            "offer",
            request=msg.split("\r\n", 1)[0],
            via=next((ln for ln in msg.splitlines() if ln.lower().startswith(("via:", "v:"))), ""),
            sdp=body,
        )
        self.phone.call = call
        self.phone.incoming_at = time.monotonic()
        op.statusCode = 180
        call.answer(op)


class Phone:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.answered_at: float | None = None
        self.seen_rx: set[tuple[str, str]] = set()
        self.finished = False
        self.hung_up = False
        self.player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        #: Callee mode: the incoming call, when it arrived, whether it was answered (200 sent).
        self.call: PhoneCall | None = None
        self.incoming_at: float | None = None
        self.answer_sent = False
        #: Calls besides the one under test (refused INVITEs, calls placed for a REFER).
        self.others: list[pj.Call] = []
        self.account: pj.Account | None = None
        #: The call's audio stream index, and its jitter-buffer counters as last polled (reported
        #: as a ``jbuf`` event when the call ends).
        self.media_index = -1
        self.jbuf: dict[str, int] = {}

    def run(self) -> None:
        a = self.args
        ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.logConfig.level = a.log_level
        cfg.logConfig.consoleLevel = a.log_level
        cfg.medConfig.clockRate = RATE
        cfg.medConfig.sndClockRate = RATE
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.noVad = True
        if a.worker_media:
            # The bridge worker's media settings (bridge/worker/endpoint.py): the phone then
            # hears an incoming stream through the same jitter buffer, PLC and resampler.
            from bridge.worker.endpoint import (
                BRIDGE_CLOCK_RATE,
                JB_INIT,
                JB_MAX_PRE,
                JB_MIN_PRE,
                RESAMPLE_QUALITY,
            )
            from roomline.wire import FRAME_MS

            if BRIDGE_CLOCK_RATE != RATE:
                raise SystemExit(f"--worker-media: bridge clock {BRIDGE_CLOCK_RATE} != {RATE}")
            cfg.medConfig.audioFramePtime = FRAME_MS
            cfg.medConfig.ptime = FRAME_MS
            cfg.medConfig.quality = RESAMPLE_QUALITY
            cfg.medConfig.jbInit = JB_INIT
            cfg.medConfig.jbMinPre = JB_MIN_PRE
            cfg.medConfig.jbMaxPre = JB_MAX_PRE
        if a.jb:  # what-if runs of the reference: another jitter-buffer setting
            init, min_pre, max_pre = (int(x) for x in a.jb.split(","))
            cfg.medConfig.jbInit, cfg.medConfig.jbMinPre, cfg.medConfig.jbMaxPre = (
                init,
                min_pre,
                max_pre,
            )
        ep.libInit(cfg)
        tcfg = pj.TransportConfig()
        tcfg.port = a.port
        tcfg.boundAddress = "127.0.0.1"
        if a.tls:
            tcfg.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
            tcfg.tlsConfig.verifyServer = False
            if a.tls_cert:  # callee over TLS: the certificate the caller (the front) checks
                tcfg.tlsConfig.certFile = a.tls_cert
                tcfg.tlsConfig.privKeyFile = a.tls_key
            kind = pj.PJSIP_TRANSPORT_TLS
        else:
            kind = pj.PJSIP_TRANSPORT_TCP if a.tcp else pj.PJSIP_TRANSPORT_UDP
        ep.transportCreate(kind, tcfg)
        ep.audDevManager().setNullDev()
        for ci in ep.codecEnum2():
            ep.codecSetPriority(ci.codecId, 0)
        ep.codecSetPriority(a.codec, 255)
        ep.libStart()

        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{a.caller}@127.0.0.1:{a.port}"
        acfg.mediaConfig.transportConfig.port = a.rtp_start
        acfg.mediaConfig.transportConfig.portRange = 40
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        if a.srtp != "off":
            acfg.mediaConfig.srtpUse = (
                pj.PJMEDIA_SRTP_MANDATORY if a.srtp == "mandatory" else pj.PJMEDIA_SRTP_OPTIONAL
            )
            acfg.mediaConfig.srtpSecureSignaling = 0
            acfg.mediaConfig.srtpOpt.keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)
        acc = CalleeAccount(self) if a.answer else pj.Account()
        acc.create(acfg, True)
        self.account = acc

        if a.tone:
            wav = os.path.join(a.workdir, f"phone_tone_{a.port}.wav")
            # One WAV covering the whole call: pjmedia's WAV player leaves a ~20 ms hole at
            # every loop point, which costs a 2 s window ~15 dB of SNR at the far end.
            seconds = min(a.duration, a.max_wait) + 5.0
            samples = tone(a.tone, seconds, RATE, a.amplitude)
            if a.tone_seconds:  # tone, then silence (a caller who speaks and pauses)
                samples[int(a.tone_seconds * RATE) :] = 0
            write_wav(wav, samples, RATE)
            self.player = pj.AudioMediaPlayer()
            self.player.createPlayer(wav, 0)
        if a.record:
            self.recorder = pj.AudioMediaRecorder()
            self.recorder.createRecorder(a.record)

        if a.answer:
            report("listening", port=a.port)
        else:
            self.call = PhoneCall(self, acc)
            dest = a.dest + (";transport=tls" if a.tls else ";transport=tcp" if a.tcp else "")
            self.call.makeCall(dest, pj.CallOpParam(True))
            report("dialing", dest=dest)

        dtmf_sent = hold_done = resume_done = False
        info_sent = 0  # SIP INFO digits sent so far
        jbuf_at = 0.0
        deadline = time.monotonic() + a.max_wait
        while not self.finished and time.monotonic() < deadline:
            ep.libHandleEvents(10)
            call = self.call
            if call is None:
                continue
            if (
                a.answer
                and not self.answer_sent
                and self.incoming_at is not None
                and time.monotonic() - self.incoming_at >= a.ring_ms / 1000
            ):
                self.answer_sent = True
                op = pj.CallOpParam()
                op.statusCode = 200
                try:
                    call.answer(op)
                    report("answered")
                except pj.Error as exc:
                    report("error", info=exc.info())
            if self.answered_at is None:
                continue
            if self.media_index >= 0 and time.monotonic() - jbuf_at >= JBUF_POLL_S:
                jbuf_at = time.monotonic()
                try:
                    j = call.getStreamStat(self.media_index).jbuf
                    self.jbuf = {
                        "lost": int(j.lost),
                        "discard": int(j.discard),
                        "empty": int(j.empty),
                        "prefetch": int(j.prefetch),
                        "avg_delay_ms": int(j.avgDelayMsec),
                        "max_delay_ms": int(j.maxDelayMsec),
                    }
                except pj.Error:
                    pass
            t = time.monotonic() - self.answered_at
            try:
                if a.dtmf and not dtmf_sent and t >= a.dtmf_at:
                    if a.dtmf_method == "info":
                        # One INFO per key press, as a phone sends them: pjsua would send all
                        # digits at once, and a multi-process proxy may then deliver two of
                        # them out of CSeq order (the later one is refused 500, RFC 3261 12.2.2).
                        n = min(len(a.dtmf), int((t - a.dtmf_at) / INFO_KEY_INTERVAL) + 1)
                        while info_sent < n:
                            dp = pj.CallSendDtmfParam()
                            dp.digits = a.dtmf[info_sent]
                            dp.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
                            call.sendDtmf(dp)
                            info_sent += 1
                        dtmf_sent = info_sent == len(a.dtmf)
                    else:
                        call.dialDtmf(a.dtmf)
                        dtmf_sent = True
                    if dtmf_sent:
                        report("dtmf_sent", digits=a.dtmf)
                if a.hold_at is not None and not hold_done and t >= a.hold_at:
                    hold_done = True
                    call.setHold(pj.CallOpParam(True))
                    report("hold", at=time.time())
                if a.resume_at is not None and not resume_done and t >= a.resume_at:
                    resume_done = True
                    rp = pj.CallOpParam(True)
                    rp.opt.flag = pj.PJSUA_CALL_UNHOLD
                    call.reinvite(rp)
                    report("resume", at=time.time())
                if t >= a.duration and not self.hung_up:
                    self.hung_up = True
                    call.hangup(pj.CallOpParam())
            except pj.Error as exc:
                report("error", info=exc.info())
        for _ in range(30):
            ep.libHandleEvents(10)
        report("done", finished=self.finished)
        # teardown order: drop pj objects before libDestroy (docs/background.md §3.4)
        self.call = None
        self.others.clear()
        self.player = self.recorder = None
        self.account = None
        acc.shutdown()
        del acc
        gc.collect()
        ep.libDestroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", default="", help="whom to call (not with --answer)")
    ap.add_argument("--answer", action="store_true", help="callee: answer one incoming call")
    ap.add_argument("--ring-ms", type=int, default=300, help="callee: 180 this long before 200")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rtp-start", type=int, default=40000)
    ap.add_argument("--caller", default="+15551234567")
    ap.add_argument("--codec", default="PCMU/8000")
    ap.add_argument("--tone", type=float, default=0.0)
    ap.add_argument("--amplitude", type=float, default=8000.0)
    ap.add_argument("--tone-seconds", type=float, default=0.0, help="then silence (0 = whole call)")
    ap.add_argument("--record", default="")
    ap.add_argument("--duration", type=float, default=6.0, help="hang up this long after answer")
    ap.add_argument("--max-wait", type=float, default=60.0)
    ap.add_argument("--dtmf", default="")
    ap.add_argument("--dtmf-at", type=float, default=2.0)
    ap.add_argument("--dtmf-method", choices=("rfc2833", "info"), default="rfc2833")
    ap.add_argument("--hold-at", type=float)
    ap.add_argument("--resume-at", type=float)
    ap.add_argument("--tcp", action="store_true")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--tls-cert", default="", help="with --tls: PEM certificate to listen with")
    ap.add_argument("--tls-key", default="", help="with --tls: its PEM private key")
    ap.add_argument("--srtp", choices=("off", "optional", "mandatory"), default="off")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--log-level", type=int, default=0)
    ap.add_argument(
        "--jb",
        default="",
        help="jitter buffer INIT,MIN_PRE,MAX_PRE in frames (after --worker-media)",
    )
    ap.add_argument(
        "--worker-media",
        action="store_true",
        help="the bridge worker's jitter buffer, frame time and resampler quality",
    )
    args = ap.parse_args()
    if bool(args.dest) == args.answer:
        ap.error("give either --dest (caller) or --answer (callee)")
    Phone(args).run()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
