"""The audit chain end to end: served hashes, signed checkpoints, tampering caught by the
endpoint and by `python -m tracker.verify`, retention, and an export checked offline."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracker.activity import ActivityInput
from tracker.app import Tracker
from tracker.audit import checkpoint_message

from .conftest import Api
from .servers import ROOT

NASTY = [
    ("ann", "login", None),
    ("zoë", "view", "naïve café ☕ 𝄞"),
    ('b"o\\b', "up\ndate", 'quote " backslash \\ newline \n tab \t'),
    ("c", "ctl", "\x01\x1f\x7f \u2028 \u2029"),
    ("d", "export", ""),
]


def record_nasty(tracker: Tracker, rounds: int = 2) -> None:
    for _ in range(rounds):
        for user, action, details in NASTY:
            tracker.service.record(ActivityInput(user, action, details))


async def export_lines(api: Api, query: str = "") -> list[dict[str, Any]]:
    response = await api.request("GET", f"/api/metrics/export?format=ndjson&chain=1{query}")
    assert response.code == 200
    return [json.loads(line) for line in response.body.decode().split("\n") if line]


@pytest.mark.gen_test
@pytest.mark.both_backends
async def test_served_hashes_equal_an_independent_rfc8785_recomputation(
    api: Api, tracker: Tracker
) -> None:
    record_nasty(tracker)
    lines = await export_lines(api)
    assert len(lines) == 2 * len(NASTY)
    prev = bytes(32)
    for line in lines:
        fields = {k: line[k] for k in ("id", "user_id", "action", "timestamp", "details")}
        assert line["prev_hash"] == prev.hex()
        digest = sha256(prev + rfc8785.dumps(fields)).digest()
        assert line["hash"] == digest.hex(), line
        prev = digest


@pytest.mark.gen_test
@pytest.mark.settings(db=True)
async def test_checkpoints_are_signed_with_the_served_key(api: Api, tracker: Tracker) -> None:
    record_nasty(tracker)
    first = await tracker.integrity.checkpoint()
    assert await tracker.integrity.checkpoint() is None  # nothing new: no new checkpoint
    tracker.service.record(ActivityInput("e", "later", None))
    second = await tracker.integrity.checkpoint()
    key = json.loads((await api.request("GET", "/api/audit/key")).body)["public_key"]
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key))
    served = json.loads((await api.request("GET", "/api/audit/checkpoints")).body)
    assert served == [first, second]
    lines = await export_lines(api)
    for checkpoint in served:
        public.verify(  # raises if the signature is wrong
            base64.b64decode(checkpoint["signature"]),
            checkpoint_message(
                checkpoint["store_id"],
                checkpoint["last_id"],
                checkpoint["hash"],
                checkpoint["timestamp"],
            ),
        )
        assert checkpoint["store_id"] == tracker.service.store_id
        assert checkpoint["hash"] == lines[checkpoint["last_id"] - 1]["hash"]
    assert served[-1]["last_id"] == tracker.service.last_id


def tamper(path: str, *statements: str) -> None:
    """Edit the file as an attacker with write access would, behind the server's back."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()


def copy_of(path: str, to: Path) -> str:
    """A consistent copy of a live database (its WAL included)."""
    source, target = sqlite3.connect(path), sqlite3.connect(to)
    source.backup(target)
    source.close()
    target.close()
    return str(to)


def insert_forged_row(path: str, id: int) -> None:
    """A row slipped into a hole, chained (self-consistently) to the row before it."""
    conn = sqlite3.connect(path, isolation_level=None)
    prev = conn.execute(
        "SELECT hash FROM activities WHERE id < ? ORDER BY id DESC LIMIT 1", (id,)
    ).fetchone()[0]
    fields = {
        "id": id,
        "user_id": "x",
        "action": "forged",
        "timestamp": "2026-01-01T00:00:00.000000+00:00",
        "details": None,
    }
    digest = sha256(prev + rfc8785.dumps(fields)).digest()
    conn.execute(
        "INSERT INTO activities (id, user_id, action, timestamp, details, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (id, "x", "forged", fields["timestamp"], None, prev, digest),
    )
    conn.close()


TAMPERING = [
    ("changed", ["UPDATE activities SET details = 'edited' WHERE id = 5"], 5),
    ("changed", ["UPDATE activities SET hash = zeroblob(32) WHERE id = 7"], 7),
    ("missing", ["DELETE FROM activities WHERE id = 6"], 7),
    (
        "changed",
        [
            "UPDATE activities SET id = -3 WHERE id = 3",
            "UPDATE activities SET id = 3 WHERE id = 4",
            "UPDATE activities SET id = 4 WHERE id = -3",
        ],
        3,
    ),
    ("inserted", [], 11),  # into the hole a refused write left at id 11
    ("missing", ["DELETE FROM activities WHERE id >= 18"], 20),  # the tail, after a checkpoint
]


async def make_history(api: Api, tracker: Tracker, settings: Any) -> None:
    """Ids 1-10, a hole at 11 (a write refused while the file was locked), 12-20, checkpointed."""
    for i in range(10):
        assert (await api.track(f"?user_id=u{i}&action=a")).code == 200
    lock = sqlite3.connect(settings.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    assert (await api.track("?user_id=lost&action=a")).code == 503
    lock.execute("ROLLBACK")
    lock.close()
    for i in range(9):
        assert (await api.track(f"?user_id=v{i}&action=b")).code == 200
    assert (await tracker.integrity.checkpoint())["last_id"] == 20


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker.verify", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(db=True, commit_timeout=0.3)
@pytest.mark.parametrize("kind,statements,bad_id", TAMPERING)
async def test_each_kind_of_tampering_is_caught_by_the_endpoint_and_the_cli(
    api: Api,
    tracker: Tracker,
    settings: Any,
    tmp_path: Path,
    kind: str,
    statements: list[str],
    bad_id: int,
) -> None:
    await make_history(api, tracker, settings)
    clean = json.loads((await api.request("GET", "/api/audit/verify")).body)
    assert clean["ok"] and clean["verified_through"] == 20 and clean["signatures_checked"]
    key = tracker.integrity.public_key
    assert key is not None
    copy = copy_of(settings.db, tmp_path / "copy.db")
    assert run_verify(copy, "--public-key", key).returncode == 0

    if kind == "inserted":
        insert_forged_row(settings.db, 11)
        insert_forged_row(copy, 11)
    else:
        tamper(settings.db, *statements)
        tamper(copy, *statements)
    verdict = json.loads((await api.request("GET", "/api/audit/verify")).body)
    assert verdict["ok"] is False
    assert verdict["first_bad_id"] == bad_id, verdict
    assert verdict["reason"].startswith(kind), verdict
    result = run_verify(copy, "--public-key", key)
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(bad_id) in result.stdout and kind in result.stdout


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(db=True, capacity=10)
async def test_after_retention_what_remains_still_verifies(api: Api, tracker: Tracker) -> None:
    record_nasty(tracker, rounds=10)
    await tracker.integrity.checkpoint()
    assert await tracker.service.enforce_retention(0, 15) == 35
    await tracker.integrity.checkpoint()  # nothing new: the head did not move
    tracker.service.record(ActivityInput("f", "after", None))
    await tracker.integrity.checkpoint()  # covers the new anchor's successors
    verdict = json.loads((await api.request("GET", "/api/audit/verify")).body)
    assert verdict["ok"], verdict
    assert verdict["verified_through"] == 51 and verdict["count"] == 16


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(db=True)
async def test_an_export_verifies_offline_and_fails_after_one_character_changes(
    api: Api, tracker: Tracker, tmp_path: Path
) -> None:
    record_nasty(tracker, rounds=3)
    checkpoint = await tracker.integrity.checkpoint()
    key = tracker.integrity.public_key
    assert key is not None
    response = await api.request("GET", "/api/metrics/export?format=ndjson&chain=1")
    export = tmp_path / "export.ndjson"
    export.write_bytes(response.body)
    (tmp_path / "cp.json").write_text(json.dumps(checkpoint))
    args = [str(export), "--checkpoint", str(tmp_path / "cp.json"), "--public-key", key]
    intact = run_verify(*args)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    edited = response.body.replace(b"caf", b"cav", 1)  # one character of one line
    assert len(edited) == len(response.body) and edited != response.body
    export.write_bytes(edited)
    tampered = run_verify(*args)
    assert tampered.returncode == 1
    assert "changed" in tampered.stdout


def test_an_activity_is_served_in_its_canonical_form() -> None:
    # The bytes clients get are the bytes the chain hashes: RFC 8785, as rfc8785 writes it.
    from tracker.activity import Activity

    for user, action, details in NASTY:
        activity = Activity.create(
            42, ActivityInput(user, action, details), "2025-11-05T10:30:00.123456+00:00"
        )
        assert activity.json == rfc8785.dumps(activity.to_dict())
