"""SFU media plane: RTP parse/rewrite (``rtp``), per-subscriber state (``forwarder``) and the one
package touching aiortc internals (``aiortc``; import it explicitly, it pulls in aiortc)."""
