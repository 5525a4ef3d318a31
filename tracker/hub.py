"""LiveHub: fans new activities (and alerts) out to live clients: coalescing, bounded, resumable."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from tornado.ioloop import IOLoop

from .activity import Activity
from .service import ActivityService

# Close code for a client whose backlog passed the bound (4000-4999: application codes).
CLOSE_TOO_SLOW = 4008
CLOSE_GOING_AWAY = 1001
# Redis lost the log the client follows: reconnect, and resume (or start over).
CLOSE_STORE_CHANGED = 1012
# Under load, batches go out at most this often (seconds); light traffic goes at once.
FLUSH_INTERVAL = 0.005


class LiveClient(Protocol):
    """What the hub needs of a connection: write a ready frame, and close."""

    def send_frame(self, frame: bytes) -> Pending | bool | None:
        """Write the frame: None if gone, True if the kernel took it all, else pending."""

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the connection with a WebSocket close code."""


class Pending(Protocol):
    """A write the kernel has not taken yet; tells the hub when it has."""

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...


@dataclass(frozen=True)
class Notice:
    """A message for every client, in its place among the activities (an alert)."""

    json: bytes


# What flows through the hub, in order.
Entry = Activity | Notice


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame: the same bytes serve every client."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def activities_message(activities: Sequence[Activity]) -> bytes:
    """{"type": "activities", "items": [...]}, joined from each activity's stored JSON."""
    return b'{"type":"activities","items":[' + b",".join([a.json for a in activities]) + b"]}"


def control_message(kind: str, **fields: Any) -> bytes:
    """A small JSON message such as hello or reset."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":")).encode()


def frames(entries: Sequence[Entry]) -> bytes:
    """The frames for a run of entries: each run of activities as one message."""
    out: list[bytes] = []
    run: list[Activity] = []
    for entry in entries:
        if isinstance(entry, Notice):
            if run:
                out.append(text_frame(activities_message(run)))
                run = []
            out.append(text_frame(entry.json))
        else:
            run.append(entry)
    if run:
        out.append(text_frame(activities_message(run)))
    return b"".join(out)


def entry_size(entry: Entry) -> int:
    """The bytes one entry will take on the wire, near enough."""
    return len(entry.json) + 1


def size_of(entries: Sequence[Entry]) -> int:
    """The bytes a run of entries will take on the wire, near enough."""
    return sum(map(entry_size, entries))


Predicate = Callable[[Activity], bool]


@dataclass(eq=False)
class Subscription:
    """One connected client: what it has been sent and what waits for it."""

    client: LiveClient
    predicate: Predicate | None = None
    # Activities up to this id went out with the connect-time backlog: skip them live.
    after_id: int = 0
    busy: bool = False
    backlog: list[Entry] = field(default_factory=list)
    backlog_bytes: int = 0


class LiveHub:
    """Subscribes to the service and delivers every new activity to every live client."""

    def __init__(
        self,
        service: ActivityService,
        *,
        max_backlog: int = 10_000,
        max_backlog_bytes: int = 8 << 20,
    ) -> None:
        self.service = service
        self.max_backlog = max_backlog
        self.max_backlog_bytes = max_backlog_bytes
        self.dropped_slow = 0
        self._subs: dict[LiveClient, Subscription] = {}
        self._pending: list[Entry] = []
        self._scheduled = False
        self._lock = threading.Lock()
        self._loop: IOLoop | None = None
        self._last_flush = float("-inf")
        service.subscribe(self._enqueue)

    @property
    def client_count(self) -> int:
        """How many clients are attached."""
        return len(self._subs)

    # -- from any thread, under the service lock, in id order ---------------------------

    def announce(self, message: bytes) -> None:
        """Send a message to every client after the activities published so far."""
        self._enqueue([Notice(message)])

    def _enqueue(self, entries: Sequence[Entry]) -> None:
        if not self._subs:
            return  # nobody listens: ingest pays nothing for the live feed
        with self._lock:
            self._pending.extend(entries)
            if self._scheduled:
                return
            self._scheduled = True
        # The only thread-safe way onto the IOLoop; one hop per batch, not per activity.
        assert self._loop is not None
        self._loop.add_callback(self._schedule_flush)

    # -- on the IOLoop ------------------------------------------------------------------

    async def attach(
        self,
        client: LiveClient,
        *,
        since: int | None = None,
        store_id: str | None = None,
        predicate: Predicate | None = None,
    ) -> None:
        """Greet a new client, replay what it missed since `since`, then keep it live."""
        self._loop = IOLoop.current()
        sub = Subscription(client, predicate)
        # Attach before reading the buffer: anything recorded later reaches the queue.
        self._subs[client] = sub
        oldest, last = self.service.position()
        sub.after_id = last
        hello = control_message(
            "hello", store_id=self.service.store_id, last_id=last, oldest_id=oldest
        )
        if client.send_frame(text_frame(hello)) is None:
            self.detach(client)
            return
        if since is None:
            return
        # Live entries wait in the backlog while the replay is read, so order holds.
        sub.busy = True
        replay, reason = await self._replay(since, store_id, last)
        if client not in self._subs:
            return
        if reason is not None:
            client.send_frame(text_frame(control_message("reset", reason=reason)))
        # Later ones come through the live queue, which skips ids up to `last`.
        replay = [a for a in replay if a.id <= last and (predicate is None or predicate(a))]
        # Live ones that arrived meanwhile wait behind the replay; together, still bounded.
        waiting, sub.backlog, sub.backlog_bytes = sub.backlog, replay, size_of(replay)
        sub.busy = False
        if waiting:
            self._queue(sub, waiting)
        self._drain(sub)

    async def _replay(
        self, since: int, store_id: str | None, last: int
    ) -> tuple[list[Activity], str | None]:
        """What a resuming client missed, or the reason it must start over and the newest."""
        if store_id is not None and store_id != self.service.store_id:
            reason = "store_changed"
        elif since > last:
            reason = "ahead"
        else:
            missed = await self.service.after(since, self.max_backlog)
            if missed is not None and size_of(missed) <= self.max_backlog_bytes:
                return missed, None
            reason = "evicted"  # too far behind, in activities or in bytes
        newest = await self.service.recent(min(self.service.capacity, self.max_backlog))
        # Within the byte bound too: the newest that fit.
        kept, total = 0, 0
        for activity in reversed(newest):
            total += entry_size(activity)
            if total > self.max_backlog_bytes:
                break
            kept += 1
        return newest[len(newest) - kept :], reason

    def detach(self, client: LiveClient) -> None:
        """Forget a client (it closed, or was dropped)."""
        self._subs.pop(client, None)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        """Close every client, as on shutdown."""
        for client in list(self._subs):
            self.detach(client)
            client.close(code, reason)

    def _schedule_flush(self) -> None:
        assert self._loop is not None
        wait = self._last_flush + FLUSH_INTERVAL - self._loop.time()
        if wait > 0:
            self._loop.call_later(wait, self._flush)
        else:
            self._flush()

    def _flush(self) -> None:
        assert self._loop is not None
        self._last_flush = self._loop.time()
        with self._lock:
            batch, self._pending = self._pending, []
            self._scheduled = False
        if not batch:
            return
        shared: bytes | None = None
        # Computed once a flush, not once a client: this loop runs 1,000 times at 1,000.
        first_id = next((e.id for e in batch if not isinstance(e, Notice)), None)
        for sub in list(self._subs.values()):
            if sub.predicate is None and (first_id is None or first_id > sub.after_id):
                entries = batch  # the common case: everything, to everyone
            else:
                entries = self._for(sub, batch)
            if not entries:
                continue
            if sub.busy:
                self._queue(sub, entries)
            elif entries is batch:
                if shared is None:
                    shared = frames(batch)
                self._send(sub, shared)
            else:
                self._send(sub, frames(entries))

    @staticmethod
    def _for(sub: Subscription, batch: list[Entry]) -> list[Entry]:
        """The entries of a batch a filtered (or just attached) client should get."""
        return [
            e
            for e in batch
            if isinstance(e, Notice)
            or (e.id > sub.after_id and (sub.predicate is None or sub.predicate(e)))
        ]

    def _queue(self, sub: Subscription, entries: list[Entry]) -> None:
        size = size_of(entries)
        count = len(sub.backlog) + len(entries)
        if count > self.max_backlog or sub.backlog_bytes + size > self.max_backlog_bytes:
            self.dropped_slow += 1
            self.detach(sub.client)
            sub.backlog, sub.backlog_bytes = [], 0
            sub.client.close(CLOSE_TOO_SLOW, "too slow: backlog limit reached")
            return
        sub.backlog.extend(entries)
        sub.backlog_bytes += size

    def _send(self, sub: Subscription, frame: bytes) -> None:
        pending = sub.client.send_frame(frame)
        if pending is None:
            self.detach(sub.client)
            return
        if pending is not True:
            # The kernel has not taken it all: coalesce into a backlog until it has.
            sub.busy = True
            pending.add_done_callback(partial(self._sent, sub))

    def _sent(self, sub: Subscription, result: Any) -> None:
        sub.busy = False
        if result.exception() is not None or sub.client not in self._subs:
            self.detach(sub.client)
            return
        self._drain(sub)

    def _drain(self, sub: Subscription) -> None:
        """Send what waits in the backlog, as few frames as it makes."""
        if sub.backlog and not sub.busy:
            entries, sub.backlog, sub.backlog_bytes = sub.backlog, [], 0
            self._send(sub, frames(entries))
