"""Storage faults against a real file and a real server process: locks, a full disk, signals."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracker.activity import ActivityInput
from tracker.service import ActivityService
from tracker.store import SQLiteStore

TRACK = "/api/metrics/track?user_id=u&action=write"


def until(condition: Any, timeout: float = 15.0) -> None:
    """Poll until condition() is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def stored_ids(path: str) -> list[int]:
    """The ids in the file, read as any other program would; checks the file's integrity."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in conn.execute("SELECT id FROM activities ORDER BY id")]
    finally:
        conn.close()


class Lock:
    """Another connection holding the database's write lock, as another program would."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def test_a_lock_longer_than_the_commit_timeout_is_503_then_recovers(server: Any) -> None:
    srv = server("--commit-timeout", "0.5").start()
    assert srv.request("POST", TRACK)[0] == 200
    lock = Lock(srv.db)
    try:
        started = time.monotonic()
        status, body, response = srv.request("POST", TRACK)
        assert status == 503 and response.getheader("Retry-After") == "1"
        assert "nothing was recorded" in body["error"]["message"]
        assert time.monotonic() - started < 0.5 + 2.0  # the bound, with room for a slow box
        status, ready, _ = srv.request("GET", "/readyz")
        assert status == 503 and ready["status"] == "unavailable"
        assert ready["checks"]["store"]["ok"] is False
        assert "locked" in ready["checks"]["store"]["error"]
        assert srv.request("GET", "/healthz")[0] == 200  # alive, just not ready
        assert srv.request("GET", "/api/metrics/activities")[0] == 200  # reads go on
    finally:
        lock.release()
    # No restart: the writer finds the lock gone by itself.
    until(lambda: srv.request("GET", "/readyz")[0] == 200)
    status, third, _ = srv.request("POST", TRACK)
    assert status == 200
    assert srv.stop() == 0
    assert stored_ids(srv.db) == [1, third["id"]]  # the 503's activity was never stored


def test_a_lock_during_start_time_retention_does_not_stop_writes(
    server: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "activities.db")
    service = ActivityService(10, store=SQLiteStore(path))
    service.record_many([ActivityInput("u", "old", None) for _ in range(20)])
    service.close()
    lock = Lock(path)
    srv = server("--max-rows", "5", "--commit-timeout", "1", db=path).start()
    time.sleep(0.5)  # the first retention step runs into the lock
    lock.release()
    for _ in range(3):
        assert srv.request("POST", TRACK)[0] == 200
    until(lambda: len(stored_ids(path)) <= 5)  # retention tried again, and trimmed
    assert srv.stop() == 0
    assert stored_ids(path) == [19, 20, 21, 22, 23]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of its own (tmpfs; needs root), so it can really fill up."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small file system: {made.stderr!r}")
        pytest.skip("mounting a small file system needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill a file system until it has no room left; the filler file is returned."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_503_without_corruption_and_recovers(server: Any, small_disk: Path) -> None:
    srv = server("--commit-timeout", "2", db=str(small_disk / "activities.db")).start()
    acked = [srv.request("POST", TRACK)[1]["id"] for _ in range(5)]
    filler = fill(small_disk)
    batch = [{"user_id": "u", "action": "fill", "details": "x" * 4000}] * 200
    statuses = set()
    for _ in range(20):
        status, body, _ = srv.request("POST", "/api/metrics/track/batch", batch)
        statuses.add(status)
        if status == 200:
            acked.extend(item["id"] for item in body["items"])
        else:
            assert status == 503 and "full" in body["error"]["message"]
            break
    assert 503 in statuses
    status, ready, _ = srv.request("GET", "/readyz")
    assert status == 503 and "full" in ready["checks"]["store"]["error"]
    filler.unlink()  # space is freed: no restart needed
    until(lambda: srv.request("GET", "/readyz")[0] == 200)
    status, body, _ = srv.request("POST", "/api/metrics/track/batch", batch[:10])
    assert status == 200
    acked.extend(item["id"] for item in body["items"])
    assert srv.stop() == 0
    assert set(acked) <= set(stored_ids(srv.db))
    assert len(stored_ids(srv.db)) == len(acked)  # nothing the 503 refused got in


def load(port: int, stop: threading.Event, results: list[tuple[int, int | None]]) -> None:
    """POST until told to stop, keeping (status, id) of every answer the server gave."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        try:
            conn.request("POST", TRACK)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            if stop.is_set():
                return
            time.sleep(0.01)  # the server stopped listening: that is not an answer
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        results.append(
            (response.status, json.loads(body)["id"] if response.status == 200 else None)
        )


def test_sigterm_under_load_answers_every_request_and_keeps_every_200(server: Any) -> None:
    srv = server("--shutdown-timeout", "10").start()
    stop = threading.Event()
    results: list[tuple[int, int | None]] = []
    threads = [threading.Thread(target=load, args=(srv.port, stop, results)) for _ in range(6)]
    for thread in threads:
        thread.start()
    until(lambda: len(results) >= 300)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=20) == 0
    srv.proc = None
    stop.set()
    for thread in threads:
        thread.join()
    statuses = {status for status, _ in results}
    assert statuses <= {200, 503}, statuses  # never a 5xx caused by the shutdown
    acknowledged = [id_ for status, id_ in results if status == 200]
    assert set(acknowledged) <= set(stored_ids(srv.db))


def test_a_second_sigterm_exits_at_once_and_leaves_the_file_whole(server: Any) -> None:
    srv = server("--commit-timeout", "60", "--shutdown-timeout", "60").start()
    acked = [srv.request("POST", TRACK)[1]["id"] for _ in range(10)]
    lock = Lock(srv.db)
    stuck = threading.Thread(target=lambda: srv.request_quietly("POST", TRACK))
    stuck.start()  # waits on the lock: shutdown would wait up to a minute for it
    time.sleep(0.3)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert srv.proc.poll() is None  # still draining
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.proc.wait(timeout=10)
    assert time.monotonic() - started < 3
    assert code == 1
    srv.proc = None
    lock.release()
    stuck.join()
    assert stored_ids(srv.db) == acked


def test_sigkill_during_a_retention_trim_leaves_a_consistent_file(
    server: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "activities.db")
    service = ActivityService(10, store=SQLiteStore(path))
    for _ in range(100):
        service.record_many([ActivityInput("u", "bulk", "x" * 50) for _ in range(1000)])
    service.close()
    srv = server("--max-rows", "1000", db=path).start()
    until(lambda: 1000 < len(stored_ids(path)) < 95_000, timeout=60)  # mid-trim
    srv.stop(signal.SIGKILL)
    ids = stored_ids(path)
    # The oldest went first, in whole steps: what is left is the newest, without a gap.
    assert ids == list(range(ids[0], 100_001))
    restarted = srv.start()
    status, body, _ = restarted.request("POST", TRACK)
    assert status == 200 and body["id"] == 100_001  # ids never go back
    # And the trim finishes: down to the newest 1,000 as counted when this run began (one
    # recorded since then may wait for the next run, a minute later).
    until(lambda: len(stored_ids(path)) <= 1001)
    ids = stored_ids(path)
    assert ids == list(range(ids[0], 100_002)) and len(ids) >= 1000
    assert restarted.stop() == 0
