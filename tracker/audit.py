"""Audit integrity: the activity hash chain, signed checkpoints, and their verifier."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from json.encoder import encode_basestring as _quote  # type: ignore[attr-defined]
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

# The prev_hash of the first activity of a new store.
ZERO_HASH = bytes(32)
CHECKPOINT_HEADER = "activity-tracker checkpoint v1"
# JCS writes numbers as ECMAScript does: plain digits only up to 2**53 - 1.
MAX_SAFE_ID = 2**53 - 1
_HEX_HASH = re.compile(r"[0-9a-f]{64}")


class Chainable(Protocol):
    """What the chain reads of an activity; tracker.activity.Activity fits."""

    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def timestamp(self) -> str: ...
    @property
    def details(self) -> str | None: ...


def canonical(id: int, user_id: str, action: str, timestamp: str, details: str | None) -> bytes:
    """The activity's five fields as RFC 8785 (JCS) JSON, UTF-8."""
    _check_fields(id, user_id, action, timestamp, details)
    shown = "null" if details is None else _quote(details)
    # Exact JCS here: ASCII keys in sorted order, a safe integer in plain digits, and json's
    # escaper (that of json.dumps with ensure_ascii=False) escapes only " \ and U+0000-U+001F,
    # as JCS does. Same bytes as json.dumps(sort_keys=True, ...), six times faster.
    text = (
        f'{{"action":{_quote(action)},"details":{shown},"id":{id},'
        f'"timestamp":{_quote(timestamp)},"user_id":{_quote(user_id)}}}'
    )
    # Raises UnicodeEncodeError (a ValueError) on lone surrogates, which JCS refuses too.
    return text.encode("utf-8")


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
    text = canonical(
        activity.id, activity.user_id, activity.action, activity.timestamp, activity.details
    )
    return chain_hash(prev, text)


def chain_links(prev: bytes, activities: Iterable[Chainable]) -> list[tuple[bytes, bytes]]:
    """(prev_hash, hash) for each activity in order, the first chained from `prev`."""
    # Pure on purpose: a writer moves its head to the last hash only once the batch commits,
    # so a rolled-back batch leaves the head where it was.
    links = []
    for activity in activities:
        digest = activity_hash(prev, activity)
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
        return {
            "store_id": store_id,
            "last_id": last_id,
            "hash": hash_hex,
            "timestamp": timestamp,
            "signature": base64.b64encode(signature).decode("ascii"),
        }


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
    store_id, last_id, hash_hex, timestamp, signature = (
        checkpoint.get(name) for name in ("store_id", "last_id", "hash", "timestamp", "signature")
    )
    if type(signature) is not str:
        return False
    try:
        # Malformed fields or base64 raise ValueError (binascii.Error is one).
        message = checkpoint_message(store_id, last_id, hash_hex, timestamp)  # type: ignore[arg-type]
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True
