"""GET /healthz and /readyz: liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import json

from ..lifecycle import Lifecycle
from ..service import ActivityService
from .errors import JSON_TYPE, JSONErrors


class HealthHandler(JSONErrors):
    """GET /healthz: 200 while the process can answer; no token (probes have none)."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        self.set_header("Cache-Control", "no-store")

    def get(self) -> None:
        self.finish(b'{"status":"ok"}')


class ReadyHandler(HealthHandler):
    """GET /readyz: 200 while every dependency takes writes, else 503 with the checks."""

    def initialize(self, service: ActivityService, lifecycle: Lifecycle) -> None:
        self.service = service
        self.lifecycle = lifecycle

    def get(self) -> None:
        checks = self.service.health()
        if self.lifecycle.stopping:
            checks["server"] = {"ok": False, "error": "shutting down"}
        ready = all(check["ok"] for check in checks.values())
        self.set_status(200 if ready else 503)
        body = {"status": "ready" if ready else "unavailable", "checks": checks}
        self.finish(json.dumps(body).encode())


def routes(service: ActivityService, lifecycle: Lifecycle) -> list[tuple[str, type, dict]]:
    """The two probes' routes."""
    return [
        (r"/healthz", HealthHandler, {}),
        (r"/readyz", ReadyHandler, {"service": service, "lifecycle": lifecycle}),
    ]
