"""REST endpoints: record an activity, list the recent ones."""

from __future__ import annotations

from typing import Any

from ..activity import encode_list
from ..service import ActivityService
from .base import ApiError, APIHandler

DEFAULT_LIMIT = 100
# More digits than any capacity needs; longer strings are clamped without int() on them.
_LIMIT_DIGITS = 18


def parse_limit(raw: str | None, capacity: int, default: int = DEFAULT_LIMIT) -> int:
    """A non-negative integer, clamped to the capacity; anything else is a 400."""
    if raw is None:
        return min(default, capacity)
    if not (raw.isascii() and raw.isdigit()):
        raise ApiError(400, "limit must be a non-negative integer", "limit")
    if len(raw) > _LIMIT_DIGITS:
        return capacity
    return min(int(raw), capacity)


class MetricsHandler(APIHandler):
    """An API handler with the activity service."""

    def initialize(self, service: ActivityService, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.service = service


class TrackHandler(MetricsHandler):
    """POST /api/metrics/track: validate, record, answer with the activity."""

    def post(self) -> None:
        activity = self.service.record(self.activity_input())
        self.write_json(activity.json)


class ActivitiesHandler(MetricsHandler):
    """GET /api/metrics/activities: the most recent activities, oldest first."""

    def get(self) -> None:
        limit = parse_limit(self.argument("limit"), self.service.capacity)
        self.write_json(encode_list(self.service.recent(limit)))


def routes(service: ActivityService, max_body_size: int) -> list[tuple[str, type, dict]]:
    """The REST routes, with what their handlers need."""
    deps = {"service": service, "max_body_size": max_body_size}
    return [
        (r"/api/metrics/track", TrackHandler, deps),
        (r"/api/metrics/activities", ActivitiesHandler, deps),
    ]
