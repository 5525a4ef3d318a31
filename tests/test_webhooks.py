"""Webhooks: Standard Webhooks signatures, and delivery to real local receivers."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, NamedTuple

import pytest
import tornado.web
from standardwebhooks import Webhook
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from tracker.alerts.webhooks import (
    RETRY_SCHEDULE,
    Delivery,
    WebhookDispatcher,
    alert_body,
    new_message_id,
    next_delay,
    parse_secret,
    retry_after,
    sign,
)

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
FAST = (0.05, 0.05, 0.05)  # a retry schedule for tests: three retries, 50 ms apart


def alert(number: int = 7) -> dict[str, Any]:
    return {
        "id": number,
        "rule": "brute-force",
        "severity": "high",
        "group": {"user_id": "u1"},
        "count": 5,
        "activity_ids": [101, 102, 103, 104, 105],
        "fired_at": "2025-11-05T10:30:00.123456+00:00",
        "message": "5 login_failed by u1 in 60 s",
    }


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


# Signing


def test_signature_matches_the_reference_implementation() -> None:
    body = alert_body(alert())
    expected = Webhook(SECRET).sign(
        "msg_abc", datetime.fromtimestamp(1_700_000_000, UTC), body.decode()
    )
    assert sign(SECRET, "msg_abc", 1_700_000_000, body) == expected
    assert expected.startswith("v1,")


def test_signature_of_non_ascii_body_matches_the_reference() -> None:
    body = json.dumps({"message": "zoë"}, ensure_ascii=False).encode()
    expected = Webhook(SECRET).sign("msg_x", datetime.fromtimestamp(5, UTC), body.decode())
    assert sign(SECRET, "msg_x", 5, body) == expected


def test_secret_without_padding_is_accepted() -> None:
    unpadded = "whsec_" + base64.b64encode(b"0123456789").decode().rstrip("=")
    assert parse_secret(unpadded) == b"0123456789"
    assert sign(unpadded, "m", 1, b"{}") == Webhook(unpadded).sign(
        "m", datetime.fromtimestamp(1, UTC), "{}"
    )


@pytest.mark.parametrize(
    "secret",
    ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!!", "whsec_a", "whsec_ab cd"],
)
def test_bad_secret_is_a_one_line_value_error(secret: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_secret(secret)
    assert str(caught.value) and "\n" not in str(caught.value)
    assert "webhook secret" in str(caught.value)


def test_message_ids_are_random_and_url_safe() -> None:
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100
    for msg_id in ids:
        assert msg_id.startswith("msg_") and len(msg_id) >= 28
        assert all(c.isalnum() or c in "-_" for c in msg_id[4:])


def test_alert_body_shape() -> None:
    assert json.loads(alert_body(alert())) == {
        "type": "alert.fired",
        "timestamp": "2025-11-05T10:30:00.123456+00:00",
        "data": alert(),
    }


# Back-off arithmetic


def test_retry_schedule_is_the_documented_one() -> None:
    assert RETRY_SCHEDULE == (2, 5, 30, 120, 600, 3600)
    assert [next_delay(n, RETRY_SCHEDULE, None) for n in range(1, 8)] == [
        2,
        5,
        30,
        120,
        600,
        3600,
        None,
    ]


def test_retry_after_longer_than_the_schedule_wins_up_to_an_hour() -> None:
    assert next_delay(1, RETRY_SCHEDULE, 10) == 10
    assert next_delay(1, RETRY_SCHEDULE, 1) == 2
    assert next_delay(1, RETRY_SCHEDULE, 86_400) == 3600
    assert next_delay(6, RETRY_SCHEDULE, 86_400) == 3600
    assert next_delay(7, RETRY_SCHEDULE, 10) is None


def test_retry_after_header_forms() -> None:
    now = 1_700_000_000.0
    in_two_minutes = format_datetime(datetime.fromtimestamp(now + 120, UTC), usegmt=True)
    assert retry_after("30", now) == 30
    assert retry_after(" 5 ", now) == 5
    assert retry_after(in_two_minutes, now) == pytest.approx(120)
    assert retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now) == 0
    for junk in (None, "", "-5", "1.5", "soon", "Thu, 01 Jan 1970 00:00:00"):
        assert retry_after(junk, now) is None


def test_delivery_listing_has_no_body() -> None:
    delivery = Delivery("msg_1", "http://x/", 7, b"{}", created_at=1.0, next_attempt_at=3.0)
    assert delivery.to_dict() == {
        "id": "msg_1",
        "url": "http://x/",
        "alert_id": 7,
        "status": "pending",
        "attempts": 0,
        "last_error": None,
        "last_status": None,
        "next_attempt_at": 3.0,
        "created_at": 1.0,
    }
    delivery.status = "delivered"
    assert delivery.to_dict()["next_attempt_at"] is None


def test_bad_urls_and_secrets_are_refused_at_construction() -> None:
    for url in ("ftp://x/", "localhost:8000", "http://"):
        with pytest.raises(ValueError):
            WebhookDispatcher([url], SECRET)
    with pytest.raises(ValueError):
        WebhookDispatcher(["http://x/"], "nope")


# Delivery to real receivers


class Received(NamedTuple):
    at: float
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server on 127.0.0.1: answers each POST from a script, records it."""

    def __init__(self, script: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.script = list(script or [])
        self.received: list[Received] = []
        self.on_request: Callable[[], None] = lambda: None
        sock, self.port = bind_unused_port()
        app = tornado.web.Application([(r"/hook", _Hook, {"receiver": self})])
        self.server = HTTPServer(app)
        self.server.add_sockets([sock])
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def answer(self) -> tuple[int, dict[str, str]]:
        return self.script.pop(0) if self.script else (200, {})

    def ids(self) -> list[str]:
        return [r.headers["Webhook-Id"] for r in self.received]


class _Hook(tornado.web.RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def post(self) -> None:
        request = self.request
        self.receiver.received.append(
            Received(time.monotonic(), dict(request.headers), request.body)
        )
        self.receiver.on_request()
        status, headers = self.receiver.answer()
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.finish(b"ok" * 1000)


@pytest.fixture
def receiver(io_loop: Any) -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(script: list[tuple[int, dict[str, str]]] | None = None) -> Receiver:
        made.append(Receiver(script))
        return made[-1]

    yield make
    for each in made:
        each.server.stop()


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


@pytest.fixture
def closed_url() -> str:
    """A port nothing listens on: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/hook"


class Recorder:
    """What persist and on_outcome were told."""

    def __init__(self) -> None:
        self.saved: list[Delivery] = []  # snapshots, in order
        self.outcomes: list[str] = []

    def persist(self, delivery: Delivery) -> None:
        self.saved.append(dataclasses.replace(delivery))

    def latest(self) -> dict[str, Delivery]:
        return {d.id: d for d in self.saved}


@pytest.fixture
def dispatchers(io_loop: Any) -> Iterator[Callable[..., tuple[WebhookDispatcher, Recorder]]]:
    made: list[WebhookDispatcher] = []

    def make(urls: list[str], start: bool = True, **options: Any) -> Any:
        recorder = Recorder()
        options = {"schedule": FAST, "timeout": 2.0, **options}
        dispatcher = WebhookDispatcher(
            urls, SECRET, persist=recorder.persist, on_outcome=recorder.outcomes.append, **options
        )
        if start:
            dispatcher.start()
        made.append(dispatcher)
        return dispatcher, recorder

    yield make
    for dispatcher in made:
        io_loop.run_sync(lambda d=dispatcher: d.stop(grace=0))


@pytest.mark.gen_test
async def test_delivery_is_signed_as_standard_webhooks_verifies(receiver, dispatchers) -> None:
    hook = receiver()
    dispatcher, recorder = dispatchers([hook.url])
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.status == "delivered")
    [got] = hook.received
    assert Webhook(SECRET).verify(got.body, got.headers) == json.loads(alert_body(alert()))
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Webhook-Id"] == delivery.id
    assert abs(int(got.headers["Webhook-Timestamp"]) - time.time()) < 5
    assert (delivery.attempts, delivery.last_status, delivery.last_error) == (1, 200, None)
    assert delivery.alert_id == 7
    assert [d.status for d in recorder.saved] == ["pending", "delivered"]
    assert recorder.outcomes == ["delivered"]


@pytest.mark.gen_test
async def test_enqueue_returns_at_once_one_pending_delivery_per_url(receiver, dispatchers) -> None:
    first, second = receiver(), receiver()
    dispatcher, recorder = dispatchers([first.url, second.url, first.url], start=False)
    made = dispatcher.enqueue(alert())
    assert [d.url for d in made] == [first.url, second.url]
    assert [d.status for d in made] == ["pending", "pending"]
    assert made[0].id != made[1].id
    assert [d.status for d in recorder.saved] == ["pending", "pending"]
    dispatcher.start()
    await until(lambda: all(d.status == "delivered" for d in made))
    assert first.ids() == [made[0].id] and second.ids() == [made[1].id]


@pytest.mark.gen_test
async def test_retries_keep_the_webhook_id_until_delivered(receiver, dispatchers) -> None:
    hook = receiver([(500, {}), (500, {})])
    dispatcher, recorder = dispatchers([hook.url])
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.status == "delivered")
    assert hook.ids() == [delivery.id] * 3
    assert (delivery.attempts, delivery.last_status, delivery.last_error) == (3, 200, None)
    assert recorder.outcomes == ["retry", "retry", "delivered"]
    for got in hook.received:
        Webhook(SECRET).verify(got.body, got.headers)
    retried = [d for d in recorder.saved if d.attempts == 1]
    assert retried[0].last_error == "HTTP 500 Internal Server Error"
    assert retried[0].last_status == 500 and retried[0].status == "pending"


@pytest.mark.gen_test
async def test_each_attempt_is_stamped_and_signed_with_its_own_time(receiver, dispatchers) -> None:
    hook = receiver([(500, {})])
    offset = [0.0]

    def jump() -> None:
        offset[0] += 100  # the clock moves on between the attempts

    hook.on_request = jump
    dispatcher, _ = dispatchers([hook.url], clock=lambda: time.time() + offset[0])
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.status == "delivered")
    stamps = [int(r.headers["Webhook-Timestamp"]) for r in hook.received]
    assert stamps[1] - stamps[0] >= 100
    for got in hook.received:
        stamp = int(got.headers["Webhook-Timestamp"])
        assert got.headers["Webhook-Signature"] == sign(SECRET, delivery.id, stamp, got.body)


@pytest.mark.gen_test
async def test_gone_stops_at_once(receiver, dispatchers) -> None:
    hook = receiver([(410, {}), (200, {})])
    dispatcher, recorder = dispatchers([hook.url])
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.status != "pending")
    await asyncio.sleep(0.2)  # longer than a retry would wait
    assert len(hook.received) == 1
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("failed", 1, 410)
    assert recorder.outcomes == ["failed"]


@pytest.mark.gen_test
async def test_failed_after_the_last_retry(receiver, dispatchers) -> None:
    hook = receiver([(503, {})] * 10)
    dispatcher, recorder = dispatchers([hook.url], schedule=(0.01, 0.01))
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.status != "pending")
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert delivery.last_error == "HTTP 503 Service Unavailable"
    assert recorder.outcomes == ["retry", "retry", "failed"]
    await asyncio.sleep(0.1)
    assert len(hook.received) == 3


@pytest.mark.gen_test
async def test_other_non_2xx_answers_are_retried(receiver, dispatchers) -> None:
    hook = receiver([(301, {"Location": "/elsewhere"}), (404, {}), (429, {})])
    dispatcher, recorder = dispatchers([hook.url])
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.status == "delivered")
    assert delivery.attempts == 4
    assert recorder.outcomes == ["retry", "retry", "retry", "delivered"]


@pytest.mark.gen_test
async def test_retry_after_asking_for_longer_is_honoured(receiver, dispatchers) -> None:
    hook = receiver([(503, {"Retry-After": "1"})])
    dispatcher, _ = dispatchers([hook.url], schedule=(0.05,))
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.attempts == 1)
    assert delivery.next_attempt_at - time.time() > 0.9
    await until(lambda: delivery.status == "delivered")
    first, second = hook.received
    assert 0.95 <= second.at - first.at < 2


@pytest.mark.gen_test
async def test_retry_after_asking_for_less_keeps_the_schedule(receiver, dispatchers) -> None:
    hook = receiver([(503, {"Retry-After": "0"})])
    dispatcher, _ = dispatchers([hook.url], schedule=(0.3,))
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.status == "delivered")
    first, second = hook.received
    assert second.at - first.at >= 0.29


@pytest.mark.gen_test
async def test_refused_connection_is_retried_then_failed(closed_url, dispatchers) -> None:
    dispatcher, recorder = dispatchers([closed_url], schedule=(0.01,))
    [delivery] = dispatcher.enqueue(alert())
    await until(lambda: delivery.status != "pending")
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("failed", 2, None)
    assert "refused" in (delivery.last_error or "").lower()
    assert recorder.outcomes == ["retry", "failed"]


@pytest.mark.gen_test
async def test_a_receiver_that_never_answers_times_out(hung_url, dispatchers) -> None:
    dispatcher, recorder = dispatchers([hung_url], schedule=(0.01,), timeout=0.2)
    [delivery] = dispatcher.enqueue(alert())
    started = time.monotonic()
    await until(lambda: delivery.status != "pending")
    assert 0.4 <= time.monotonic() - started < 1.5
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert "timeout" in (delivery.last_error or "").lower()


@pytest.mark.gen_test
async def test_a_hung_receiver_does_not_delay_another_url(hung_url, receiver, dispatchers) -> None:
    hook = receiver()
    dispatcher, _ = dispatchers([hung_url, hook.url], timeout=3.0)
    started = time.monotonic()
    for number in range(8):
        dispatcher.enqueue(alert(number))

    def delivered() -> list[dict[str, Any]]:
        return [d for d in dispatcher.deliveries(100) if d["status"] == "delivered"]

    await until(lambda: len(delivered()) == 8, timeout=2.0)
    assert time.monotonic() - started < 1.0
    assert {d["url"] for d in delivered()} == {hook.url}
    assert len(hook.received) == 8
    listing = dispatcher.deliveries(100)
    assert all(d["status"] == "pending" for d in listing if d["url"] == hung_url)


@pytest.mark.gen_test
async def test_stop_leaves_unfinished_deliveries_pending(hung_url, dispatchers) -> None:
    dispatcher, recorder = dispatchers([hung_url])
    [delivery] = dispatcher.enqueue(alert())
    await asyncio.sleep(0.1)  # in flight, unanswered
    started = time.monotonic()
    await dispatcher.stop(grace=0.05)
    assert time.monotonic() - started < 1.0
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    [later] = dispatcher.enqueue(alert(8))  # after stop: kept, persisted, not sent
    assert later.status == "pending" and recorder.saved[-1].id == later.id
    assert recorder.outcomes == []


@pytest.mark.gen_test
async def test_restore_resumes_pending_deliveries_after_a_restart(
    receiver, closed_url, dispatchers
) -> None:
    hook = receiver()
    before, recorder = dispatchers([hook.url], start=False)
    [pending] = before.enqueue(alert())
    stored = list(recorder.latest().values())  # what a store would hold
    done = Delivery("msg_old", hook.url, 1, b"{}", status="delivered", attempts=1)
    gone = Delivery("msg_gone", closed_url, 2, b"{}", created_at=1.0)
    after, after_recorder = dispatchers([hook.url])
    after.restore([dataclasses.replace(d) for d in stored] + [done, gone])
    await until(lambda: after.deliveries(1)[0]["status"] == "delivered")
    assert hook.ids() == [pending.id]
    assert [(d["id"], d["status"]) for d in after.deliveries(10)] == [
        ("msg_old", "delivered"),
        ("msg_gone", "failed"),
        (pending.id, "delivered"),
    ]
    assert after_recorder.latest()["msg_gone"].last_error == "webhook URL no longer configured"


@pytest.mark.gen_test
async def test_listing_is_the_newest_n_oldest_first_and_bounded(dispatchers) -> None:
    dispatcher, _ = dispatchers(["http://127.0.0.1:9/hook"], start=False, max_log=3)
    for number in range(1, 6):
        dispatcher.enqueue(alert(number))
    assert [d["alert_id"] for d in dispatcher.deliveries(2)] == [4, 5]
    assert [d["alert_id"] for d in dispatcher.deliveries(10)] == [3, 4, 5]
    assert dispatcher.deliveries(0) == []
    assert all("body" not in d for d in dispatcher.deliveries(10))


@pytest.mark.gen_test
async def test_a_failing_persist_does_not_stop_delivery(receiver, io_loop) -> None:
    hook = receiver()

    def broken(delivery: Delivery) -> None:
        raise OSError("disk full")

    dispatcher = WebhookDispatcher([hook.url], SECRET, persist=broken, schedule=FAST)
    dispatcher.start()
    try:
        [delivery] = dispatcher.enqueue(alert())
        await until(lambda: delivery.status == "delivered")
    finally:
        await dispatcher.stop()
