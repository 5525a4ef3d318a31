"""build and make_app: the one place that joins every part and every route."""

from __future__ import annotations

from dataclasses import dataclass

import tornado.web

from .config import Settings
from .handlers import dashboard, health, live, metrics, openapi
from .handlers.base import NotFoundHandler
from .handlers.dashboard import STATIC_DIR
from .hub import LiveHub
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
    app: tornado.web.Application


def make_app(
    service: ActivityService,
    hub: LiveHub,
    settings: Settings,
    lifecycle: Lifecycle | None = None,
) -> tornado.web.Application:
    """Build the Tornado application; run.py and every test use this."""
    lifecycle = lifecycle or Lifecycle()
    handlers = [
        *metrics.routes(service, settings.max_body_size, settings.max_batch),
        *live.routes(hub, settings.allowed_origins, settings.ws_max_clients),
        *health.routes(service, lifecycle),
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
        lifecycle=lifecycle,
        websocket_max_message_size=settings.ws_max_message_size,
        websocket_ping_interval=settings.ws_ping_interval,
        websocket_ping_timeout=settings.ws_ping_interval,
        serve_traceback=False,
    )


def build(settings: Settings) -> Tracker:
    """Every part for the given settings; StoreError if --db is bad."""
    store = SQLiteStore(settings.db) if settings.db else None
    service = ActivityService(
        settings.capacity, store=store, commit_timeout=settings.commit_timeout
    )
    hub = LiveHub(
        service,
        max_backlog=settings.ws_max_backlog,
        max_backlog_bytes=settings.ws_max_backlog_bytes,
    )
    lifecycle = Lifecycle()
    return Tracker(settings, service, hub, lifecycle, make_app(service, hub, settings, lifecycle))
