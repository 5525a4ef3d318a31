"""make_app: the one place that joins every route to the service, hub and settings."""

from __future__ import annotations

import tornado.web

from .config import Settings
from .handlers import dashboard, live, metrics, openapi
from .handlers.base import NotFoundHandler
from .handlers.dashboard import STATIC_DIR
from .hub import LiveHub
from .service import ActivityService
from .store import SQLiteStore

DASHBOARD_PATH = "/api/ui-dashboard/metrics-dashboard-ui"


def make_app(service: ActivityService, hub: LiveHub, settings: Settings) -> tornado.web.Application:
    """Build the Tornado application; run.py and every test use this."""
    handlers = [
        *metrics.routes(service, settings.max_body_size, settings.max_batch),
        *live.routes(hub, settings.allowed_origins, settings.ws_max_clients),
        *dashboard.routes(),
        *openapi.routes(settings.max_body_size),
        # Last, not through the static_path setting, which puts three routes (/static/,
        # /favicon.ico, /robots.txt) before every API route: each request paid for them.
        (r"/static/(.*)", dashboard.StaticHandler, {"path": str(STATIC_DIR)}),
    ]
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        default_handler_args={"max_body_size": settings.max_body_size},
        api_token=settings.api_token,
        websocket_max_message_size=settings.ws_max_message_size,
        websocket_ping_interval=settings.ws_ping_interval,
        websocket_ping_timeout=settings.ws_ping_interval,
        serve_traceback=False,
    )


def build(settings: Settings) -> tuple[ActivityService, LiveHub, tornado.web.Application]:
    """Service, hub and application for the given settings; StoreError if --db is bad."""
    store = SQLiteStore(settings.db) if settings.db else None
    service = ActivityService(settings.capacity, store=store)
    hub = LiveHub(service, max_backlog=settings.ws_max_backlog)
    return service, hub, make_app(service, hub, settings)
