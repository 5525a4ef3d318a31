"""Scale-out on a real redis-server: processes share ids, history, the live feed and alerts,
survive each other's death and Redis's, and --workers serves one port."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracker.verify import verify_database

from .rules import BRUTE_FORCE
from .servers import REDIS_SERVER, RedisServer, Server, free_port, run_refused, start
from .wsclient import Feed

TRACK = "/api/metrics/track?user_id={user}&action={action}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not os.path.exists(REDIS_SERVER):
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (apt-get install -y redis-server)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def trackers(redis_server: RedisServer, tmp_path: Path) -> Iterator[Any]:
    """Make tracker processes on the one Redis (with --db FILE when asked), and stop them."""
    made: list[Server] = []

    def make(*extra: str, db: str | None = None) -> Server:
        server = Server(db, "--redis", redis_server.url, *extra)
        made.append(server.start())
        return server

    yield make
    for each in made:
        if each.proc is not None:
            each.proc.kill()
            each.proc.wait()


def post(server: Server, user: str = "u", action: str = "view") -> dict[str, Any]:
    status, body, _ = server.request("POST", TRACK.format(user=user, action=action))
    assert status == 200, body
    return body


def until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_two_processes_hand_out_unique_ids_in_time_order(trackers: Any) -> None:
    a, b = trackers(), trackers()
    made: list[dict[str, Any]] = []

    def load(server: Server, user: str) -> None:
        for _ in range(100):
            made.append(post(server, user))

    threads = [threading.Thread(target=load, args=(s, u)) for s, u in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(m["id"] for m in made) == list(range(1, 201))
    for server in (a, b):
        listed = server.request("GET", "/api/metrics/activities?limit=1000")[1]
        assert [x["id"] for x in listed] == list(range(1, 201))
        stamps = [x["timestamp"] for x in listed]
        assert stamps == sorted(stamps)  # id order and time order agree across processes


def test_a_write_on_one_process_is_in_the_next_read_on_the_other(trackers: Any) -> None:
    a, b = trackers(), trackers()
    for i in range(50):
        made = post(a if i % 2 else b, f"u{i}")
        reader = b if i % 2 else a
        assert reader.request("GET", "/api/metrics/activities?limit=1")[1] == [made]
        filtered = reader.request("GET", f"/api/metrics/activities?user_id=u{i}")[1]
        assert filtered == [made]


def test_idempotency_keys_hold_across_processes(trackers: Any) -> None:
    a, b = trackers(), trackers()
    key = {"Idempotency-Key": "order-7"}
    first = a.request("POST", TRACK.format(user="u", action="pay"), headers=key)
    again = b.request("POST", TRACK.format(user="u", action="pay"), headers=key)
    assert first[0] == again[0] == 200 and first[1] == again[1]
    assert again[2].getheader("Idempotent-Replayed") == "true"
    other = b.request("POST", TRACK.format(user="u", action="refund"), headers=key)
    assert other[0] == 422
    assert len(a.request("GET", "/api/metrics/activities")[1]) == 1


@pytest.mark.gen_test(timeout=60)
async def test_live_clients_on_both_get_every_activity_once_in_order_and_resume_anywhere(
    trackers: Any,
) -> None:
    a, b = trackers(), trackers()
    feeds = [await Feed.connect(s.base_url) for s in (a, b, a, b)]
    store_id = feeds[0].messages[0]["store_id"]
    assert {f.messages[0]["store_id"] for f in feeds} == {store_id}
    threads = [
        threading.Thread(target=lambda s=s: [post(s, "x") for _ in range(100)]) for s in (a, b)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for feed in feeds:
        assert [x["id"] for x in await feed.until(200)] == list(range(1, 201))
    # A client of one process resumes on the other, without a hole or a duplicate.
    seen = feeds[0].ids[-1]
    feeds[0].close()
    for _ in range(30):
        post(a, "y")
    resumed = await Feed.connect(b.base_url, f"?since={seen}&store={store_id}")
    assert [x["id"] for x in await resumed.until(30)] == list(range(201, 231))
    assert [m["type"] for m in resumed.messages] == ["hello", "activities"] or all(
        m["type"] in ("hello", "activities") for m in resumed.messages
    )
    for feed in (*feeds[1:], resumed):
        feed.close()


def test_sigkill_of_one_process_under_load_loses_nothing_acknowledged(trackers: Any) -> None:
    a, b = trackers(), trackers()
    acked: list[int] = []
    stop = threading.Event()

    def load(server: Server) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", TRACK.format(user="k", action="w"))
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                return  # killed mid-request: never acknowledged
            if response.status == 200:
                acked.append(json.loads(body)["id"])

    threads = [threading.Thread(target=load, args=(s,)) for s in (a, a, b, b)]
    for thread in threads:
        thread.start()
    until(lambda: len(acked) >= 300)
    a.stop(signal.SIGKILL)
    time.sleep(0.3)  # b goes on alone
    stop.set()
    for thread in threads:
        thread.join()
    stored = {x["id"] for x in b.request("GET", "/api/metrics/activities?limit=1000")[1]}
    assert set(acked) <= stored
    post(b)  # and b still takes writes


def test_the_archive_is_complete_after_a_worker_crash(trackers: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "archive.db")
    a = trackers(db=db)
    b = trackers(db=db)
    acked = [post(a if i % 2 else b)["id"] for i in range(100)]
    a.stop(signal.SIGKILL)  # perhaps the leader, perhaps with entries not yet acknowledged
    b.stop(signal.SIGKILL)
    c = trackers(db=db)  # takes over the group and its pending entries
    acked += [post(c)["id"] for _ in range(20)]
    # c leads once the dead leader's lease runs out; until then history reads are 503.
    until(lambda: _archived(c) == sorted(acked), timeout=20)
    assert c.stop() == 0
    verdict = verify_database(db)
    assert verdict.ok and verdict.count == 120, verdict


def test_entries_a_deposed_leader_read_are_archived_in_order(
    trackers: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    import sqlite3

    import redis

    db = str(tmp_path / "archive.db")
    leader = trackers(db=db)
    post(leader)
    until(lambda: _archived(leader) == [1])
    ghost = redis.Redis.from_url(redis_server.url)
    lock = sqlite3.connect(db)
    lock.execute("BEGIN IMMEDIATE")  # the leader's next archive step waits: it reads no more
    try:
        post(leader)
        until(lambda: ghost.xpending("tracker:activities", "archive")["pending"] == 1)
        post(leader), post(leader)
        # Another consumer (a leader deposed mid-read) is given 3 and 4, and then dies.
        taken = ghost.xreadgroup("archive", "ghost", {"tracker:activities": ">"})
        assert [entry_id for entry_id, _ in taken[0][1]] == [b"3-0", b"4-0"]
        post(leader)
    finally:
        lock.rollback()
        lock.close()
    until(lambda: _archived(leader) == [1, 2, 3, 4, 5])
    assert ghost.xpending("tracker:activities", "archive")["pending"] == 0
    ghost.close()
    assert leader.stop() == 0
    verdict = verify_database(db)
    assert verdict.ok and verdict.count == 5, verdict


def test_a_frozen_redis_gets_bounded_503s_then_recovery(
    trackers: Any, redis_server: RedisServer
) -> None:
    a = trackers()
    post(a)
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # up, but answering nothing
    try:
        started = time.monotonic()
        status, body, response = a.request("POST", TRACK.format(user="u", action="view"))
        waited = time.monotonic() - started
        assert status == 503 and response.headers["Retry-After"], body
        assert waited < 4, f"a write waited {waited:.1f} s (bound: 2 s)"
        until(lambda: a.request("GET", "/readyz")[0] == 503, timeout=10)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    until(lambda: a.request("GET", "/readyz")[0] == 200)
    assert post(a)["id"] >= 2  # the 503 was a write Redis may have taken late


def _archived(server: Server) -> list[int]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/api/metrics/export?format=ndjson")
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    if response.status != 200:
        return []
    return [json.loads(line)["id"] for line in body.splitlines()]


@pytest.mark.gen_test(timeout=60)
async def test_redis_lost_then_back_empty_503s_recovers_and_tells_resuming_clients(
    trackers: Any, redis_server: RedisServer
) -> None:
    a = trackers()
    for _ in range(5):
        post(a)
    feed = await Feed.connect(a.base_url)
    old_store = feed.messages[0]["store_id"]
    redis_server.stop()
    started = time.monotonic()
    status, body, response = a.request("POST", TRACK.format(user="u", action="lost"))
    assert status == 503 and response.getheader("Retry-After")
    assert time.monotonic() - started < 3  # within 2 s, with room for a slow box
    assert a.request("GET", "/readyz")[0] == 503
    redis_server.start()  # empty: it lost the log
    until(lambda: a.request("GET", "/readyz")[0] == 200)
    assert post(a)["id"] == 1  # a new log
    # The live client is closed (1012) and, coming back with its old store, starts over.
    while await feed.next() is not None:
        pass
    assert feed.conn.close_code == 1012
    again = await Feed.connect(a.base_url, f"?since=5&store={old_store}")
    assert (await again.next()) == {"type": "reset", "reason": "store_changed"}
    assert [x["id"] for x in await again.until(1)] == [1]
    again.close()


@pytest.mark.gen_test(timeout=60)
async def test_alerts_fire_once_across_processes(trackers: Any, tmp_path: Path) -> None:
    a, b = trackers(), trackers()
    rule = {**BRUTE_FORCE, "threshold": 4, "cooldown_s": 600}
    assert a.request("PUT", "/api/alerts/rules/brute-force", rule)[0] == 201
    assert [r["name"] for r in b.request("GET", "/api/alerts/rules")[1]] == ["brute-force"]
    feeds = [await Feed.connect(s.base_url) for s in (a, b)]
    for i in range(8):
        post(a if i % 2 else b, "mallory", "login_failed")
    until(lambda: all(len(s.request("GET", "/api/alerts")[1]) == 1 for s in (a, b)))
    alerts = [s.request("GET", "/api/alerts")[1] for s in (a, b)]
    assert alerts[0] == alerts[1] and alerts[0][0]["activity_ids"] == [1, 2, 3, 4]
    for feed in feeds:
        got = []
        while not got:
            message = await feed.next()
            assert message is not None
            got = [message] if message["type"] == "alert" else []
        assert got[0]["alert"]["id"] == alerts[0][0]["id"]
        assert feed.ids[-1] >= 4  # after the activity that fired it
        feed.close()
    time.sleep(0.5)
    assert all(len(s.request("GET", "/api/alerts")[1]) == 1 for s in (a, b))  # once


def listening_sockets(port: int) -> int:
    """How many sockets listen on the port (SO_REUSEPORT lets several)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                count += 1
    return count


def test_two_workers_serve_one_port(redis_server: RedisServer) -> None:
    port = free_port()
    proc, url = start("--port", str(port), "--workers", "2", "--redis", redis_server.url)
    try:
        assert url.endswith(f":{port}/api/ui-dashboard/metrics-dashboard-ui")
        assert listening_sockets(port) == 2
        ids = []
        for i in range(100):  # each on a new connection: the kernel spreads them
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", TRACK.format(user=f"u{i}", action="view"))
            ids.append(json.loads(conn.getresponse().read())["id"])
            conn.close()
        assert sorted(ids) == list(range(1, 101))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()


def test_workers_without_redis_are_refused_in_one_line() -> None:
    result = run_refused("--workers", "2")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--redis" in result.stderr


@pytest.mark.gen_test(timeout=30)
async def test_writes_of_one_turn_share_a_round_trip_and_keep_their_own_answers(
    redis_server: RedisServer,
) -> None:
    from tracker.activity import ActivityInput, ValidationError
    from tracker.service import IdempotencyConflict
    from tracker.streams.redis import RedisLog
    from tracker.streams.redis_service import RedisService

    service = RedisService(RedisLog(redis_server.url), 100)
    await service.start()
    try:
        # Started in one turn: one script call; the key's second body is refused alone.
        first, second, third = await asyncio.gather(
            service.track([ActivityInput("a", "pay")], ["order-1"]),
            service.track([ActivityInput("b", "refund")], ["order-1"]),
            service.track([ActivityInput("c", "view"), ActivityInput("d", "view")]),
            return_exceptions=True,
        )
        assert isinstance(second, IdempotencyConflict)
        assert [a.id for a in first[0]] == [1] and first[1] == [True]
        assert [a.id for a in third[0]] == [2, 3]
        assert first[0][0].timestamp == third[0][0].timestamp  # one clock reading
        replay = await service.track([ActivityInput("a", "pay")], ["order-1"])
        assert replay == ([first[0][0]], [False])
        # Bad input from another thread is refused there, alone; the next id is the next.
        bad = [ActivityInput("e", "view", "\ud800")]
        refused = asyncio.get_running_loop().run_in_executor(None, service.record_many, bad)
        after = await service.track([ActivityInput("f", "view")])
        with pytest.raises(ValidationError):
            await refused
        assert [a.id for a in after[0]] == [4]
    finally:
        await service.stop()
