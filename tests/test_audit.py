"""The audit chain, checkpoints and their signatures, the verifier and its CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
import threading
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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
    verify_checkpoint_signature,
)

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
