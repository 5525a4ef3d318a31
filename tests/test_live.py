"""The live feed over real sockets: delivery, order, resume, slow clients, origins, shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import sys
import threading
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tracker.activity import ActivityInput
from tracker.hub import CLOSE_TOO_SLOW, LiveHub
from tracker.service import ActivityService

from .conftest import Api, error_of
from .servers import ROOT, free_port
from .wsclient import Feed, RawClient, ws_url


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    """Poll until condition() is true, yielding to the IOLoop in between."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def record(service: ActivityService, count: int, user: str = "u") -> None:
    for i in range(count):
        service.record(ActivityInput(user, "view", str(i)))


@pytest.mark.gen_test
@pytest.mark.both_backends
async def test_hello_tells_store_and_position(http_server: Any, base_url: str, service) -> None:
    record(service, 3)
    feed = await Feed.connect(base_url)
    assert feed.messages[0] == {
        "type": "hello",
        "store_id": service.store_id,
        "last_id": 3,
        "oldest_id": 1,
    }
    feed.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.both_backends
async def test_three_clients_each_get_all_100_once_in_order(
    http_server: Any, base_url: str, api: Api
) -> None:
    feeds = [await Feed.connect(base_url) for _ in range(3)]
    for i in range(100):
        assert (await api.track(f"?user_id=u{i}&action=view")).code == 200
    for feed in feeds:
        got = await feed.until(100)
        assert [a["id"] for a in got] == list(range(1, 101))
        assert [a["user_id"] for a in got] == [f"u{i}" for i in range(100)]
        assert set(got[0]) == {"id", "user_id", "action", "timestamp", "details"}
    await asyncio.sleep(0.05)
    for feed in feeds:
        assert len(feed.activities) == 100  # nothing more, nothing twice
        feed.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.both_backends
async def test_reconnect_with_since_resumes_exactly(
    http_server: Any, base_url: str, api: Api, service: ActivityService
) -> None:
    feed = await Feed.connect(base_url)
    record(service, 20)
    await feed.until(20)
    k = feed.ids[-1]
    feed.close()
    record(service, 50)
    resumed = await Feed.connect(base_url, f"?since={k}&store={service.store_id}")
    assert [a["id"] for a in await resumed.until(50)] == list(range(k + 1, k + 51))
    assert [m["type"] for m in resumed.messages] == ["hello", "activities"]
    record(service, 1)
    assert (await resumed.until(51))[-1]["id"] == k + 51
    resumed.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(capacity=100)
async def test_resume_from_evicted_id_is_told_then_gets_the_buffer(
    http_server: Any, base_url: str, service: ActivityService
) -> None:
    record(service, 250)
    feed = await Feed.connect(base_url, "?since=10")
    assert (await feed.next()) == {"type": "reset", "reason": "evicted"}
    assert [a["id"] for a in await feed.until(100)] == list(range(151, 251))
    feed.close()


@pytest.mark.gen_test
@pytest.mark.both_backends
async def test_other_store_or_future_id_is_a_reset(
    http_server: Any, base_url: str, service: ActivityService
) -> None:
    record(service, 5)
    other = await Feed.connect(base_url, "?since=3&store=another-store")
    assert await other.next() == {"type": "reset", "reason": "store_changed"}
    assert [a["id"] for a in await other.until(5)] == [1, 2, 3, 4, 5]
    ahead = await Feed.connect(base_url, "?since=99")
    assert await ahead.next() == {"type": "reset", "reason": "ahead"}
    assert [a["id"] for a in await ahead.until(5)] == [1, 2, 3, 4, 5]
    other.close()
    ahead.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("since", ["x", "-1", "1.5", ""])
async def test_bad_since_is_a_json_400(http_server: Any, http_client, base_url: str, since) -> None:
    response = await http_client.fetch(
        ws_url(base_url, f"?since={since}").replace("ws://", "http://"), raise_error=False
    )
    assert response.code == 400
    assert error_of(response)["field"] == "since"


async def drop_a_stuck_client(
    http_port: int, base_url: str, service: ActivityService, hub: LiveHub, details: str
) -> tuple[int, list[int]]:
    """Record until a client that never reads is dropped, while another reads everything.

    Returns the last id recorded when the hub dropped it, and the ids the stuck client
    finds when it reads at last (before its close frame, which must say 4008).
    """
    # Its handshake blocks, so it runs off the IOLoop that serves it.
    stuck = await asyncio.to_thread(RawClient, http_port, "", 4096)
    reader = await Feed.connect(base_url)
    await wait_for(lambda: hub.client_count == 2)
    reading = asyncio.ensure_future(reader.until(10**9))  # until it closes
    step, dropped_at = 100, 0
    while not dropped_at:
        for _ in range(step):
            service.record(ActivityInput("u", "view", details))
        # The reader has it all, so every step was flushed before the next one.
        await wait_for(lambda: len(reader.activities) >= service.last_id)
        if hub.dropped_slow:
            dropped_at = service.last_id
        assert service.last_id < 100_000, "the stuck client was never dropped"
    assert reader.ids == list(range(1, service.last_id + 1))
    assert hub.client_count == 1
    stuck.sock.settimeout(10)
    seen: list[int] = []
    while True:
        opcode, payload = await asyncio.to_thread(stuck.frame)
        if opcode == 0x8:
            assert struct.unpack("!H", payload[:2])[0] == CLOSE_TOO_SLOW
            break
        message = json.loads(payload)
        if message["type"] == "activities":
            seen.extend(a["id"] for a in message["items"])
    stuck.close()
    reader.close()
    await reading
    return dropped_at, seen


@pytest.mark.gen_test(timeout=120)
@pytest.mark.settings(ws_max_backlog=2000)
async def test_client_that_never_reads_is_closed_when_its_backlog_passes_the_count(
    http_server: Any, http_port: int, base_url: str, service: ActivityService, hub: LiveHub
) -> None:
    dropped_at, seen = await drop_a_stuck_client(
        http_port, base_url, service, hub, details="x" * 200
    )
    # A gapless prefix, then exactly max_backlog more were held for it (within one step).
    assert seen == list(range(1, len(seen) + 1))
    assert hub.max_backlog < dropped_at - len(seen) <= hub.max_backlog + 100


@pytest.mark.gen_test(timeout=120)
@pytest.mark.settings(ws_max_backlog_bytes=200_000)
async def test_client_that_never_reads_is_closed_when_its_backlog_passes_the_bytes(
    http_server: Any, http_port: int, base_url: str, service: ActivityService, hub: LiveHub
) -> None:
    details = "\u00e9" * 1000  # 6 KB once escaped: the byte bound comes long before the count
    dropped_at, seen = await drop_a_stuck_client(http_port, base_url, service, hub, details)
    assert seen == list(range(1, len(seen) + 1))
    per_activity = len(service.record(ActivityInput("u", "view", details)).json) + 1
    held = dropped_at - len(seen)
    assert held * per_activity > hub.max_backlog_bytes
    assert (held - 100) * per_activity <= hub.max_backlog_bytes


@pytest.mark.gen_test(timeout=30)
@pytest.mark.both_backends
@pytest.mark.settings(capacity=300, ws_max_backlog=50)
async def test_a_reset_replays_no_more_than_the_backlog_bound(
    http_server: Any, base_url: str, service: ActivityService
) -> None:
    record(service, 500)
    feed = await Feed.connect(base_url, "?since=0&store=another-store")
    assert await feed.next() == {"type": "reset", "reason": "store_changed"}
    assert [a["id"] for a in await feed.until(50)] == list(range(451, 501))
    record(service, 1)
    assert (await feed.until(51))[-1]["id"] == 501
    feed.close()


@pytest.mark.gen_test(timeout=60)
async def test_activities_from_four_threads_are_all_broadcast(
    http_server: Any, base_url: str, service: ActivityService
) -> None:
    feed = await Feed.connect(base_url)
    threads = [threading.Thread(target=record, args=(service, 1000, f"t{n}")) for n in range(4)]
    for thread in threads:
        thread.start()
    got = await feed.until(4000)
    for thread in threads:
        thread.join()
    assert [a["id"] for a in got] == list(range(1, 4001))
    assert {a["user_id"] for a in got} == {"t0", "t1", "t2", "t3"}
    feed.close()


async def connect_with_origin(base_url: str, origin: str | None) -> Any:
    headers = {"Origin": origin} if origin else {}
    return await websocket_connect(HTTPRequest(ws_url(base_url), headers=headers))


@pytest.mark.gen_test
async def test_cross_site_origin_is_refused(http_server: Any, base_url: str, hub) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await connect_with_origin(base_url, "http://evil.example")
    assert refused.value.code == 403
    assert hub.client_count == 0
    host = base_url.split("://", 1)[1]
    for origin in (f"http://{host}", None):
        conn = await connect_with_origin(base_url, origin)
        assert json.loads(await conn.read_message())["type"] == "hello"
        conn.close()


@pytest.mark.gen_test
@pytest.mark.settings(allowed_origins=("https://dash.example",))
async def test_allowed_origins_widen_the_check(http_server: Any, base_url: str) -> None:
    conn = await connect_with_origin(base_url, "https://dash.example")
    assert json.loads(await conn.read_message())["type"] == "hello"
    conn.close()
    with pytest.raises(HTTPClientError) as refused:
        await connect_with_origin(base_url, "http://evil.example")
    assert refused.value.code == 403


@pytest.mark.gen_test(timeout=120)
async def test_connect_disconnect_cycles_leave_no_subscriber(
    http_server: Any, base_url: str, service: ActivityService, hub: LiveHub
) -> None:
    for _ in range(1000):
        feed = await Feed.connect(base_url)
        feed.close()
    await wait_for(lambda: hub.client_count == 0)
    record(service, 10)  # and the hub still works with nobody listening
    feed = await Feed.connect(base_url, "?since=0")
    assert len(await feed.until(10)) == 10
    feed.close()


@pytest.mark.gen_test(timeout=30)
async def test_sigterm_closes_clients_with_1001() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "run.py", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        await asyncio.to_thread(proc.stdout.readline)
        conns = [
            await websocket_connect(f"ws://127.0.0.1:{port}/api/metrics/live") for _ in range(3)
        ]
        for conn in conns:
            assert json.loads(await conn.read_message())["type"] == "hello"
        proc.send_signal(signal.SIGTERM)
        for conn in conns:
            assert await conn.read_message() is None
            assert conn.close_code == 1001
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        proc.kill()
        proc.wait()
