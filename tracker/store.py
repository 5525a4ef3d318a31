"""SQLiteStore: durable history in one SQLite file, written by one thread in group commits."""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from .activity import Activity, ActivityInput
from .query import Query, summarize_rows

# Bump when the schema changes, and teach _migrate the step from the version before.
SCHEMA_VERSION = 1
# Rows per retention transaction: small, so ingest commits slip in between.
DELETE_CHUNK = 500

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE activities (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    action TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    details TEXT,
    idem_key TEXT UNIQUE
);
CREATE INDEX activities_user ON activities (user_id, id);
CREATE INDEX activities_action ON activities (action, id);
CREATE INDEX activities_time ON activities (timestamp);
"""
_COLUMNS = "id, user_id, action, timestamp, details, idem_key"

# A committed group's outcome: None, or the error that kept it from the disk.
Done = Callable[[BaseException | None], None]


class StoreError(Exception):
    """The database cannot be used; the message is one line naming path and cause."""


def _row_activity(row: tuple) -> Activity:
    return Activity.create(row[0], ActivityInput(row[1], row[2], row[4]), row[3], row[5])


def _where(query: Query, max_id: int) -> tuple[str, list[Any]]:
    """The SQL condition and parameters for a query's filters (limit aside)."""
    clauses, args = ["id <= ?"], [max_id]
    for column, wanted in (("user_id", query.user_ids), ("action", query.actions)):
        if wanted:
            clauses.append(f"{column} IN ({','.join('?' * len(wanted))})")
            args.extend(sorted(wanted))
    if query.since is not None:
        clauses.append("timestamp >= ?")
        args.append(query.since)
    if query.until is not None:
        clauses.append("timestamp < ?")
        args.append(query.until)
    if query.before_id is not None:
        clauses.append("id < ?")
        args.append(query.before_id)
    return " AND ".join(clauses), args


class SQLiteStore:
    """Keeps every activity; reads on the caller's thread, writes on its own thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._read = self._connect()
            self._migrate()
            self.store_id = self._meta("store_id")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use database {path}: {exc}") from None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._read_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        if os.path.isdir(self.path):
            raise StoreError(f"cannot use database {self.path}: it is a directory")
        uri = "file:" + self.path + "?mode=rwc"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        # Fails here on a file that is not a database.
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        # FULL: a commit survives power loss, not just a killed process.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _migrate(self) -> None:
        conn = self._read
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"cannot use database {self.path}: schema version {version} is newer than "
                f"this server's {SCHEMA_VERSION}"
            )
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreError(
                    f"cannot use database {self.path}: not an activity tracker database"
                )
            # One script, one transaction: a crash leaves either nothing or all of it.
            conn.executescript(
                "BEGIN IMMEDIATE;"
                + _SCHEMA
                + f"INSERT INTO meta VALUES ('store_id', '{uuid.uuid4().hex}');"
                + "INSERT INTO meta VALUES ('last_id', '0');"
                + f"PRAGMA user_version = {SCHEMA_VERSION};"
                + "COMMIT;"
            )

    def _meta(self, key: str) -> str:
        return self._read.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    # -- reads (any thread; one connection, so one at a time) --------------------------

    def _rows(self, sql: str, args: list[Any] | tuple = ()) -> list[tuple]:
        with self._read_lock:
            return self._read.execute(sql, args).fetchall()

    def max_id(self) -> int:
        """The largest id ever stored, even if retention has deleted it since."""
        (largest,) = self._rows("SELECT max(id) FROM activities")[0]
        return max(largest or 0, int(self._meta("last_id")))

    def min_id(self) -> int | None:
        """The oldest id still stored."""
        return self._rows("SELECT min(id) FROM activities")[0][0]

    def newest(self, count: int) -> list[Activity]:
        """The newest `count` activities, oldest first."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM activities ORDER BY id DESC LIMIT ?", (count,))
        return [_row_activity(row) for row in reversed(rows)]

    def by_key(self, key: str) -> Activity | None:
        """The activity recorded with this idempotency key, if it is still stored."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM activities WHERE idem_key = ?", (key,))
        return _row_activity(rows[0]) if rows else None

    def after(self, since: int, max_id: int, limit: int) -> list[Activity]:
        """Up to `limit` activities with since < id <= max_id, oldest first."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM activities WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
            (since, max_id, limit),
        )
        return [_row_activity(row) for row in rows]

    def query(self, query: Query, max_id: int) -> list[Activity]:
        """The newest `query.limit` matches (all without a limit), oldest first."""
        where, args = _where(query, max_id)
        sql = f"SELECT {_COLUMNS} FROM activities WHERE {where} ORDER BY id DESC"
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        return [_row_activity(row) for row in reversed(self._rows(sql, args))]

    def scan(self, query: Query, max_id: int, chunk: int) -> Iterator[list[Activity]]:
        """What query() returns, a chunk at a time by id, so memory stays flat."""
        where, args = _where(query, max_id)
        last = 0
        if query.limit is not None:
            # Start at the oldest of the newest `limit` matches.
            found = self._rows(
                f"SELECT id FROM activities WHERE {where} ORDER BY id DESC LIMIT 1 OFFSET ?",
                [*args, max(query.limit - 1, 0)],
            )
            if query.limit == 0:
                return
            last = found[0][0] - 1 if found else 0
        while True:
            rows = self._rows(
                f"SELECT {_COLUMNS} FROM activities WHERE {where} AND id > ? ORDER BY id LIMIT ?",
                [*args, last, chunk],
            )
            if not rows:
                return
            yield [_row_activity(row) for row in rows]
            last = rows[-1][0]

    def summary(self, query: Query, max_id: int, top: int) -> dict[str, Any]:
        """The summary of every stored match, counted by SQLite."""
        where, args = _where(query, max_id)
        base = f"FROM activities WHERE {where}"
        total, users = self._rows(f"SELECT count(*), count(DISTINCT user_id) {base}", args)[0]

        def grouped(column: str) -> list[tuple[str, int]]:
            return self._rows(
                f"SELECT {column}, count(*) AS n {base} GROUP BY {column} "
                f"ORDER BY n DESC, {column} LIMIT ?",
                [*args, top],
            )

        minutes = self._rows(
            f"SELECT substr(timestamp, 1, 16) AS m, count(*) {base} GROUP BY m", args
        )
        return summarize_rows(total, users, grouped("action"), grouped("user_id"), minutes)

    # -- writes (queued to the writer thread) ------------------------------------------

    def append(self, activities: list[Activity], done: Done) -> None:
        """Queue activities for the next group commit; `done` runs on the writer thread."""
        self._queue.put((activities, done))

    def maintain(self, job: Callable[[sqlite3.Connection], None]) -> None:
        """Run a job on the writer's connection, between group commits."""
        self._queue.put((None, job))

    def close(self) -> None:
        """Commit what is queued, then stop the writer and close the file."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        with self._read_lock:
            self._read.close()

    def _write_loop(self) -> None:
        conn = self._connect()
        # The user index takes each row at a random place, so a group commit dirties
        # about a page per row. Checkpointing every 1,000 pages (the default) copied them
        # all back on every commit; every 10,000 (about 40 MB of WAL) halved the time per
        # row of a 1,000-row commit. A larger cache keeps the index's pages at hand.
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
        conn.execute("PRAGMA cache_size = -65536")
        stopping = False
        while not stopping:
            jobs = [self._queue.get()]
            # Everything that arrived while the last commit ran goes into this one.
            while True:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes = [job for job in jobs if job is not None and job[0] is not None]
            if writes:
                self._commit(conn, writes)
            for job in jobs:
                if job is None:
                    stopping = True
                elif job[0] is None:
                    job[1](conn)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, writes: list[tuple[list[Activity], Done]]) -> None:
        rows = [
            (a.id, a.user_id, a.action, a.timestamp, a.details, a.key)
            for activities, _ in writes
            for a in activities
        ]
        error: BaseException | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(f"INSERT INTO activities ({_COLUMNS}) VALUES (?,?,?,?,?,?)", rows)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - whatever it is, the writer must live on
            error = exc
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        for _, done in writes:
            done(error)

    # -- retention (on the writer thread, in small steps) ------------------------------

    @staticmethod
    def delete_step(conn: sqlite3.Connection, cutoff: str | None, max_rows: int) -> list[int]:
        """Delete at most DELETE_CHUNK of the oldest rows past retention; their ids."""
        ids: list[int] = []
        if cutoff is not None:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM activities WHERE timestamp < ? ORDER BY id LIMIT ?",
                    (cutoff, DELETE_CHUNK),
                )
            ]
        if not ids and max_rows:
            excess = conn.execute("SELECT count(*) FROM activities").fetchone()[0] - max_rows
            if excess > 0:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM activities ORDER BY id LIMIT ?",
                        (min(excess, DELETE_CHUNK),),
                    )
                ]
        if not ids:
            return []
        top = conn.execute("SELECT max(id) FROM activities").fetchone()[0]
        conn.execute("BEGIN IMMEDIATE")
        # Remember the high-water mark, so ids never restart even if every row goes.
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'last_id' AND CAST(value AS INTEGER) < ?",
            (str(top), top),
        )
        conn.executemany("DELETE FROM activities WHERE id = ?", [(i,) for i in ids])
        conn.execute("COMMIT")
        return ids
