"""Durable storage with --db: acknowledged means committed, retries, history, retention."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.httputil import HTTPHeaders

from tracker.activity import ActivityInput
from tracker.query import Query
from tracker.service import ActivityService
from tracker.store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore
from tracker.verify import verify_database

from .conftest import Api, error_of
from .servers import free_port, run_refused
from .wsclient import Feed


def run(coroutine: Any) -> Any:
    """Run one of the service's coroutines to its end, from a plain test."""
    return asyncio.run(coroutine)


async def scanned(service: ActivityService, query: Query) -> list[int]:
    """The ids an export of `query` streams, in order."""
    return [link.activity.id async for chunk in service.scan(query) for link in chunk]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "activities.db")


def test_sigkill_during_ingest_loses_nothing_acknowledged(server: Any) -> None:
    srv = server("--capacity", "100").start()
    acked: list[list[tuple[str, int]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        i = 0
        while not stop.is_set():
            marker = f"c{n}-{i}"
            i += 1
            try:
                conn.request(
                    "POST", f"/api/metrics/track?user_id=c{n}&action=write&details={marker}"
                )
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                return  # the server died mid-request: this one was never acknowledged
            if response.status == 200:
                acked[n].append((marker, json.loads(body)["id"]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while sum(map(len, acked)) < 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.stop(signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join()
    acknowledged = dict(pair for chunk in acked for pair in chunk)
    assert len(acknowledged) >= 400

    srv.start()
    stored = srv.all_activities()
    by_marker: dict[str, list[int]] = {}
    for activity in stored:
        by_marker.setdefault(activity["details"], []).append(activity["id"])
    for marker, activity_id in acknowledged.items():
        assert by_marker.get(marker) == [activity_id], marker
    assert all(len(found) == 1 for found in by_marker.values())
    ids = [a["id"] for a in stored]
    assert ids == sorted(set(ids))
    status, after, _ = srv.request("POST", "/api/metrics/track?user_id=z&action=after")
    assert status == 200 and after["id"] > max(ids)
    assert srv.stop() == 0


def test_idempotency_key_survives_a_restart(server: Any) -> None:
    srv = server().start()
    headers = {"Idempotency-Key": "order-42"}
    first = srv.request("POST", "/api/metrics/track?user_id=u&action=pay", headers=headers)
    again = srv.request("POST", "/api/metrics/track?user_id=u&action=pay", headers=headers)
    assert first[0] == again[0] == 200 and again[1] == first[1]
    assert again[2].getheader("Idempotent-Replayed") == "true"
    batch = [
        {"user_id": "u", "action": "a", "event_id": "e1"},
        {"user_id": "u", "action": "b", "event_id": "e2"},
        {"user_id": "u", "action": "a", "event_id": "e1"},
    ]
    status, body, _ = srv.request("POST", "/api/metrics/track/batch", batch)
    assert status == 200 and body["recorded"] == 2
    assert body["items"][2] == body["items"][0]
    assert srv.stop() == 0

    srv.start()
    after = srv.request("POST", "/api/metrics/track?user_id=u&action=pay", headers=headers)
    assert after[0] == 200 and after[1] == first[1]
    status, rebatch, _ = srv.request("POST", "/api/metrics/track/batch", batch)
    assert rebatch["recorded"] == 0 and rebatch["items"] == body["items"]
    assert len(srv.all_activities()) == 3
    assert srv.stop() == 0


@pytest.mark.gen_test
async def test_memory_keys_last_as_long_as_the_buffer(api: Api, service: ActivityService) -> None:
    headers = {"Idempotency-Key": "k"}
    first = await api.track("?user_id=u&action=a", headers=headers)
    assert json.loads((await api.track("?user_id=u&action=a", headers=headers)).body)["id"] == 1
    service.record_many([ActivityInput("filler", "view", None)] * service.capacity)
    later = await api.track("?user_id=u&action=a", headers=headers)
    assert json.loads(later.body)["id"] == service.capacity + 2  # evicted: recorded anew
    assert json.loads(first.body)["id"] == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("key", ["", " ", "k" * 257])
async def test_bad_idempotency_key_is_400(api: Api, service: ActivityService, key: str) -> None:
    response = await api.track("?user_id=u&action=a", headers={"Idempotency-Key": key})
    assert response.code == 400 and error_of(response)["field"] == "Idempotency-Key"
    batch = [{"user_id": "u", "action": "a", "event_id": key or 7}]
    response = await api.request("POST", "/api/metrics/track/batch", body=batch)
    assert response.code == 400 and error_of(response)["field"] == "event_id"
    assert service.last_id == 0


@pytest.mark.gen_test
async def test_repeated_idempotency_key_is_400(api: Api, service: ActivityService) -> None:
    headers = HTTPHeaders()
    headers.add("Idempotency-Key", "a")
    headers.add("Idempotency-Key", "b")
    response = await api.track("?user_id=u&action=a", headers=headers)
    assert response.code == 400
    assert error_of(response) == {
        "status": 400,
        "message": "Idempotency-Key must be given once",
        "field": "Idempotency-Key",
    }
    assert service.last_id == 0


@pytest.fixture
def history(tmp_path: Path) -> str:
    """A database of 50 activities (u0..u4 in turn), made through a service."""
    path = str(tmp_path / "history.db")
    service = ActivityService(10, store=SQLiteStore(path))
    for i in range(50):
        service.record(ActivityInput(f"u{i % 5}", "view" if i % 2 else "login", f"d{i}"))
    service.close()
    return path


def test_restart_refills_buffer_and_continues_ids(history: str) -> None:
    service = ActivityService(10, store=SQLiteStore(history))
    try:
        assert service.position() == (41, 50)  # the buffer holds the newest 10
        assert [a.id for a in run(service.recent(10))] == list(range(41, 51))
        assert service.record(ActivityInput("u", "a", None)).id == 51
        assert service.position() == (42, 51)
    finally:
        service.close()


def test_filters_summary_export_reach_older_than_buffer(history: str) -> None:
    service = ActivityService(10, store=SQLiteStore(history))
    try:
        assert [a.id for a in run(service.query(Query(user_ids=frozenset({"u1"}), limit=100)))] == [
            2,
            7,
            12,
            17,
            22,
            27,
            32,
            37,
            42,
            47,
        ]
        assert [a.id for a in run(service.query(Query(limit=1000)))] == list(range(1, 51))
        assert [a.id for a in run(service.query(Query(before_id=5)))] == [1, 2, 3, 4]
        assert run(scanned(service, Query())) == list(range(1, 51))
        summary = run(service.summary(Query(actions=frozenset({"login"})), top=2))
        assert summary["total"] == 25 and summary["distinct_users"] == 5
        assert summary["users"] == [{"user_id": "u0", "count": 5}, {"user_id": "u1", "count": 5}]
        assert run(scanned(service, Query(limit=7))) == list(range(44, 51))
    finally:
        service.close()


@pytest.mark.gen_test
@pytest.mark.settings(capacity=10, db=True)
async def test_rest_reads_the_whole_history(api: Api, service: ActivityService) -> None:
    for i in range(50):
        service.record(ActivityInput(f"u{i % 5}", "view", f"d{i}"))
    assert [a["id"] for a in await api.activities("?user_id=u1")] == list(range(2, 51, 5))
    assert len(await api.activities("?limit=1000")) == 10  # a limit counts up to capacity
    paged = await api.activities("?before_id=11&limit=5")
    assert [a["id"] for a in paged] == [6, 7, 8, 9, 10]
    export = await api.request("GET", "/api/metrics/export?format=ndjson")
    assert [json.loads(line)["id"] for line in export.body.splitlines()] == list(range(1, 51))
    summary = json.loads((await api.request("GET", "/api/metrics/summary")).body)
    assert summary["total"] == 50 and summary["distinct_users"] == 5


def test_retention_by_rows_keeps_exactly_the_newest(history: str) -> None:
    service = ActivityService(10, store=SQLiteStore(history))
    try:
        assert run(service.enforce_retention(0, 30)) == 20
        rows = sqlite3.connect(history).execute("SELECT id FROM activities ORDER BY id").fetchall()
        assert [r[0] for r in rows] == list(range(21, 51))
        assert run(service.enforce_retention(0, 30)) == 0
        run(service.enforce_retention(0, 5))
        assert [a.id for a in run(service.recent(100))] == list(range(46, 51))
    finally:
        service.close()


DAY = 86400


def test_retention_by_age_removes_exactly_the_old(history: str) -> None:
    conn = sqlite3.connect(history)
    with conn:
        conn.execute(
            "UPDATE activities SET timestamp = '2020-01-01T00:00:00.000000+00:00' WHERE id <= 30"
        )
        conn.execute(
            "UPDATE activities SET timestamp = ? WHERE id = 31",
            (
                time.strftime(
                    "%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime(time.time() - 86400 * 2)
                ),
            ),
        )
    conn.close()
    service = ActivityService(10, store=SQLiteStore(history))
    try:
        assert run(service.enforce_retention(3, 0)) == 30
        rows = sqlite3.connect(history).execute("SELECT min(id), count(*) FROM activities")
        assert rows.fetchone() == (31, 20)
        assert run(service.enforce_retention(1, 0)) == 1
    finally:
        service.close()


def test_ids_never_restart_even_when_retention_empties_the_table(history: str) -> None:
    service = ActivityService(10, store=SQLiteStore(history))
    run(service.enforce_retention(0, 1))
    service.close()
    conn = sqlite3.connect(history)
    with conn:
        conn.execute("DELETE FROM activities")  # as if the age limit had taken the rest
    conn.close()
    service = ActivityService(10, store=SQLiteStore(history))
    try:
        assert service.record(ActivityInput("u", "a", None)).id == 51
    finally:
        service.close()


def indexed_id(path: str) -> int:
    """How far the database's user index reaches, as the file says."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'indexed_id'").fetchone()[0])
    finally:
        conn.close()


def test_user_filter_reads_indexed_and_not_yet_indexed_rows(db_path: str) -> None:
    # Indexed in steps of 20 rows, never when idle: after 50 records ids 41-50 still wait.
    service = ActivityService(10, store=SQLiteStore(db_path, index_chunk=20, index_delay=3600))
    try:
        for i in range(50):
            service.record(ActivityInput(f"u{i % 5}", "view" if i % 2 else "login", f"d{i}"))
        assert indexed_id(db_path) == 40
        u1 = Query(user_ids=frozenset({"u1"}))
        assert [a.id for a in run(service.query(u1))] == list(range(2, 51, 5))
        two = Query(user_ids=frozenset({"u1", "u3"}), limit=5)
        assert [a.id for a in run(service.query(two))] == [37, 39, 42, 44, 47, 49][-5:]
        older = Query(user_ids=frozenset({"u1"}), before_id=45, limit=3)
        assert [a.id for a in run(service.query(older))] == [32, 37, 42]
        logins = Query(user_ids=frozenset({"u1"}), actions=frozenset({"login"}))
        assert [a.id for a in run(service.query(logins))] == [7, 17, 27, 37, 47]
        assert run(scanned(service, Query(user_ids=frozenset({"u4"})))) == list(range(5, 51, 5))
        summary = run(service.summary(u1, top=3))
        assert summary["total"] == 10 and summary["distinct_users"] == 1
        assert summary["actions"] == [
            {"action": "login", "count": 5},
            {"action": "view", "count": 5},
        ]
    finally:
        service.close()
    assert indexed_id(db_path) == 50  # a clean close indexes the rest


def test_idle_writer_indexes_what_waits(db_path: str) -> None:
    service = ActivityService(10, store=SQLiteStore(db_path, index_chunk=1000, index_delay=0.05))
    try:
        service.record_many([ActivityInput("u", "a", None) for _ in range(3)])
        deadline = time.monotonic() + 10
        while indexed_id(db_path) != 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert indexed_id(db_path) == 3
    finally:
        service.close()


def test_version_1_database_is_migrated(db_path: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.executescript(
        MIGRATIONS[0]
        + "INSERT INTO meta VALUES ('store_id', 'abc');"
        + "INSERT INTO activities (id, user_id, action, timestamp) VALUES"
        + " (1, 'ann', 'login', '2026-01-01T00:00:00.000000+00:00'),"
        + " (2, 'bob', 'login', '2026-01-01T00:00:01.000000+00:00'),"
        + " (3, 'ann', 'view', '2026-01-01T00:00:02.000000+00:00');"
        + "UPDATE activities SET idem_key = 'k2' WHERE id = 2;"
        + "PRAGMA user_version = 1;"
    )
    conn.close()
    service = ActivityService(10, store=SQLiteStore(db_path))
    try:
        assert service.store_id == "abc"
        assert [a.id for a in run(service.query(Query(user_ids=frozenset({"ann"}))))] == [1, 3]
        assert service.record(ActivityInput("bob", "a", None)).id == 4
        found = service.store.by_key("k2").result() if service.store else None
        assert found is not None and found.id == 2
    finally:
        service.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    indexes = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'activities'"
        )
    }
    # The user index moved to its own table; the key index no longer holds keyless rows.
    assert indexes == {"activities_action", "activities_time", "activities_key"}
    rows = conn.execute("SELECT user_id, id FROM activities_by_user ORDER BY id").fetchall()
    assert rows == [("ann", 1), ("bob", 2), ("ann", 3), ("bob", 4)]
    conn.close()
    # Rows from before the audit chain were chained at start, and the new one after them.
    verdict = verify_database(db_path)
    assert verdict.ok and verdict.verified_through == 4 and verdict.count == 4


def test_retention_removes_user_index_entries_too(history: str) -> None:
    service = ActivityService(10, store=SQLiteStore(history))
    try:
        assert run(service.enforce_retention(0, 30)) == 20
    finally:
        service.close()
    conn = sqlite3.connect(history)
    ids = [r[0] for r in conn.execute("SELECT id FROM activities_by_user ORDER BY id")]
    assert ids == list(range(21, 51))
    conn.close()


def newer_schema(path: Path) -> None:
    SQLiteStore(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


def other_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()


@pytest.mark.parametrize(
    "make,name,cause",
    [
        (lambda p: p.write_text("just some text\n" * 100), "notes.txt", "file is not a database"),
        (lambda p: p.mkdir(), "adir", "it is a directory"),
        (lambda p: None, "missing/dir/x.db", "unable to open database file"),
        (newer_schema, "new.db", f"schema version {SCHEMA_VERSION + 1} is newer"),
        (other_database, "other.db", "not an activity tracker database"),
    ],
)
def test_bad_database_stops_start_with_one_line(
    tmp_path: Path, make: Any, name: str, cause: str
) -> None:
    path = tmp_path / name
    make(path)
    result = run_refused("--port", str(free_port()), "--db", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and cause in lines[0]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(capacity=10, db=True)
async def test_live_resume_reaches_into_the_database(
    http_server: Any, base_url: str, service: ActivityService
) -> None:
    service.record_many([ActivityInput("u", "view", str(i)) for i in range(50)])
    feed = await Feed.connect(base_url, f"?since=5&store={service.store_id}")
    assert [a["id"] for a in await feed.until(45)] == list(range(6, 51))
    assert [m["type"] for m in feed.messages] == ["hello", "activities"]
    feed.close()
