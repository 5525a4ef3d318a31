"""build and make_app: the one place that joins every part and every route."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import tornado.web

from .alerts.monitor import Monitor
from .alerts.rules import Rule, RuleError, load_rules_file
from .alerts.webhooks import WebhookDispatcher
from .audit import KeyFileError, Signer
from .config import Settings
from .handlers import alerts, audit, dashboard, health, live, metrics, openapi, prometheus
from .handlers.base import NotFoundHandler
from .handlers.dashboard import STATIC_DIR
from .hub import LiveHub
from .integrity import Integrity
from .lifecycle import Lifecycle
from .metrics import Metrics
from .service import ActivityService
from .store import SQLiteStore, StoreError

DASHBOARD_PATH = "/api/ui-dashboard/metrics-dashboard-ui"


class StartError(Exception):
    """A setting that cannot be used; the message is one line for the operator."""


@dataclass
class Tracker:
    """Every part of one tracker process, made from its settings."""

    settings: Settings
    service: ActivityService
    hub: LiveHub
    lifecycle: Lifecycle
    integrity: Integrity
    metrics: Metrics
    monitor: Monitor
    app: tornado.web.Application = field(init=False)

    def start(self) -> None:
        """Start the background work: retention, checkpoints, webhooks; on the IOLoop."""
        self.service.start_retention(self.settings.retention_days, self.settings.max_rows)
        self.integrity.start()
        if self.monitor.dispatcher is not None:
            self.monitor.dispatcher.start()

    async def stop_background(self) -> None:
        """Stop retention, periodic checkpoints and webhook sending (pending ones are kept)."""
        self.service.stop_retention()
        self.integrity.stop()
        if self.monitor.dispatcher is not None:
            await self.monitor.dispatcher.stop()


def make_app(tracker: Tracker) -> tornado.web.Application:
    """The Tornado application: every route, with the parts its handlers need."""
    settings, service = tracker.settings, tracker.service
    handlers = [
        *metrics.routes(service, settings.max_body_size, settings.max_batch),
        *live.routes(tracker.hub, settings.allowed_origins, settings.ws_max_clients),
        *alerts.routes(tracker.monitor, settings.max_body_size),
        *audit.routes(tracker.integrity, settings.max_body_size),
        *prometheus.routes(tracker.metrics, settings.max_body_size),
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
    """Every part for the given settings; StartError (one line) when one cannot be made."""
    rules = _rules(settings)
    store = signer = None
    if settings.db:
        try:
            store = SQLiteStore(settings.db)
            signer = Signer.load_or_create(settings.signing_key or settings.db + ".signing-key.pem")
        except (StoreError, KeyFileError) as exc:
            if store is not None:
                store.close()
            raise StartError(str(exc)) from None
    service = ActivityService(
        settings.capacity, store=store, commit_timeout=settings.commit_timeout
    )
    metrics = Metrics()
    service.subscribe(metrics.count_recorded)
    if store is not None:
        store.observe_commit = metrics.commit_seconds.observe
    hub = LiveHub(
        service,
        max_backlog=settings.ws_max_backlog,
        max_backlog_bytes=settings.ws_max_backlog_bytes,
    )
    metrics.live_clients.set_function(lambda: hub.client_count)
    # After the hub: each alert reaches live clients after the activity that fired it.
    monitor = Monitor(
        service, hub, metrics, rules=rules, dispatcher=_dispatcher(settings, store, metrics)
    )
    integrity = Integrity(service, signer, settings.checkpoint_interval)
    tracker = Tracker(settings, service, hub, Lifecycle(), integrity, metrics, monitor)
    tracker.app = make_app(tracker)
    return tracker


def _rules(settings: Settings) -> list[Rule]:
    try:
        return load_rules_file(settings.rules) if settings.rules else []
    except RuleError as exc:
        raise StartError(exc.message) from None


def _dispatcher(
    settings: Settings, store: SQLiteStore | None, metrics: Metrics
) -> WebhookDispatcher | None:
    """Signed webhook delivery when --webhook-url is given; pending ones kept with --db."""
    if not settings.webhook_url:
        return None
    if not settings.webhook_secret:
        raise StartError("--webhook-url needs --webhook-secret (whsec_ and base64)")

    def persist(delivery: Any) -> None:
        if store is not None:
            store.save_delivery(dataclasses.asdict(delivery))

    try:
        return WebhookDispatcher(
            settings.webhook_url,
            settings.webhook_secret,
            persist=persist,
            on_outcome=lambda outcome: metrics.deliveries.labels(outcome).inc(),
        )
    except ValueError as exc:
        raise StartError(str(exc)) from None
