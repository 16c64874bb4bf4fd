"""The only package that touches aiortc/aioice private internals (pinned: aiortc 1.16.0, aioice 0.13).

Modules are named after the aiortc modules they reach into:

* :mod:`.ice` — restrict aioice host candidates to configured addresses and take UDP ports from a
  configured range (a process-wide patch, installed by an explicit :func:`configure_ice` call);
* :mod:`.parameters` — which codec and payload type a subscriber m-line uses for a publisher's track;
* :mod:`.receiver` — :class:`PublishedTrackTap`, a publisher's RTP undecoded, with RTCP feedback
  towards the publisher still working;
* :mod:`.sender` — :class:`SubscriberSender`, forwarded RTP sent through a parked aiortc sender with
  SRTP, NACKs served from a raw-bytes history, PLI/FIR relayed to the publisher.

Each module's docstring lists the private names it uses; tests/test_media_loopback.py exercises all
of them against real aiortc peers, so an aiortc upgrade that moves one fails there.
"""

from sfu.media.aiortc.ice import IceSettings, configure_ice, ice_settings, reset_ice
from sfu.media.aiortc.receiver import OnRtp, PublishedTrackTap
from sfu.media.aiortc.sender import (
    SubscriberSender,
    add_subscriber_track,
    make_idle_track,
    set_stream_id,
)

__all__ = [
    "IceSettings",
    "OnRtp",
    "PublishedTrackTap",
    "SubscriberSender",
    "add_subscriber_track",
    "configure_ice",
    "ice_settings",
    "make_idle_track",
    "reset_ice",
    "set_stream_id",
]
