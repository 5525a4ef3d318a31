"""Monitor: runs the rules over every published activity; keeps, announces and sends alerts."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from tornado.ioloop import IOLoop

from ..activity import Activity
from ..hub import LiveHub, control_message
from ..metrics import Metrics
from ..query import last
from ..service import ActivityService
from .engine import AlertEngine
from .rules import Rule, parse_rule
from .webhooks import Delivery, WebhookDispatcher

MAX_RULES = 1000  # rule names are metric labels: a bound keeps them few
MAX_ALERTS = 1000  # alerts kept in memory for /api/alerts (the --db file keeps them all)


class TooManyRules(Exception):
    """A new rule past MAX_RULES."""


class Monitor:
    """Evaluates rules as activities are published, in id order, on whatever thread."""

    # Subscribe after the hub: an alert then reaches live clients after its activity.

    def __init__(
        self,
        service: ActivityService,
        hub: LiveHub,
        metrics: Metrics,
        *,
        rules: Iterable[Rule] = (),
        webhook_urls: Sequence[str] = (),
        webhook_secret: str = "",
    ) -> None:
        self.service = service
        self.store = service.store
        self.hub = hub
        self.metrics = metrics
        self.dispatcher: WebhookDispatcher | None = None
        if webhook_urls:
            # ValueError (one line) for a bad URL or secret.
            self.dispatcher = WebhookDispatcher(
                webhook_urls,
                webhook_secret,
                persist=self.persist_delivery,
                on_outcome=lambda outcome: metrics.deliveries.labels(outcome).inc(),
            )
        self.engine = AlertEngine()
        self._alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ALERTS)
        self._last_id = 0
        # Evaluation comes from the publishing thread, rule changes from the IOLoop.
        self._lock = threading.Lock()
        self._loop = IOLoop.current()
        self._load(rules)

    def _load(self, rules: Iterable[Rule]) -> None:
        """What --db kept and the --rules file; then follow what the service publishes."""
        if self.store is not None:
            self.engine.change_rules(parse_rule(body) for body in self.store.rules())
            alerts, self._last_id = self.store.newest_alerts(MAX_ALERTS)
            self._alerts.extend(alerts)
            if self.dispatcher is not None:
                kept = self.store.deliveries(MAX_ALERTS)
                self.dispatcher.restore(Delivery(**row) for row in kept)
        file_rules = list(rules)  # the --rules file: created, or replacing what was kept
        self.engine.change_rules(file_rules)
        if self.store is not None:
            for rule in file_rules:
                self.store.save_rule(rule.name, rule.to_dict()).result()
        self.service.subscribe(self._on_published)

    # -- evaluation: under the service lock, in id order --------------------------------

    def evaluate(self, activities: Sequence[Activity]) -> list[dict[str, Any]]:
        """The alert bodies these activities fire (not numbered yet), in order."""
        with self._lock:
            return self._bodies(activities)

    def _bodies(self, activities: Sequence[Activity]) -> list[dict[str, Any]]:
        """What evaluate() returns; the caller holds the lock."""
        return [body for activity in activities for body in self.engine.evaluate(activity)]

    def _on_published(self, activities: Sequence[Activity]) -> None:
        if not self.engine.armed:
            return  # no rules: ingest pays nothing for monitoring
        # One lock for evaluating and numbering: publishes come one at a time anyway.
        with self._lock:
            bodies = self._bodies(activities)
            first = self._last_id + 1
            self._last_id += len(bodies)
        alerts = [{"id": first + n, **body} for n, body in enumerate(bodies)]
        for alert in alerts:
            self.announce(alert)
            self.fired(alert)

    def announce(self, alert: dict[str, Any]) -> None:
        """Keep it for /api/alerts, and tell live clients (after the activities so far)."""
        with self._lock:
            self._alerts.append(alert)
        self.hub.announce(control_message("alert", alert=alert))

    def fired(self, alert: dict[str, Any]) -> None:
        """Where it fired: count it, keep it with --db, and hand it to the webhooks."""
        self.metrics.alerts_fired.labels(alert["rule"]).inc()
        if self.store is not None:
            self.store.save_alert(alert)
        if self.dispatcher is not None:
            # The dispatcher lives on the IOLoop; this may be the writer's thread.
            self._loop.add_callback(self.dispatcher.enqueue, alert)

    # -- rules and alerts, for the REST handlers (on the IOLoop) -------------------------

    async def rules(self) -> list[dict[str, Any]]:
        """Every rule, sorted by name."""
        with self._lock:
            return [rule.to_dict() for rule in self.engine.rules()]

    async def put_rule(self, rule: Rule) -> bool:
        """Create or replace a rule (kept with --db first); True if it is new."""
        with self._lock:
            names = {r.name for r in self.engine.rules()}
        created = rule.name not in names
        if created and len(names) >= MAX_RULES:
            raise TooManyRules(f"at most {MAX_RULES} rules")
        if self.store is not None:
            await asyncio.wrap_future(self.store.save_rule(rule.name, rule.to_dict()))
        with self._lock:
            self.engine.set_rule(rule)
        return created

    async def delete_rule(self, name: str) -> bool:
        """Delete a rule; False if there was none by that name."""
        with self._lock:
            if name not in {r.name for r in self.engine.rules()}:
                return False
        if self.store is not None:
            await asyncio.wrap_future(self.store.save_rule(name, None))
        with self._lock:
            self.engine.remove_rule(name)
        self.metrics.forget_rule(name)
        return True

    def alerts(self, limit: int, rule: str | None, severity: str | None) -> list[dict[str, Any]]:
        """The newest `limit` alerts that match, oldest first."""
        with self._lock:
            kept = list(self._alerts)
        found = [
            alert
            for alert in kept
            if (rule is None or alert["rule"] == rule)
            and (severity is None or alert["severity"] == severity)
        ]
        return last(found, limit)

    def persist_delivery(self, delivery: Delivery) -> None:
        """Keep a delivery's state with --db, so pending ones survive a restart."""
        if self.store is not None:
            self.store.save_delivery(dataclasses.asdict(delivery))

    async def deliveries(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` webhook deliveries, oldest first."""
        return self.dispatcher.deliveries(limit) if self.dispatcher is not None else []
