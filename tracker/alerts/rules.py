"""Alert rules: parse and validate (one table of fields), and load a --rules file."""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

from ..activity import ACTION_MAX, USER_ID_MAX, ValidationError

SEVERITIES = ("low", "medium", "high", "critical")
KINDS = ("count", "distinct", "first_seen")
# The activity fields a rule can match, group by, or watch.
ACTIVITY_FIELDS = ("user_id", "action")

NAME_MAX = 64
THRESHOLD_MAX = 1_000_000
WINDOW_MAX = 604_800  # a week
COOLDOWN_MAX = 2_592_000  # thirty days
MATCH_VALUES_MAX = 1000  # per list: matching stays a set lookup, and a rule stays small

_NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{NAME_MAX}}}")
_MATCH_LIMITS = {"user_id": USER_ID_MAX, "action": ACTION_MAX}


class RuleError(ValidationError):
    """A rule (or rules file) that cannot be used; names the JSON field at fault."""


@dataclass(frozen=True)
class Match:
    """Which activities a rule looks at: exact values of each field; None means any."""

    user_id: tuple[str, ...] | None = None
    action: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, list[str] | None]:
        """The JSON shape: both keys, null for "any"."""
        return {
            "user_id": None if self.user_id is None else list(self.user_id),
            "action": None if self.action is None else list(self.action),
        }


@dataclass(frozen=True)
class Rule:
    """One validated alert rule; build it with parse_rule()."""

    name: str
    severity: str
    kind: str
    match: Match = Match()
    group_by: str | None = None
    field: str | None = None
    threshold: int | None = None
    window_s: float | None = None
    cooldown_s: float = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: every key, defaults filled in, null where a kind has no use."""
        values = {spec.name: getattr(self, spec.name) for spec in FIELDS}
        values["match"] = self.match.to_dict()
        return values


# Checkers: take the raw JSON value (never None) and return the clean one, or raise.


def _check_name(value: object) -> str:
    if not (isinstance(value, str) and _NAME.fullmatch(value)):
        raise RuleError(
            f"name must be 1-{NAME_MAX} characters of A-Z, a-z, 0-9, '_', '.' and '-'", "name"
        )
    return value


def _one_of(name: str, choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not (isinstance(value, str) and value in choices):
            raise RuleError(f"{name} must be one of {', '.join(choices)}", name)
        return value

    return check


def _check_match(value: object) -> Match:
    if not isinstance(value, dict):
        raise RuleError("match must be an object with optional user_id and action lists", "match")
    for key in value:
        if key not in _MATCH_LIMITS:
            raise RuleError(f"unknown field match.{key}", f"match.{key}")
    user_id, action = value.get("user_id"), value.get("action")
    return Match(
        user_id=None if user_id is None else _match_values("user_id", user_id),
        action=None if action is None else _match_values("action", action),
    )


def _match_values(key: str, value: object) -> tuple[str, ...]:
    """A non-empty list of non-empty strings, duplicates dropped, order kept."""
    where, limit = f"match.{key}", _MATCH_LIMITS[key]
    if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
        raise RuleError(f"{where} must be a non-empty list of non-empty strings", where)
    if len(value) > MATCH_VALUES_MAX:
        raise RuleError(f"{where} must have at most {MATCH_VALUES_MAX} values", where)
    if any(len(v) > limit for v in value):
        # No activity could carry a longer value, so the rule would silently never match.
        raise RuleError(f"{where} values must be at most {limit} characters", where)
    return tuple(dict.fromkeys(value))


def _is_number(value: object) -> TypeGuard[int | float]:
    # bool is an int subclass, but `true` is not a number of seconds.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_threshold(value: object) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool)) or not (
        1 <= value <= THRESHOLD_MAX
    ):
        raise RuleError(f"threshold must be an integer from 1 to {THRESHOLD_MAX}", "threshold")
    return value


def _check_window(value: object) -> float:
    if not (_is_number(value) and 0 < value <= WINDOW_MAX):
        raise RuleError(f"window_s must be a number above 0 and at most {WINDOW_MAX}", "window_s")
    return value


def _check_cooldown(value: object) -> float:
    if not (_is_number(value) and 0 <= value <= COOLDOWN_MAX):
        raise RuleError(f"cooldown_s must be a number from 0 to {COOLDOWN_MAX}", "cooldown_s")
    return value


class FieldSpec(NamedTuple):
    """One rule field: its checker, and the kinds that require or allow it."""

    name: str
    check: Callable[[object], Any]
    required: frozenset[str]
    allowed: frozenset[str]


# Public: the alerts listing checks its severity filter the same way.
check_severity = _one_of("severity", SEVERITIES)

_ALL = frozenset(KINDS)
_NONE: frozenset[str] = frozenset()
_WINDOWED = frozenset({"count", "distinct"})
_WATCHING = frozenset({"distinct", "first_seen"})

# The one table every rule is checked against, in the order errors are reported.
# "kind" comes before the fields whose rules depend on it.
FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("name", _check_name, _ALL, _ALL),
    FieldSpec("severity", check_severity, _ALL, _ALL),
    FieldSpec("kind", _one_of("kind", KINDS), _ALL, _ALL),
    FieldSpec("match", _check_match, _NONE, _ALL),
    FieldSpec("group_by", _one_of("group_by", ACTIVITY_FIELDS), _NONE, _ALL),
    FieldSpec("field", _one_of("field", ACTIVITY_FIELDS), _WATCHING, _WATCHING),
    FieldSpec("threshold", _check_threshold, _WINDOWED, _WINDOWED),
    FieldSpec("window_s", _check_window, _WINDOWED, _WINDOWED),
    FieldSpec("cooldown_s", _check_cooldown, _NONE, _ALL),
)
_FIELD_NAMES = frozenset(spec.name for spec in FIELDS)


def parse_rule(data: object, name: str | None = None) -> Rule:
    """Validate a rule's JSON object; `name` (from a URL path) must agree with the body's."""
    if not isinstance(data, dict):
        raise RuleError("a rule must be a JSON object")
    for key in data:
        if key not in _FIELD_NAMES:
            raise RuleError(f"unknown field {key}", str(key))
    body = dict(data)
    if name is not None:
        _check_name(name)
        if body.get("name") is None:
            body["name"] = name
        elif body["name"] != name:
            raise RuleError(f"name in the body must be the name in the path ({name})", "name")
    clean = _checked_fields(body)
    if clean["kind"] == "distinct" and clean.get("group_by") == clean["field"]:
        # Each group would only ever hold one value of its own key: the rule could not fire.
        raise RuleError("group_by must differ from field for kind distinct", "group_by")
    if "cooldown_s" not in clean:
        clean["cooldown_s"] = clean.get("window_s", 0)
    return Rule(**clean)


def _checked_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Each present field checked against the table; null counts as absent."""
    clean: dict[str, Any] = {}
    kind: str | None = None
    for spec in FIELDS:
        value = body.get(spec.name)
        if value is None:
            if spec.required == _ALL:
                raise RuleError(f"{spec.name} is required", spec.name)
            if kind in spec.required:
                raise RuleError(f"{spec.name} is required for kind {kind}", spec.name)
            continue
        if kind is not None and kind not in spec.allowed:
            raise RuleError(f"{spec.name} is not allowed for kind {kind}", spec.name)
        clean[spec.name] = spec.check(value)
        if spec.name == "kind":
            kind = clean["kind"]
    return clean


def load_rules_file(path: str | os.PathLike[str]) -> list[Rule]:
    """Rules from a JSON array or TOML [[rules]] tables; any problem is one RuleError line."""
    where = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise RuleError(f"{where}: cannot read: {error.strerror or error}") from None
    try:
        items = _rule_items(where, raw)
    except RuleError:
        raise
    except ValueError as error:  # JSON, TOML and UTF-8 decoding errors are all ValueErrors
        raise RuleError(_one_line(f"{where}: {_syntax_problem(where, error)}")) from None
    return _parse_items(where, items)


def _rule_items(where: str, raw: bytes) -> list[object]:
    """The file's list of rule objects, before each is validated."""
    if where.lower().endswith(".toml"):
        document = tomllib.loads(raw.decode("utf-8"))
        unknown = [key for key in document if key != "rules"]
        if unknown:
            raise RuleError(
                f"{where}: unknown top-level key {unknown[0]} (rules go in [[rules]] tables)"
            )
        items = document.get("rules", [])
        if not isinstance(items, list):
            raise RuleError(f"{where}: rules must be an array of tables ([[rules]])")
        return items
    items = json.loads(raw, parse_constant=_refuse_constant)
    if not isinstance(items, list):
        raise RuleError(f"{where}: expected a JSON array of rules")
    return items


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _syntax_problem(where: str, error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
    if isinstance(error, tomllib.TOMLDecodeError):
        return f"invalid TOML: {error}"
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"invalid JSON: {error}"


def _parse_items(where: str, items: list[object]) -> list[Rule]:
    rules: list[Rule] = []
    first_use: dict[str, int] = {}
    for number, item in enumerate(items, 1):
        label = _label(number, item)
        try:
            rule = parse_rule(item)
        except RuleError as error:
            raise RuleError(_one_line(f"{where}: {label}: {error.message}"), error.field) from None
        if rule.name in first_use:
            raise RuleError(
                f"{where}: {label}: name is already used by rule {first_use[rule.name]}", "name"
            )
        first_use[rule.name] = number
        rules.append(rule)
    return rules


def _label(number: int, item: object) -> str:
    """How messages name an item: "rule 2 (brute-force)", or "rule 2" without a usable name."""
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and _NAME.fullmatch(name):
        return f"rule {number} ({name})"
    return f"rule {number}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
