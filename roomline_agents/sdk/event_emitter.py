"""``on``/``once``/``off``/``emit``, like ``livekit.rtc.EventEmitter``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("roomline_agents.sdk")


class EventEmitter:
    """Named events with any number of handlers; a failing handler is logged, not propagated."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[..., Any]]] = {}

    def on(self, event: str, callback: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """Register ``callback`` for ``event``; without one, return a decorator that does."""
        if callback is not None:
            self._handlers.setdefault(event, []).append(callback)
            return callback

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._handlers.setdefault(event, []).append(fn)
            return fn

        return register

    def once(self, event: str, callback: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """Like :meth:`on`, for the next ``event`` only."""

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            def once_fn(*args: Any) -> Any:
                self.off(event, once_fn)
                return fn(*args)

            self.on(event, once_fn)
            return fn

        return wrap(callback) if callback is not None else wrap

    def off(self, event: str, callback: Callable[..., Any]) -> None:
        handlers = self._handlers.get(event, [])
        if callback in handlers:
            handlers.remove(callback)

    def emit(self, event: str, *args: Any) -> None:
        for fn in list(self._handlers.get(event, [])):
            try:
                result = fn(*args)
                if asyncio.iscoroutine(result):
                    # livekit.rtc refuses async handlers; running them is friendlier and harmless.
                    asyncio.get_running_loop().create_task(result)
            except Exception:
                log.exception("event handler for %r failed", event)
