"""Alert rules: validation naming the field at fault, the JSON shape, and --rules files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tracker.alerts.rules import Match, Rule, RuleError, load_rules_file, parse_rule

BRUTE_FORCE = {
    "name": "brute-force",
    "severity": "high",
    "kind": "count",
    "match": {"action": ["login_failed"]},
    "group_by": "user_id",
    "threshold": 5,
    "window_s": 60,
    "cooldown_s": 300,
}
SPRAY = {
    "name": "spray",
    "severity": "critical",
    "kind": "distinct",
    "match": {"action": ["login_failed"]},
    "group_by": "action",
    "field": "user_id",
    "threshold": 20,
    "window_s": 60,
}
NEW_ACTION = {
    "name": "new-action",
    "severity": "low",
    "kind": "first_seen",
    "group_by": "user_id",
    "field": "action",
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a rule body; a change to the string "DELETE" removes that key."""
    body = {**base, **changes}
    return {key: value for key, value in body.items() if value != "DELETE"}


def error_of(body: object, name: str | None = None) -> RuleError:
    with pytest.raises(RuleError) as caught:
        parse_rule(body, name)
    assert caught.value.message == str(caught.value)
    return caught.value


# Valid rules and their JSON shape


def test_spec_example_parses_to_every_field() -> None:
    rule = parse_rule(BRUTE_FORCE)
    assert rule == Rule(
        name="brute-force",
        severity="high",
        kind="count",
        match=Match(action=("login_failed",)),
        group_by="user_id",
        threshold=5,
        window_s=60,
        cooldown_s=300,
    )


def test_to_dict_has_every_key_with_defaults_filled() -> None:
    shape = parse_rule(with_(BRUTE_FORCE, cooldown_s="DELETE", match="DELETE")).to_dict()
    assert shape == {
        "name": "brute-force",
        "severity": "high",
        "kind": "count",
        "match": {"user_id": None, "action": None},
        "group_by": "user_id",
        "field": None,
        "threshold": 5,
        "window_s": 60,
        "cooldown_s": 60,
    }
    json.dumps(shape, allow_nan=False)


@pytest.mark.parametrize("body", [BRUTE_FORCE, SPRAY, NEW_ACTION])
def test_to_dict_parses_back_to_the_same_rule(body: dict[str, Any]) -> None:
    rule = parse_rule(body)
    assert parse_rule(json.loads(json.dumps(rule.to_dict()))) == rule


def test_cooldown_defaults_to_window_and_to_zero_for_first_seen() -> None:
    assert parse_rule(with_(SPRAY, window_s=2.5)).cooldown_s == 2.5
    assert parse_rule(NEW_ACTION).cooldown_s == 0
    assert parse_rule(with_(NEW_ACTION, cooldown_s=10)).cooldown_s == 10


def test_absent_and_null_optional_fields_mean_any_and_one_group() -> None:
    rule = parse_rule(with_(BRUTE_FORCE, match=None, group_by=None))
    assert rule.match == Match() and rule.group_by is None
    rule = parse_rule(with_(BRUTE_FORCE, match={"user_id": ["u1", "u2"], "action": None}))
    assert rule.match == Match(user_id=("u1", "u2"), action=None)


def test_match_drops_repeated_values_and_keeps_order() -> None:
    rule = parse_rule(with_(BRUTE_FORCE, match={"action": ["b", "a", "b"]}))
    assert rule.match.action == ("b", "a")


def test_numbers_may_be_floats_and_limits_are_inclusive() -> None:
    rule = parse_rule(with_(BRUTE_FORCE, threshold=1_000_000, window_s=604_800, cooldown_s=0))
    assert (rule.threshold, rule.window_s, rule.cooldown_s) == (1_000_000, 604_800, 0)
    rule = parse_rule(with_(BRUTE_FORCE, threshold=1, window_s=0.001, cooldown_s=2_592_000.0))
    assert (rule.threshold, rule.window_s, rule.cooldown_s) == (1, 0.001, 2_592_000.0)


@pytest.mark.parametrize("name", ["a", "A-z_0.9", "x" * 64])
def test_names_of_the_allowed_characters(name: str) -> None:
    assert parse_rule(with_(BRUTE_FORCE, name=name)).name == name


# The name in the path


def test_path_name_fills_a_missing_body_name() -> None:
    assert parse_rule(with_(BRUTE_FORCE, name="DELETE"), "from-path").name == "from-path"
    assert parse_rule(with_(BRUTE_FORCE, name=None), "from-path").name == "from-path"


def test_path_name_equal_to_body_name_is_fine() -> None:
    assert parse_rule(BRUTE_FORCE, "brute-force").name == "brute-force"


def test_body_name_differing_from_path_name_is_an_error_on_name() -> None:
    assert error_of(BRUTE_FORCE, "other").field == "name"


def test_invalid_path_name_is_an_error_on_name() -> None:
    assert error_of(with_(BRUTE_FORCE, name="DELETE"), "bad name!").field == "name"


# Every bad field names itself

BAD_FIELDS = [
    ({"name": ""}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "naïve"}, "name"),
    ({"name": 7}, "name"),
    ({"name": "DELETE"}, "name"),
    ({"severity": "urgent"}, "severity"),
    ({"severity": "HIGH"}, "severity"),
    ({"severity": "DELETE"}, "severity"),
    ({"kind": "rate"}, "kind"),
    ({"kind": ["count"]}, "kind"),
    ({"kind": "DELETE"}, "kind"),
    ({"match": ["login_failed"]}, "match"),
    ({"match": "login_failed"}, "match"),
    ({"match": {"actions": ["x"]}}, "match.actions"),
    ({"match": {"action": []}}, "match.action"),
    ({"match": {"action": "login_failed"}}, "match.action"),
    ({"match": {"action": [""]}}, "match.action"),
    ({"match": {"action": ["ok", 3]}}, "match.action"),
    ({"match": {"action": ["a" * 129]}}, "match.action"),
    ({"match": {"user_id": ["u1", None]}}, "match.user_id"),
    ({"match": {"user_id": ["u"] * 1001}}, "match.user_id"),
    ({"match": {"user_id": ["u" * 257]}}, "match.user_id"),
    ({"group_by": "details"}, "group_by"),
    ({"group_by": ""}, "group_by"),
    ({"field": "action"}, "field"),
    ({"threshold": 0}, "threshold"),
    ({"threshold": 1_000_001}, "threshold"),
    ({"threshold": 5.0}, "threshold"),
    ({"threshold": "5"}, "threshold"),
    ({"threshold": True}, "threshold"),
    ({"threshold": "DELETE"}, "threshold"),
    ({"window_s": 0}, "window_s"),
    ({"window_s": -1}, "window_s"),
    ({"window_s": 604_800.5}, "window_s"),
    ({"window_s": True}, "window_s"),
    ({"window_s": "60"}, "window_s"),
    ({"window_s": float("nan")}, "window_s"),
    ({"window_s": float("inf")}, "window_s"),
    ({"window_s": "DELETE"}, "window_s"),
    ({"cooldown_s": -0.5}, "cooldown_s"),
    ({"cooldown_s": 2_592_001}, "cooldown_s"),
    ({"cooldown_s": False}, "cooldown_s"),
    ({"cooldown_s": float("nan")}, "cooldown_s"),
    ({"cooldown_s": float("-inf")}, "cooldown_s"),
    ({"cooldown_s": [1]}, "cooldown_s"),
    ({"surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_FIELDS)
def test_bad_count_rule_names_the_field(changes: dict[str, Any], field: str) -> None:
    error = error_of(with_(BRUTE_FORCE, **changes))
    assert error.field == field
    assert error.message and "\n" not in error.message


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"field": "DELETE"}, "field"),
        ({"field": None}, "field"),
        ({"field": "details"}, "field"),
        ({"threshold": "DELETE"}, "threshold"),
        ({"window_s": "DELETE"}, "window_s"),
        ({"group_by": "user_id"}, "group_by"),  # grouped by its own field: could never fire
    ],
)
def test_bad_distinct_rule_names_the_field(changes: dict[str, Any], field: str) -> None:
    assert error_of(with_(SPRAY, **changes)).field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"field": "DELETE"}, "field"),
        ({"threshold": 3}, "threshold"),
        ({"window_s": 60}, "window_s"),
        ({"cooldown_s": -1}, "cooldown_s"),
    ],
)
def test_bad_first_seen_rule_names_the_field(changes: dict[str, Any], field: str) -> None:
    assert error_of(with_(NEW_ACTION, **changes)).field == field


def test_messages_say_what_is_wanted() -> None:
    assert error_of(with_(BRUTE_FORCE, threshold=0)).message == (
        "threshold must be an integer from 1 to 1000000"
    )
    assert error_of(with_(BRUTE_FORCE, field="action")).message == (
        "field is not allowed for kind count"
    )
    assert error_of(with_(SPRAY, field="DELETE")).message == "field is required for kind distinct"
    assert error_of(with_(BRUTE_FORCE, surprise=1)).message == "unknown field surprise"


@pytest.mark.parametrize("body", [None, [], "rule", 5, [BRUTE_FORCE]])
def test_a_rule_must_be_an_object(body: object) -> None:
    assert error_of(body).field is None


def test_rule_error_is_a_value_error() -> None:
    assert issubclass(RuleError, ValueError)


# --rules files


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


TOML_RULES = """
[[rules]]
name = "brute-force"
severity = "high"
kind = "count"
match = { action = ["login_failed"] }
group_by = "user_id"
threshold = 5
window_s = 60
cooldown_s = 300

[[rules]]
name = "new-action"
severity = "low"
kind = "first_seen"
group_by = "user_id"
field = "action"
"""


def file_error(path: Path) -> RuleError:
    with pytest.raises(RuleError) as caught:
        load_rules_file(path)
    message = caught.value.message
    assert "\n" not in message and message.startswith(f"{path}: ")
    return caught.value


def test_toml_file_of_rules_tables(tmp_path: Path) -> None:
    rules = load_rules_file(write(tmp_path, "rules.toml", TOML_RULES))
    assert rules == [parse_rule(BRUTE_FORCE), parse_rule(NEW_ACTION)]


def test_json_file_of_an_array(tmp_path: Path) -> None:
    path = write(tmp_path, "rules.json", json.dumps([BRUTE_FORCE, SPRAY]))
    assert load_rules_file(path) == [parse_rule(BRUTE_FORCE), parse_rule(SPRAY)]


def test_other_extensions_are_read_as_json(tmp_path: Path) -> None:
    path = write(tmp_path, "rules.conf", json.dumps([NEW_ACTION]))
    assert load_rules_file(str(path)) == [parse_rule(NEW_ACTION)]


def test_empty_toml_and_empty_json_array_are_no_rules(tmp_path: Path) -> None:
    assert load_rules_file(write(tmp_path, "rules.toml", "")) == []
    assert load_rules_file(write(tmp_path, "rules.json", "[]")) == []


def test_bad_rule_in_file_names_file_rule_number_and_name(tmp_path: Path) -> None:
    text = TOML_RULES.replace("threshold = 5", "threshold = 0")
    path = write(tmp_path, "rules.toml", text)
    error = file_error(path)
    assert error.message == (
        f"{path}: rule 1 (brute-force): threshold must be an integer from 1 to 1000000"
    )
    assert error.field == "threshold"


def test_bad_rule_without_a_usable_name_is_named_by_number(tmp_path: Path) -> None:
    body = with_(SPRAY, name="no good")
    path = write(tmp_path, "rules.json", json.dumps([BRUTE_FORCE, body]))
    assert file_error(path).message.startswith(f"{path}: rule 2: name must be")


def test_duplicate_names_in_a_file_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "rules.json", json.dumps([BRUTE_FORCE, SPRAY, BRUTE_FORCE]))
    error = file_error(path)
    assert error.message == f"{path}: rule 3 (brute-force): name is already used by rule 1"
    assert error.field == "name"


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("rules.json", '[{"name": "a",\n\n "severity": }]', "invalid JSON"),
        ("rules.json", '{"name": "a"}', "expected a JSON array of rules"),
        ("rules.json", '[{"name": "a", "window_s": NaN}]', "NaN is not a number"),
        ("rules.json", '[{"name": "a", "window_s": Infinity}]', "Infinity is not a number"),
        ("rules.txt", "[[rules]]\nname = 'a'\n", "invalid JSON"),
        ("rules.toml", '[[rules]]\nname = "a\n', "invalid TOML"),
        ("rules.toml", "[[rule]]\nname = 'a'\n", "unknown top-level key rule"),
        ("rules.toml", "rules = 5\n", "rules must be an array of tables"),
        ("rules.toml", "[[rules]]\nname='x'\nseverity='low'\nkind='count'\n", "rule 1 (x)"),
        ("rules.toml", "[[rules]]\nwindow_s = inf\n", "rule 1: name is required"),
        ("rules.json", "[5]", "rule 1: a rule must be a JSON object"),
    ],
)
def test_malformed_file_is_one_line_naming_the_file(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    assert problem in file_error(write(tmp_path, name, text)).message


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b"\xff\xfe[[rules]]")
    assert "not UTF-8" in file_error(path).message


def test_missing_file_is_a_rule_error(tmp_path: Path) -> None:
    assert "cannot read" in file_error(tmp_path / "absent.toml").message


def test_toml_infinity_is_refused(tmp_path: Path) -> None:
    text = TOML_RULES.replace("window_s = 60", "window_s = inf")
    assert file_error(write(tmp_path, "rules.toml", text)).field == "window_s"
