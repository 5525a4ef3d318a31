"""Query-string parsing shared by every reader: limits, filters, ids, times."""

from __future__ import annotations

import re
from datetime import datetime

from ..query import Query, canonical_time
from .errors import ApiError

Arguments = dict[str, list[bytes]]

# More digits than any count needs; longer strings are clamped without int() on them.
_MAX_DIGITS = 18
# A "+HH:MM" offset whose "+" arrived unescaped in a URL and was decoded as a space.
_SPACED_OFFSET = re.compile(r" (\d\d:?\d\d)$")


def values(args: Arguments, name: str) -> list[str]:
    """Every value of a repeatable parameter, decoded exactly as sent."""
    try:
        return [raw.decode("utf-8") for raw in args.get(name, [])]
    except UnicodeDecodeError:
        raise ApiError(400, f"{name} is not valid UTF-8", name) from None


def filter_values(args: Arguments, name: str) -> frozenset[str]:
    """A repeatable filter ("any of"); an empty value is an error, not "match nothing"."""
    found = values(args, name)
    if any(not value for value in found):
        raise ApiError(400, f"{name} filter must not be empty", name)
    return frozenset(found)


def single(args: Arguments, name: str) -> str | None:
    """One value; a repeated name is an error."""
    return singles(args, (name,)).get(name)


def singles(args: Arguments, names: tuple[str, ...]) -> dict[str, str]:
    """The value of each name that is present; a repeated name is an error."""
    found: dict[str, str] = {}
    for name in names:
        raw = args.get(name)
        if raw is None:
            continue
        if len(raw) > 1:
            raise ApiError(400, f"{name} must be given once", name)
        try:
            found[name] = raw[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"{name} is not valid UTF-8", name) from None
    return found


def flag(args: Arguments, name: str) -> bool:
    """A 0/1 switch, off when absent."""
    raw = single(args, name)
    if raw not in (None, "0", "1"):
        raise ApiError(400, f"{name} must be 0 or 1", name)
    return raw == "1"


def count(args: Arguments, name: str, default: int | None, cap: int | None) -> int | None:
    """A non-negative integer, clamped to `cap`; anything else is a 400."""
    raw = single(args, name)
    if raw is None:
        return default if cap is None or default is None else min(default, cap)
    if not (raw.isascii() and raw.isdigit()):
        raise ApiError(400, f"{name} must be a non-negative integer", name)
    if len(raw) > _MAX_DIGITS:
        if cap is None:
            raise ApiError(400, f"{name} is too large", name)
        return cap
    number = int(raw)
    return number if cap is None else min(number, cap)


def limit(args: Arguments, name: str, default: int, cap: int) -> int:
    """A count with a default and a cap, so never absent."""
    value = count(args, name, default, cap)
    assert value is not None
    return value


def id_range(args: Arguments) -> tuple[int | None, int | None]:
    """from_id and to_id, each optional; to_id below from_id is a 400."""
    from_id = count(args, "from_id", None, None)
    to_id = count(args, "to_id", None, None)
    if from_id is not None and to_id is not None and to_id < from_id:
        raise ApiError(400, "to_id must not be below from_id", "to_id")
    return from_id, to_id


def timestamp(args: Arguments, name: str) -> str | None:
    """An ISO 8601 time (no offset means UTC) as a canonical timestamp."""
    raw = single(args, name)
    if raw is None:
        return None
    text = _SPACED_OFFSET.sub(r"+\1", raw.strip())
    try:
        return canonical_time(datetime.fromisoformat(text))
    except (ValueError, OverflowError):  # overflow: in range, but not once moved to UTC
        raise ApiError(
            400, f"{name} must be an ISO 8601 time, such as 2025-11-05T10:30:00Z", name
        ) from None


def query(args: Arguments, *, default_limit: int | None, cap: int | None) -> Query:
    """The filters of a request: user_id, action (repeatable), since, until, before_id, limit."""
    limit = count(args, "limit", default_limit, cap)
    before = count(args, "before_id", None, None)
    since, until = timestamp(args, "since"), timestamp(args, "until")
    if since is not None and until is not None and until < since:
        raise ApiError(400, "until must not be earlier than since", "until")
    return Query(
        user_ids=filter_values(args, "user_id"),
        actions=filter_values(args, "action"),
        since=since,
        until=until,
        before_id=before,
        limit=limit,
    )
