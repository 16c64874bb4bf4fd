"""roomline SFU: room model, LiveKit-compatible signalling and RTP forwarding."""
