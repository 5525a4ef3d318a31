"""ActivityService: ids, the ring buffer, optional durable store, and the subscription seam."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import uuid
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

from .activity import Activity, ActivityInput, format_timestamp, now_timestamp
from .query import Query, summarize
from .store import SQLiteStore

# Called with each newly published run of activities, in id order, under the service lock:
# a subscriber must only hand the activities on (the hub queues them), never block.
Subscriber = Callable[[Sequence[Activity]], None]
# What track() answers: the activities, and for each whether this call recorded it.
Recorded = tuple[list[Activity], list[bool]]
# Told None once everything up to an id is published, or the error that lost it.
Waiter = Callable[[BaseException | None], None]


class StoreUnavailable(Exception):
    """The durable store failed to commit; nothing was acknowledged."""


class ActivityService:
    """Records activities thread-safely and answers "the N most recent", and more."""

    # An activity is *published* (kept in the buffer, told to subscribers, acknowledged)
    # once it is durable: at once in memory, after its group commit with a store.

    def __init__(
        self, capacity: int = 1000, *, store: SQLiteStore | None = None, chunk: int = 500
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.store = store
        self.chunk = chunk
        # Changes whenever the history does not carry over, so clients can tell a restart.
        self.store_id = store.store_id if store else uuid.uuid4().hex
        self._buffer: deque[Activity] = deque(maxlen=capacity)
        # Idempotency keys of the activities in the buffer or on their way to the store.
        self._keys: dict[str, Activity] = {}
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        self._waiters: list[tuple[int, int, Waiter]] = []  # heap of (id, seq, waiter)
        self._seq = itertools.count()
        self._stopping = threading.Event()
        self._retention: threading.Thread | None = None
        self._last_id = self._published = store.max_id() if store is not None else 0
        if store is not None:
            self._publish(store.newest(capacity))

    @property
    def last_id(self) -> int:
        """The id of the newest activity ever published (0 before the first)."""
        return self._published

    # -- recording ---------------------------------------------------------------------

    def track(
        self, items: Sequence[ActivityInput], keys: Sequence[str | None] | None = None
    ) -> Recorded | asyncio.Future[Recorded]:
        """Record items; a retried key returns its original instead of a new one."""
        # The answer: the activities, and for each whether this call recorded it. In memory
        # it is at hand; with a store, a future resolves once durable (or StoreUnavailable).
        activities, fresh, wait_for = self._accept(items, keys)
        if not wait_for:
            return activities, fresh
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recorded] = loop.create_future()

        def done(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, (activities, fresh), error)

        self._wait(wait_for, done)
        return future

    def record(self, data: ActivityInput) -> Activity:
        """Record one activity from any thread (blocks until durable with a store)."""
        return self.record_many([data])[0]

    def record_many(self, items: Sequence[ActivityInput]) -> list[Activity]:
        """Record several with consecutive ids, published as one run; from any thread."""
        activities, _, wait_for = self._accept(items, None)
        if wait_for:
            event, failure = threading.Event(), []

            def done(error: BaseException | None) -> None:
                failure.append(error)
                event.set()

            self._wait(wait_for, done)
            event.wait()
            if failure[0] is not None:
                raise StoreUnavailable(str(failure[0]))
        return activities

    def _accept(
        self, items: Sequence[ActivityInput], keys: Sequence[str | None] | None
    ) -> tuple[list[Activity], list[bool], int]:
        """Assign ids, or find the originals of retried keys; also the id to wait for."""
        # Returns (activities, which are new, id to wait for: 0 when nothing to wait for).
        if self.store is None and len(items) == 1 and not (keys and keys[0]):
            # The most common call, one activity in memory, without the general loop.
            with self._lock:
                self._last_id += 1
                activity = Activity.create(self._last_id, items[0], now_timestamp())
                self._publish((activity,))
            return [activity], [True], 0
        result: list[Activity] = []
        fresh: list[bool] = []
        new: list[Activity] = []
        with self._lock:
            timestamp = now_timestamp()
            for index, data in enumerate(items):
                key = keys[index] if keys else None
                original = self._find_key(key) if key is not None else None
                if original is not None:
                    result.append(original)
                    fresh.append(False)
                    continue
                self._last_id += 1
                activity = Activity.create(self._last_id, data, timestamp, key)
                if key is not None:
                    self._keys[key] = activity
                new.append(activity)
                result.append(activity)
                fresh.append(True)
            if self.store is None:
                self._publish(new)
                return result, fresh, 0
            if new:
                self.store.append(new, lambda error, new=new: self._committed(new, error))
            newest = max((a.id for a in result), default=0)
            return result, fresh, newest if newest > self._published else 0

    def _find_key(self, key: str) -> Activity | None:
        found = self._keys.get(key)
        if found is None and self.store is not None:
            found = self.store.by_key(key)
        return found

    def _committed(self, activities: list[Activity], error: BaseException | None) -> None:
        """On the writer thread, after a group commit: publish, then wake the waiters."""
        with self._lock:
            if error is None:
                self._publish(activities)
            else:
                for activity in activities:
                    if activity.key is not None:
                        self._keys.pop(activity.key, None)
                # Later ids may still commit: waiters up to these ids learn of the failure.
                self._published = max(self._published, activities[-1].id)
            ready = []
            while self._waiters and self._waiters[0][0] <= self._published:
                ready.append(heapq.heappop(self._waiters)[2])
        failure = None if error is None else StoreUnavailable(str(error))
        for waiter in ready:
            waiter(failure)

    def _wait(self, activity_id: int, waiter: Waiter) -> None:
        with self._lock:
            if activity_id <= self._published:
                ready = True
            else:
                heapq.heappush(self._waiters, (activity_id, next(self._seq), waiter))
                ready = False
        if ready:
            waiter(None)

    def _publish(self, activities: Sequence[Activity]) -> None:
        """Keep, in id order, and tell subscribers; under the lock."""
        if not activities:
            return
        buffer = self._buffer
        overflow = len(buffer) + len(activities) - self.capacity
        if overflow > 0 and self._keys:
            # Keys live as long as the buffer holds their activity (the store keeps its own).
            leaving = itertools.chain(
                itertools.islice(buffer, 0, overflow), activities[: -self.capacity]
            )
            for old in leaving:
                if old.key is not None and self._keys.get(old.key) is old:
                    del self._keys[old.key]
        buffer.extend(activities)
        self._published = max(self._published, activities[-1].id)
        for subscriber in self._subscribers:
            subscriber(activities)

    # -- reading -----------------------------------------------------------------------

    def recent(self, limit: int) -> list[Activity]:
        """The `limit` most recent activities, oldest first."""
        return self.query(Query(limit=max(limit, 0)))

    def query(self, query: Query) -> list[Activity]:
        """The newest `query.limit` activities that match (all if no limit), oldest first."""
        with self._lock:
            size = len(self._buffer)
            if not query.filtered and query.limit is not None and query.limit <= size:
                # The hot path, from the buffer even with a store: walk back from the
                # right end at C speed, then put the oldest first.
                newest = list(itertools.islice(reversed(self._buffer), query.limit))
                newest.reverse()
                return newest
            if self.store is not None:
                published = self._published
            else:
                snapshot = list(self._buffer)
        if self.store is not None:
            return self.store.query(query, published)
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

    def scan(self, query: Query) -> Iterator[list[Activity]]:
        """What query() returns, in chunks, oldest first (for streaming exports)."""
        if self.store is not None:
            yield from self.store.scan(query, self._published, self.chunk)
            return
        found = self.query(query)
        for start in range(0, len(found), self.chunk):
            yield found[start : start + self.chunk]

    def summary(self, query: Query, top: int) -> dict[str, Any]:
        """Totals, top actions and users, and the per-minute series of what matches."""
        if self.store is not None:
            return self.store.summary(query, self._published, top)
        return summarize(chain.from_iterable(self.scan(query)), top)

    def position(self) -> tuple[int, int]:
        """(oldest id held in the buffer, newest id published)."""
        with self._lock:
            oldest = self._buffer[0].id if self._buffer else self._published + 1
            return oldest, self._published

    def after(self, since: int, limit: int) -> tuple[list[Activity], bool]:
        """Published activities after `since`, and whether that is all of them."""
        # All of them: at most `limit`, none evicted or deleted; otherwise ([], False).
        with self._lock:
            buffer, published = self._buffer, self._published
            if since >= published:
                return [], True
            if buffer and since >= buffer[0].id - 1:
                start = bisect_right(buffer, since, key=lambda a: a.id)
                held = [buffer[i] for i in range(start, len(buffer))]
                return (held, True) if len(held) <= limit else ([], False)
            if self.store is None:
                return [], False
        # Older than the buffer: the store may still hold it.
        rows = self.store.after(since, published, limit + 1)
        oldest = self.store.min_id()
        if len(rows) <= limit and (oldest is None or since >= oldest - 1):
            return rows, True
        return [], False

    # -- subscribers and lifecycle -----------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` with every new run of activities; returns the unsubscribe."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def enforce_retention(self, days: float, max_rows: int) -> int:
        """Delete what retention no longer keeps, in small steps; how many went."""
        # Runs on the writer thread; blocks the calling thread (never call it on the IOLoop's).
        if self.store is None or (not days and not max_rows):
            return 0
        cutoff = None
        if days:
            cutoff = format_timestamp(datetime.now(UTC) - timedelta(days=days))
        deleted = 0
        while True:
            step: list[list[int]] = []
            event = threading.Event()

            def job(
                conn: Any, step: list[list[int]] = step, event: threading.Event = event
            ) -> None:
                try:
                    step.append(SQLiteStore.delete_step(conn, cutoff, max_rows))
                finally:
                    event.set()

            self.store.maintain(job)
            event.wait()
            if not step or not step[0]:
                return deleted
            deleted += len(step[0])
            self._forget(set(step[0]))

    def _forget(self, ids: set[int]) -> None:
        """Drop deleted activities from the buffer too, so every reader agrees."""
        with self._lock:
            if self._buffer and self._buffer[0].id <= max(ids):
                kept = [a for a in self._buffer if a.id not in ids]
                for gone in self._buffer:
                    if gone.id in ids and gone.key is not None:
                        self._keys.pop(gone.key, None)
                self._buffer.clear()
                self._buffer.extend(kept)

    def start_retention(self, days: float, max_rows: int, interval: float = 60.0) -> None:
        """Enforce retention now and every `interval` seconds, on a thread of its own."""
        if self.store is None or (not days and not max_rows):
            return

        def loop() -> None:
            while not self._stopping.is_set():
                self.enforce_retention(days, max_rows)
                self._stopping.wait(interval)

        self._retention = threading.Thread(target=loop, name="retention", daemon=True)
        self._retention.start()

    def close(self) -> None:
        """Stop retention, commit what is queued, and close the store."""
        self._stopping.set()
        if self._retention is not None:
            self._retention.join()
        if self.store is not None:
            self.store.close()


def _settle(
    future: asyncio.Future[Recorded], result: Recorded, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
