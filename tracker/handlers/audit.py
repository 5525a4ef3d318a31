"""GET /api/audit/key, /checkpoints and /verify: what an auditor needs to check the chain."""

from __future__ import annotations

from ..integrity import Integrity
from . import params
from .base import APIHandler
from .errors import ApiError

DEFAULT_CHECKPOINTS = 100
MAX_CHECKPOINTS = 10_000


class AuditHandler(APIHandler):
    """An API handler with the integrity service."""

    def initialize(self, integrity: Integrity, max_body_size: int) -> None:  # type: ignore[override]
        super().initialize(max_body_size)
        self.integrity = integrity


class KeyHandler(AuditHandler):
    """GET /api/audit/key: the public key that checks every checkpoint's signature."""

    def get(self) -> None:
        key = self.integrity.public_key
        if key is None:
            raise ApiError(404, "no signing key: checkpoints are made with --db only")
        self.write_value({"public_key": key})


class CheckpointsHandler(AuditHandler):
    """GET /api/audit/checkpoints: the newest signed checkpoints, oldest first."""

    async def get(self) -> None:
        limit = params.limit(self.request.arguments, "limit", DEFAULT_CHECKPOINTS, MAX_CHECKPOINTS)
        self.write_value(await self.integrity.checkpoints(limit))


class VerifyHandler(AuditHandler):
    """GET /api/audit/verify: recompute the chain (from_id..to_id) and check checkpoints."""

    async def get(self) -> None:
        from_id, to_id = params.id_range(self.request.arguments)
        verdict = await self.integrity.verify(from_id, to_id)
        self.write_value(verdict.to_dict())


def routes(integrity: Integrity, max_body_size: int) -> list[tuple[str, type, dict]]:
    """The audit routes."""
    deps = {"integrity": integrity, "max_body_size": max_body_size}
    return [
        (r"/api/audit/key", KeyHandler, deps),
        (r"/api/audit/checkpoints", CheckpointsHandler, deps),
        (r"/api/audit/verify", VerifyHandler, deps),
    ]
