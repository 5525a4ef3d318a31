"""SQLiteStore: durable history in one SQLite file: one writer thread, reader threads."""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Container
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple, TypeVar

from . import audit
from .activity import Activity, ActivityInput, now_timestamp
from .audit import Verdict
from .query import Query, summarize_rows
from .verify import verify_database

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
    # Version 3: the audit chain (rows of older files are chained at start), its signed
    # checkpoints, and what security monitoring keeps: rules, alerts, webhook deliveries.
    """
    ALTER TABLE activities ADD COLUMN prev_hash BLOB;
    ALTER TABLE activities ADD COLUMN hash BLOB;
    INSERT INTO meta VALUES ('chain_anchor', printf('%064d', 0)), ('chain_anchor_id', '0');
    CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY,
        store_id TEXT NOT NULL,
        last_id INTEGER NOT NULL,
        hash TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE TABLE rules (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE alerts (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        alert_id INTEGER,
        url TEXT NOT NULL,
        body BLOB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        last_status INTEGER,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX deliveries_pending ON deliveries (status) WHERE status = 'pending';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_COLUMNS = "id, user_id, action, timestamp, details, idem_key"
_INDEXED_COLUMNS = "u.id, u.user_id, a.action, a.timestamp, a.details, a.idem_key"
_CHAIN_COLUMNS = "prev_hash, hash"
# Rows go in with multi-row INSERTs of these sizes: one statement stores many rows while
# the GIL is released (executemany takes it back for every row). A few fixed sizes keep
# every statement in the prepared cache.
_INSERT_SIZES = (256, 64, 16, 4, 1)
_INSERTS = {
    size: f"INSERT INTO activities ({_COLUMNS}, prev_hash, hash) VALUES "
    + ",".join(["(?,?,?,?,?,?,?,?)"] * size)
    for size in _INSERT_SIZES
}
CHAIN_CHUNK = 5000  # rows chained per step when an older file is brought up to version 3
KEYS_CHUNK = 500  # idempotency keys looked up per statement
# Reads run on their own threads and connections, so a long summary never holds the IOLoop.
READER_THREADS = 4
# The writer waits this long for another connection's lock, then backs off and retries
# (it must stay free to drop writes whose requests gave up, and to stop).
WRITER_BUSY_MS = 200
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0

log = logging.getLogger(__name__)
T = TypeVar("T")
# Signs (store_id, last_id, hash hex, timestamp) into a checkpoint: audit.Signer's method.
Signing = Callable[[str, int, str, str], dict[str, Any]]


class StoreError(Exception):
    """The database cannot be used; the message is one line naming path and cause."""


class WriteFailed(Exception):
    """A write was rolled back or dropped; nothing of it is in the file."""


class Chained(NamedTuple):
    """An activity with its chain link: the hash it follows, and its own."""

    activity: Activity
    prev_hash: bytes
    hash: bytes


def _row_activity(row: tuple) -> Activity:
    return Activity.create(row[0], ActivityInput(row[1], row[2], row[4]), row[3], row[5])


def _statements(script: str) -> list[str]:
    """A script's statements one by one (a trigger's body stays whole)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


def _roll_back(conn: sqlite3.Connection) -> None:
    """End a failed transaction, if one is open (a rollback that fails leaves it to SQLite)."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _insert(
    conn: sqlite3.Connection,
    activities: list[Activity],
    links: list[tuple[bytes, bytes]],
    taken: Container[str] = (),
) -> None:
    """Store activities with their chain links; a key in `taken` is stored as None."""
    rows = [
        (a.id, a.user_id, a.action, a.timestamp, a.details, None if a.key in taken else a.key)
        + link
        for a, link in zip(activities, links, strict=True)
    ]
    start = 0
    for size in _INSERT_SIZES:  # multi-row statements, largest first (see _INSERT_SIZES)
        while len(rows) - start >= size:
            conn.execute(_INSERTS[size], list(chain.from_iterable(rows[start : start + size])))
            start += size


def _is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock: wait and retry, the connection itself is fine."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _source(query: Query, max_id: int, indexed: int) -> tuple[str, list[Any]]:
    """`<rows> WHERE <condition>` for a query's filters (limit aside), and its parameters."""
    rows, args = "activities", []
    if query.user_ids:
        users = sorted(query.user_ids)
        marks = ",".join("?" * len(users))
        # Rows up to `indexed` are found through activities_by_user; the newer ones, at
        # most about INDEX_CHUNK, by their ids. SQLite merges the two in id order.
        rows = (
            f"(SELECT {_COLUMNS}, {_CHAIN_COLUMNS} FROM activities "
            f"WHERE id > ? AND user_id IN ({marks}) "
            f"UNION ALL SELECT {_INDEXED_COLUMNS}, a.prev_hash, a.hash "
            f"FROM activities_by_user AS u JOIN activities AS a ON a.id = u.id "
            f"WHERE u.user_id IN ({marks}) AND u.id <= ?)"
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


@dataclass(eq=False)
class _Append:
    """Activities for the next group commit; the future resolves once they are durable."""

    activities: list[Activity]
    future: Future[None] = field(default_factory=Future)


@dataclass(eq=False)
class _Chore:
    """Writer work besides appends (retention, archive, checkpoint, a saved record)."""

    run: Callable[[sqlite3.Connection], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass(eq=False)
class _Stop:
    """Commit what waits, until `deadline` (monotonic) at the latest, then stop."""

    deadline: float


class SQLiteStore:
    """Keeps every activity; writes on one thread in group commits, reads on a small pool."""

    def __init__(
        self, path: str, *, index_chunk: int = INDEX_CHUNK, index_delay: float = INDEX_DELAY
    ) -> None:
        self.path = path
        self.index_chunk = index_chunk
        self.index_delay = index_delay
        if os.path.isdir(path):
            raise StoreError(f"cannot use database {path}: it is a directory")
        # Quoted: a "#" or "?" in a file name would otherwise end the path part of the URI.
        self._uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rwc"
        try:
            setup = self._connect()
            try:
                self._migrate(setup)
                self._chain_older_rows(setup)
                self.store_id = self._meta(setup, "store_id")
                # Rows with ids up to _indexed are in activities_by_user; _stored is the
                # newest committed, _head the hash the next stored activity chains from.
                # Only the writer thread changes them.
                self._indexed = self._indexed_now(setup)
                self._stored, self._head = self._newest(setup)
                self.last_id = self._high_water(setup)
            finally:
                setup.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use database {path}: {exc}") from None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._pool = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-reader")
        self._queue: queue.SimpleQueue[_Append | _Chore | _Stop] = queue.SimpleQueue()
        self._waiting: list[_Append] = []
        # What /readyz reports: the last write error (None when healthy), and when the
        # last commit happened (monotonic seconds).
        self.failure: str | None = None
        self.last_commit = time.monotonic()
        # Told how long each group commit took (seconds), on the writer thread.
        self.observe_commit: Callable[[float], None] | None = None
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()

    def _connect(self, busy_ms: int = 5000) -> sqlite3.Connection:
        conn = sqlite3.connect(self._uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        # Fails here on a file that is not a database.
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        # FULL: a commit survives power loss, not just a killed process.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the common case needs no write lock (another program may hold it)
        # One transaction under the write lock, from reading the version to the last step:
        # processes that open a new file at once (--workers) migrate it once, and a crash
        # leaves it all or none of it.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"cannot use database {self.path}: schema version {version} is newer "
                    f"than this server's {SCHEMA_VERSION}"
                )
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if version == 0 and tables:
                raise StoreError(
                    f"cannot use database {self.path}: not an activity tracker database"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[step]):
                    conn.execute(statement)
                if step == 0:  # a new file gets its identity with its first tables
                    conn.execute("INSERT INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
                conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute("COMMIT")
        except BaseException:
            _roll_back(conn)
            raise

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str:
        return conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    @classmethod
    def _newest(cls, conn: sqlite3.Connection) -> tuple[int, bytes]:
        """The newest row's id and hash; with no rows, 0 and the hash the next one follows."""
        newest = conn.execute("SELECT id, hash FROM activities ORDER BY id DESC LIMIT 1").fetchone()
        return newest if newest else (0, bytes.fromhex(cls._meta(conn, "chain_anchor")))

    @classmethod
    def _high_water(cls, conn: sqlite3.Connection) -> int:
        """The highest id the file has held, even if retention deleted it since."""
        top = conn.execute("SELECT coalesce(max(id), 0) FROM activities").fetchone()[0]
        return max(top, int(cls._meta(conn, "last_id")))

    def _chain_older_rows(self, conn: sqlite3.Connection) -> None:
        """Give rows stored before version 3 their chain hashes, oldest first, in steps."""
        # A step at a time, each committed: a crash resumes where it stopped.
        while True:
            first = conn.execute("SELECT min(id) FROM activities WHERE hash IS NULL").fetchone()[0]
            if first is None:
                return
            before = conn.execute(
                "SELECT hash FROM activities WHERE id < ? ORDER BY id DESC LIMIT 1", (first,)
            ).fetchone()
            prev = before[0] if before else bytes.fromhex(self._meta(conn, "chain_anchor"))
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM activities WHERE id >= ? ORDER BY id LIMIT ?",
                (first, CHAIN_CHUNK),
            ).fetchall()
            activities = [_row_activity(row) for row in rows]
            links = audit.chain_links(prev, activities)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "UPDATE activities SET prev_hash = ?, hash = ? WHERE id = ?",
                [(p, h, a.id) for (p, h), a in zip(links, activities, strict=True)],
            )
            conn.execute("COMMIT")

    # -- reads: each on a reader thread, with that thread's own connection --------------

    def _read(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._pool.submit(self._with_reader, fn, *args)

    def _with_reader(self, fn: Callable[..., T], *args: Any) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            self._readers.append(conn)
        return fn(conn, *args)

    def _indexed_now(self, conn: sqlite3.Connection) -> int:
        """How far the user index reaches, as the file says (any process may have moved it)."""
        return int(self._meta(conn, "indexed_id"))

    def newest(self, count: int) -> Future[list[Activity]]:
        """The newest `count` activities, oldest first."""

        def read(conn: sqlite3.Connection) -> list[Activity]:
            sql = f"SELECT {_COLUMNS} FROM activities ORDER BY id DESC LIMIT ?"
            return [_row_activity(row) for row in reversed(conn.execute(sql, (count,)).fetchall())]

        return self._read(read)

    def by_key(self, key: str) -> Future[Activity | None]:
        """The activity recorded with this idempotency key, if it is still stored."""

        def read(conn: sqlite3.Connection) -> Activity | None:
            sql = f"SELECT {_COLUMNS} FROM activities WHERE idem_key = ?"
            row = conn.execute(sql, (key,)).fetchone()
            return _row_activity(row) if row else None

        return self._read(read)

    def by_keys(self, keys: list[str]) -> Future[dict[str, Activity]]:
        """The activities recorded with these idempotency keys that are still stored."""

        def read(conn: sqlite3.Connection) -> dict[str, Activity]:
            found: dict[str, Activity] = {}
            unique = list(dict.fromkeys(keys))
            # In chunks, well under SQLite's limit on a statement's parameters.
            for start in range(0, len(unique), KEYS_CHUNK):
                chunk = unique[start : start + KEYS_CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {_COLUMNS} FROM activities WHERE idem_key IN ({marks})"
                for row in conn.execute(sql, chunk):
                    found[row[5]] = _row_activity(row)
            return found

        return self._read(read)

    def resume(self, since: int, max_id: int, limit: int) -> Future[list[Activity] | None]:
        """Activities with since < id <= max_id, oldest first; None if over `limit` or gone."""

        def read(conn: sqlite3.Connection) -> list[Activity] | None:
            oldest = conn.execute("SELECT min(id) FROM activities").fetchone()[0]
            if oldest is not None and since < oldest - 1:
                return None
            sql = f"SELECT {_COLUMNS} FROM activities WHERE id > ? AND id <= ? ORDER BY id LIMIT ?"
            rows = conn.execute(sql, (since, max_id, limit + 1)).fetchall()
            return [_row_activity(row) for row in rows] if len(rows) <= limit else None

        return self._read(read)

    def query(self, query: Query, max_id: int) -> Future[list[Activity]]:
        """The newest `query.limit` matches (all without a limit), oldest first."""

        def read(conn: sqlite3.Connection) -> list[Activity]:
            source, args = _source(query, max_id, self._indexed_now(conn))
            sql = f"SELECT {_COLUMNS} FROM {source} ORDER BY id DESC"
            if query.limit is not None:
                sql += " LIMIT ?"
                args.append(query.limit)
            return [_row_activity(row) for row in reversed(conn.execute(sql, args).fetchall())]

        return self._read(read)

    def scan_start(self, query: Query, max_id: int) -> Future[int]:
        """The id a scan of the query starts after: the oldest of its newest `limit` matches."""

        def read(conn: sqlite3.Connection) -> int:
            if query.limit is None:
                return 0
            source, args = _source(query, max_id, self._indexed_now(conn))
            sql = f"SELECT id FROM {source} ORDER BY id DESC LIMIT 1 OFFSET ?"
            found = conn.execute(sql, [*args, max(query.limit - 1, 0)]).fetchone()
            return found[0] - 1 if found else 0

        return self._read(read)

    def scan_page(
        self, query: Query, max_id: int, after_id: int, size: int
    ) -> Future[list[Chained]]:
        """Up to `size` matches with ids above `after_id`, oldest first, with their links."""

        def read(conn: sqlite3.Connection) -> list[Chained]:
            source, args = _source(query, max_id, self._indexed_now(conn))
            sql = (
                f"SELECT {_COLUMNS}, {_CHAIN_COLUMNS} FROM {source} AND id > ? ORDER BY id LIMIT ?"
            )
            rows = conn.execute(sql, [*args, after_id, size]).fetchall()
            return [Chained(_row_activity(row), row[6], row[7]) for row in rows]

        return self._read(read)

    def summary(self, query: Query, max_id: int, top: int) -> Future[dict[str, Any]]:
        """The summary of every stored match, counted by SQLite."""

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            source, args = _source(query, max_id, self._indexed_now(conn))
            base = f"FROM {source}"
            count = f"SELECT count(*), count(DISTINCT user_id) {base}"
            total, users = conn.execute(count, args).fetchone()

            def grouped(column: str) -> list[tuple[str, int]]:
                sql = (
                    f"SELECT {column}, count(*) AS n {base} GROUP BY {column} "
                    f"ORDER BY n DESC, {column} LIMIT ?"
                )
                return conn.execute(sql, [*args, top]).fetchall()

            per_minute = f"SELECT substr(timestamp, 1, 16) AS m, count(*) {base} GROUP BY m"
            minutes = conn.execute(per_minute, args).fetchall()
            return summarize_rows(total, users, grouped("action"), grouped("user_id"), minutes)

        return self._read(read)

    # -- writes: queued to the writer thread ------------------------------------------

    def append(self, activities: list[Activity]) -> Future[None]:
        """Queue activities for the next group commit; the future resolves once durable."""
        # Or fails with WriteFailed. Cancelling it before the writer takes it up keeps the
        # activities out of the file for good: that is how a timed-out request stays a 503.
        job = _Append(activities)
        self._queue.put(job)
        return job.future

    def delete_expired(self, cutoff: str | None, through_id: int | None) -> Future[list[int]]:
        """Delete up to DELETE_CHUNK of the oldest rows past `cutoff` or `through_id`; ids."""
        job = _Chore(lambda conn: self._delete_step(conn, cutoff, through_id))
        self._queue.put(job)
        return job.future

    def beyond(self, max_rows: int) -> Future[int | None]:
        """The newest id past the newest `max_rows` (what keeping only them deletes up to)."""

        def read(conn: sqlite3.Connection) -> int | None:
            sql = "SELECT id FROM activities ORDER BY id DESC LIMIT 1 OFFSET ?"
            row = conn.execute(sql, (max_rows,)).fetchone()
            return row[0] if row else None

        return self._read(read)

    def archive(self, activities: list[Activity]) -> Future[list[Activity]]:
        """With --redis: store activities the file lacks (by id), in order; those stored."""
        job = _Chore(lambda conn: self._archive_step(conn, activities))
        self._queue.put(job)
        return job.future

    def archived_id(self) -> Future[int]:
        """The newest id the file has held (even if retention deleted it since)."""
        return self._read(self._high_water)

    def add_checkpoint(self, sign: Signing) -> Future[dict[str, Any] | None]:
        """Sign the chain's head, if it moved since the last checkpoint; the checkpoint."""
        job = _Chore(lambda conn: self._checkpoint_step(conn, sign))
        self._queue.put(job)
        return job.future

    # -- what monitoring keeps: rules, alerts, webhook deliveries ---------------------------

    def save_rule(self, name: str, body: dict[str, Any] | None) -> Future[Any]:
        """Create or replace a rule (None deletes it)."""
        if body is None:
            return self._write("DELETE FROM rules WHERE name = ?", (name,))
        return self._write("INSERT OR REPLACE INTO rules VALUES (?, ?)", (name, json.dumps(body)))

    def save_alert(self, alert: dict[str, Any]) -> Future[Any]:
        """Keep an alert."""
        return self._write(
            "INSERT OR REPLACE INTO alerts VALUES (?, ?)", (alert["id"], json.dumps(alert))
        )

    def save_delivery(self, row: dict[str, Any]) -> Future[Any]:
        """Create or update a webhook delivery (its fields by column name)."""
        columns = ",".join(row)
        marks = ",".join(f":{name}" for name in row)
        return self._write(f"INSERT OR REPLACE INTO deliveries ({columns}) VALUES ({marks})", row)

    def rules(self) -> list[dict[str, Any]]:
        """Every kept rule's body (at start, so it blocks)."""
        rows = self._read(lambda conn: conn.execute("SELECT body FROM rules").fetchall()).result()
        return [json.loads(row[0]) for row in rows]

    def newest_alerts(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The newest `limit` alerts, oldest first, and the largest alert id (blocks)."""

        def read(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
            sql = "SELECT body FROM alerts ORDER BY id DESC LIMIT ?"
            rows = conn.execute(sql, (limit,)).fetchall()
            top = conn.execute("SELECT coalesce(max(id), 0) FROM alerts").fetchone()[0]
            return [json.loads(row[0]) for row in reversed(rows)], top

        return self._read(read).result()

    def deliveries(self, limit: int) -> list[dict[str, Any]]:
        """Every pending delivery and the newest `limit` others, oldest first (blocks)."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            conn.row_factory = sqlite3.Row
            try:
                rows = conn.execute(
                    "SELECT * FROM deliveries WHERE status = 'pending' UNION "
                    "SELECT * FROM (SELECT * FROM deliveries ORDER BY created_at DESC LIMIT ?) "
                    "ORDER BY created_at",
                    (limit,),
                ).fetchall()
            finally:
                conn.row_factory = None
            return [dict(row) for row in rows]

        return self._read(read).result()

    def _write(self, sql: str, args: Any) -> Future[Any]:
        """One statement in a transaction of its own on the writer (a record, not a row)."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, args)
            conn.execute("COMMIT")

        job = _Chore(run)
        job.future.add_done_callback(self._log_failure)
        self._queue.put(job)
        return job.future

    def _log_failure(self, future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.warning("database %s: not saved: %s", self.path, future.exception())

    def checkpoints(self, limit: int) -> Future[list[dict[str, Any]]]:
        """The newest `limit` checkpoints, oldest first."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT store_id, last_id, hash, timestamp, signature FROM checkpoints "
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            keys = audit.CHECKPOINT_FIELDS
            return [dict(zip(keys, row, strict=True)) for row in reversed(rows)]

        return self._read(read)

    def verify(
        self, public_key: str | None, from_id: int | None, to_id: int | None
    ) -> Future[Verdict]:
        """Check the file's chain and checkpoints, on a reader thread, from one snapshot."""
        return self._pool.submit(verify_database, self.path, public_key, from_id, to_id)

    def health(self) -> dict[str, Any]:
        """The writer's state for /readyz: ok, error, queue depth, seconds since a commit."""
        return {
            "ok": self.failure is None,
            "error": self.failure,
            "queued": self._queue.qsize() + len(self._waiting),
            "seconds_since_commit": round(time.monotonic() - self.last_commit, 3),
        }

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (for up to `timeout` seconds), then close the file."""
        if self._writer.is_alive():
            self._queue.put(_Stop(time.monotonic() + timeout))
            self._writer.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._readers:
            conn.close()

    # -- the writer thread ------------------------------------------------------------

    def _write_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        backoff = BACKOFF_FIRST
        stop: _Stop | None = None
        chores: list[_Chore] = []
        while stop is None or (self._waiting and time.monotonic() < stop.deadline):
            if self.failure is not None:
                wait: float | None = backoff
            elif stop is not None:
                wait = 0.01
            else:
                wait = self.index_delay if self._stored > self._indexed else None
            jobs = self._take(wait)
            for job in jobs:
                if isinstance(job, _Append):
                    self._waiting.append(job)
                elif isinstance(job, _Chore):
                    chores.append(job)
                else:
                    stop = job
            try:
                conn = conn or self._connect(WRITER_BUSY_MS)
                self._waiting = [job for job in self._waiting if not job.future.cancelled()]
                if self._waiting or self.failure is not None:
                    self._commit(conn)
                # The user index catches up when the writer is idle, or far behind.
                if self.failure is None and (not jobs or self._behind()):
                    self._index(conn)
            except sqlite3.Error as exc:
                self._failed(exc)
                if not _is_busy(exc) and conn is not None:
                    # Reopen: a fresh connection recovers from a file or directory that
                    # was unusable for a while.
                    conn.close()
                    conn = None
            except Exception:  # noqa: BLE001 - the writer must never die
                log.exception("database %s: unexpected error in the writer", self.path)
                self.failure = "unexpected writer error"
            # Each chore answers for itself, commit or no commit: a failing one fails fast.
            for chore in chores:
                self._run_chore(conn, chore)
            chores = []
            backoff = BACKOFF_FIRST if self.failure is None else min(backoff * 2, BACKOFF_MAX)
        # Stopping: whatever could not be done is told so, never left waiting.
        for job in [*self._waiting, *self._take(0)]:
            if not isinstance(job, _Stop) and job.future.set_running_or_notify_cancel():
                job.future.set_exception(WriteFailed("the server stopped before storing it"))
        self._waiting = []
        if conn is not None:
            if self.failure is None:
                self._index(conn)  # a cleanly closed file has every row in the user index
            conn.close()

    def _take(self, wait: float | None) -> list[_Append | _Chore | _Stop]:
        """The next job (waiting up to `wait` seconds), and everything queued behind it."""
        try:
            jobs = [self._queue.get(timeout=wait)]
        except queue.Empty:
            return []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs

    def _behind(self) -> bool:
        return self._stored - self._indexed >= self.index_chunk

    def _failed(self, exc: BaseException) -> None:
        if self.failure is None:
            log.warning("database %s: cannot write: %s (retrying)", self.path, exc)
        self.failure = str(exc)

    def _commit(self, conn: sqlite3.Connection) -> None:
        """One group commit of every waiting append; with none, a probe write."""
        # Taking the lock first: if it fails, nothing has been claimed and every write
        # keeps waiting (or is cancelled by its request's timeout).
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        claimed = [job for job in self._waiting if job.future.set_running_or_notify_cancel()]
        self._waiting = []
        activities = [a for job in claimed for a in job.activities]
        try:
            if not claimed:
                # A failing writer with nothing to write probes with a real write, which a
                # full disk refuses as an insert would: /readyz clears only when writes work.
                conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('writer_checked_at', ?)",
                    (str(time.time()),),
                )
            # Chained here, in the order the rows are stored, in their own transaction.
            links = audit.chain_links(self._head, activities)
            _insert(conn, activities, links)
            conn.execute("COMMIT")
        except BaseException as exc:
            # Not stored: say so first, so no request waits on a rollback that fails too.
            for job in claimed:
                job.future.set_exception(WriteFailed(str(exc)))
            _roll_back(conn)
            raise
        if activities:
            # Ids reach the queue in order, so the last row is the newest.
            self._stored = max(self._stored, activities[-1].id)
            self._head = links[-1][1]
        if self.failure is not None:
            log.warning("database %s: writing again", self.path)
        self.failure = None
        self.last_commit = time.monotonic()
        for job in claimed:
            job.future.set_result(None)
        if self.observe_commit is not None and activities:
            try:
                self.observe_commit(time.perf_counter() - began)
            except Exception:  # noqa: BLE001 - a metric must not fail a commit
                log.exception("commit metrics")

    def _run_chore(self, conn: sqlite3.Connection | None, chore: _Chore) -> None:
        """Run one chore in its own transaction; its future always gets an outcome."""
        if not chore.future.set_running_or_notify_cancel():
            return
        if conn is None:
            chore.future.set_exception(WriteFailed(self.failure or "the file cannot be opened"))
            return
        try:
            result = chore.run(conn)
        except Exception as exc:  # noqa: BLE001 - the chore's caller learns of it
            chore.future.set_exception(WriteFailed(str(exc)))
            _roll_back(conn)
        else:
            chore.future.set_result(result)

    def _index(self, conn: sqlite3.Connection) -> None:
        """Add the rows committed since the last step to activities_by_user, at once."""
        # One step of tens of thousands of rows sorted by user fills each index page it
        # touches with many rows: 50,000 at once cost a fifth of adding each at commit.
        if self._stored <= self._indexed:
            return
        try:
            # Read inside the transaction: with --redis, another process may have written.
            conn.execute("BEGIN IMMEDIATE")
            indexed = self._indexed_now(conn)
            top = conn.execute("SELECT coalesce(max(id), 0) FROM activities").fetchone()[0]
            conn.execute(
                "INSERT INTO activities_by_user SELECT user_id, id FROM activities "
                "WHERE id > ? AND id <= ? ORDER BY user_id, id",
                (indexed, top),
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'indexed_id'", (str(top),))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # Queries stay right (they read unindexed rows by id); the next step retries.
            log.warning("database %s: user index not updated: %s", self.path, exc)
            _roll_back(conn)
            return
        self._indexed = self._stored = max(self._stored, top)

    def _checkpoint_step(self, conn: sqlite3.Connection, sign: Signing) -> dict[str, Any] | None:
        """On the writer, in one transaction, so the head it signs is the one stored."""
        conn.execute("BEGIN IMMEDIATE")
        newest = self._newest(conn)
        latest = conn.execute("SELECT max(last_id) FROM checkpoints").fetchone()[0]
        if newest[0] == 0 or newest[0] == latest:  # 0: no rows to sign
            conn.execute("ROLLBACK")
            return None
        checkpoint = sign(self.store_id, newest[0], newest[1].hex(), now_timestamp())
        conn.execute(
            "INSERT INTO checkpoints (store_id, last_id, hash, timestamp, signature) "
            "VALUES (:store_id, :last_id, :hash, :timestamp, :signature)",
            checkpoint,
        )
        conn.execute("COMMIT")
        return checkpoint

    def _archive_step(self, conn: sqlite3.Connection, activities: list[Activity]) -> list[Activity]:
        """Store what the file lacks, chained after its newest row; what it stored."""
        # Idempotent by id and safe with several writers: the newest row and its hash are
        # read in the transaction, and only ids above it are stored, in order.
        conn.execute("BEGIN IMMEDIATE")
        floor = self._high_water(conn)
        head = self._newest(conn)[1]
        new = [a for a in activities if a.id > floor]
        links = audit.chain_links(head, new)
        # A key Redis has forgotten (after a day, or a loss) may come back on a new
        # activity: the file keeps it for the first one only.
        keys = [a.key for a in new if a.key is not None]
        marks = ",".join("?" * len(keys))
        taken = {
            row[0]
            for row in conn.execute(
                f"SELECT idem_key FROM activities WHERE idem_key IN ({marks})", keys
            )
        }
        _insert(conn, new, links, taken)
        conn.execute("COMMIT")
        if new:
            self._stored = max(self._stored, new[-1].id)
            self._head = links[-1][1]
        return new

    def _delete_step(
        self, conn: sqlite3.Connection, cutoff: str | None, through_id: int | None
    ) -> list[int]:
        """One retention step on the writer's connection: the ids it deleted."""
        # Read inside the transaction: with --redis, another process may trim too.
        conn.execute("BEGIN IMMEDIATE")
        oldest = conn.execute(
            "SELECT id, timestamp, hash FROM activities ORDER BY id LIMIT ?", (DELETE_CHUNK,)
        ).fetchall()
        # Always the oldest ids, in a run: what is left still chains from one anchor, even
        # if the clock once stepped back.
        count = 0
        if cutoff is not None:
            while count < len(oldest) and oldest[count][1] < cutoff:
                count += 1
        if through_id is not None:
            count = max(count, sum(1 for row in oldest if row[0] <= through_id))
        if count <= 0:
            conn.execute("ROLLBACK")
            return []
        ids = [row[0] for row in oldest[:count]]
        last_id, last_hash = oldest[count - 1][0], oldest[count - 1][2]
        top = conn.execute("SELECT max(id) FROM activities").fetchone()[0]
        # Remember the high-water mark, so ids never restart even if every row goes.
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'last_id' AND CAST(value AS INTEGER) < ?",
            (str(top), top),
        )
        # The last deleted hash becomes the anchor the first row left chains from.
        conn.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(last_hash.hex(), "chain_anchor"), (str(last_id), "chain_anchor_id")],
        )
        conn.execute("DELETE FROM activities WHERE id <= ?", (last_id,))
        conn.execute("COMMIT")
        return ids
