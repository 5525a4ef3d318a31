"""SQLiteStore: durable history in one SQLite file, written by one thread in group commits."""

from __future__ import annotations

import logging
import operator
import os
import queue
import sqlite3
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

from .activity import Activity, ActivityInput
from .query import Query, summarize_rows

# Rows per retention transaction: small, so ingest commits slip in between.
DELETE_CHUNK = 500
# The user index is brought up to date once this many rows wait for it, or when the
# writer has been idle this many seconds.
INDEX_CHUNK = 50_000
INDEX_DELAY = 1.0

# MIGRATIONS[n] takes the schema from version n to n + 1, in one transaction; a new file
# runs them all. To change the schema, append a step.
MIGRATIONS = (
    """
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
    INSERT INTO meta VALUES ('last_id', '0');
    """,
    # Version 2: the user index becomes a table the writer fills in large sorted steps.
    # Each row of a commit went to a random place of an index on activities, so a commit
    # wrote about one index page per row: that index cost twice as much as the rest.
    # The key index becomes partial, so rows without a key (most) cost it nothing; that
    # takes a new table, since a column's UNIQUE cannot be dropped.
    """
    CREATE TABLE activities_v2 (
        id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        action TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        details TEXT,
        idem_key TEXT
    );
    INSERT INTO activities_v2 SELECT id, user_id, action, timestamp, details, idem_key
        FROM activities ORDER BY id;
    DROP TABLE activities;
    ALTER TABLE activities_v2 RENAME TO activities;
    CREATE INDEX activities_action ON activities (action, id);
    CREATE INDEX activities_time ON activities (timestamp);
    CREATE UNIQUE INDEX activities_key ON activities (idem_key) WHERE idem_key IS NOT NULL;
    CREATE TABLE activities_by_user (
        user_id TEXT NOT NULL,
        id INTEGER NOT NULL,
        PRIMARY KEY (user_id, id)
    ) WITHOUT ROWID;
    CREATE TRIGGER activities_unindex AFTER DELETE ON activities BEGIN
        DELETE FROM activities_by_user WHERE user_id = old.user_id AND id = old.id;
    END;
    INSERT INTO activities_by_user SELECT user_id, id FROM activities ORDER BY user_id, id;
    INSERT INTO meta SELECT 'indexed_id', coalesce(max(id), 0) FROM activities;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_COLUMNS = "id, user_id, action, timestamp, details, idem_key"
_INDEXED_COLUMNS = "u.id, u.user_id, a.action, a.timestamp, a.details, a.idem_key"

log = logging.getLogger(__name__)

# A committed group's outcome: None, or the error that kept it from the disk.
Done = Callable[[BaseException | None], None]


class StoreError(Exception):
    """The database cannot be used; the message is one line naming path and cause."""


# Rows go in with multi-row INSERTs of these sizes: one statement runs many rows without
# the GIL (executemany takes it back for every row, so the IOLoop thread kept stalling
# it), in less CPU. A few fixed sizes keep every statement in the prepared cache.
_INSERT_SIZES = (256, 64, 16, 4, 1)
_INSERTS = {
    size: f"INSERT INTO activities ({_COLUMNS}) VALUES " + ",".join(["(?,?,?,?,?,?)"] * size)
    for size in _INSERT_SIZES
}
# An activity's values in _COLUMNS order (its `json` aside), picked at C speed.
_row = operator.itemgetter(
    *(Activity._fields.index(f) for f in ("id", "user_id", "action", "timestamp", "details", "key"))
)


def _row_activity(row: tuple) -> Activity:
    return Activity.create(row[0], ActivityInput(row[1], row[2], row[4]), row[3], row[5])


def _source(query: Query, max_id: int, indexed: int) -> tuple[str, list[Any]]:
    """`<rows> WHERE <condition>` for a query's filters (limit aside), and its parameters."""
    rows, args = "activities", []
    if query.user_ids:
        users = sorted(query.user_ids)
        marks = ",".join("?" * len(users))
        # Rows up to `indexed` are found through activities_by_user; the newer ones, at
        # most about INDEX_CHUNK, by their ids. SQLite merges the two in id order.
        rows = (
            f"(SELECT {_COLUMNS} FROM activities WHERE id > ? AND user_id IN ({marks}) "
            f"UNION ALL SELECT {_INDEXED_COLUMNS} FROM activities_by_user AS u "
            f"JOIN activities AS a ON a.id = u.id WHERE u.user_id IN ({marks}) AND u.id <= ?)"
        )
        args = [indexed, *users, *users, indexed]
    clauses = ["id <= ?"]
    args.append(max_id)
    if query.actions:
        clauses.append(f"action IN ({','.join('?' * len(query.actions))})")
        args.extend(sorted(query.actions))
    if query.since is not None:
        clauses.append("timestamp >= ?")
        args.append(query.since)
    if query.until is not None:
        clauses.append("timestamp < ?")
        args.append(query.until)
    if query.before_id is not None:
        clauses.append("id < ?")
        args.append(query.before_id)
    return f"{rows} WHERE {' AND '.join(clauses)}", args


class SQLiteStore:
    """Keeps every activity; reads on the caller's thread, writes on its own thread."""

    def __init__(
        self, path: str, *, index_chunk: int = INDEX_CHUNK, index_delay: float = INDEX_DELAY
    ) -> None:
        self.path = path
        self.index_chunk = index_chunk
        self.index_delay = index_delay
        try:
            self._read = self._connect()
            self._migrate()
            self.store_id = self._meta("store_id")
            # Rows with ids up to _indexed are in activities_by_user; _stored is the
            # newest committed. Only the writer thread changes them.
            self._indexed = int(self._meta("indexed_id"))
            self._stored = self._read.execute("SELECT max(id) FROM activities").fetchone()[0] or 0
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use database {path}: {exc}") from None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._read_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        if os.path.isdir(self.path):
            raise StoreError(f"cannot use database {self.path}: it is a directory")
        # Quoted: a "#" or "?" in a file name would otherwise end the path part of the URI.
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=rwc"
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
        # A new file gets its identity with its first tables.
        born = f"INSERT INTO meta VALUES ('store_id', '{uuid.uuid4().hex}');"
        for step in range(version, SCHEMA_VERSION):
            # One script, one transaction per step: a crash leaves it all or none of it.
            conn.executescript(
                f"BEGIN IMMEDIATE;{MIGRATIONS[step]}{born if step == 0 else ''}"
                f"PRAGMA user_version = {step + 1};COMMIT;"
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
        source, args = _source(query, max_id, self._indexed)
        sql = f"SELECT {_COLUMNS} FROM {source} ORDER BY id DESC"
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        return [_row_activity(row) for row in reversed(self._rows(sql, args))]

    def scan(self, query: Query, max_id: int, chunk: int) -> Iterator[list[Activity]]:
        """What query() returns, a chunk at a time by id, so memory stays flat."""
        source, args = _source(query, max_id, self._indexed)
        last = 0
        if query.limit is not None:
            # Start at the oldest of the newest `limit` matches.
            found = self._rows(
                f"SELECT id FROM {source} ORDER BY id DESC LIMIT 1 OFFSET ?",
                [*args, max(query.limit - 1, 0)],
            )
            if query.limit == 0:
                return
            last = found[0][0] - 1 if found else 0
        while True:
            rows = self._rows(
                f"SELECT {_COLUMNS} FROM {source} AND id > ? ORDER BY id LIMIT ?",
                [*args, last, chunk],
            )
            if not rows:
                return
            yield [_row_activity(row) for row in rows]
            last = rows[-1][0]

    def summary(self, query: Query, max_id: int, top: int) -> dict[str, Any]:
        """The summary of every stored match, counted by SQLite."""
        source, args = _source(query, max_id, self._indexed)
        base = f"FROM {source}"
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
        stopping = False
        while not stopping:
            try:
                # With rows waiting for the user index, an idle writer indexes them.
                wait = self.index_delay if self._stored > self._indexed else None
                jobs = [self._queue.get(timeout=wait)]
            except queue.Empty:
                self._index(conn)
                continue
            # Everything that arrived while the last commit ran goes into this one.
            while True:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes = [job for job in jobs if job is not None and job[0] is not None]
            if writes:
                self._commit(conn, writes)
                if self._stored - self._indexed >= self.index_chunk:
                    self._index(conn)
            for job in jobs:
                if job is None:
                    stopping = True
                elif job[0] is None:
                    job[1](conn)
        # A cleanly closed file has every row in the user index.
        self._index(conn)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, writes: list[tuple[list[Activity], Done]]) -> None:
        rows = [_row(a) for activities, _ in writes for a in activities]
        error: BaseException | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            start = 0
            for size in _INSERT_SIZES:
                while len(rows) - start >= size:
                    values = chain.from_iterable(rows[start : start + size])
                    conn.execute(_INSERTS[size], list(values))
                    start += size
            conn.execute("COMMIT")
            # Ids reach the queue in order, so the last row is the newest.
            self._stored = max(self._stored, rows[-1][0])
        except Exception as exc:  # noqa: BLE001 - whatever it is, the writer must live on
            error = exc
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        for _, done in writes:
            done(error)

    def _index(self, conn: sqlite3.Connection) -> None:
        """Add the rows committed since the last step to activities_by_user, at once."""
        # One step of tens of thousands of rows sorted by user fills each index page it
        # touches with many rows: 50,000 at once cost a fifth of adding each at commit.
        top = self._stored
        if top <= self._indexed:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO activities_by_user SELECT user_id, id FROM activities "
                "WHERE id > ? AND id <= ? ORDER BY user_id, id",
                (self._indexed, top),
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'indexed_id'", (str(top),))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # Queries stay right (they read unindexed rows by id); the next step retries.
            log.warning("database %s: user index not updated: %s", self.path, exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return
        self._indexed = top

    # -- retention (on the writer thread, in small steps) ------------------------------

    @staticmethod
    def delete_step(conn: sqlite3.Connection, cutoff: str | None, max_rows: int) -> list[int]:
        """Delete at most DELETE_CHUNK of the oldest rows past retention; their ids."""
        ids: list[int] = []
        if cutoff is not None:
            # Through the time index: ORDER BY id scanned the whole table whenever nothing
            # was old enough (0.4 s at 1.4M rows), once a minute, on the writer thread.
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM activities WHERE timestamp < ? ORDER BY timestamp LIMIT ?",
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
