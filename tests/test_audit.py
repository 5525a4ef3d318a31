"""The audit chain, checkpoints and their signatures, the verifier and its CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tracker import verify
from tracker.activity import Activity, ActivityInput
from tracker.audit import (
    ZERO_HASH,
    KeyFileError,
    Signer,
    VerifyError,
    activity_hash,
    canonical,
    chain_hash,
    chain_links,
    checkpoint_message,
    verify_chain,
    verify_checkpoint_signature,
    verify_export,
)
from tracker.verify import verify_database

ROOT = Path(__file__).resolve().parent.parent

TS = "2025-11-05T10:30:00.123456+00:00"

NASTY = [
    "",
    "plain",
    "caf\u00e9 \u00fcber na\u00efve",
    "\u65e5\u672c\u8a9e",
    "emoji \U0001f600 \U0001f468\u200d\U0001f469\u200d\U0001f467 flags \U0001f1eb\U0001f1f7",
    'quote " and \\ backslash \\" mixed',
    "new\nline\rreturn\ttab\bback\fform",
    "".join(chr(c) for c in range(0x20)),
    "del \x7f and C1 \x80\x9f",
    "separators \u2028 \u2029",
    "bom \ufeff nbsp \u00a0 zero-width \u200b",
    "</script><!-- & ' <>",
    "\\u0000 literally",
    "max plane \U0010ffff",
]


def jcs(id: int, user_id: str, action: str, timestamp: str, details: str | None) -> bytes:
    """The independent encoder: rfc8785 over the five-field object."""
    obj = {"id": id, "user_id": user_id, "action": action, "timestamp": timestamp}
    obj["details"] = details  # type: ignore[assignment]
    return rfc8785.dumps(obj)


# --- canonical form ----------------------------------------------------------------------


@pytest.mark.parametrize("text", NASTY)
def test_canonical_equals_rfc8785_on_nasty_text(text: str) -> None:
    for fields in [
        (1, text, "login", TS, text),
        (2**53 - 1, "u", text, TS, None),
        (0, text, text, text, text),
    ]:
        assert canonical(*fields) == jcs(*fields)


def test_canonical_equals_rfc8785_and_json_dumps_on_random_text() -> None:
    rng = random.Random(8785)
    alphabet = [chr(c) for c in range(0x30)] + list('"\\/\u2028\u2029\x7f\u00e9\ufffd')
    alphabet += ["\U0001f600", "\U0001d11e", "\u0800", "\uffff"]
    for _ in range(300):
        texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(4)]
        fields = (rng.randint(-(2**53) + 1, 2**53 - 1), texts[0], texts[1], texts[2], texts[3])
        as_dumps = json.dumps(
            dict(zip(["id", "user_id", "action", "timestamp", "details"], fields, strict=True)),
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        assert canonical(*fields) == jcs(*fields) == as_dumps


def test_canonical_null_details_and_key_order() -> None:
    assert canonical(42, "user_123", "login", TS, None) == (
        b'{"action":"login","details":null,"id":42,'
        b'"timestamp":"2025-11-05T10:30:00.123456+00:00","user_id":"user_123"}'
    )


@pytest.mark.parametrize(
    "fields",
    [
        (True, "u", "a", TS, None),
        (1.0, "u", "a", TS, None),
        (2**53, "u", "a", TS, None),
        (1, b"u", "a", TS, None),
        (1, "u", None, TS, None),
        (1, "u", "a", TS, 5),
        (1, "\ud800", "a", TS, None),
    ],
)
def test_canonical_refuses_what_jcs_cannot_encode_exactly(fields: tuple) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical(*fields)


# --- the chain ---------------------------------------------------------------------------


def test_chain_hash_vector() -> None:
    first = (
        b'{"action":"login","details":"Successful login","id":1,'
        b'"timestamp":"2025-11-05T10:30:00.123456+00:00","user_id":"user_123"}'
    )
    assert canonical(1, "user_123", "login", TS, "Successful login") == first
    digest = chain_hash(ZERO_HASH, first)
    assert digest == hashlib.sha256(bytes(32) + first).digest()
    # Pinned: (head -c 32 /dev/zero; printf %s "$first") | sha256sum
    assert digest.hex() == "ddc0e20d4f38f0eef4484a08ddafcbb955fd9928f9fb8cb731064a230827e71e"


def test_chain_links_follow_each_other_from_the_given_head() -> None:
    activities = [
        Activity.create(i, ActivityInput(f"user{i}", "act", None if i % 2 else "d"), TS)
        for i in range(1, 5)
    ]
    links = chain_links(ZERO_HASH, activities)
    prev = ZERO_HASH
    for activity, (link_prev, link_hash) in zip(activities, links, strict=True):
        assert link_prev == prev
        expected = hashlib.sha256(prev + jcs(*activity.to_dict().values())).digest()
        assert link_hash == expected == activity_hash(prev, activity)
        prev = link_hash
    # Continuing from the last hash gives the same links as one long batch.
    assert chain_links(links[1][1], activities[2:]) == links[2:]
    assert chain_links(ZERO_HASH, []) == []


def test_chain_hash_wants_a_32_byte_prev() -> None:
    with pytest.raises(ValueError):
        chain_hash(ZERO_HASH.hex().encode(), b"{}")


# --- checkpoints and the signing key -----------------------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return Signer.load_or_create(tmp_path_factory.mktemp("key") / "signing.pem")


@pytest.fixture(scope="module")
def other_signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return Signer.load_or_create(tmp_path_factory.mktemp("other") / "signing.pem")


def test_checkpoint_message_is_exact() -> None:
    message = checkpoint_message("s1", 7, "ab" * 32, TS)
    assert message == f"activity-tracker checkpoint v1\ns1\n7\n{'ab' * 32}\n{TS}\n".encode()


@pytest.mark.parametrize(
    "fields",
    [
        ("s\n1", 7, "ab" * 32, TS),
        ("", 7, "ab" * 32, TS),
        ("s1", -1, "ab" * 32, TS),
        ("s1", True, "ab" * 32, TS),
        ("s1", 7, "AB" * 32, TS),
        ("s1", 7, "ab" * 31, TS),
        ("s1", 7, "ab" * 32, TS + "\n"),
    ],
)
def test_checkpoint_message_refuses_ambiguous_fields(fields: tuple) -> None:
    with pytest.raises(ValueError):
        checkpoint_message(*fields)


def test_checkpoint_signature_verifies_with_the_served_public_key(signer: Signer) -> None:
    checkpoint = signer.sign_checkpoint("s1", 7, "ab" * 32, TS)
    assert set(checkpoint) == {"store_id", "last_id", "hash", "timestamp", "signature"}
    raw = base64.b64decode(signer.public_key_b64, validate=True)
    assert len(raw) == 32
    # As any client would check it, with nothing of ours but the message text.
    Ed25519PublicKey.from_public_bytes(raw).verify(
        base64.b64decode(checkpoint["signature"]), checkpoint_message("s1", 7, "ab" * 32, TS)
    )
    assert verify_checkpoint_signature(checkpoint, signer.public_key_b64)


def test_checkpoint_signature_fails_on_any_changed_field(
    signer: Signer, other_signer: Signer
) -> None:
    checkpoint = signer.sign_checkpoint("s1", 7, "ab" * 32, TS)
    assert not verify_checkpoint_signature(checkpoint, other_signer.public_key_b64)
    for name, value in [
        ("store_id", "s2"),
        ("last_id", 8),
        ("hash", "ac" + "ab" * 31),
        ("timestamp", TS.replace("30", "31")),
        ("signature", checkpoint["signature"][:-4] + "AAA="),
        ("signature", "not base64!"),
        ("last_id", "7"),
    ]:
        assert not verify_checkpoint_signature({**checkpoint, name: value}, signer.public_key_b64)
    assert not verify_checkpoint_signature({}, signer.public_key_b64)


@pytest.mark.parametrize("key", ["", "not base64", base64.b64encode(bytes(31)).decode()])
def test_a_bad_public_key_is_a_usage_error(signer: Signer, key: str) -> None:
    checkpoint = signer.sign_checkpoint("s1", 7, "ab" * 32, TS)
    with pytest.raises(VerifyError):
        verify_checkpoint_signature(checkpoint, key)


def test_key_file_is_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    first = Signer.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Signer.load_or_create(str(path)).public_key_b64 == first.public_key_b64
    assert [p.name for p in tmp_path.iterdir()] == ["signing.pem"]


def test_key_file_created_by_racing_starts_is_one_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    keys: list[str] = []
    threads = [
        threading.Thread(target=lambda: keys.append(Signer.load_or_create(path).public_key_b64))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["signing.pem"]


def _pem(key: object, encryption: object = None) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    "content, cause",
    [
        (b"", "empty"),
        (b"garbage\n\x00\xff", "no BEGIN PRIVATE KEY"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "unreadable"),
        ("ec", "not an Ed25519 key"),
        ("encrypted", "encrypted"),
    ],
)
def test_unusable_key_file_is_one_line_naming_path_and_cause(
    tmp_path: Path, content: bytes | str, cause: str
) -> None:
    path = tmp_path / "signing.pem"
    if content == "ec":
        content = _pem(ec.generate_private_key(ec.SECP256R1()))
    elif content == "encrypted":
        content = _pem(Ed25519PrivateKey.generate(), serialization.BestAvailableEncryption(b"pw"))
    path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(KeyFileError) as caught:
        Signer.load_or_create(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and cause in message
    assert path.read_bytes() == content  # never replaced


def test_key_path_that_is_a_directory_or_uncreatable_is_one_line(tmp_path: Path) -> None:
    for path in [tmp_path, tmp_path / "missing-dir" / "signing.pem"]:
        with pytest.raises(KeyFileError) as caught:
            Signer.load_or_create(path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


# --- databases to verify -----------------------------------------------------------------

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE activities (
    id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, action TEXT NOT NULL,
    timestamp TEXT NOT NULL, details TEXT, idem_key TEXT, prev_hash BLOB, hash BLOB
);
CREATE TABLE checkpoints (
    seq INTEGER PRIMARY KEY, store_id TEXT NOT NULL, last_id INTEGER NOT NULL,
    hash TEXT NOT NULL, timestamp TEXT NOT NULL, signature TEXT NOT NULL
);
"""
STORE = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
# Gaps between ids, so that a row can be slipped in between two others.
IDS = range(10, 101, 10)
CHECKPOINT_IDS = (40, 80, 100)


def make_activities(ids: Iterable[int]) -> list[Activity]:
    return [
        Activity.create(
            id,
            ActivityInput(
                f"user_{id % 3}", "login", [None, "ok", NASTY[id // 10 % len(NASTY)]][id % 3]
            ),
            f"2025-11-05T10:30:{id % 60:02d}.{id:06d}+00:00",
        )
        for id in ids
    ]


def build_db(path: Path, signer: Signer) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    activities = make_activities(IDS)
    for a, (prev, digest) in zip(activities, chain_links(ZERO_HASH, activities), strict=True):
        conn.execute(
            "INSERT INTO activities VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
            (a.id, a.user_id, a.action, a.timestamp, a.details, prev, digest),
        )
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("store_id", STORE), ("chain_anchor", "0" * 64), ("chain_anchor_id", "0")],
    )
    for last_id in CHECKPOINT_IDS:
        sign_checkpoint(conn, signer, last_id)
    conn.commit()
    conn.close()
    return path


def row_hash(conn: sqlite3.Connection, id: int) -> bytes:
    return conn.execute("SELECT hash FROM activities WHERE id = ?", (id,)).fetchone()[0]


def sign_checkpoint(
    conn: sqlite3.Connection, signer: Signer, last_id: int, seq: int | None = None
) -> None:
    checkpoint = signer.sign_checkpoint(STORE, last_id, row_hash(conn, last_id).hex(), TS)
    conn.execute(
        "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
        (seq, *checkpoint.values()),
    )


def rechain(conn: sqlite3.Connection, from_id: int, through: int = 2**62) -> None:
    """Recompute the hashes from a row on, as someone covering an edit would."""
    prev = conn.execute("SELECT prev_hash FROM activities WHERE id = ?", (from_id,)).fetchone()[0]
    rows = conn.execute(
        "SELECT id, user_id, action, timestamp, details FROM activities "
        "WHERE id BETWEEN ? AND ? ORDER BY id",
        (from_id, through),
    ).fetchall()
    for row in rows:
        digest = chain_hash(prev, canonical(*row))
        conn.execute(
            "UPDATE activities SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, row[0])
        )
        prev = digest


def insert_row(conn: sqlite3.Connection, id: int, prev: bytes) -> None:
    fields = (id, "mallory", "login", TS, "slipped in")
    digest = chain_hash(prev, canonical(*fields))
    conn.execute(
        "INSERT INTO activities VALUES (?, ?, ?, ?, ?, NULL, ?, ?)", (*fields, prev, digest)
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Path:
    return build_db(tmp_path_factory.mktemp("template") / "activities.db", signer)


@pytest.fixture
def db(template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "activities.db"
    shutil.copyfile(template, path)
    return path


def tamper(path: Path, change: Callable[[sqlite3.Connection], object]) -> None:
    conn = sqlite3.connect(path)
    change(conn)
    conn.commit()
    conn.close()


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tracker.verify", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def _forge_signature(other: Signer) -> Callable[[sqlite3.Connection], object]:
    def change(conn: sqlite3.Connection) -> None:
        digest = row_hash(conn, 80).hex()
        forged = other.sign_checkpoint(STORE, 80, digest, TS)["signature"]
        conn.execute("UPDATE checkpoints SET signature = ? WHERE last_id = 80", (forged,))

    return change


def _rewrite(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE activities SET details = 'nothing happened' WHERE id = 50")
    rechain(conn, 50)


# (name, tampering, kind, first bad id, words the reason must hold)
TAMPERING: list[tuple[str, Callable[[sqlite3.Connection], object], str, int, list[str]]] = [
    (
        "changed details",
        lambda c: c.execute("UPDATE activities SET details = 'x' WHERE id = 50"),
        "changed",
        50,
        ["row 50"],
    ),
    (
        "changed user_id",
        lambda c: c.execute("UPDATE activities SET user_id = 'user_1' WHERE id = 60"),
        "changed",
        60,
        ["row 60"],
    ),
    (
        "changed hash",
        lambda c: c.execute("UPDATE activities SET hash = randomblob(32) WHERE id = 50"),
        "changed",
        50,
        ["row 50"],
    ),
    (
        "changed prev_hash",
        lambda c: c.execute("UPDATE activities SET prev_hash = randomblob(32) WHERE id = 50"),
        "changed",
        50,
        ["row 50"],
    ),
    (
        "hash removed",
        lambda c: c.execute("UPDATE activities SET hash = NULL WHERE id = 50"),
        "changed",
        50,
        ["not 32 bytes"],
    ),
    (
        "details no longer UTF-8",
        lambda c: c.execute("UPDATE activities SET details = CAST(x'ff41' AS TEXT) WHERE id = 50"),
        "changed",
        50,
        ["row 50", "details"],
    ),
    (
        "user_id made a blob",
        lambda c: c.execute("UPDATE activities SET user_id = x'41' WHERE id = 50"),
        "changed",
        50,
        ["row 50", "user_id"],
    ),
    (
        "contents of two rows swapped",
        lambda c: c.executescript(
            "UPDATE activities SET id = -1 WHERE id = 50;"
            "UPDATE activities SET id = 50 WHERE id = 60;"
            "UPDATE activities SET id = 60 WHERE id = -1;"
        ),
        "changed",
        50,
        ["row 50"],
    ),
    (
        "changed, with its own hash recomputed",
        lambda c: (
            c.execute("UPDATE activities SET details = 'x' WHERE id = 50"),
            rechain(c, 50, through=50),
        ),
        "missing",
        60,
        ["id 50", "id 60", "edited"],
    ),
    (
        "deleted middle row",
        lambda c: c.execute("DELETE FROM activities WHERE id = 60"),
        "missing",
        70,
        ["id 50", "id 70"],
    ),
    (
        "deleted row a checkpoint names",
        lambda c: c.execute("DELETE FROM activities WHERE id = 40"),
        "missing",
        40,
        ["row 40", "checkpoint #1"],
    ),
    (
        "deleted last rows",
        lambda c: c.execute("DELETE FROM activities WHERE id > 80"),
        "missing",
        100,
        ["after id 80 up to id 100"],
    ),
    (
        "deleted first rows, anchor left alone",
        lambda c: c.execute("DELETE FROM activities WHERE id <= 20"),
        "missing",
        30,
        ["anchor (id 0)", "id 30"],
    ),
    (
        "inserted row with a self-consistent hash",
        lambda c: insert_row(c, 55, row_hash(c, 50)),
        "inserted",
        55,
        ["row 55"],
    ),
    (
        "inserted row chained from nowhere",
        lambda c: insert_row(c, 55, os.urandom(32)),
        "inserted",
        55,
        ["row 55"],
    ),
    ("chain recomputed after an edit", _rewrite, "rewritten", 50, ["checkpoint #2", "id 50"]),
    (
        "foreign checkpoint",
        lambda c: c.execute("UPDATE checkpoints SET store_id = 'elsewhere' WHERE last_id = 80"),
        "bad signature",
        80,
        ["foreign checkpoint #2"],
    ),
    (
        "checkpoint hash no longer hex",
        lambda c: c.execute("UPDATE checkpoints SET hash = 'x' WHERE last_id = 80"),
        "bad signature",
        80,
        ["malformed"],
    ),
]


@pytest.mark.parametrize(
    "change, kind, first_bad, words",
    [case[1:] for case in TAMPERING],
    ids=[case[0] for case in TAMPERING],
)
def test_tampering_is_caught_by_verify_database(
    db: Path,
    change: Callable[[sqlite3.Connection], object],
    kind: str,
    first_bad: int,
    words: list[str],
) -> None:
    tamper(db, change)
    verdict = verify_database(db)
    assert not verdict.ok
    assert (verdict.kind, verdict.first_bad_id) == (kind, first_bad), verdict.reason
    assert verdict.reason is not None and verdict.reason.startswith(f"{kind}: ")
    for word in words:
        assert word in verdict.reason
    assert verdict.verified_through is None or verdict.verified_through < first_bad


@pytest.mark.parametrize(
    "change, kind, first_bad",
    [case[1:4] for case in TAMPERING],
    ids=[case[0] for case in TAMPERING],
)
def test_tampering_is_caught_by_the_cli(
    db: Path,
    signer: Signer,
    change: Callable[[sqlite3.Connection], object],
    kind: str,
    first_bad: int,
) -> None:
    tamper(db, change)
    result = run_cli(db, "--public-key", signer.public_key_b64)
    assert result.returncode == 1, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert first_line.startswith(f"TAMPERED: first bad id {first_bad}: {kind}: ")
    assert result.stderr == ""


def test_intact_database_verifies(db: Path, signer: Signer) -> None:
    verdict = verify_database(db, signer.public_key_b64)
    assert verdict.to_dict() == {
        "ok": True,
        "verified_through": 100,
        "first_bad_id": None,
        "reason": None,
        "count": 10,
        "checkpoints_checked": 3,
        "signatures_checked": True,
        "notes": [],
    }
    without_key = verify_database(db)
    assert without_key.ok and not without_key.signatures_checked
    assert without_key.notes == ("signatures not checked (no public key given)",)


def test_cli_on_an_intact_database(db: Path, signer: Signer) -> None:
    result = run_cli(db)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "intact: verified through id 100"
    assert "rows checked: 10" in result.stdout
    assert "checkpoints checked: 3" in result.stdout
    assert "signatures not checked (no --public-key)" in result.stdout
    result = run_cli(db, "--public-key", signer.public_key_b64, "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["signatures_checked"] is True


def test_forged_checkpoint_signature_is_caught_with_the_key_only(
    db: Path, signer: Signer, other_signer: Signer
) -> None:
    tamper(db, _forge_signature(other_signer))
    assert verify_database(db).ok
    verdict = verify_database(db, signer.public_key_b64)
    assert (verdict.kind, verdict.first_bad_id) == ("bad signature", 80)
    assert verdict.verified_through == 70 and verdict.checkpoints_checked == 1
    result = run_cli(db, "--public-key", signer.public_key_b64)
    assert result.returncode == 1
    assert result.stdout.startswith("TAMPERED: first bad id 80: bad signature: checkpoint #2")


def test_recomputed_chain_with_re_signed_checkpoints_needs_the_key(
    db: Path, signer: Signer, other_signer: Signer
) -> None:
    def cover_up(conn: sqlite3.Connection) -> None:
        _rewrite(conn)
        for seq, last_id in enumerate(CHECKPOINT_IDS, 1):
            sign_checkpoint(conn, other_signer, last_id, seq)

    tamper(db, cover_up)
    assert verify_database(db).ok
    verdict = verify_database(db, signer.public_key_b64)
    assert (verdict.kind, verdict.first_bad_id) == ("bad signature", 40)


def test_retention_moves_the_anchor_and_what_remains_verifies(db: Path, signer: Signer) -> None:
    def retain_after(last_deleted: int) -> Callable[[sqlite3.Connection], object]:
        def change(conn: sqlite3.Connection) -> None:
            anchor = row_hash(conn, last_deleted).hex()
            conn.execute("DELETE FROM activities WHERE id <= ?", (last_deleted,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'chain_anchor'", (anchor,))
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'chain_anchor_id'", (str(last_deleted),)
            )

        return change

    tamper(db, retain_after(30))
    verdict = verify_database(db, signer.public_key_b64)
    assert verdict.ok and verdict.count == 7 and verdict.checkpoints_checked == 3
    # The checkpoint at 40 now checks the anchor itself.
    tamper(db, retain_after(40))
    verdict = verify_database(db, signer.public_key_b64)
    assert verdict.ok and verdict.count == 6 and verdict.checkpoints_checked == 3
    assert run_cli(db, "--public-key", signer.public_key_b64).returncode == 0
    # Everything gone: the anchor still matches the last checkpoint.
    tamper(db, retain_after(100))
    verdict = verify_database(db, signer.public_key_b64)
    assert verdict.ok and verdict.count == 0 and verdict.verified_through is None
    assert verdict.checkpoints_checked == 1
    assert verdict.notes == ("2 checkpoint(s) outside the rows read: not compared with rows",)


def test_retention_with_a_wrong_anchor_is_caught(db: Path) -> None:
    def change(conn: sqlite3.Connection) -> None:
        anchor = row_hash(conn, 20).hex()
        conn.execute("DELETE FROM activities WHERE id <= 40")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'chain_anchor'", (anchor,))
        conn.execute("UPDATE meta SET value = '40' WHERE key = 'chain_anchor_id'")

    tamper(db, change)
    verdict = verify_database(db)
    assert verdict.kind == "rewritten" and verdict.first_bad_id == 40


def test_a_sub_range_verifies_on_its_own(db: Path, signer: Signer) -> None:
    tamper(db, lambda c: c.execute("UPDATE activities SET details = 'x' WHERE id = 90"))
    verdict = verify_database(db, signer.public_key_b64, from_id=50, to_id=80)
    # The row before from_id anchors the range, and is checked itself.
    assert verdict.ok and verdict.count == 5 and verdict.verified_through == 80
    assert verdict.checkpoints_checked == 2
    verdict = verify_database(db, signer.public_key_b64, from_id=50)
    assert (verdict.kind, verdict.first_bad_id) == ("changed", 90)
    tamper(db, lambda c: c.execute("UPDATE activities SET details = 'x' WHERE id = 60"))
    verdict = verify_database(db, from_id=50, to_id=80)
    assert (verdict.kind, verdict.first_bad_id) == ("changed", 60)
    assert verify_database(db, from_id=5, to_id=30).ok


def test_verify_reads_without_writing_and_copes_with_odd_names(
    template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "odd ?name#1%20.db"
    shutil.copyfile(template, path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")  # as the server keeps it
    conn.close()
    before = path.read_bytes()
    assert verify_database(path).ok
    assert path.read_bytes() == before
    # Only SQLite's shared-memory files for WAL readers may appear beside it.
    others = {p.name for p in tmp_path.iterdir()} - {path.name}
    assert others <= {path.name + "-wal", path.name + "-shm"}
    assert all(not (tmp_path / name).stat().st_size for name in others - {path.name + "-shm"})
    assert run_cli(path).returncode == 0


def test_verify_streams_in_chunks(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "ROW_CHUNK", 3)
    assert verify_database(db).ok
    tamper(db, lambda c: c.execute("UPDATE activities SET details = 'x' WHERE id = 70"))
    assert verify_database(db).first_bad_id == 70


def test_checkpoints_out_of_order_are_a_caller_error() -> None:
    with pytest.raises(ValueError):
        verify_chain([], ZERO_HASH, [{"last_id": 5}, {"last_id": 4}])


def test_a_checkpoint_without_an_integer_last_id_is_reported_without_one() -> None:
    verdict = verify_chain([], ZERO_HASH, [{"seq": 3, "last_id": "7"}], anchor_id=0)
    assert verdict.kind == "bad signature" and verdict.first_bad_id is None
    assert "checkpoint #3 is malformed" in (verdict.reason or "")


# --- exports -----------------------------------------------------------------------------


def export_text(path: Path) -> str:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT id, user_id, action, timestamp, details, prev_hash, hash FROM activities "
        "ORDER BY id"
    ).fetchall()
    conn.close()
    names = ("id", "user_id", "action", "timestamp", "details")
    lines = [
        json.dumps(
            {
                **dict(zip(names, row[:5], strict=True)),
                "prev_hash": row[5].hex(),
                "hash": row[6].hex(),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        + "\n"
        for row in rows
    ]
    return "".join(lines)


def served_checkpoint(path: Path, last_id: int) -> dict:
    conn = sqlite3.connect(path)
    row = conn.execute(
        "SELECT store_id, last_id, hash, timestamp, signature FROM checkpoints WHERE last_id = ?",
        (last_id,),
    ).fetchone()
    conn.close()
    return dict(zip(("store_id", "last_id", "hash", "timestamp", "signature"), row, strict=True))


def test_export_verifies_offline(db: Path, signer: Signer) -> None:
    text = export_text(db)
    checkpoint = served_checkpoint(db, 100)
    verdict = verify_export(text.splitlines(keepends=True), checkpoint, signer.public_key_b64)
    assert verdict.ok and verdict.count == 10 and verdict.checkpoints_checked == 1
    # Bytes as read from a file, and no checkpoint at all.
    assert verify_export(text.encode().splitlines(keepends=True)).ok
    # An export may start anywhere: its first prev_hash is the anchor.
    tail = text.splitlines(keepends=True)[5:]
    assert verify_export(tail, checkpoint, signer.public_key_b64).ok
    early = served_checkpoint(db, 40)
    verdict = verify_export(tail, early, signer.public_key_b64)
    assert verdict.ok and verdict.checkpoints_checked == 0 and verdict.notes


def test_every_one_character_edit_of_an_export_fails(db: Path, signer: Signer) -> None:
    text = export_text(db)
    checkpoint = served_checkpoint(db, 100)
    for i, char in enumerate(text):
        replacement = (
            "0123456789abcdef"[("0123456789abcdef".index(char) + 1) % 16]
            if char in "0123456789abcdef"
            else "x"
            if char != "x"
            else "y"
        )
        edited = text[:i] + replacement + text[i + 1 :]
        verdict = verify_export(edited.splitlines(keepends=True), checkpoint)
        assert not verdict.ok, (i, char)
        if i < len(text) - 1:  # dropping the final newline changes nothing
            deleted = text[:i] + text[i + 1 :]
            assert not verify_export(deleted.splitlines(keepends=True), checkpoint).ok, (i, char)


def test_export_faults_are_named(db: Path) -> None:
    lines = export_text(db).splitlines(keepends=True)
    checkpoint = served_checkpoint(db, 100)
    verdict = verify_export(lines[:8], checkpoint)
    assert (verdict.kind, verdict.first_bad_id) == ("missing", 100)
    assert "after id 80 up to id 100" in (verdict.reason or "")
    swapped = lines[:4] + [lines[5], lines[4]] + lines[6:]
    verdict = verify_export(swapped, checkpoint)
    assert (verdict.kind, verdict.first_bad_id) == ("out of order", 60)
    # Moved far away, a row is missed where it belonged: the verifier looks one row ahead.
    verdict = verify_export(lines[:4] + lines[5:] + [lines[4]])
    assert (verdict.kind, verdict.first_bad_id) == ("missing", 60)
    broken = lines[:3] + ["{oops\n"] + lines[4:]
    verdict = verify_export(broken)
    assert verdict.kind == "changed" and "line 4" in (verdict.reason or "")
    assert verdict.verified_through == 30 and verdict.first_bad_id is None
    extra = lines[:3] + [lines[3].replace('"hash"', '"note":"x","hash"')] + lines[4:]
    verdict = verify_export(extra)
    assert (verdict.kind, verdict.first_bad_id) == ("changed", 40)
    verdict = verify_export(["{oops\n"] + lines[1:])
    assert verdict.kind == "changed" and verdict.count == 1
    assert verify_export([]).ok
    assert verify_export([], checkpoint).kind == "missing"


def test_cli_on_an_export(db: Path, signer: Signer, tmp_path: Path) -> None:
    export = tmp_path / "export.ndjson"
    export.write_text(export_text(db), encoding="utf-8")
    cp = tmp_path / "cp.json"
    cp.write_text(json.dumps(served_checkpoint(db, 100)))
    result = run_cli(export, "--checkpoint", cp, "--public-key", signer.public_key_b64)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("intact: verified through id 100\n")
    assert "signatures checked" in result.stdout
    edited = export.read_text(encoding="utf-8").replace('"id":70,', '"id":71,')
    export.write_text(edited, encoding="utf-8")
    result = run_cli(export, "--checkpoint", cp)
    assert result.returncode == 1
    assert result.stdout.startswith("TAMPERED: first bad id 71: changed: ")
    assert "signatures not checked (no --public-key)" in result.stdout


def test_cli_bad_usage_is_exit_2_with_one_line(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello\n")
    empty_db = tmp_path / "empty.db"
    sqlite3.connect(empty_db).execute("CREATE TABLE t (x)").connection.close()
    not_one = tmp_path / "cp.json"
    not_one.write_text("[1, 2]")
    export = tmp_path / "export.ndjson"
    export.write_text(export_text(db))
    cases = [
        [tmp_path / "missing.db"],
        [tmp_path],
        [text_file],
        [empty_db],
        [db, "--public-key", "not-a-key"],
        [db, "--checkpoint", not_one],
        [export, "--checkpoint", not_one],
        [export, "--checkpoint", text_file],
        [export, "--checkpoint", tmp_path / "absent.json"],
        [],
        [db, "--no-such-flag"],
    ]
    for args in cases:
        assert verify.main([str(arg) for arg in args]) == 2, args
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1, (args, err)
    # And as a process: one line, no traceback.
    for args in cases[:1] + cases[3:5]:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr


def test_main_returns_the_exit_status(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main([str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified_through"] == 100
    assert verify.main(["--help"]) == 0
    assert verify.main([str(db), "--public-key", "x"]) == 2
    assert "--public-key" in capsys.readouterr().err
