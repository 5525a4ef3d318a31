"""Audit integrity: the activity hash chain, signed checkpoints, and their verifier."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .activity import canonical_json

# The prev_hash of the first activity of a new store.
ZERO_HASH = bytes(32)
CHECKPOINT_HEADER = "activity-tracker checkpoint v1"
# JCS writes numbers as ECMAScript does: plain digits only up to 2**53 - 1.
MAX_SAFE_ID = 2**53 - 1
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
# A checkpoint as stored and served: the fields its signature covers, then the signature.
CHECKPOINT_FIELDS = ("store_id", "last_id", "hash", "timestamp", "signature")


class Chainable(Protocol):
    """What the chain reads of an activity (its JSON is its canonical form); Activity fits."""

    @property
    def json(self) -> bytes: ...


def canonical(id: int, user_id: str, action: str, timestamp: str, details: str | None) -> bytes:
    """The activity's five fields as RFC 8785 (JCS) JSON, UTF-8 (checked first)."""
    _check_fields(id, user_id, action, timestamp, details)
    # Raises UnicodeEncodeError (a ValueError) on lone surrogates, which JCS refuses too.
    return canonical_json(id, user_id, action, timestamp, details)


def _check_fields(
    id: object, user_id: object, action: object, timestamp: object, details: object
) -> None:
    if type(id) is not int or not -MAX_SAFE_ID <= id <= MAX_SAFE_ID:
        raise ValueError("id must be an integer within +-(2**53 - 1)")
    for name, value in (("user_id", user_id), ("action", action), ("timestamp", timestamp)):
        if type(value) is not str:
            raise TypeError(f"{name} must be text")
    if details is not None and type(details) is not str:
        raise TypeError("details must be text or null")


def chain_hash(prev: bytes, canonical: bytes) -> bytes:
    """SHA-256 of the previous hash (32 raw bytes) followed by an activity's canonical bytes."""
    if len(prev) != 32:
        raise ValueError("prev must be 32 bytes")
    return hashlib.sha256(prev + canonical).digest()


def activity_hash(prev: bytes, activity: Chainable) -> bytes:
    """The chain hash of an activity that follows the hash `prev`."""
    return chain_hash(prev, activity.json)


def chain_links(prev: bytes, activities: Iterable[Chainable]) -> list[tuple[bytes, bytes]]:
    """(prev_hash, hash) for each activity in order, the first chained from `prev`."""
    # Pure on purpose: a writer moves its head to the last hash only once the batch commits,
    # so a rolled-back batch leaves the head where it was.
    # Not chain_hash: `prev` comes from the file, and a row edited there to a hash that is not
    # 32 bytes must not stop the writer; the verifier reports that row as changed.
    links = []
    for activity in activities:
        digest = hashlib.sha256(prev + activity.json).digest()
        links.append((prev, digest))
        prev = digest
    return links


def checkpoint_message(store_id: str, last_id: int, hash_hex: str, timestamp: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    problem = _checkpoint_fields_problem(store_id, last_id, hash_hex, timestamp)
    if problem:
        raise ValueError(problem)
    return f"{CHECKPOINT_HEADER}\n{store_id}\n{last_id}\n{hash_hex}\n{timestamp}\n".encode()


def _checkpoint_fields_problem(
    store_id: object, last_id: object, hash_hex: object, timestamp: object
) -> str | None:
    """Why these fields cannot make an unambiguous checkpoint message, or None."""
    # A newline inside a field would let two different checkpoints sign the same bytes.
    for name, value in (("store_id", store_id), ("timestamp", timestamp)):
        if type(value) is not str or not value or "\n" in value:
            return f"{name} must be non-empty text on one line"
    if type(last_id) is not int or last_id < 0:
        return "last_id must be a non-negative integer"
    if type(hash_hex) is not str or not _HEX_HASH.fullmatch(hash_hex):
        return "hash must be 64 lowercase hex digits"
    return None


class KeyFileError(Exception):
    """The signing key file exists but cannot be used; the message is one line."""


class VerifyError(ValueError):
    """Input that cannot be verified at all: a bad public key, or not a chained store."""


class Signer:
    """Signs checkpoints with an Ed25519 key kept in a PEM (PKCS#8) file."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key_b64 = base64.b64encode(raw).decode("ascii")

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Signer:
        """Load the key at `path`, or create one there with mode 0600 when there is none."""
        path = os.fspath(path)
        try:
            return cls(_read_key(path))
        except FileNotFoundError:
            pass
        _create_key_file(path)
        try:
            return cls(_read_key(path))
        except FileNotFoundError:
            raise KeyFileError(f"cannot use signing key {path}: it vanished") from None

    def sign_checkpoint(
        self, store_id: str, last_id: int, hash_hex: str, timestamp: str
    ) -> dict[str, Any]:
        """A checkpoint as served: its fields and their base64 Ed25519 signature."""
        signature = self._key.sign(checkpoint_message(store_id, last_id, hash_hex, timestamp))
        signature_b64 = base64.b64encode(signature).decode("ascii")
        values = (store_id, last_id, hash_hex, timestamp, signature_b64)
        return dict(zip(CHECKPOINT_FIELDS, values, strict=True))


def _read_key(path: str) -> Ed25519PrivateKey:
    """The key in the file; FileNotFoundError when there is none."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot use signing key {path}: {exc.strerror or exc}") from None
    return _parse_key(path, data)


def _parse_key(path: str, data: bytes) -> Ed25519PrivateKey:
    def failure(cause: str) -> KeyFileError:
        return KeyFileError(f"cannot use signing key {path}: {cause}")

    if not data.strip():
        raise failure("the file is empty")
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
        raise failure("the key is encrypted; a key without a passphrase is expected")
    if b"-----BEGIN PRIVATE KEY-----" not in data:
        raise failure("not a PKCS#8 PEM private key (no BEGIN PRIVATE KEY block)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The library's text is a paragraph; its last part says what was wrong.
        detail = " ".join(str(exc).split("Details:")[-1].split())
        raise failure(f"unreadable key data ({detail})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise failure(f"not an Ed25519 key ({type(key).__name__.lstrip('_')})")
    return key


def _create_key_file(path: str) -> None:
    """Write a new key at `path`: whole and mode 0600, or not at all; never over another."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written under a private name, then linked into place: a process starting beside this
    # one never reads half a key, and the link fails rather than replace a key it just made.
    temp = f"{path}.{secrets.token_hex(8)}.tmp"
    try:
        _write_new_file(temp, pem)
        _link_into_place(temp, path, pem)
        _sync_directory(path)
    except OSError as exc:
        raise KeyFileError(f"cannot create signing key {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _link_into_place(temp: str, path: str, data: bytes) -> None:
    try:
        os.link(temp, path)
    except FileExistsError:
        pass  # another process made it first: both use that one
    except OSError:
        # A file system without hard links: create in place, still never over another key.
        with contextlib.suppress(FileExistsError):
            _write_new_file(path, data)


def _write_new_file(path: str, data: bytes) -> None:
    """Create `path` (mode 0600, failing if it exists) holding `data`, synced to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        # A key lost in a power cut would orphan every checkpoint it signed.
        os.fsync(file.fileno())


def _sync_directory(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_public_key(public_key_b64: str) -> Ed25519PublicKey:
    """The public key from the base64 of its 32 raw bytes (what /api/audit/key serves)."""
    try:
        raw = base64.b64decode(public_key_b64, validate=True)
        if len(raw) == 32:
            return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        pass
    raise VerifyError("public key must be the base64 of 32 raw bytes")


def verify_checkpoint_signature(checkpoint: dict[str, Any], public_key_b64: str) -> bool:
    """Whether the checkpoint's signature is valid for its fields under this public key."""
    return _signature_valid(checkpoint, load_public_key(public_key_b64))


def _signature_valid(checkpoint: dict[str, Any], key: Ed25519PublicKey) -> bool:
    store_id, last_id, hash_hex, timestamp, signature = map(checkpoint.get, CHECKPOINT_FIELDS)
    if type(signature) is not str:
        return False
    try:
        # Malformed fields or base64 raise ValueError (binascii.Error is one).
        message = checkpoint_message(store_id, last_id, hash_hex, timestamp)  # type: ignore[arg-type]
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- verification ------------------------------------------------------------------------

# A stored row, as the verifier reads it: the five fields, then prev_hash and hash (raw bytes).
Row = tuple[int, str, str, str, str | None, bytes, bytes]

SIGNATURES_NOT_CHECKED = "signatures not checked (no public key given)"


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification: intact, or the first bad id and why."""

    ok: bool
    # The last id whose row was found good (None when none was).
    verified_through: int | None
    first_bad_id: int | None
    # A short sentence that starts with the kind: "changed: ...", "missing: ...", ...
    reason: str | None
    # Rows checked, the bad one included.
    count: int
    # Checkpoints compared with a row's hash (or with the anchor).
    checkpoints_checked: int
    signatures_checked: bool
    notes: tuple[str, ...] = ()

    @property
    def kind(self) -> str | None:
        """The kind of fault: changed, missing, inserted, out of order, rewritten, bad signature."""
        return self.reason.split(":", 1)[0] if self.reason else None

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready fields."""
        fields = asdict(self)
        fields["notes"] = list(self.notes)
        return fields


class MalformedRow(ValueError):
    """A row that could not even be read; a rows iterator raises it, the verdict says changed."""

    def __init__(self, message: str, id: int | None = None) -> None:
        super().__init__(message)
        self.id = id


class _Fault(NamedTuple):
    first_bad_id: int | None
    reason: str
    verified_through: int | None


class _Checkpoint(NamedTuple):
    label: str
    # Where it sorts: its last_id, or where it came in the stream when that is no integer.
    last_id: int
    # Its last_id when that is an integer: the id a fault in it is reported at.
    named_id: int | None
    hash: str
    # Why it fails whatever the rows say (malformed, foreign, bad signature), or None.
    problem: str | None


def verify_chain(
    rows: Iterable[Row],
    anchor: bytes | None,
    checkpoints: Iterable[dict[str, Any]] = (),
    public_key_b64: str | None = None,
    *,
    anchor_id: int | None = None,
    store_id: str | None = None,
    to_id: int | None = None,
) -> Verdict:
    """Check rows (in stored order) against the chain from `anchor` and the checkpoints."""
    # anchor None: unknown (as for an export), so the chain starts at the first row's
    # prev_hash, or with no rows at all is an empty chain from ZERO_HASH at id 0 (a checkpoint
    # then names lost rows); anchor_id: the id the anchor's hash belongs to (None when unknown);
    # store_id: what every checkpoint must carry; to_id: where a sub-range ends, so that
    # checkpoints past it are not taken for missing rows. Checkpoints come sorted by
    # last_id; both streams are read lazily, so memory stays flat.
    key = load_public_key(public_key_b64) if public_key_b64 is not None else None
    if anchor is not None and (type(anchor) is not bytes or len(anchor) != 32):
        raise ValueError("anchor must be 32 bytes")
    rows_iter = iter(rows)
    row, malformed = _next_row(rows_iter)
    if anchor is None:
        # A first row that cannot be read ends the walk at once, whatever the anchor.
        anchor, anchor_id = (row[5], None) if row is not None else (ZERO_HASH, 0)
    walk = _Walk(anchor, anchor_id, _prepare(checkpoints, key, store_id), to_id, key is not None)
    while row is not None:
        following, malformed_next = _next_row(rows_iter)
        fault = walk.step(row, following)
        if fault:
            return walk.verdict(fault)
        row, malformed = following, malformed_next
    if malformed:
        return walk.verdict(walk.malformed(malformed))
    return walk.verdict(walk.finish())


def _next_row(rows: Iterator[Row]) -> tuple[Row | None, MalformedRow | None]:
    try:
        return next(rows, None), None
    except MalformedRow as exc:
        return None, exc


def _prepare(
    checkpoints: Iterable[dict[str, Any]], key: Ed25519PublicKey | None, store_id: str | None
) -> Iterator[_Checkpoint]:
    """Each checkpoint with its verdict-independent problem, checked lazily, in order."""
    position = -(2**63)
    for checkpoint in checkpoints:
        last_id = checkpoint.get("last_id")
        seq = checkpoint.get("seq")
        label = f"#{seq}" if seq is not None else f"for id {last_id}"
        problem = _checkpoint_problem(checkpoint, label, key, store_id)
        if type(last_id) is int:
            if last_id < position:
                raise ValueError("checkpoints must come sorted by last_id")
            position = last_id
        named = last_id if type(last_id) is int else None
        yield _Checkpoint(label, position, named, str(checkpoint.get("hash")), problem)


def _checkpoint_problem(
    checkpoint: dict[str, Any], label: str, key: Ed25519PublicKey | None, store_id: str | None
) -> str | None:
    fields = [checkpoint.get(name) for name in CHECKPOINT_FIELDS[:-1]]  # all but the signature
    malformed = _checkpoint_fields_problem(*fields)
    if malformed or type(checkpoint.get("signature")) is not str:
        return f"bad signature: checkpoint {label} is malformed ({malformed or 'no signature'})"
    if store_id is not None and fields[0] != store_id:
        return (
            f"bad signature: foreign checkpoint {label} (store {fields[0]}, "
            f"not this store's {store_id})"
        )
    if key is not None and not _signature_valid(checkpoint, key):
        return f"bad signature: checkpoint {label} does not verify with the given public key"
    return None


class _Walk:
    """The verifier's state between rows: what the next row must chain from, and why."""

    def __init__(
        self,
        anchor: bytes,
        anchor_id: int | None,
        checkpoints: Iterator[_Checkpoint],
        to_id: int | None,
        signatures_checked: bool,
    ) -> None:
        self.anchor, self.anchor_id, self.to_id = anchor, anchor_id, to_id
        self.signatures_checked = signatures_checked
        self.checkpoints = checkpoints
        self.head: _Checkpoint | None = next(checkpoints, None)
        self.started = False
        # The hash the next row must chain from, and the id it belongs to.
        self.expected, self.last_id = anchor, anchor_id
        # The last good row, the one before it, and the hash that row chained from.
        self.verified_through: int | None = None
        self.verified_before: int | None = None
        self.last_prev: bytes | None = None
        # The last id a checkpoint proved, and the first row after it.
        self.proven_through: int | None = None
        self.first_unproven: int | None = None
        self.count = self.compared = self.outside = 0

    def _pop(self) -> _Checkpoint:
        checkpoint = self.head
        assert checkpoint is not None
        self.head = next(self.checkpoints, None)
        return checkpoint

    def _heads_before(self, id: int) -> Iterator[_Checkpoint]:
        while self.head is not None and self.head.last_id < id:
            yield self._pop()

    def _fault(self, first_bad_id: int | None, reason: str) -> _Fault:
        return _Fault(first_bad_id, reason, self.verified_through)

    def _problem(self, checkpoint: _Checkpoint) -> _Fault | None:
        if checkpoint.problem:
            return self._fault(checkpoint.named_id, checkpoint.problem)
        return None

    def _start(self, first_id: int | None) -> _Fault | None:
        """Checkpoints before the range: signatures only; one at the anchor: its hash too."""
        self.started = True
        start = self.anchor_id if self.anchor_id is not None else first_id
        if start is None:
            return None
        for checkpoint in self._heads_before(start):
            if fault := self._problem(checkpoint):
                return fault
            self.outside += 1
        if self.anchor_id is not None:
            return self._compare(self.anchor_id, self.anchor, f"the anchor (id {self.anchor_id})")
        return None

    def _compare(self, id: int, digest: bytes, what: str) -> _Fault | None:
        """Every checkpoint for this id must hold this hash."""
        while self.head is not None and self.head.last_id == id:
            checkpoint = self._pop()
            if fault := self._problem(checkpoint):
                return fault
            if checkpoint.hash != digest.hex():
                first_bad = self.first_unproven if self.first_unproven is not None else id
                return _Fault(
                    first_bad,
                    f"rewritten: {what} differs from checkpoint {checkpoint.label}: the chain "
                    f"was recomputed after a change at or after id {first_bad}",
                    self.proven_through,
                )
            self.compared += 1
            self.proven_through, self.first_unproven = id, None
        return None

    def step(self, row: Row, following: Row | None) -> _Fault | None:
        """Check one row; `following` (the next row, if any) tells an insertion from a gap."""
        id, prev = row[0], row[5]
        self.count += 1
        if type(id) is not int:
            return self._fault(None, f"changed: a row after id {self.last_id} has no integer id")
        if not self.started and (fault := self._start(id)):
            return fault
        if self.last_id is not None and id <= self.last_id:
            return self._fault(id, f"out of order: row {id} comes after {self._after()}")
        if self.head is not None and self.head.last_id < id:
            return self._lost_row(self._pop())
        if problem := _row_problem(row):
            return self._fault(id, f"changed: {problem}")
        if prev != self.expected:
            return self._broken_link(id, prev, following)
        if self.first_unproven is None:
            self.first_unproven = id
        if fault := self._compare(id, row[6], f"row {id}'s hash"):
            return fault
        self.verified_before, self.verified_through = self.verified_through, id
        self.expected, self.last_id, self.last_prev = row[6], id, prev
        return None

    def _lost_row(self, checkpoint: _Checkpoint) -> _Fault:
        """A checkpoint names an id between the last good row and the next: that row is gone."""
        return self._problem(checkpoint) or self._fault(
            checkpoint.last_id,
            f"missing: row {checkpoint.last_id}, named by checkpoint {checkpoint.label}, "
            f"is gone (last good: {self._after()})",
        )

    def _broken_link(self, id: int, prev: bytes, following: Row | None) -> _Fault:
        """An intact row that does not chain from the last good one: misplaced, or a gap."""
        if self.last_prev is not None and prev == self.last_prev:
            # Two rows chain from one hash: the last "good" row was slipped in before this one.
            inserted = self.verified_through
            return _Fault(
                inserted,
                f"inserted: row {inserted} was added (row {id} chains from the row before it)",
                self.verified_before,
            )
        if following is not None and following[5] == self.expected:
            # The next row carries on the chain, so this one does not belong here.
            if type(following[0]) is int and following[0] < id:
                return self._fault(id, f"out of order: row {id} comes before row {following[0]}")
            return self._fault(
                id, f"inserted: row {id} is not in the chain (row {following[0]} follows it)"
            )
        return self._fault(
            id,
            f"missing: rows between {self._after()} and id {id}: row {id} does not chain from "
            "it (unless that was edited and its hash recomputed)",
        )

    def _after(self) -> str:
        if self.verified_through is not None:
            return f"id {self.verified_through}"
        if self.anchor_id is not None:
            return f"the anchor (id {self.anchor_id})"
        return "the start"

    def malformed(self, exc: MalformedRow) -> _Fault:
        """A row that could not be read counts as checked, and as changed."""
        self.count += 1
        return self._fault(exc.id, f"changed: {exc}")

    def finish(self) -> _Fault | None:
        """After the last row: checkpoints past it name rows that are gone (or out of range)."""
        if not self.started and (fault := self._start(None)):
            return fault
        while self.head is not None:
            checkpoint = self._pop()
            if fault := self._problem(checkpoint):
                return fault
            beyond_range = self.to_id is not None and checkpoint.last_id > self.to_id
            if beyond_range or self.last_id is None:
                self.outside += 1
                continue
            return self._fault(
                checkpoint.last_id,
                f"missing: rows after {self._after()} up to id {checkpoint.last_id} "
                f"(checkpoint {checkpoint.label})",
            )
        return None

    def verdict(self, fault: _Fault | None) -> Verdict:
        """The verdict, from the first fault found or none."""
        notes = [] if self.signatures_checked else [SIGNATURES_NOT_CHECKED]
        if self.outside:
            notes.append(
                f"{self.outside} checkpoint(s) outside the rows read: not compared with rows"
            )
        return Verdict(
            ok=fault is None,
            verified_through=fault.verified_through if fault else self.verified_through,
            first_bad_id=fault.first_bad_id if fault else None,
            reason=fault.reason if fault else None,
            count=self.count,
            checkpoints_checked=self.compared,
            signatures_checked=self.signatures_checked,
            notes=tuple(notes),
        )


def _row_problem(row: Row) -> str | None:
    """Why a row does not hash to its own stored hash, or None."""
    id, user_id, action, timestamp, details, prev, stored = row
    if not (_is_hash(prev) and _is_hash(stored)):
        return f"row {id} has a prev_hash or hash that is not 32 bytes"
    try:
        text = canonical(id, user_id, action, timestamp, details)
    except (TypeError, ValueError) as exc:
        return f"row {id} cannot be hashed ({exc})"
    if chain_hash(prev, text) != stored:
        return f"row {id}'s content or hash was edited (its hash does not match)"
    return None


def _is_hash(value: object) -> bool:
    return type(value) is bytes and len(value) == 32


# --- exports -----------------------------------------------------------------------------

_EXPORT_FIELDS = frozenset(("id", "user_id", "action", "timestamp", "details", "prev_hash", "hash"))


def verify_export(
    lines: Iterable[str | bytes],
    checkpoint: dict[str, Any] | None = None,
    public_key_b64: str | None = None,
) -> Verdict:
    """Check an NDJSON export made with chain=1; its first line's prev_hash is the anchor."""
    checkpoints = [checkpoint] if checkpoint is not None else []
    return verify_chain(_export_rows(lines), None, checkpoints, public_key_b64)


def _export_rows(lines: Iterable[str | bytes]) -> Iterator[Row]:
    for number, line in enumerate(lines, 1):
        yield _parse_export_line(number, line)


def _parse_export_line(number: int, line: str | bytes) -> Row:
    """One export line as a row; MalformedRow, naming the line, for anything else."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRow(f"line {number} is not UTF-8 text") from None
    line = line.removesuffix("\n")
    # Strict, so that no one-character edit slips through as harmless white space.
    if not line or line != line.strip():
        raise MalformedRow(f"line {number} is blank or padded with white space")
    try:
        fields = json.loads(line, object_pairs_hook=_unique_keys)
    except ValueError as exc:
        raise MalformedRow(f"line {number} is not a JSON object ({exc})") from None
    if not isinstance(fields, dict):
        raise MalformedRow(f"line {number} is not a JSON object")
    id = fields.get("id") if type(fields.get("id")) is int else None
    if fields.keys() != _EXPORT_FIELDS or id is None:
        raise MalformedRow(f"line {number} lacks an integer id or has other fields", id)
    prev, digest = _hex_hash(fields["prev_hash"]), _hex_hash(fields["hash"])
    if prev is None or digest is None:
        raise MalformedRow(f"line {number}: prev_hash and hash must be 64 lowercase hex", id)
    user_id, action, timestamp, details = (
        fields[name] for name in ("user_id", "action", "timestamp", "details")
    )
    return (id, user_id, action, timestamp, details, prev, digest)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise ValueError("a field appears twice")
    return fields


def _hex_hash(value: object) -> bytes | None:
    if type(value) is str and _HEX_HASH.fullmatch(value):
        return bytes.fromhex(value)
    return None
