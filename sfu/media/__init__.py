"""SFU media plane: RTP parse/rewrite (``rtp``), per-subscriber state (``forwarder``) and the one
module touching aiortc internals (``aiortc_adapter``; import it explicitly, it pulls in aiortc)."""
