"""Lifecycle: the requests in flight and whether shutdown has begun, for a clean stop."""

from __future__ import annotations

import asyncio
import contextlib


class Lifecycle:
    """Counts API requests in flight, so shutdown can let them finish with real answers."""

    def __init__(self) -> None:
        self.stopping = False
        self._active: set[object] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self, request: object) -> None:
        """A request started."""
        self._active.add(request)
        self._idle.clear()

    def end(self, request: object) -> None:
        """A request finished, or its client went away."""
        self._active.discard(request)
        if not self._active:
            self._idle.set()

    async def drained(self, timeout: float) -> None:
        """Wait until no request is in flight, or `timeout` seconds at most."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
