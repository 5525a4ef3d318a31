"""Alert rules, alerts and webhook deliveries over REST: thin handlers over the monitor."""

from __future__ import annotations

from ..alerts.monitor import MAX_ALERTS, Monitor, TooManyRules
from ..alerts.rules import RuleError, check_severity, parse_rule
from . import params
from .base import APIHandler
from .errors import ApiError

DEFAULT_LIMIT = 100


class AlertsHandler(APIHandler):
    """An API handler with the monitor."""

    def initialize(self, monitor: Monitor, max_body_size: int) -> None:  # type: ignore[override]
        super().initialize(max_body_size)
        self.monitor = monitor


class RulesHandler(AlertsHandler):
    """GET /api/alerts/rules: every rule, sorted by name."""

    async def get(self) -> None:
        self.write_value(await self.monitor.rules())


class RuleHandler(AlertsHandler):
    """PUT (create or replace) and DELETE /api/alerts/rules/{name}."""

    async def put(self, name: str) -> None:
        try:
            rule = parse_rule(self.json_body(), name)
        except RuleError as exc:
            raise ApiError(400, exc.message, exc.field) from None
        try:
            created = await self.monitor.put_rule(rule)
        except TooManyRules as exc:
            raise ApiError(400, str(exc)) from None
        self.set_status(201 if created else 200)
        self.write_value(rule.to_dict())

    async def delete(self, name: str) -> None:
        deleted = await self.monitor.delete_rule(name)
        if not deleted:
            raise ApiError(404, f"no rule named {name}")
        self.set_status(204)
        self.finish()


class AlertListHandler(AlertsHandler):
    """GET /api/alerts: the newest alerts (by rule, by severity), oldest first."""

    def get(self) -> None:
        args = self.request.arguments
        limit = params.limit(args, "limit", DEFAULT_LIMIT, MAX_ALERTS)
        rule = params.single(args, "rule")
        severity = params.single(args, "severity")
        if severity is not None:
            try:
                check_severity(severity)  # the rules' own check, so one list and one message
            except RuleError as exc:
                raise ApiError(400, exc.message, exc.field) from None
        self.write_value(self.monitor.alerts(limit, rule, severity))


class DeliveriesHandler(AlertsHandler):
    """GET /api/alerts/deliveries: each webhook delivery's status, attempts, last error."""

    async def get(self) -> None:
        limit = params.limit(self.request.arguments, "limit", DEFAULT_LIMIT, MAX_ALERTS)
        self.write_value(await self.monitor.deliveries(limit))


def routes(monitor: Monitor, max_body_size: int) -> list[tuple[str, type, dict]]:
    """The alerting routes."""
    deps = {"monitor": monitor, "max_body_size": max_body_size}
    return [
        (r"/api/alerts", AlertListHandler, deps),
        (r"/api/alerts/rules", RulesHandler, deps),
        (r"/api/alerts/rules/(?P<name>[^/]+)", RuleHandler, deps),
        (r"/api/alerts/deliveries", DeliveriesHandler, deps),
    ]
