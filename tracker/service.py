"""ActivityService: ids, the ring buffer, the optional durable store, and the subscription seam."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import uuid
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from . import audit
from .activity import Activity, ActivityInput, format_timestamp, now_timestamp, validate
from .query import Query, last, summarize
from .store import Chained, SQLiteStore, WriteFailed

log = logging.getLogger(__name__)

# Called with each newly published run of activities, in id order, under the service lock:
# a subscriber must only hand the activities on (the hub queues them), never block.
Subscriber = Callable[[Sequence[Activity]], None]
# What track() answers: the activities, and for each whether this call recorded it.
Recorded = tuple[list[Activity], list[bool]]


class StoreUnavailable(Exception):
    """The store did not take the write in time, or failed it: nothing was recorded."""


class IdempotencyConflict(Exception):
    """An idempotency key came back with other fields than its original's."""

    def __init__(self, index: int) -> None:
        super().__init__(f"item {index}: key reused with a different body")
        self.index = index


class ActivityService:
    """Records activities thread-safely and answers "the N most recent", and more."""

    # An activity is *published* (kept in the buffer, told to subscribers, acknowledged)
    # once it is durable: at once in memory, after its group commit with a store.

    def __init__(
        self,
        capacity: int = 1000,
        *,
        store: SQLiteStore | None = None,
        commit_timeout: float = 5.0,
        chunk: int = 500,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.store = store
        self.commit_timeout = commit_timeout
        self.chunk = chunk
        # Changes whenever the history does not carry over, so clients can tell a restart.
        self.store_id = store.store_id if store else uuid.uuid4().hex
        self._buffer: deque[Activity] = deque(maxlen=capacity)
        # In memory, the chain links of the buffer's activities, in step with it (the store
        # keeps its own on disk), and the hash the next one follows.
        self._links: deque[tuple[bytes, bytes]] = deque(maxlen=capacity)
        self._head = audit.ZERO_HASH
        # Idempotency keys of the activities in the buffer or on their way to the store,
        # with the future of their commit while it is under way (None once published).
        self._keys: dict[str, tuple[Activity, Future[None] | None]] = {}
        # Reentrant: a commit that finished before its callback was added runs it at once.
        self._lock = threading.RLock()
        self._subscribers: list[Subscriber] = []
        self._stopping = False
        self._retention: asyncio.Task[None] | None = None
        # Activities this process recorded (not those it only heard of), for /metrics.
        self.recorded_total = 0
        self._last_id = self._published = store.last_id if store is not None else 0
        if store is not None:
            self._publish(store.newest(capacity).result())

    @property
    def last_id(self) -> int:
        """The id of the newest activity ever published (0 before the first)."""
        return self._published

    # -- recording ---------------------------------------------------------------------

    async def track(
        self, items: Sequence[ActivityInput], keys: Sequence[str | None] | None = None
    ) -> Recorded:
        """Record items once durable; a retried key returns its original instead."""
        # Raises StoreUnavailable (nothing of it stored) or IdempotencyConflict.
        keys = list(keys) if keys else [None] * len(items)
        while True:
            stored = await self._stored_originals(keys)
            with self._lock:
                under_way = self._under_way(keys)
                if not under_way:
                    activities, fresh, durable = self._accept(items, keys, stored)
                    break
            # A retry of a write still under way: its outcome decides (it has a timeout).
            await asyncio.wait([asyncio.wrap_future(future) for future in under_way])
        if durable is not None:
            await self._until_durable(durable)
        return activities, fresh

    def record(self, data: ActivityInput) -> Activity:
        """Record one activity from any thread (blocks until durable with a store)."""
        return self.record_many([data])[0]

    def record_many(self, items: Sequence[ActivityInput]) -> list[Activity]:
        """Record several with consecutive ids, published as one run; from any thread."""
        # Built in-process, not by a handler: checked here, so bad input uses no id.
        items = [validate(item._asdict()) for item in items]
        with self._lock:
            activities, _, durable = self._accept(items, [None] * len(items), {})
        if durable is not None:
            try:
                try:
                    durable.result(timeout=self.commit_timeout)
                except TimeoutError:
                    if durable.cancel():
                        raise StoreUnavailable(self._late()) from None
                    durable.result()
            except WriteFailed as exc:
                raise StoreUnavailable(str(exc)) from None
        return activities

    async def _stored_originals(self, keys: list[str | None]) -> dict[str, Activity]:
        """The stored activities of keys that memory does not know (none without a store)."""
        if self.store is None:
            return {}
        wanted = [key for key in keys if key is not None and key not in self._keys]
        if not wanted:
            return {}
        return await asyncio.wrap_future(self.store.by_keys(wanted))

    def _under_way(self, keys: list[str | None]) -> list[Future[None]]:
        """Commits under way for any of these keys; under the lock."""
        entries = (self._keys.get(key) for key in keys if key is not None)
        return [entry[1] for entry in entries if entry is not None and entry[1] is not None]

    def _accept(
        self, items: Sequence[ActivityInput], keys: list[str | None], stored: dict[str, Activity]
    ) -> tuple[list[Activity], list[bool], Future[None] | None]:
        """Assign ids, or find the originals of retried keys; under the lock."""
        # Returns (activities, which are new, the commit to wait for or None).
        # First check every key, so a conflict refuses the whole call before any id is used.
        first_sent: dict[str, ActivityInput] = {}
        keyed = keys.count(None) != len(keys)
        for index, (data, key) in enumerate(zip(items, keys, strict=True) if keyed else ()):
            if key is not None:
                original = self._original(key, stored)
                sent = original.input if original else first_sent.setdefault(key, data)
                if sent != data:
                    raise IdempotencyConflict(index)
        timestamp = now_timestamp()
        result: list[Activity] = []
        new: list[Activity] = []
        fresh: list[bool] = []
        made: dict[str, Activity] = {}  # a key repeated within the call gets the first one
        for data, key in zip(items, keys, strict=True):
            original = None
            if key is not None:
                original = self._original(key, stored) or made.get(key)
            fresh.append(original is None)
            if original is None:
                self._last_id += 1
                original = Activity.create(self._last_id, data, timestamp, key)
                new.append(original)
                if key is not None:
                    made[key] = original
            result.append(original)
        if not new:
            return result, fresh, None
        if self.store is None:
            self._remember_keys(new, None)
            self._publish(new)
            self.recorded_total += len(new)
            return result, fresh, None
        durable = self.store.append(new)
        self._remember_keys(new, durable)
        durable.add_done_callback(partial(self._settled, new))
        return result, fresh, durable

    def _original(self, key: str, stored: dict[str, Activity]) -> Activity | None:
        """The activity first recorded with this key, if memory or the store has it."""
        entry = self._keys.get(key)
        return entry[0] if entry is not None else stored.get(key)

    def _remember_keys(self, activities: list[Activity], durable: Future[None] | None) -> None:
        for activity in activities:
            if activity.key is not None:
                self._keys[activity.key] = (activity, durable)

    def _drop_key(self, activity: Activity) -> None:
        """Forget the activity's key, unless it now names another activity; under the lock."""
        entry = self._keys.get(activity.key) if activity.key is not None else None
        if entry is not None and entry[0] is activity:
            del self._keys[activity.key]

    def _settled(self, activities: list[Activity], durable: Future[None]) -> None:
        """After a commit (on the writer thread) or a cancel: publish, or forget the keys."""
        with self._lock:
            if durable.cancelled() or durable.exception() is not None:
                for activity in activities:
                    self._drop_key(activity)
                return
            self._remember_keys(activities, None)
            self._publish(activities)
            self.recorded_total += len(activities)

    async def _until_durable(self, durable: Future[None]) -> None:
        """Wait up to commit_timeout; then cancel, so that a 503 means "not stored"."""
        waiter = asyncio.wrap_future(durable)
        try:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self.commit_timeout)
            except TimeoutError:
                if durable.cancel():
                    raise StoreUnavailable(self._late()) from None
                await waiter  # the writer has it in hand: its outcome is the answer
        except WriteFailed as exc:
            raise StoreUnavailable(str(exc)) from None

    def _late(self) -> str:
        reason = self.store.failure if self.store is not None else None
        return f"not stored within {self.commit_timeout:g} s" + (f" ({reason})" if reason else "")

    def _publish(self, activities: Sequence[Activity]) -> None:
        """Keep, in id order, and tell subscribers; under the lock."""
        if not activities:
            return
        self._keep(activities)
        for subscriber in self._subscribers:
            subscriber(activities)

    def _keep(self, activities: Sequence[Activity]) -> None:
        """Add to the buffer (and, in memory, to the chain), in id order; under the lock."""
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
                self._drop_key(old)
        buffer.extend(activities)
        if self.store is None:
            links = audit.chain_links(self._head, activities)
            self._links.extend(links)
            self._head = links[-1][1]
        self._published = max(self._published, activities[-1].id)

    # -- reading -----------------------------------------------------------------------

    async def recent(self, limit: int) -> list[Activity]:
        """The `limit` most recent activities, oldest first."""
        return await self.query(Query(limit=max(limit, 0)))

    async def query(self, query: Query) -> list[Activity]:
        """The newest `query.limit` activities that match (all if no limit), oldest first."""
        with self._lock:
            if not query.filtered and query.limit is not None and query.limit <= len(self._buffer):
                # The common read, from the buffer even with a store.
                newest = list(itertools.islice(reversed(self._buffer), query.limit))
                newest.reverse()
                return newest
            published = self._published
            snapshot = list(self._buffer) if self.store is None else []
        if self.store is not None:
            return await asyncio.wrap_future(self.store.query(query, published))
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

    async def scan(self, query: Query) -> AsyncIterator[list[Chained]]:
        """What query() returns, with chain links, in chunks, oldest first (for exports)."""
        if self.store is None:
            with self._lock:
                pairs = list(zip(self._buffer, self._links, strict=True))
            found = last([Chained(a, *link) for a, link in pairs if query.matches(a)], query.limit)
            for start in range(0, len(found), self.chunk):
                yield found[start : start + self.chunk]
            return
        async for page in self._scan_store(self.store, query, self._published):
            yield page

    async def _scan_store(
        self, store: SQLiteStore, query: Query, max_id: int
    ) -> AsyncIterator[list[Chained]]:
        """The store's matches up to max_id, a page at a time."""
        after_id = await asyncio.wrap_future(store.scan_start(query, max_id))
        if query.limit == 0:
            return
        while page := await asyncio.wrap_future(
            store.scan_page(query, max_id, after_id, self.chunk)
        ):
            yield page
            after_id = page[-1].activity.id

    async def summary(self, query: Query, top: int) -> dict[str, Any]:
        """Totals, top actions and users, and the per-minute series of what matches."""
        if self.store is not None:
            return await asyncio.wrap_future(self.store.summary(query, self._published, top))
        return summarize(await self.query(query), top)

    def chain_rows(self, from_id: int | None, to_id: int | None) -> tuple[list[audit.Row], bytes]:
        """In memory: the buffer's rows with their links (within the range), and the anchor."""
        with self._lock:
            pairs = list(zip(self._buffer, self._links, strict=True))
        rows = [
            (a.id, a.user_id, a.action, a.timestamp, a.details, prev, digest)
            for a, (prev, digest) in pairs
            if (from_id is None or a.id >= from_id) and (to_id is None or a.id <= to_id)
        ]
        return rows, rows[0][5] if rows else self._head

    def position(self) -> tuple[int, int]:
        """(oldest id held in the buffer, newest id published)."""
        with self._lock:
            oldest = self._buffer[0].id if self._buffer else self._published + 1
            return oldest, self._published

    async def after(self, since: int, limit: int) -> list[Activity] | None:
        """Published activities after `since`; None unless all of them fit in `limit`."""
        with self._lock:
            buffer, published = self._buffer, self._published
            if since >= published:
                return []
            if buffer and since >= buffer[0].id - 1:
                start = bisect_right(buffer, since, key=lambda a: a.id)
                held = [buffer[i] for i in range(start, len(buffer))]
                return held if len(held) <= limit else None
            if self.store is None:
                return None
        # Older than the buffer: the store may still hold it.
        return await asyncio.wrap_future(self.store.resume(since, published, limit))

    # -- subscribers, health and lifecycle ---------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` with every new run of activities; returns the unsubscribe."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def health(self) -> dict[str, dict[str, Any]]:
        """Each dependency's state for /readyz (the store's writer, when there is one)."""
        return {"store": self.store.health()} if self.store is not None else {}

    async def enforce_retention(self, days: float, max_rows: int) -> int:
        """Delete what retention no longer keeps, in small steps; how many went."""
        if self.store is None or (not days and not max_rows):
            return 0
        cutoff = None
        if days:
            cutoff = format_timestamp(datetime.now(UTC) - timedelta(days=days))
        # Counted once a run, on a reader: not under the write lock at every step.
        through = await asyncio.wrap_future(self.store.beyond(max_rows)) if max_rows else None
        deleted = 0
        while not self._stopping:
            ids = await asyncio.wrap_future(self.store.delete_expired(cutoff, through))
            if not ids:
                break
            deleted += len(ids)
            self._forget(max(ids))
        return deleted

    def _forget(self, through: int) -> None:
        """Drop deleted activities from the buffer too, so every reader agrees."""
        # Retention deletes a run of the oldest ids, so they leave the buffer's front.
        with self._lock:
            while self._buffer and self._buffer[0].id <= through:
                self._drop_key(self._buffer.popleft())

    def start_retention(self, days: float, max_rows: int, interval: float = 60.0) -> None:
        """Enforce retention now and every `interval` seconds, on the running IOLoop."""
        if self.store is None or (not days and not max_rows) or self._retention is not None:
            return
        self._retention = asyncio.ensure_future(self._retain(days, max_rows, interval))

    async def _retain(self, days: float, max_rows: int, interval: float) -> None:
        while not self._stopping:
            try:
                await self.enforce_retention(days, max_rows)
                wait = interval
            except WriteFailed as exc:
                # The writer stays up; retention tries again soon.
                log.warning("retention step failed: %s", exc)
                wait = min(interval, 5.0)
            await asyncio.sleep(wait)

    def stop_retention(self) -> None:
        """Stop retention between two steps; call on the IOLoop."""
        if self._retention is not None:
            self._retention.cancel()
            self._retention = None

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (up to `timeout` seconds), and close the store."""
        self._stopping = True
        if self.store is not None:
            self.store.close(timeout)
