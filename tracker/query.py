"""Query: the filters every reader shares (REST list, summary, export, live feed)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from .activity import Activity, format_timestamp

T = TypeVar("T")
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
        # `is not None`: 0 and "" are filter values too (before_id=0 matches nothing).
        return bool(self.user_ids or self.actions) or any(
            bound is not None for bound in (self.since, self.until, self.before_id)
        )

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


def last(items: list[T], limit: int | None) -> list[T]:
    """The last `limit` items (all of them when `limit` is None), in their order."""
    if limit is None:
        return items
    return items[-limit:] if limit > 0 else []


def canonical_time(moment: datetime) -> str:
    """A filter bound in the stored timestamp format; naive times are UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_timestamp(moment)


def summarize(activities: Iterable[Activity], top: int) -> dict[str, Any]:
    """Totals, top actions and users, and a gap-free per-minute series, oldest first."""
    actions: Counter[str] = Counter()
    users: Counter[str] = Counter()
    minutes: Counter[str] = Counter()
    for activity in activities:
        actions[activity.action] += 1
        users[activity.user_id] += 1
        minutes[activity.timestamp[:16]] += 1  # "YYYY-MM-DDTHH:MM"

    def ranked(counter: Counter[str]) -> list[tuple[str, int]]:
        # Highest count first; ties by name, so the order never depends on arrival.
        return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:top]

    return summarize_rows(
        sum(actions.values()), len(users), ranked(actions), ranked(users), minutes.items()
    )


def summarize_rows(
    total: int,
    distinct_users: int,
    actions: Iterable[tuple[str, int]],
    users: Iterable[tuple[str, int]],
    minutes: Iterable[tuple[str, int]],
) -> dict[str, Any]:
    """The summary body from counts already ranked; minutes are ("YYYY-MM-DDTHH:MM", n)."""
    per_minute = dict(minutes)
    series: list[dict[str, Any]] = []
    if per_minute:
        last = datetime.fromisoformat(max(per_minute) + ":00+00:00")
        first = max(
            datetime.fromisoformat(min(per_minute) + ":00+00:00"),
            last - timedelta(minutes=MAX_SERIES_MINUTES - 1),
        )
        moment = first
        while moment <= last:
            key = moment.strftime("%Y-%m-%dT%H:%M")
            series.append({"minute": key + ":00+00:00", "count": per_minute.get(key, 0)})
            moment += timedelta(minutes=1)
    return {
        "total": total,
        "distinct_users": distinct_users,
        "actions": [{"action": name, "count": n} for name, n in actions],
        "users": [{"user_id": name, "count": n} for name, n in users],
        "per_minute": series,
    }
