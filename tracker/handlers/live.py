"""The live WebSocket at /api/metrics/live: a thin connection over the hub."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import tornado.websocket
from tornado.iostream import StreamClosedError

from ..hub import LiveHub
from ..query import Query
from . import params
from .errors import JSON_TYPE, ApiError, error_body


class LiveHandler(tornado.websocket.WebSocketHandler):
    """Validates the upgrade, then lets the hub write prebuilt frames to the socket."""

    def initialize(self, hub: LiveHub, allowed_origins: tuple[str, ...] = ()) -> None:
        self.hub = hub
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.since: int | None = None
        self.store: str | None = None
        self.filters = Query()

    def _refuse(self, status: int, message: str, field: str | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(error_body(status, message, field))

    async def get(self, *args: Any, **kwargs: Any) -> None:
        # Refuse bad parameters with the JSON error before the upgrade, not after.
        args_ = self.request.query_arguments
        try:
            self.since = params.count(args_, "since", None, None)
            self.store = params.single(args_, "store")
            self.filters = Query(
                user_ids=params.filter_values(args_, "user_id"),
                actions=params.filter_values(args_, "action"),
            )
        except ApiError as exc:
            return self._refuse(exc.status_code, exc.message, exc.field)
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        if "*" in self.allowed_origins or origin.rstrip("/").lower() in self.allowed_origins:
            return True
        # Same origin: the Origin's host:port is the Host this request was sent to.
        return urlparse(origin).netloc.lower() == self.request.headers.get("Host", "").lower()

    def get_compression_options(self) -> None:
        # Uncompressed, so one prebuilt frame serves every client.
        return None

    def open(self, *args: Any, **kwargs: Any) -> None:
        predicate = self.filters.matches if self.filters.filtered else None
        self.hub.attach(self, since=self.since, store_id=self.store, predicate=predicate)

    def on_message(self, message: str | bytes) -> None:
        # The feed is one-way; anything a client sends is ignored.
        pass

    def on_close(self) -> None:
        self.hub.detach(self)

    def send_frame(self, frame: bytes) -> Any:
        """Write a ready frame straight to the stream: no per-client encode, no task."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return None
        stream = conn.stream  # type: ignore[attr-defined]
        try:
            pending = stream.write(frame)
        except StreamClosedError:
            return None
        return True if not stream.writing() else pending


def routes(hub: LiveHub, allowed_origins: tuple[str, ...]) -> list[tuple[str, type, dict]]:
    """The live feed's route."""
    return [
        (r"/api/metrics/live", LiveHandler, {"hub": hub, "allowed_origins": allowed_origins}),
    ]
