"""build and make_app: the one place that joins every part and every route."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import tornado.web

from .alerts.monitor import Monitor
from .alerts.rules import Rule, RuleError, load_rules_file
from .audit import KeyFileError, Signer
from .config import Settings
from .handlers import alerts, audit, dashboard, health, live, metrics, openapi, prometheus
from .handlers.base import NotFoundHandler
from .handlers.dashboard import STATIC_DIR
from .hub import CLOSE_STORE_CHANGED, LiveHub
from .integrity import Integrity
from .lifecycle import Lifecycle
from .metrics import Metrics
from .service import ActivityService
from .store import SQLiteStore, StoreError
from .streams.leader import Leader, SharedMonitor
from .streams.redis import RedisLog
from .streams.redis_service import RedisService

DASHBOARD_PATH = "/api/ui-dashboard/metrics-dashboard-ui"
log = logging.getLogger(__name__)


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
    # With --redis: the process that leads archives, runs the rules and sends webhooks.
    leader: Leader | None = None
    app: tornado.web.Application = field(init=False)

    async def start(self) -> None:
        """Start the background work (on the IOLoop): following Redis, upkeep, webhooks."""
        if self.leader is not None:
            await self.leader.service.start()
            await self.leader.monitor.start()
            self.leader.start()  # retention and checkpoints start when it leads
        else:
            self.upkeep(True)
        if self.monitor.dispatcher is not None:
            self.monitor.dispatcher.start()

    def upkeep(self, on: bool) -> None:
        """Retention and checkpoints of the --db file: in one process at a time."""
        if on and not self.lifecycle.stopping:
            self.service.start_retention(self.settings.retention_days, self.settings.max_rows)
            self.integrity.start()
        else:
            self.service.stop_retention()
            self.integrity.stop()

    def stop_upkeep(self) -> None:
        """Stop retention (between two steps) and the periodic checkpoints."""
        self.upkeep(False)

    async def stop_work(self) -> None:
        """Stop leading and sending webhooks (pending deliveries are kept with --db)."""
        if self.leader is not None:
            await self.leader.stop()
        if self.monitor.dispatcher is not None:
            await self.monitor.dispatcher.stop()

    async def close(self, timeout: float) -> None:
        """Commit what is queued, sign the head it leaves, close the file and Redis."""
        try:
            await asyncio.wait_for(self.integrity.checkpoint(), timeout)
        except TimeoutError:
            log.warning("stopping without a last checkpoint: the file did not answer in time")
        if isinstance(self.service, RedisService):
            await self.service.stop()
        await asyncio.to_thread(self.service.close, timeout)


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
    service: ActivityService
    if settings.redis:
        shared = RedisLog(settings.redis, settings.redis_prefix, capacity=settings.capacity)
        service = RedisService(shared, settings.capacity, archive=store)
    else:
        service = ActivityService(
            settings.capacity, store=store, commit_timeout=settings.commit_timeout
        )
    metrics = Metrics(service)
    if store is not None:
        store.observe_commit = metrics.commit_seconds.observe
    hub = LiveHub(
        service,
        max_backlog=settings.ws_max_backlog,
        max_backlog_bytes=settings.ws_max_backlog_bytes,
    )
    metrics.live_clients.set_function(lambda: hub.client_count)
    if settings.webhook_url and not settings.webhook_secret:
        raise StartError("--webhook-url needs --webhook-secret (whsec_ and base64)")
    hooks = {"webhook_urls": settings.webhook_url, "webhook_secret": settings.webhook_secret}
    try:
        # After the hub: each alert reaches live clients after the activity that fired it.
        if isinstance(service, RedisService):
            monitor: Monitor = SharedMonitor(service, hub, metrics, rules=rules, **hooks)
        else:
            monitor = Monitor(service, hub, metrics, rules=rules, **hooks)
    except ValueError as exc:
        raise StartError(str(exc)) from None
    integrity = Integrity(service, signer, settings.checkpoint_interval)
    tracker = Tracker(settings, service, hub, Lifecycle(), integrity, metrics, monitor)
    if isinstance(service, RedisService) and isinstance(monitor, SharedMonitor):
        service.on_reset = lambda: hub.close_all(CLOSE_STORE_CHANGED, "store changed")
        tracker.leader = Leader(service, monitor, on_lead=tracker.upkeep)
    tracker.app = make_app(tracker)
    return tracker


def _rules(settings: Settings) -> list[Rule]:
    try:
        return load_rules_file(settings.rules) if settings.rules else []
    except RuleError as exc:
        raise StartError(exc.message) from None
