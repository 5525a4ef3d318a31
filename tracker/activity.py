"""The activity record, its validation, and its JSON bytes, encoded once."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quote  # type: ignore[attr-defined]
from typing import Any, NamedTuple

USER_ID_MAX = 256
ACTION_MAX = 128
DETAILS_MAX = 4096

# (name, maximum length, required): the one table every input path is checked against.
FIELDS: tuple[tuple[str, int, bool], ...] = (
    ("user_id", USER_ID_MAX, True),
    ("action", ACTION_MAX, True),
    ("details", DETAILS_MAX, False),
)


class ValidationError(ValueError):
    """Input that cannot become an activity; names the field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ActivityInput(NamedTuple):
    """Validated fields of an activity not yet recorded."""

    user_id: str
    action: str
    details: str | None = None


def validate(values: Mapping[str, Any]) -> ActivityInput:
    """Check raw field values (strings, or None when absent) against the limits."""
    clean: dict[str, str | None] = {}
    for name, limit, required in FIELDS:
        value = values.get(name)
        if value is None:
            if required:
                raise ValidationError(f"{name} is required", name)
            clean[name] = None
            continue
        if not isinstance(value, str):
            kind = "string or null" if not required else "string"
            raise ValidationError(f"{name} must be a {kind}", name)
        if required and not value.strip():
            raise ValidationError(f"{name} is required", name)
        if len(value) > limit:
            raise ValidationError(f"{name} must be at most {limit} characters", name)
        check_text(value, name)
        clean[name] = value
    return ActivityInput(clean["user_id"] or "", clean["action"] or "", clean["details"])


def check_text(value: str, name: str) -> None:
    """Refuse text that cannot be stored or shown faithfully."""
    if "\x00" in value:
        # NUL bytes break C-string consumers downstream (SQLite shell, log tools).
        raise ValidationError(f"{name} must not contain NUL characters", name)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON's "\ud800" escapes make lone surrogates, which no UTF-8 file can hold.
            raise ValidationError(f"{name} must be valid Unicode text", name) from None


def format_timestamp(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds and the +00:00 offset, always."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def now_timestamp() -> str:
    """The current time as an activity timestamp."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def canonical_json(
    id: int, user_id: str, action: str, timestamp: str, details: str | None
) -> bytes:
    """An activity's RFC 8785 (JCS) form, UTF-8: what clients get, and what the chain hashes."""
    # Exact JCS for these five fields: ASCII keys in sorted order, an integer in plain
    # digits, and json's ensure_ascii=False escaper, which escapes just what JCS does
    # (" \ and U+0000-U+001F). Built directly: json.dumps makes an encoder per call.
    shown = "null" if details is None else _quote(details)
    return (
        f'{{"action":{_quote(action)},"details":{shown},"id":{id},'
        f'"timestamp":{_quote(timestamp)},"user_id":{_quote(user_id)}}}'
    ).encode()  # a lone surrogate raises here: validate() keeps them out


class Activity(NamedTuple):
    """One recorded activity; `json` holds its encoding, shared by every reader."""

    id: int
    user_id: str
    action: str
    timestamp: str
    details: str | None
    json: bytes
    # The idempotency key it was recorded with; kept, never shown.
    key: str | None = None

    @classmethod
    def create(
        cls, id: int, data: ActivityInput, timestamp: str, key: str | None = None
    ) -> Activity:
        """Build an activity and encode it once, for every reader, live client and hash."""
        encoded = canonical_json(id, data.user_id, data.action, timestamp, data.details)
        return cls(id, data.user_id, data.action, timestamp, data.details, encoded, key)

    @property
    def input(self) -> ActivityInput:
        """The fields a client sent, to compare a retried request with its original."""
        return ActivityInput(self.user_id, self.action, self.details)

    def to_dict(self) -> dict[str, Any]:
        """The activity as a plain dict (the JSON object's fields)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "action": self.action,
            "timestamp": self.timestamp,
            "details": self.details,
        }


def encode_list(activities: list[Activity]) -> bytes:
    """A JSON array of activities, joined from their stored bytes."""
    return b"[" + b",".join([a.json for a in activities]) + b"]"
