"""How a WebRTC session wires media: publisher tap → :class:`TrackRelay` → subscriber senders.

The two functions are the whole per-packet path of a forwarded WebRTC packet, and the only place
that connects the aiortc adapter to the relay; ``bench/bench_forwarding.py`` calls them too, so the
benchmark measures what the session runs.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection

from sfu.media.aiortc import PublishedTrackTap, SubscriberSender, add_subscriber_track
from sfu.relay import TrackRelay

__all__ = ["relay_published_track", "subscribe_to_relay"]


def relay_published_track(tap: PublishedTrackTap, track_sid: str, publisher_sid: str) -> TrackRelay:
    """Feed a publisher track's packets (``tap``, on its negotiated transceiver) to a new relay.

    Keyframe requests of the relay's subscribers become throttled PLIs towards the publisher.
    """
    relay = TrackRelay(track_sid, publisher_sid, tap.source, tap.request_keyframe)
    tap.on_rtp = relay.on_rtp
    return relay


def subscribe_to_relay(
    pc: RTCPeerConnection, relay: TrackRelay, subscriber_sid: str
) -> SubscriberSender:
    """Add a sendonly m-line for ``relay``'s track to a subscriber PC (renegotiate afterwards).

    The msid is ``<publisher sid>|<track sid> <track sid>``, which LiveKit clients parse to
    attribute the track.
    """
    sender = add_subscriber_track(
        pc,
        relay.source,
        track_id=relay.track_sid,
        stream_id=f"{relay.publisher_sid}|{relay.track_sid}",
        on_keyframe_request=relay.request_keyframe,
    )
    relay.add_sink(subscriber_sid, sender)
    return sender
