"""Webhooks: Standard Webhooks signing, and delivery with retries, back-off and a log.

Delivery runs on the Tornado IOLoop (asyncio) and never slows the caller: enqueue() only
queues. A background task sends due deliveries, at most MAX_IN_FLIGHT at once and at most
half of those to one URL, so a receiver that never answers holds two slots for at most
`timeout` seconds each and never delays the other URLs.

Not thread-safe: call every method on the IOLoop's thread; from another thread, use
`IOLoop.add_callback(dispatcher.enqueue, alert)`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("tracker.webhooks")

# Seconds to wait after failed attempt n (1-based); after the last, the delivery has failed.
RETRY_SCHEDULE: tuple[float, ...] = (2, 5, 30, 120, 600, 3600)
RETRY_AFTER_MAX = 3600  # a receiver's Retry-After is honoured up to an hour
MAX_IN_FLIGHT = 4
SECRET_PREFIX = "whsec_"

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_ERROR_MAX = 300  # characters of an error kept in the log


def parse_secret(secret: str) -> bytes:
    """The signing key of a "whsec_<base64>" secret; ValueError in one line if malformed."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secret must be whsec_ followed by base64")
    encoded = secret[len(SECRET_PREFIX) :]
    if not _BASE64.fullmatch(encoded):
        raise ValueError("webhook secret must be whsec_ followed by base64 (A-Z a-z 0-9 + /)")
    try:
        # Padding is optional, as in the reference implementation.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    except binascii.Error:
        raise ValueError("webhook secret: the part after whsec_ is not valid base64") from None
    if not key:
        raise ValueError("webhook secret must not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: "v1,<base64 HMAC-SHA256 of id.timestamp.body>"."""
    return _signature(parse_secret(secret), msg_id, timestamp, body)


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def new_message_id() -> str:
    """A webhook-id: "msg_" and 24 random URL-safe characters."""
    return "msg_" + secrets.token_urlsafe(18)


def alert_body(alert: dict[str, Any]) -> bytes:
    """The JSON a receiver gets for an alert."""
    event = {"type": "alert.fired", "timestamp": alert["fired_at"], "data": alert}
    return json.dumps(event, separators=(",", ":")).encode()


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None  # HTTP dates are always GMT; anything else is not one
    return max(0.0, moment.timestamp() - now)


def next_delay(attempts: int, schedule: Sequence[float], asked: float | None) -> float | None:
    """Seconds until the next try after `attempts` failed ones, or None when none is left."""
    if attempts > len(schedule):
        return None
    delay = schedule[attempts - 1]
    if asked is not None and asked > delay:
        delay = max(delay, min(asked, RETRY_AFTER_MAX))
    return delay


@dataclass
class Delivery:
    """One alert to one URL: its status and attempts; `id` is the webhook-id on every try."""

    id: str
    url: str
    alert_id: int | None
    body: bytes
    status: str = PENDING
    attempts: int = 0
    last_error: str | None = None
    last_status: int | None = None
    next_attempt_at: float = 0.0  # unix seconds; meaningful while pending
    created_at: float = 0.0  # unix seconds

    def to_dict(self) -> dict[str, Any]:
        """The REST listing's shape: no body; next_attempt_at null unless pending."""
        return {
            "id": self.id,
            "url": self.url,
            "alert_id": self.alert_id,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "next_attempt_at": self.next_attempt_at if self.status == PENDING else None,
            "created_at": self.created_at,
        }


class Answer(NamedTuple):
    """How one attempt went: the HTTP status if any answer came, and what went wrong."""

    status: int | None
    error: str | None
    retry_after: str | None = None


class WebhookDispatcher:
    """Signs and POSTs each alert to every URL, retrying with back-off; keeps a log."""

    def __init__(
        self,
        urls: Iterable[str],
        secret: str,
        *,
        timeout: float = 10.0,
        persist: Callable[[Delivery], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_log: int = 1000,
        schedule: Sequence[float] = RETRY_SCHEDULE,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.urls = tuple(dict.fromkeys(urls))
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"webhook URL must be an http:// or https:// URL: {url}")
        if max_log < 1:
            raise ValueError("max_log must be at least 1")
        self._key = parse_secret(secret)
        self._client: AsyncHTTPClient | None = None  # made by start(), closed by stop()
        self.timeout = timeout
        self._persist = persist
        self._clock = clock
        self._schedule = tuple(schedule)
        self._on_outcome = on_outcome
        self._max_per_url = max(1, MAX_IN_FLIGHT // 2)
        # Per URL, pending deliveries as a heap of (next_attempt_at, sequence, delivery).
        self._queues: dict[str, list[tuple[float, int, Delivery]]] = {u: [] for u in self.urls}
        # Attempts in flight, per URL and in all; counted in _attempt itself, because a
        # task's done-callbacks run only after the runner has already been woken.
        self._busy = dict.fromkeys(self.urls, 0)
        self._in_flight = 0
        self._sequence = itertools.count()
        # The listing; a pending delivery that falls off it is still delivered.
        self._log: deque[Delivery] = deque(maxlen=max_log)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    # The caller's side: never blocks, never awaits.

    def enqueue(self, alert: dict[str, Any]) -> list[Delivery]:
        """One pending delivery per URL for a (numbered) alert; sent by the background task."""
        body = alert_body(alert)
        now = self._clock()
        made = []
        for url in self.urls:
            delivery = Delivery(
                id=new_message_id(),
                url=url,
                alert_id=alert.get("id"),
                body=body,
                next_attempt_at=now,
                created_at=now,
            )
            self._log.append(delivery)
            self._queue(delivery)
            self._save(delivery)
            made.append(delivery)
        self._wake.set()
        return made

    def restore(self, deliveries: Iterable[Delivery]) -> None:
        """Resume deliveries loaded after a restart; finished ones only join the listing."""
        for delivery in sorted(deliveries, key=lambda d: d.created_at):
            self._log.append(delivery)
            if delivery.status != PENDING:
                continue
            if delivery.url not in self._queues:
                # The operator removed this URL: keep no promise to a receiver they dropped.
                delivery.status, delivery.last_error = FAILED, "webhook URL no longer configured"
                self._save(delivery)
                self._count(FAILED)
                continue
            self._queue(delivery)
        self._wake.set()

    def deliveries(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` deliveries, oldest first, as the REST listing shows them."""
        if limit <= 0:
            return []
        return [delivery.to_dict() for delivery in list(self._log)[-limit:]]

    # The background task.

    def start(self) -> None:
        """Start sending due deliveries; call on the running IOLoop."""
        if self._runner is not None:
            return
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True)
        self._stopping = False
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float = 1.0) -> None:
        """Stop sending; attempts in flight get `grace` seconds, then stay pending."""
        if self._runner is None:
            return
        self._stopping = True
        self._wake.set()
        await self._runner
        self._runner = None
        if self._tasks:
            _, unfinished = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._launch_due()
            try:
                await asyncio.wait_for(self._wake.wait(), self._seconds_to_next_due())
            except TimeoutError:
                pass

    def _launch_due(self) -> None:
        """Start every due delivery there is a slot for, taking turns between URLs."""
        now = self._clock()
        launched = True
        while launched:
            launched = False
            for url, queue in self._queues.items():
                if self._in_flight >= MAX_IN_FLIGHT:
                    return
                if queue and queue[0][0] <= now and self._busy[url] < self._max_per_url:
                    self._launch(heapq.heappop(queue)[2])
                    launched = True

    def _seconds_to_next_due(self) -> float | None:
        """How long the runner may sleep: until the next due delivery it has a slot for."""
        if self._in_flight >= MAX_IN_FLIGHT:
            return None  # a finishing attempt wakes the runner
        due = [
            queue[0][0]
            for url, queue in self._queues.items()
            if queue and self._busy[url] < self._max_per_url
        ]
        return max(0.0, min(due) - self._clock()) if due else None

    def _launch(self, delivery: Delivery) -> None:
        self._busy[delivery.url] += 1
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._attempt(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            answer = await self._post(delivery)
        except asyncio.CancelledError:
            self._queue(delivery)  # stopped mid-attempt: it stays pending, next in line
            raise
        finally:
            self._busy[delivery.url] -= 1
            self._in_flight -= 1
            self._wake.set()
        self._settle(delivery, answer)

    async def _post(self, delivery: Delivery) -> Answer:
        """One signed POST; any failure becomes an Answer, never an exception."""
        assert self._client is not None
        stamp = int(self._clock())
        request = HTTPRequest(
            delivery.url,
            method="POST",
            body=delivery.body,
            headers={
                "Content-Type": "application/json",
                "webhook-id": delivery.id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": _signature(self._key, delivery.id, stamp, delivery.body),
            },
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
            streaming_callback=_discard,  # the receiver's body is never read: do not hold it
        )
        try:
            response = await self._client.fetch(request, raise_error=False)
        except Exception as error:  # timeouts, refused connections, DNS, TLS
            return Answer(None, _describe(error))
        if 200 <= response.code < 300:
            return Answer(response.code, None)
        error = f"HTTP {response.code} {response.reason}".strip()
        return Answer(response.code, error, response.headers.get("Retry-After"))

    def _settle(self, delivery: Delivery, answer: Answer) -> None:
        """Record an attempt's outcome: delivered, failed, or queued for a retry."""
        now = self._clock()
        delivery.attempts += 1
        delivery.last_status = answer.status
        delivery.last_error = answer.error
        if answer.error is None:
            delivery.status, outcome = DELIVERED, DELIVERED
        elif answer.status == 410:
            delivery.status, outcome = FAILED, FAILED  # Gone: the receiver asks us to stop
        else:
            asked = retry_after(answer.retry_after, now)
            delay = next_delay(delivery.attempts, self._schedule, asked)
            if delay is None:
                delivery.status, outcome = FAILED, FAILED
            else:
                delivery.next_attempt_at, outcome = now + delay, "retry"
                self._queue(delivery)
        self._save(delivery)
        self._count(outcome)

    def _queue(self, delivery: Delivery) -> None:
        entry = (delivery.next_attempt_at, next(self._sequence), delivery)
        heapq.heappush(self._queues[delivery.url], entry)

    def _save(self, delivery: Delivery) -> None:
        if self._persist is None:
            return
        try:
            self._persist(delivery)
        except Exception:
            # The integrator's storage failing must not stop delivery or the alert path.
            log.exception("could not persist webhook delivery %s", delivery.id)

    def _count(self, outcome: str) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome)
        except Exception:
            log.exception("webhook outcome callback failed")


def _discard(chunk: bytes) -> None:
    pass


def _describe(error: Exception) -> str:
    """One line about a failed attempt, for the log and the listing."""
    if isinstance(error, HTTPClientError):
        text = error.message or str(error)  # e.g. "Timeout during request"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())[:_ERROR_MAX]
