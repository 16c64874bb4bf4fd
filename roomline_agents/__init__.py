"""roomline agents: LiveKit-compatible agent workers (``service``: main-process dispatch)."""
