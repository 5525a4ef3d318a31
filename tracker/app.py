"""build and make_app: the one place that joins every part and every route."""

from __future__ import annotations

from dataclasses import dataclass, field

import tornado.web

from .audit import KeyFileError, Signer
from .config import Settings
from .handlers import audit, dashboard, health, live, metrics, openapi
from .handlers.base import NotFoundHandler
from .handlers.dashboard import STATIC_DIR
from .hub import LiveHub
from .integrity import Integrity
from .lifecycle import Lifecycle
from .service import ActivityService
from .store import SQLiteStore

DASHBOARD_PATH = "/api/ui-dashboard/metrics-dashboard-ui"


@dataclass
class Tracker:
    """Every part of one tracker process, made from its settings."""

    settings: Settings
    service: ActivityService
    hub: LiveHub
    lifecycle: Lifecycle
    integrity: Integrity
    app: tornado.web.Application = field(init=False)


def make_app(tracker: Tracker) -> tornado.web.Application:
    """The Tornado application: every route, with the parts its handlers need."""
    settings, service = tracker.settings, tracker.service
    handlers = [
        *metrics.routes(service, settings.max_body_size, settings.max_batch),
        *live.routes(tracker.hub, settings.allowed_origins, settings.ws_max_clients),
        *audit.routes(tracker.integrity, settings.max_body_size),
        *health.routes(service, tracker.lifecycle),
        *dashboard.routes(),
        *openapi.routes(settings.max_body_size),
        # Last, not through the static_path setting, which puts three routes (/static/,
        # /favicon.ico, /robots.txt) before every API route.
        (r"/static/(.*)", dashboard.StaticHandler, {"path": str(STATIC_DIR)}),
    ]
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        default_handler_args={"max_body_size": settings.max_body_size},
        api_token=settings.api_token,
        lifecycle=tracker.lifecycle,
        websocket_max_message_size=settings.ws_max_message_size,
        websocket_ping_interval=settings.ws_ping_interval,
        websocket_ping_timeout=settings.ws_ping_interval,
        serve_traceback=False,
    )


def build(settings: Settings) -> Tracker:
    """Every part for the given settings; StoreError or KeyFileError when one cannot be made."""
    store = signer = None
    if settings.db:
        store = SQLiteStore(settings.db)
        try:
            signer = Signer.load_or_create(settings.signing_key or settings.db + ".signing-key.pem")
        except KeyFileError:
            store.close()
            raise
    service = ActivityService(
        settings.capacity, store=store, commit_timeout=settings.commit_timeout
    )
    hub = LiveHub(
        service,
        max_backlog=settings.ws_max_backlog,
        max_backlog_bytes=settings.ws_max_backlog_bytes,
    )
    integrity = Integrity(service, signer, settings.checkpoint_interval)
    tracker = Tracker(settings, service, hub, Lifecycle(), integrity)
    tracker.app = make_app(tracker)
    return tracker
