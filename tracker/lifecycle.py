"""Lifecycle: the requests in flight and whether shutdown has begun, for a clean stop."""

from __future__ import annotations

import asyncio


class Lifecycle:
    """Counts API requests in flight, so shutdown can let them finish with real answers."""

    def __init__(self) -> None:
        self.stopping = False
        self._active: set[object] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """How many API requests have started and not finished."""
        return len(self._active)

    def begin(self, request: object) -> None:
        """A request started."""
        self._active.add(request)
        self._idle.clear()

    def end(self, request: object) -> None:
        """A request finished, or its client went away."""
        self._active.discard(request)
        if not self._active:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight (True), or `timeout` seconds (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
