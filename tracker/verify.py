"""python -m tracker.verify: check a database file or a chained export, offline."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn
from urllib.parse import quote

from tracker.audit import (
    CHECKPOINT_FIELDS,
    SIGNATURES_NOT_CHECKED,
    Row,
    Verdict,
    VerifyError,
    load_public_key,
    verify_chain,
    verify_export,
)

SQLITE_HEADER = b"SQLite format 3\x00"
# Rows fetched at a time: memory stays flat however long the history.
ROW_CHUNK = 5_000
_TABLES = {
    "activities": {"id", "user_id", "action", "timestamp", "details", "prev_hash", "hash"},
    "meta": {"key", "value"},
    "checkpoints": {"seq", *CHECKPOINT_FIELDS},
}


def verify_database(
    path: str | os.PathLike[str],
    public_key_b64: str | None = None,
    from_id: int | None = None,
    to_id: int | None = None,
) -> Verdict:
    """Stream-verify a database file's chain and checkpoints, reading it read-only."""
    # from_id: the row before it is read too, as the anchor (its own hash is checked);
    # without one, the anchor is meta's chain_anchor. VerifyError when it cannot be read.
    path = os.fspath(path)
    if public_key_b64 is not None:
        load_public_key(public_key_b64)  # a bad key fails before the file is opened
    conn = _open_read_only(path)
    try:
        return _verify_open(conn, public_key_b64, from_id, to_id)
    except sqlite3.Error as exc:
        raise VerifyError(f"cannot read {path}: {exc}") from None
    except VerifyError as exc:
        raise VerifyError(f"cannot verify {path}: {exc}") from None
    finally:
        conn.close()


def _open_read_only(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise VerifyError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VerifyError(f"{path}: is a directory")
    # Percent-quoted, so that '?', '#' or '%' in a file name stay part of the path.
    uri = f"file://{quote(os.path.abspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise VerifyError(f"cannot open {path}: {exc}") from None
    # Text that is not UTF-8 comes back as bytes, which the verifier reports as changed.
    conn.text_factory = _text_or_bytes
    return conn


def _text_or_bytes(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _verify_open(
    conn: sqlite3.Connection, public_key_b64: str | None, from_id: int | None, to_id: int | None
) -> Verdict:
    # One read transaction: meta, checkpoints and every chunk of rows from one snapshot,
    # even while the server keeps writing.
    conn.execute("BEGIN")
    try:
        _check_schema(conn)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        store_id, anchor, anchor_id = _chain_meta(meta)
        first_id = from_id
        if from_id is not None:
            before = conn.execute(
                "SELECT id, prev_hash FROM activities WHERE id < ? ORDER BY id DESC LIMIT 1",
                (from_id,),
            ).fetchone()
            if before is not None:
                # Anchored on the row before: its prev_hash starts the chain, its hash is
                # checked (a malformed prev_hash is then reported as a changed row).
                first_id, anchor_id = before[0], None
                if isinstance(before[1], bytes) and len(before[1]) == 32:
                    anchor = before[1]
        return verify_chain(
            _rows(conn, first_id, to_id),
            anchor,
            _checkpoints(conn),
            public_key_b64,
            anchor_id=anchor_id,
            store_id=store_id,
            to_id=to_id,
        )
    finally:
        conn.execute("ROLLBACK")


def _check_schema(conn: sqlite3.Connection) -> None:
    for table, wanted in _TABLES.items():
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        lacking = f"table {table} lacks {', '.join(sorted(wanted - columns))}"
        if not columns or not wanted <= columns:
            what = f"no table {table}" if not columns else lacking
            raise VerifyError(f"not an activity tracker database with an audit chain ({what})")


def _chain_meta(meta: dict[str, Any]) -> tuple[str, bytes, int]:
    """The store id, the anchor hash and the id it belongs to, as meta holds them."""
    store_id, anchor, anchor_id = (
        meta.get(key) for key in ("store_id", "chain_anchor", "chain_anchor_id")
    )
    if not isinstance(store_id, str) or not store_id:
        raise VerifyError("meta has no store_id")
    try:
        anchor_bytes = bytes.fromhex(anchor)  # type: ignore[arg-type]
        anchor_number = int(anchor_id)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        anchor_bytes, anchor_number = b"", -1
    if len(anchor_bytes) != 32 or anchor != anchor_bytes.hex() or anchor_number < 0:
        raise VerifyError("meta's chain_anchor or chain_anchor_id is missing or malformed")
    return store_id, anchor_bytes, anchor_number


def _rows(conn: sqlite3.Connection, from_id: int | None, to_id: int | None) -> Iterator[Row]:
    low = from_id if from_id is not None else -(2**63)
    high = to_id if to_id is not None else 2**63 - 1
    cursor = conn.execute(
        "SELECT id, user_id, action, timestamp, details, prev_hash, hash FROM activities "
        "WHERE id BETWEEN ? AND ? ORDER BY id",
        (low, high),
    )
    while chunk := cursor.fetchmany(ROW_CHUNK):
        yield from chunk


def _checkpoints(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(
        "SELECT seq, store_id, last_id, hash, timestamp, signature FROM checkpoints "
        "ORDER BY last_id, seq"
    )
    for seq, *fields in cursor:
        yield {"seq": seq, **dict(zip(CHECKPOINT_FIELDS, fields, strict=True))}


# --- the command line --------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error here."""

    def error(self, message: str) -> NoReturn:
        raise VerifyError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m tracker.verify",
        description="Check the audit chain of an activity tracker database file, or of an "
        "NDJSON export made with chain=1. Exit 0 when intact, 1 when tampered with "
        "(naming the first bad id), 2 on bad usage.",
    )
    parser.add_argument("file", metavar="FILE", help="a database file, or an NDJSON export")
    parser.add_argument(
        "--checkpoint",
        metavar="CP.json",
        help="for an export: a checkpoint as GET /api/audit/checkpoints serves it; "
        "without it, rows cut from the end or a recomputed chain go unnoticed",
    )
    parser.add_argument(
        "--public-key",
        metavar="KEY",
        help="the base64 that GET /api/audit/key serves; checks the checkpoints' signatures",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Verify the file named in argv; print the verdict; return the exit status."""
    try:
        args = _parser().parse_args(argv)
        verdict = _verify(args.file, args.checkpoint, args.public_key)
    except (VerifyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    print(json.dumps(verdict.to_dict()) if args.json else _report(verdict))
    return 0 if verdict.ok else 1


def _verify(path: str, checkpoint_path: str | None, public_key: str | None) -> Verdict:
    if public_key is not None:
        try:
            load_public_key(public_key)
        except VerifyError as exc:
            raise VerifyError(f"--public-key: {exc}") from None
    if _is_database(path):
        if checkpoint_path is not None:
            raise VerifyError("--checkpoint is for an export; a database has its own")
        return verify_database(path, public_key)
    checkpoint = _load_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    with open(path, "rb") as lines:
        return verify_export(lines, checkpoint, public_key)


def _is_database(path: str) -> bool:
    """True for an SQLite file, False for what may be an export; VerifyError for neither."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise VerifyError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head == SQLITE_HEADER:
        return True
    if not head.startswith(b"{"):
        raise VerifyError(f"{path} is neither an SQLite database nor an NDJSON export")
    return False


def _load_checkpoint(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            checkpoint = json.loads(file.read())
    except OSError as exc:
        raise VerifyError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise VerifyError(f"{path} is not JSON ({exc})") from None
    if not isinstance(checkpoint, dict) or not set(CHECKPOINT_FIELDS) <= checkpoint.keys():
        fields = ", ".join(CHECKPOINT_FIELDS)
        raise VerifyError(f"{path} is not one checkpoint (an object with {fields})")
    return checkpoint


def _report(verdict: Verdict) -> str:
    """The verdict for people: a first line that says it all, then the counts."""
    if verdict.ok:
        through = verdict.verified_through
        lines = [f"intact: verified through id {through}" if through is not None else "intact"]
    else:
        bad = verdict.first_bad_id
        named = f"id {bad}" if bad is not None else "id unknown"
        lines = [f"TAMPERED: first bad {named}: {verdict.reason}"]
        lines.append(f"verified through id: {verdict.verified_through}")
    lines.append(f"rows checked: {verdict.count}")
    lines.append(f"checkpoints checked: {verdict.checkpoints_checked}")
    if verdict.signatures_checked:
        lines.append("signatures checked")
    lines += [
        "signatures not checked (no --public-key)" if note == SIGNATURES_NOT_CHECKED else note
        for note in verdict.notes
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
