"""RedisService: the activity service when ids, order and history live in a Redis stream."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ..activity import Activity, ActivityInput, validate
from ..query import Query, last
from ..service import ActivityService, IdempotencyConflict, Recorded, StoreUnavailable
from ..store import Chained, SQLiteStore
from .redis import (
    COMMAND_TIMEOUT,
    Appended,
    NoEpoch,
    RedisLog,
    RedisUnavailable,
    entry_activity,
)

log = logging.getLogger(__name__)
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0
# With --db, a history read waits this long for the archive to reach what Redis holds.
ARCHIVE_WAIT = 2.0


class RedisService(ActivityService):
    """Any process answers any request: writes and reads go to Redis, live clients follow it."""

    # With --db, the file (written by the leader, see leader.py) serves history queries.

    def __init__(
        self, redis_log: RedisLog, capacity: int = 1000, *, archive: SQLiteStore | None = None
    ) -> None:
        super().__init__(capacity)
        self.redis_log = redis_log
        # The base class's store: with --db, the archive serves history queries.
        self.store = archive
        self.store_id = ""  # the log's epoch, once Redis has answered
        self.failure: str | None = "not connected to Redis yet"
        # Told of each alert read from the shared alert stream (the monitor listens).
        self.on_alert: Callable[[dict[str, Any]], None] | None = None
        # Told when live clients must reconnect: Redis lost the log, or this process
        # could not read part of it.
        self.on_reset: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._follower: asyncio.Task[None] | None = None
        self._last_alert = "0-0"
        # Writes waiting for the next round trip to Redis, and those under way.
        self._to_send: list[tuple[Sequence[ActivityInput], list[str | None], Any]] = []
        self._sending: set[asyncio.Task[None]] = set()
        # Where following the stream goes on from (past entries it could not read, too).
        self._cursor = "0-0"
        self._loaded = False

    # -- recording -----------------------------------------------------------------------

    async def track(
        self, items: Sequence[ActivityInput], keys: Sequence[str | None] | None = None
    ) -> Recorded:
        keys = list(keys) if keys else [None] * len(items)
        _check_repeated_keys(items, keys)
        try:
            # Sent with the other writes of this IOLoop turn; _send bounds it at 2 s.
            appended = await self._append(items, keys)
        except RedisUnavailable as exc:
            raise StoreUnavailable(f"Redis did not confirm it ({exc})") from None
        if appended.epoch != self.store_id:
            self._loaded = False  # a new log: the follower starts over from it
        with self._lock:
            self.recorded_total += sum(appended.fresh)
        return appended.activities, appended.fresh

    async def _append(self, items: Sequence[ActivityInput], keys: list[str | None]) -> Appended:
        """Append through the next round trip to Redis, shared by this IOLoop turn's writes."""
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._to_send.append((items, keys, future))
        if len(self._to_send) == 1:
            asyncio.get_running_loop().call_soon(self._send_writes)
        return await future

    def _send_writes(self) -> None:
        writes, self._to_send = self._to_send, []
        task = asyncio.ensure_future(self._send(writes))
        self._sending.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._sending.discard)

    async def _send(
        self, writes: list[tuple[Sequence[ActivityInput], list[str | None], Any]]
    ) -> None:
        groups = [(items, keys) for items, keys, _ in writes]
        try:
            # One bound for every round trip here (a reloaded script, a new epoch).
            async with asyncio.timeout(COMMAND_TIMEOUT):
                try:
                    results: list[Any] = await self.redis_log.append(groups)
                except NoEpoch:
                    await self.redis_log.ensure_epoch(await self._floor())
                    results = await self.redis_log.append(groups)
        except TimeoutError:
            results = [RedisUnavailable("Redis timed out")] * len(writes)
        except Exception as exc:  # noqa: BLE001 - each waiting request gets the answer
            results = [exc] * len(writes)
        except BaseException:
            # Cancelled (the loop is stopping): nothing is confirmed, and nobody is left waiting.
            self._answer(writes, [RedisUnavailable("interrupted")] * len(writes))
            raise
        self._answer(writes, results)

    @staticmethod
    def _answer(writes: list[tuple[Any, Any, Any]], results: list[Any]) -> None:
        """Settle each waiting write's future with its result or exception."""
        for (_, _, future), result in zip(writes, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _floor(self) -> int:
        """Where a new log's ids start: above everything the --db file holds."""
        if self.store is None:
            return 0
        return await asyncio.wrap_future(self.store.archived_id())

    def record_many(self, items: Sequence[ActivityInput]) -> list[Activity]:
        """Record from a thread other than the IOLoop's; blocks until Redis confirms."""
        if self._loop is None or threading.get_ident() == self._loop_thread:
            raise RuntimeError("with --redis, record from another thread, or await track()")
        # Checked here, so bad input fails alone, not the writes sharing its round trip.
        items = [validate(item._asdict()) for item in items]
        future = asyncio.run_coroutine_threadsafe(self.track(items), self._loop)
        try:
            return future.result(COMMAND_TIMEOUT + 1)[0]
        except TimeoutError:
            future.cancel()
            raise StoreUnavailable("Redis did not confirm it in time") from None

    # -- reading: from Redis, so a write on any process is in the next read ---------------

    async def query(self, query: Query) -> list[Activity]:
        if not query.filtered and query.limit is not None and query.limit <= self.capacity:
            return await self._redis(self.redis_log.newest(query.limit))
        if self.store is not None:
            horizon = await self._archive_caught_up()
            return await asyncio.wrap_future(self.store.query(query, horizon))
        held = await self._redis(self.redis_log.newest(self.capacity))
        return last([a for a in held if query.matches(a)], query.limit)

    async def scan(self, query: Query) -> AsyncIterator[list[Chained]]:
        if self.store is None:
            # Without --db, the history is what this process holds, chained as it heard it.
            async for page in super().scan(query):
                yield page
            return
        horizon = await self._archive_caught_up()
        async for page in self._scan_store(self.store, query, horizon):
            yield page

    async def summary(self, query: Query, top: int) -> dict[str, Any]:
        if self.store is None:
            return await super().summary(query, top)
        horizon = await self._archive_caught_up()
        return await asyncio.wrap_future(self.store.summary(query, horizon, top))

    async def after(self, since: int, limit: int) -> list[Activity] | None:
        """What a resuming client missed: from this process's buffer, Redis, or the file."""
        with self._lock:
            held = bool(self._buffer) and since >= self._buffer[0].id - 1
            published = self._published
        if held or since >= published:
            return await super().after(since, limit)
        oldest = await self._redis(self.redis_log.oldest_id())
        if oldest is not None and since >= oldest - 1:
            missed = await self._redis(self.redis_log.after(since, limit + 1))
            missed = [a for a in missed if a.id <= published]
            return missed if len(missed) <= limit else None
        if self.store is not None:
            return await asyncio.wrap_future(self.store.resume(since, published, limit))
        return None

    async def _redis(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisUnavailable as exc:
            raise StoreUnavailable(f"Redis did not answer ({exc})") from None

    async def _archive_caught_up(self) -> int:
        """Wait (a little) until the file holds all Redis held when asked; that id."""
        assert self.store is not None
        target = await self._redis(self.redis_log.last_id())
        deadline = asyncio.get_running_loop().time() + ARCHIVE_WAIT
        while await asyncio.wrap_future(self.store.archived_id()) < target:
            if asyncio.get_running_loop().time() > deadline:
                raise StoreUnavailable("the archive is behind Redis; retry later")
            await asyncio.sleep(0.05)  # the leader archives every few milliseconds
        return target

    # -- following the stream ------------------------------------------------------------

    async def start(self) -> None:
        """Follow the stream from the running loop; waits (briefly) for Redis to answer."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._follower = asyncio.ensure_future(self._follow())
        deadline = self._loop.time() + COMMAND_TIMEOUT
        while not self._loaded and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        if not self._loaded:
            log.warning("Redis is not answering yet: writes get 503 until it does")

    async def _follow(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            try:
                if not self._loaded:
                    await self._load()
                batches = await self.redis_log.tail(self._cursor, self._last_alert)
                if not batches and await self.redis_log.epoch() != self.store_id:
                    self._loaded = False  # Redis lost the log without dropping the connection
                    continue
                self._take(batches)
            except RedisUnavailable as exc:
                self._fail(str(exc))
                self._loaded = False  # reload after: Redis may have lost the log meanwhile
            except Exception:  # noqa: BLE001 - the live feed must go on
                log.exception("following the activity stream")
            else:
                backoff = BACKOFF_FIRST
                self.failure = None
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _take(self, batches: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]) -> None:
        """Publish the activities and announce the alerts the stream gave; skip bad entries."""
        for stream, entries in batches:
            if not entries:
                continue
            if stream.decode() == self.redis_log.stream:
                self._cursor = entries[-1][0].decode()
                self._heard([a for a in map(_activity, entries) if a is not None])
                continue
            self._last_alert = entries[-1][0].decode()
            for _, fields in entries:
                alert = _alert(fields)
                if alert is not None and self.on_alert is not None:
                    self.on_alert(alert)

    async def _load(self) -> None:
        """At start and after an outage: the log's identity, and the newest alert's id."""
        epoch = await self.redis_log.ensure_epoch(await self._floor())
        if epoch != self.store_id:
            await self._reset(epoch)
        if self._last_alert == "0-0":
            self._last_alert = await self.redis_log.last_alert_id()
        self._loaded = True
        self.failure = None

    async def _reset(self, epoch: str) -> None:
        """A new log (this process's start, or Redis lost it): begin from what it holds."""
        newest = await self.redis_log.newest(self.capacity)
        with self._lock:
            lost = bool(self.store_id)
            self.store_id = epoch
            self._buffer.clear()
            self._links.clear()
            self._published = 0
            self._keep(newest)  # history, not news: no subscriber hears of it
            self._cursor = f"{self._published}-0"
        if lost:
            log.warning("Redis lost the activity log; a new one begins (store %s)", epoch)
            if self.on_reset is not None:
                self.on_reset()

    def _heard(self, activities: list[Activity]) -> None:
        """Publish what the stream holds beyond this process's newest, in id order."""
        with self._lock:
            fresh = [a for a in activities if a.id > self._published]
            gap = bool(fresh) and self._published > 0 and fresh[0].id > self._published + 1
            if gap:
                log.warning(
                    "missed activities %d-%d (trimmed before this process read them)",
                    self._published + 1,
                    fresh[0].id - 1,
                )
            self._publish(fresh)
        if gap and self.on_reset is not None:
            self.on_reset()  # live clients reconnect and resume (or start over)

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            log.warning("Redis: %s (retrying)", reason)
        self.failure = reason or "unreachable"

    def health(self) -> dict[str, dict[str, Any]]:
        return {"redis": {"ok": self.failure is None, "error": self.failure}, **super().health()}

    async def stop(self) -> None:
        """Stop following the stream and close the connections; on the IOLoop."""
        self._stopping = True
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await self.redis_log.close()


def _check_repeated_keys(items: Sequence[ActivityInput], keys: Sequence[str | None]) -> None:
    """A key given twice in one call must come with the same fields both times."""
    first: dict[str, ActivityInput] = {}
    for index, (data, key) in enumerate(zip(items, keys, strict=True)):
        if key is not None and first.setdefault(key, data) != data:
            raise IdempotencyConflict(index)


def _activity(entry: tuple[bytes, dict[bytes, bytes]]) -> Activity | None:
    """The entry's activity; None (and a warning) for an entry this server did not write."""
    try:
        return entry_activity(*entry)
    except (KeyError, ValueError) as exc:
        log.warning("skipping stream entry %r: %r", entry[0], exc)
        return None


def _alert(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        return json.loads(fields[b"alert"])
    except (KeyError, ValueError) as exc:
        log.warning("skipping alert entry: %r", exc)
        return None
