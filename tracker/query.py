"""Query: the filters every reader shares (REST list, summary, export, live feed)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .activity import Activity, format_timestamp

# The per-minute series never has more points than this (one day); older minutes drop off.
MAX_SERIES_MINUTES = 1440


@dataclass(frozen=True)
class Query:
    """Which activities to read; empty sets and None mean "no filter"."""

    user_ids: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()
    since: str | None = None  # canonical timestamp, inclusive
    until: str | None = None  # canonical timestamp, exclusive
    before_id: int | None = None
    limit: int | None = None  # the newest `limit` matches; None: all of them

    @property
    def filtered(self) -> bool:
        """True when any filter (not just a limit) applies."""
        return bool(self.user_ids or self.actions or self.since or self.until or self.before_id)

    def matches(self, activity: Activity) -> bool:
        """Whether the activity passes every filter (the limit aside)."""
        # Canonical timestamps (UTC, microseconds, +00:00) order as strings do.
        return (
            (not self.user_ids or activity.user_id in self.user_ids)
            and (not self.actions or activity.action in self.actions)
            and (self.since is None or activity.timestamp >= self.since)
            and (self.until is None or activity.timestamp < self.until)
            and (self.before_id is None or activity.id < self.before_id)
        )


def canonical_time(moment: datetime) -> str:
    """A filter bound in the stored timestamp format; naive times are UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return format_timestamp(moment)


def summarize(activities: Iterable[Activity], top: int) -> dict[str, Any]:
    """Totals, top actions and users, and a gap-free per-minute series, oldest first."""
    actions: Counter[str] = Counter()
    users: Counter[str] = Counter()
    minutes: Counter[str] = Counter()
    total = 0
    for activity in activities:
        total += 1
        actions[activity.action] += 1
        users[activity.user_id] += 1
        minutes[activity.timestamp[:16]] += 1  # "YYYY-MM-DDTHH:MM"

    def ranked(counter: Counter[str], key: str) -> list[dict[str, Any]]:
        # Highest count first; ties by name, so the order never depends on arrival.
        order = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
        return [{key: name, "count": count} for name, count in order[:top]]

    series: list[dict[str, Any]] = []
    if minutes:
        last = datetime.fromisoformat(max(minutes) + ":00+00:00")
        first = max(
            datetime.fromisoformat(min(minutes) + ":00+00:00"),
            last - timedelta(minutes=MAX_SERIES_MINUTES - 1),
        )
        moment = first
        while moment <= last:
            key = moment.strftime("%Y-%m-%dT%H:%M")
            series.append({"minute": key + ":00+00:00", "count": minutes.get(key, 0)})
            moment += timedelta(minutes=1)
    return {
        "total": total,
        "distinct_users": len(users),
        "actions": ranked(actions, "action"),
        "users": ranked(users, "user_id"),
        "per_minute": series,
    }
