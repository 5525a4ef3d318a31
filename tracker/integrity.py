"""Integrity: signed checkpoints of the audit chain's head, and verification on demand."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import audit
from .service import ActivityService
from .store import WriteFailed

log = logging.getLogger(__name__)


class Integrity:
    """Signs the chain's head every `interval` seconds (with --db) and verifies the chain."""

    def __init__(
        self, service: ActivityService, signer: audit.Signer | None, interval: float = 60.0
    ) -> None:
        self.service = service
        # app.build makes a signer only with a store; checkpoint() still checks the store.
        self.signer = signer
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        # One verification at a time: each reads the whole chain.
        self._verifying = asyncio.Lock()

    @property
    def public_key(self) -> str | None:
        """The base64 of the raw Ed25519 public key that checks the checkpoints."""
        return self.signer.public_key_b64 if self.signer is not None else None

    def start(self) -> None:
        """Checkpoint every `interval` seconds while there is something new; on the IOLoop."""
        if self.signer is not None:
            self._task = asyncio.ensure_future(self._every_interval())

    def stop(self) -> None:
        """Stop the periodic checkpoints (a last one is taken with checkpoint())."""
        if self._task is not None:
            self._task.cancel()

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.checkpoint()

    async def checkpoint(self) -> dict[str, Any] | None:
        """Sign the head now if it moved; the new checkpoint, or None."""
        store = self.service.store
        if self.signer is None or store is None:
            return None
        try:
            return await asyncio.wrap_future(store.add_checkpoint(self.signer.sign_checkpoint))
        except WriteFailed as exc:
            log.warning("checkpoint not written: %s (next time)", exc)
            return None

    async def checkpoints(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` checkpoints, oldest first (none in memory)."""
        store = self.service.store
        if store is None:
            return []
        return await asyncio.wrap_future(store.checkpoints(limit))

    async def verify(self, from_id: int | None, to_id: int | None) -> audit.Verdict:
        """Check the chain (and, with --db, every checkpoint's signature) off the IOLoop."""
        async with self._verifying:
            store = self.service.store
            if store is not None:
                future = store.verify(self.public_key, from_id, to_id)
                return await asyncio.wrap_future(future)
            rows, anchor = self.service.chain_rows(from_id, to_id)
            return await asyncio.to_thread(audit.verify_chain, rows, anchor)
