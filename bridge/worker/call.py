"""Per-call state machine (sans-I/O): ringing → active → hangup, with the reasons.

The worker feeds it what happened (the supervisor's decision, room joined, first room audio, SIP
state, RTP counters, the clock) and executes the returned actions against pjsua2 and the local
channel. Policies (LiveKit SIP's, described in docs/bridge.md "Call life cycle"):

* ``ringing=False`` ("immediate"): 200 OK as soon as the room JoinResponse arrives.
* ``ringing=True`` ("wait_for_audio"): 180, keep ringing until the first remote audio arrives (or
  another SIP participant is in the room), bounded by ``ringing_timeout`` → 486.
* Media timeout: no RTP from the phone for ``media_timeout`` s (``media_timeout_initial`` before the
  first packet) → BYE. Suspended while the phone holds the call (it may legitimately stop RTP).
* ``max_call_duration`` → BYE. Room leave / channel loss → BYE, or 486 before the answer.
* SRTP: the trunk's ``media_encryption`` against the INVITE's offer (bridge/worker/sdes.py); a
  mismatch → 488 Not Acceptable Here before any answer.
* PIN (``collect_pin``, a dispatch rule with a ``pin``): answer at once, play the prompt, collect
  DTMF digits until ``#`` (or :data:`PIN_DIGIT_TIMEOUT_S` after the last digit, or
  :data:`PIN_TOTAL_TIMEOUT_S` in all), then ask the supervisor (:class:`SendPin`). Its 200 joins
  the room like an accepted call (already answered, so no second 200); a rejection → BYE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from bridge.control import InviteResult, PinResult
from bridge.worker.sdes import MediaOffer, refusal
from roomline.wire import MAX_PIN_DIGITS, PIN_DIGITS, PIN_TERMINATOR

#: LiveKit-like PIN entry limits: a pause this long after a digit ends the entry (as if ``#``)...
PIN_DIGIT_TIMEOUT_S = 8.0
#: ... and the whole entry, digits or not, is bounded so a silent caller cannot hold a slot.
PIN_TOTAL_TIMEOUT_S = 30.0


class Phase(enum.Enum):
    WAITING = "waiting"  # INVITE received, asking the supervisor
    PIN = "pin"  # answered, collecting the PIN digits
    PIN_CHECK = "pin_check"  # PIN sent to the supervisor, waiting for its answer
    RINGING = "ringing"  # accepted, joining the room / waiting for audio
    ACTIVE = "active"  # 200 OK sent
    ENDED = "ended"


@dataclass(frozen=True)
class Answer:
    """Send a provisional (180) or final 200 response."""

    status: int


@dataclass(frozen=True)
class Reject:
    """Final non-2xx response before the answer (silently if ``drop``).

    ``cause`` is empty when the supervisor decided the rejection (it has counted it already);
    for a rejection the worker decides itself it is a short label for the metrics
    (``encryption-required``, ``ringing-timeout``, ``room-left``, ``no-decision`` ...).
    """

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    cause: str = ""


@dataclass(frozen=True)
class Bye:
    reason: str


@dataclass(frozen=True)
class JoinRoom:
    pass


@dataclass(frozen=True)
class LeaveRoom:
    reason: str


@dataclass(frozen=True)
class Status:
    """``sip.callStatus`` changed (ringing / active / hangup)."""

    status: str
    reason: str = ""


@dataclass(frozen=True)
class PlayPrompt:
    """Play the "enter your PIN" prompt to the phone."""


@dataclass(frozen=True)
class SendPin:
    """Ask the supervisor to check these digits (without the final ``#``)."""

    digits: str


Action = Answer | Reject | Bye | JoinRoom | LeaveRoom | Status | PlayPrompt | SendPin


class CallMachine:
    """State of one inbound call; every method returns the actions to carry out, in order."""

    def __init__(self, call_id: str, now: float, offer: MediaOffer | None = None) -> None:
        self.call_id = call_id
        #: The INVITE's SDP offer, as far as SRTP goes (the trunk's ``media_encryption`` is
        #: checked against it before answering).
        self.offer = offer if offer is not None else MediaOffer()
        self.phase = Phase.WAITING
        self.created = now
        self.decision: InviteResult | None = None
        self.ringing_since = now
        self.answered_at: float | None = None
        # Start of the media-timeout window: the answer, or the room join after a PIN entry.
        self.media_since = now
        self.pin_digits = ""
        self.pin_started = now
        self.pin_last_digit: float | None = None
        self.last_rx_at: float | None = None
        self.rx_packets = 0
        self.held = False
        self.in_room = False
        self.end_reason = ""
        self.end_status = 0

    # --- inputs -------------------------------------------------------------------------------
    def on_decision(self, res: InviteResult, now: float) -> list[Action]:
        if self.phase is not Phase.WAITING:
            return []
        self.decision = res
        if res.status != 200 or res.drop:
            reason = res.reason or "rejected"
            return self._end_before_answer(res.status, reason, res.headers, drop=res.drop)
        refused = refusal(res.media_encryption, self.offer)
        if refused is not None:
            # LiveKit answers a media (crypto) mismatch with 488 before anything else is sent.
            return self._end_before_answer(488, f"Not Acceptable Here ({refused})", cause=refused)
        if res.collect_pin:
            self.phase = Phase.PIN
            self.pin_started = now
            self.answered_at = now
            return [Answer(200), PlayPrompt()]
        self.phase = Phase.RINGING
        self.ringing_since = now
        acts: list[Action] = [JoinRoom()]
        if res.ringing:
            acts.insert(0, Answer(180))
        return acts

    def on_no_decision(self) -> list[Action]:
        """The supervisor did not answer the INVITE in time: 503, counted as the worker's own."""
        if self.phase is not Phase.WAITING:
            return []
        return self._end_before_answer(503, "Service Unavailable", cause="no-decision")

    def on_pin_digit(self, digit: str, now: float) -> list[Action]:
        """A DTMF digit from the phone while the PIN is being entered."""
        if self.phase is not Phase.PIN:
            return []
        digit = digit.upper()
        if digit == PIN_TERMINATOR:
            return self._send_pin()
        if digit not in PIN_DIGITS:
            return []
        self.pin_digits += digit
        self.pin_last_digit = now
        if len(self.pin_digits) > MAX_PIN_DIGITS:
            # Longer than any PIN can be: stop listening; the check rejects it.
            self.pin_digits = self.pin_digits[:MAX_PIN_DIGITS]
            return self._send_pin()
        return []

    def on_pin_result(self, res: PinResult, now: float) -> list[Action]:
        """The supervisor checked the PIN: join the room, or hang up."""
        if self.phase is not Phase.PIN_CHECK:
            return []
        if res.status != 200:
            return self._bye(res.reason or "wrong-pin")
        assert self.decision is not None
        self.decision = replace(
            self.decision,
            collect_pin=False,
            ringing=False,
            token=res.token,
            room=res.room,
            identity=res.identity,
            attributes=dict(res.attributes),
            socket=res.socket,
            ringing_timeout=res.ringing_timeout,
            max_call_duration=res.max_call_duration,
            media_timeout=res.media_timeout,
            media_timeout_initial=res.media_timeout_initial,
        )
        self.phase = Phase.RINGING
        self.ringing_since = now
        return [JoinRoom()]

    def on_room_joined(self, now: float) -> list[Action]:
        if self.phase is not Phase.RINGING:
            return []
        self.in_room = True
        assert self.decision is not None
        if self.answered_at is not None:  # answered for the PIN prompt already
            self.phase = Phase.ACTIVE
            self.media_since = now
            return [Status("active")]
        if not self.decision.ringing:
            return self._answer(now)
        return [Status("ringing")]

    def on_room_audio(self, now: float) -> list[Action]:
        """A remote audio track delivered media (or another SIP participant is present)."""
        if self.phase is Phase.RINGING and self.in_room:
            return self._answer(now)
        return []

    def on_room_left(self, reason: str) -> list[Action]:
        """The room side ended the participant (leave, ERROR frame, channel closed)."""
        self.in_room = False
        if self.phase is Phase.ACTIVE:
            self.phase = Phase.ENDED
            self.end_reason = reason
            return [Bye(reason), Status("hangup", reason)]
        if self.phase in (Phase.WAITING, Phase.RINGING, Phase.PIN, Phase.PIN_CHECK):
            return self._end_early(reason)
        return []

    def on_sip_disconnected(self, status: int, reason: str) -> list[Action]:
        """pjsua reports DISCONNECTED (BYE, CANCEL, or our own hangup completing)."""
        if self.phase is Phase.ENDED:
            return []
        self.phase = Phase.ENDED
        self.end_status = status
        self.end_reason = reason or "caller hung up"
        acts: list[Action] = [Status("hangup", self.end_reason)]
        if self.in_room:
            self.in_room = False
            acts.append(LeaveRoom(self.end_reason))
        return acts

    def on_hold(self, held: bool, now: float) -> None:
        self.held = held
        if not held:
            self.last_rx_at = now  # restart the media timeout window after resume

    def on_rx_packets(self, total: int, now: float) -> None:
        """Cumulative RTP packets received from the phone (pjsua stream stats)."""
        if total > self.rx_packets:
            self.rx_packets = total
            self.last_rx_at = now

    def tick(self, now: float) -> list[Action]:
        res = self.decision
        if res is None or self.phase is Phase.ENDED:
            return []
        if self.phase is Phase.PIN:
            last = self.pin_last_digit
            if last is not None and now - last >= PIN_DIGIT_TIMEOUT_S:
                return self._send_pin()
            if now - self.pin_started >= PIN_TOTAL_TIMEOUT_S:
                return self._send_pin() if self.pin_digits else self._bye("pin-timeout")
            return []
        if self.phase is Phase.RINGING:
            if now - self.ringing_since >= res.ringing_timeout:
                return self._end_early("ringing-timeout")
            return []
        if self.phase is not Phase.ACTIVE:
            return []
        assert self.answered_at is not None
        if now - self.answered_at >= res.max_call_duration:
            return self._bye("max-call-duration")
        if not self.held:
            if self.last_rx_at is None:
                if now - self.media_since >= res.media_timeout_initial:
                    return self._bye("media-timeout")
            elif now - self.last_rx_at >= res.media_timeout:
                return self._bye("media-timeout")
        return []

    # --- helpers ------------------------------------------------------------------------------
    def _answer(self, now: float) -> list[Action]:
        self.phase = Phase.ACTIVE
        self.answered_at = now
        self.media_since = now
        return [Answer(200), Status("active")]

    def _send_pin(self) -> list[Action]:
        self.phase = Phase.PIN_CHECK
        return [SendPin(self.pin_digits)]

    def _end_early(self, reason: str) -> list[Action]:
        """End a call that is not ACTIVE: 486 if never answered, BYE once answered (PIN)."""
        if self.answered_at is not None:
            return self._bye(reason)
        cause = reason if reason == "ringing-timeout" else "room-left"
        return self._end_before_answer(486, reason, cause=cause)

    def _bye(self, reason: str) -> list[Action]:
        self.phase = Phase.ENDED
        self.end_reason = reason
        acts: list[Action] = [Bye(reason), Status("hangup", reason)]
        if self.in_room:
            self.in_room = False
            acts.append(LeaveRoom(reason))
        return acts

    def _end_before_answer(
        self,
        status: int,
        reason: str,
        headers: dict[str, str] | None = None,
        drop: bool = False,
        cause: str = "",
    ) -> list[Action]:
        self.phase = Phase.ENDED
        self.end_status = status
        self.end_reason = reason
        acts: list[Action] = [Reject(status, reason, dict(headers or {}), drop, cause)]
        if self.in_room:
            self.in_room = False
            acts.append(LeaveRoom(reason))
        return acts
