"""Main-process side of the LiveKit agent-worker protocol: ``/agent`` WebSocket, worker registry."""
