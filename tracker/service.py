"""ActivityService: the ring buffer of recent activities, ids, and the subscription seam."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import Any

from .activity import Activity, ActivityInput, now_timestamp
from .query import Query, summarize

# Called with each newly recorded run of activities, in id order, under the service lock:
# a subscriber must only hand the activities on (the hub queues them), never block.
Subscriber = Callable[[Sequence[Activity]], None]


class ActivityService:
    """Records activities thread-safely and answers "the N most recent"."""

    def __init__(self, capacity: int = 1000, *, store_id: str | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # Changes whenever the history does not carry over, so clients can tell a restart.
        self.store_id = store_id or uuid.uuid4().hex
        self._buffer: deque[Activity] = deque(maxlen=capacity)
        self._last_id = 0
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []

    @property
    def last_id(self) -> int:
        """The id of the newest activity ever recorded (0 before the first)."""
        return self._last_id

    def record(self, data: ActivityInput) -> Activity:
        """Assign id and timestamp, keep the activity, and tell subscribers."""
        with self._lock:
            self._last_id += 1
            activity = Activity.create(self._last_id, data, now_timestamp())
            self._buffer.append(activity)
            for subscriber in self._subscribers:
                subscriber((activity,))
        return activity

    def record_many(self, items: Sequence[ActivityInput]) -> list[Activity]:
        """Record several activities with consecutive ids, told to subscribers as one run."""
        if not items:
            return []
        with self._lock:
            now = now_timestamp()
            first = self._last_id + 1
            activities = [Activity.create(first + i, data, now) for i, data in enumerate(items)]
            self._last_id += len(items)
            self._buffer.extend(activities)
            for subscriber in self._subscribers:
                subscriber(activities)
        return activities

    def recent(self, limit: int) -> list[Activity]:
        """The `limit` most recent activities, oldest first."""
        return self.query(Query(limit=max(limit, 0)))

    def query(self, query: Query) -> list[Activity]:
        """The newest `query.limit` activities that match (all if no limit), oldest first."""
        with self._lock:
            if not query.filtered:
                size = len(self._buffer)
                count = size if query.limit is None else min(query.limit, size)
                # Index from the right end: a deque reaches its ends in O(1).
                return [self._buffer[i] for i in range(size - count, size)]
            snapshot = list(self._buffer)
        found: list[Activity] = []
        wanted = len(snapshot) if query.limit is None else query.limit
        # Newest first, so a small limit stops early; outside the lock, on a snapshot.
        for activity in reversed(snapshot):
            if len(found) >= wanted:
                break
            if query.matches(activity):
                found.append(activity)
        found.reverse()
        return found

    def scan(self, query: Query, chunk: int = 500) -> Iterator[list[Activity]]:
        """What query() returns, in chunks, oldest first (for streaming exports)."""
        found = self.query(query)
        for start in range(0, len(found), chunk):
            yield found[start : start + chunk]

    def summary(self, query: Query, top: int) -> dict[str, Any]:
        """Totals, top actions and users, and the per-minute series of what matches."""
        return summarize(chain.from_iterable(self.scan(query)), top)

    def position(self) -> tuple[int, int]:
        """(oldest id held, newest id recorded); oldest is last + 1 when empty."""
        with self._lock:
            oldest = self._buffer[0].id if self._buffer else self._last_id + 1
            return oldest, self._last_id

    def after(self, since: int) -> tuple[list[Activity], bool]:
        """Activities with id > since, and whether all of them are still held."""
        with self._lock:
            if not self._buffer:
                return [], since >= self._last_id
            oldest = self._buffer[0].id
            # Ids in the buffer are consecutive, so the start is found by arithmetic.
            start = max(since - oldest + 1, 0)
            held = [self._buffer[i] for i in range(start, len(self._buffer))]
            return held, since >= oldest - 1

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` with every new run of activities; returns the unsubscribe."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe
