"""Audio and wire constants shared by every process that touches room audio or telephone keys.

The room leg of a SIP call and an agent's audio both carry 48 kHz mono Opus in 20 ms frames with
RTP payload type 111 (the value LiveKit clients negotiate for Opus), and the bridge hands 16-bit
PCM frames of the same size between pjsua and Python. DTMF keys use one alphabet everywhere: the
position of a key in :data:`DTMF_DIGITS` is its RFC 4733 telephone-event code.
"""

from __future__ import annotations

#: Sample rate of all PCM and Opus audio on the room side (Hz).
SAMPLE_RATE = 48000
#: Duration of one audio frame (ms): one Opus packet, one bridge tick.
FRAME_MS = 20
#: Samples in one mono frame.
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
#: Bytes in one mono frame of signed 16-bit PCM.
FRAME_BYTES = FRAME_SAMPLES * 2
#: RTP payload type of Opus on the local participant channel.
OPUS_PT = 111
#: RFC 8285 one-byte header-extension ID of RFC 6464 ``ssrc-audio-level`` on the local channel:
#: publishers on the channel (SIP callers) put their level there, the SFU's speaker detection
#: reads it.
AUDIO_LEVEL_EXT_ID = 1
#: RFC 8285 header-extension ID of the narrowband sidecar on the local channel: a G.711 caller's
#: 20 ms frame as 160 bytes of µ-law beside its Opus payload (two-byte header form, since one-byte
#: elements hold at most 16 bytes). Local participants only: the SFU writes its own extensions
#: towards WebRTC subscribers, so browsers never receive it (sfu/local/g711.py says why).
ULAW_EXT_ID = 2

#: DTMF keys in RFC 4733 event-code order (code 0..15): ``DTMF_DIGITS[code]`` is the key.
DTMF_DIGITS = "0123456789*#ABCD"
#: The key that ends a PIN entry; it is never part of the PIN.
PIN_TERMINATOR = "#"
#: Keys a PIN may contain: the digits and ``*`` of a phone keypad. A–D are valid DTMF but phones
#: rarely have them, and dispatch rules only accept PINs of these keys.
PIN_DIGITS = "0123456789*"
#: Longest PIN a caller may enter (LiveKit's check also stops at 16 digits).
MAX_PIN_DIGITS = 16
