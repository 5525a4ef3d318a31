"""The alert engine: each kind, window edges, cooldowns, matching, and its memory bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tracker.activity import Activity, ActivityInput, format_timestamp
from tracker.alerts.engine import AlertEngine, seconds_text, to_micros
from tracker.alerts.rules import Rule, parse_rule

START = datetime(2025, 11, 5, 10, 30, tzinfo=UTC)


class Feed:
    """Makes activities with increasing ids at chosen seconds after START."""

    def __init__(self) -> None:
        self.next_id = 1

    def at(self, seconds: float, user_id: str = "u1", action: str = "login_failed") -> Activity:
        stamp = format_timestamp(START + timedelta(seconds=seconds))
        activity = Activity.create(self.next_id, ActivityInput(user_id, action), stamp)
        self.next_id += 1
        return activity


def rule(**fields: Any) -> Rule:
    base = {"name": "r", "severity": "high", "kind": "count", "threshold": 3, "window_s": 60}
    return parse_rule({**base, **fields})


def run(engine: AlertEngine, activities: list[Activity]) -> list[dict[str, Any]]:
    return [alert for activity in activities for alert in engine.evaluate(activity)]


@pytest.fixture
def feed() -> Feed:
    return Feed()


# count


def test_count_fires_on_the_threshold_th_matching_activity(feed: Feed) -> None:
    engine = AlertEngine(
        [
            rule(
                name="brute-force",
                match={"action": ["login_failed"]},
                group_by="user_id",
                threshold=5,
                cooldown_s=300,
            )
        ]
    )
    activities = [feed.at(i) for i in range(5)]
    assert run(engine, activities[:4]) == []
    assert engine.evaluate(activities[4]) == [
        {
            "rule": "brute-force",
            "severity": "high",
            "group": {"user_id": "u1"},
            "count": 5,
            "activity_ids": [1, 2, 3, 4, 5],
            "fired_at": activities[4].timestamp,
            "message": "5 login_failed by u1 in 60 s",
        }
    ]


def test_count_window_edge_just_inside_fires(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=3, window_s=60)])
    alerts = run(engine, [feed.at(0), feed.at(30), feed.at(59.999999)])
    assert [a["activity_ids"] for a in alerts] == [[1, 2, 3]]


def test_count_window_edge_exactly_window_older_is_outside(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=3, window_s=60)])
    assert run(engine, [feed.at(0), feed.at(30), feed.at(60)]) == []
    # The first has left the window; the fourth makes three again inside it.
    assert [a["activity_ids"] for a in run(engine, [feed.at(61)])] == [[2, 3, 4]]


def test_count_window_edge_with_fractional_timestamps(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, window_s=0.1)])
    assert run(engine, [feed.at(0.123456), feed.at(0.223456)]) == []
    assert len(run(engine, [feed.at(0.323455)])) == 1


def test_count_reports_the_last_threshold_ids(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, window_s=10, cooldown_s=0)])
    alerts = run(engine, [feed.at(0), feed.at(100), feed.at(101), feed.at(102)])
    assert [a["activity_ids"] for a in alerts] == [[2, 3], [3, 4]]
    assert all(a["count"] == 2 for a in alerts)


def test_count_groups_are_separate(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, group_by="user_id")])
    alerts = run(engine, [feed.at(0, "u1"), feed.at(1, "u2"), feed.at(2, "u2"), feed.at(3, "u1")])
    assert [(a["group"], a["activity_ids"]) for a in alerts] == [
        ({"user_id": "u2"}, [2, 3]),
        ({"user_id": "u1"}, [1, 4]),
    ]


def test_count_ungrouped_counts_everyone_together(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=3)])
    alerts = run(engine, [feed.at(0, "a"), feed.at(1, "b"), feed.at(2, "c", "export")])
    assert alerts[0]["group"] == {}
    assert alerts[0]["message"] == "3 matching activities in 60 s"


def test_count_grouped_by_action_names_the_action(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, group_by="action", window_s=1.5)])
    alerts = run(engine, [feed.at(0, "a", "export"), feed.at(1, "b", "export")])
    assert alerts[0]["group"] == {"action": "export"}
    assert alerts[0]["message"] == "2 export in 1.5 s"


def test_count_several_match_actions_are_matching_activities(feed: Feed) -> None:
    engine = AlertEngine(
        [rule(threshold=2, group_by="user_id", match={"action": ["login_failed", "mfa_failed"]})]
    )
    alerts = run(engine, [feed.at(0, "u1", "login_failed"), feed.at(1, "u1", "mfa_failed")])
    assert alerts[0]["message"] == "2 matching activities by u1 in 60 s"


# match


def test_match_action_ignores_other_actions(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, match={"action": ["login_failed"]})])
    activities = [feed.at(0), feed.at(1, action="login"), feed.at(2, action="logout")]
    assert run(engine, activities) == []
    assert [a["activity_ids"] for a in run(engine, [feed.at(3)])] == [[1, 4]]


def test_match_user_and_action_must_both_hold(feed: Feed) -> None:
    engine = AlertEngine(
        [rule(threshold=1, cooldown_s=0, match={"user_id": ["admin"], "action": ["export"]})]
    )
    activities = [
        feed.at(0, "admin", "login"),
        feed.at(1, "bob", "export"),
        feed.at(2, "admin", "export"),
    ]
    assert [a["activity_ids"] for a in run(engine, activities)] == [[3]]


def test_non_matching_activities_make_no_groups(feed: Feed) -> None:
    engine = AlertEngine([rule(group_by="user_id", match={"action": ["login_failed"]})])
    run(engine, [feed.at(i, f"user{i}", "login") for i in range(100)])
    assert not engine._states["r"].groups


# distinct


def spray(**fields: Any) -> Rule:
    base = {"kind": "distinct", "match": {"action": ["login_failed"]}, "field": "user_id"}
    return rule(**{**base, **fields})


def test_distinct_fires_on_the_threshold_th_distinct_value(feed: Feed) -> None:
    engine = AlertEngine([spray(threshold=3)])
    activities = [feed.at(0, "a"), feed.at(1, "a"), feed.at(2, "b"), feed.at(3, "b")]
    assert run(engine, activities) == []
    [alert] = engine.evaluate(feed.at(4, "c"))
    assert alert["count"] == 3
    assert alert["activity_ids"] == [2, 4, 5]  # the latest of each value, oldest first
    assert alert["message"] == "3 distinct user_id for login_failed in 60 s"
    assert alert["group"] == {}


def test_distinct_repeat_of_a_value_moves_it_to_newest(feed: Feed) -> None:
    engine = AlertEngine([spray(threshold=3, window_s=10)])
    # a at 0, b at 5, a again at 9: at 12 only b (5) and a (9) remain, plus c.
    run(engine, [feed.at(0, "a"), feed.at(5, "b"), feed.at(9, "a")])
    [alert] = engine.evaluate(feed.at(12, "c"))
    assert alert["activity_ids"] == [2, 3, 4]


def test_distinct_window_edge(feed: Feed) -> None:
    engine = AlertEngine([spray(threshold=3, window_s=10)])
    assert run(engine, [feed.at(0, "a"), feed.at(5, "b"), feed.at(10, "c")]) == []
    engine = AlertEngine([spray(threshold=3, window_s=10)])
    assert len(run(engine, [feed.at(0, "a"), feed.at(5, "b"), feed.at(9.999999, "c")])) == 1


def test_distinct_grouped_by_user_counts_actions(feed: Feed) -> None:
    engine = AlertEngine([spray(match=None, field="action", group_by="user_id", threshold=2)])
    alerts = run(engine, [feed.at(0, "u1", "a"), feed.at(1, "u2", "b"), feed.at(2, "u1", "c")])
    assert [(a["group"], a["activity_ids"]) for a in alerts] == [({"user_id": "u1"}, [1, 3])]
    assert alerts[0]["message"] == "2 distinct action by u1 in 60 s"


def test_distinct_keeps_at_most_threshold_values(feed: Feed) -> None:
    engine = AlertEngine([spray(threshold=3, window_s=1000, cooldown_s=0)])
    alerts = run(engine, [feed.at(i, f"user{i}") for i in range(50)])
    assert len(alerts) == 48
    assert alerts[-1]["activity_ids"] == [48, 49, 50]
    [group] = engine._states["r"].groups.values()
    assert len(group.latest) == 3


# first_seen


def newcomer(**fields: Any) -> Rule:
    base = {"kind": "first_seen", "threshold": None, "window_s": None}
    return rule(**{**base, "field": "action", "group_by": "user_id", **fields})


def test_first_seen_fires_once_per_new_value_of_a_group(feed: Feed) -> None:
    engine = AlertEngine([newcomer()])
    activities = [
        feed.at(0, "u1", "login"),
        feed.at(1, "u1", "login"),
        feed.at(2, "u2", "login"),
        feed.at(3, "u1", "export_all"),
        feed.at(4, "u1", "export_all"),
    ]
    alerts = run(engine, activities)
    assert [(a["group"], a["activity_ids"], a["count"]) for a in alerts] == [
        ({"user_id": "u1"}, [1], 1),
        ({"user_id": "u2"}, [3], 1),
        ({"user_id": "u1"}, [4], 1),
    ]
    assert alerts[-1]["message"] == "u1 first seen with action export_all"


def test_first_seen_ungrouped_message(feed: Feed) -> None:
    engine = AlertEngine([newcomer(group_by=None)])
    [alert] = engine.evaluate(feed.at(0, "u1", "export_all"))
    assert alert["message"] == "action export_all first seen"
    assert alert["group"] == {}


def test_first_seen_value_cap_evicts_least_recently_seen(feed: Feed) -> None:
    engine = AlertEngine([newcomer()], max_values=2)
    run(engine, [feed.at(0, action="a"), feed.at(1, action="b"), feed.at(2, action="a")])
    # "c" evicts "b" (a was seen more recently); b then fires again, evicting "c".
    assert len(run(engine, [feed.at(3, action="c")])) == 1
    assert run(engine, [feed.at(4, action="a")]) == []
    assert len(run(engine, [feed.at(5, action="b")])) == 1
    assert run(engine, [feed.at(6, action="a")]) == []
    assert len(run(engine, [feed.at(7, action="c")])) == 1


def test_first_seen_during_cooldown_is_remembered_and_never_fires(feed: Feed) -> None:
    engine = AlertEngine([newcomer(cooldown_s=10)])
    assert len(run(engine, [feed.at(0, action="a")])) == 1
    assert run(engine, [feed.at(5, action="b"), feed.at(20, action="b")]) == []
    assert len(run(engine, [feed.at(21, action="c")])) == 1


# cooldown


def test_cooldown_defaults_to_window(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, window_s=10)])
    times = [0, 1, 2, 10.999999, 11]
    alerts = run(engine, [feed.at(t) for t in times])
    # Fired at 1; 2 and 10.999999 are inside the cooldown; 11 is exactly 10 s later.
    assert [a["activity_ids"] for a in alerts] == [[1, 2], [4, 5]]


def test_count_fires_after_cooldown_when_the_window_still_holds_enough(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=3, window_s=60, cooldown_s=5)])
    alerts = run(engine, [feed.at(t) for t in (0, 1, 2, 3, 4, 6.999, 7)])
    assert [a["activity_ids"] for a in alerts] == [[1, 2, 3], [5, 6, 7]]


def test_cooldown_is_per_group(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=1, group_by="user_id", cooldown_s=100)])
    alerts = run(engine, [feed.at(0, "u1"), feed.at(1, "u2"), feed.at(2, "u1")])
    assert [a["group"] for a in alerts] == [{"user_id": "u1"}, {"user_id": "u2"}]


def test_zero_cooldown_fires_on_every_activity_over_threshold(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, cooldown_s=0)])
    assert len(run(engine, [feed.at(0), feed.at(0), feed.at(0), feed.at(0)])) == 3


# memory bounds


def test_group_cap_evicts_the_least_recently_active_group(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, group_by="user_id")], max_groups=2)
    run(engine, [feed.at(0, "u1"), feed.at(1, "u2"), feed.at(2, "u1")])
    # u1 fired at 2 and is the most recently active: u3 evicts u2, whose count is lost.
    run(engine, [feed.at(3, "u3")])
    assert list(engine._states["r"].groups) == ["u1", "u3"]
    assert run(engine, [feed.at(4, "u2")]) == []
    assert [a["activity_ids"] for a in run(engine, [feed.at(5, "u2")])] == [[5, 6]]


def test_many_groups_stay_within_the_cap(feed: Feed) -> None:
    engine = AlertEngine([newcomer()], max_groups=100)
    run(engine, [feed.at(0, f"user{i}") for i in range(1000)])
    assert len(engine._states["r"].groups) == 100


# time


def test_timestamps_going_backwards_count_as_now(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=3, window_s=10)])
    late = feed.at(100)
    early = feed.at(50)  # stamped earlier, arrives later: taken as 100
    alerts = run(engine, [late, early, feed.at(105)])
    assert [a["activity_ids"] for a in alerts] == [[1, 2, 3]]
    assert run(engine, [feed.at(40)]) == []  # no crash, and no window going backwards


def test_backwards_timestamp_keeps_its_own_fired_at(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, cooldown_s=0)])
    run(engine, [feed.at(100)])
    early = feed.at(50)
    [alert] = engine.evaluate(early)
    assert alert["fired_at"] == early.timestamp


def test_unparseable_timestamp_counts_as_the_latest_time(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=2, cooldown_s=0)])
    run(engine, [feed.at(0)])
    odd = Activity.create(99, ActivityInput("u1", "login_failed"), "not a time")
    assert [a["activity_ids"] for a in engine.evaluate(odd)] == [[1, 99]]


def test_to_micros_is_exact() -> None:
    assert to_micros("1970-01-01T00:00:01.000001+00:00") == 1_000_001
    assert to_micros("1970-01-01T01:00:00+01:00") == 0
    assert to_micros("1970-01-01T00:00:00.5") == 500_000
    assert to_micros("2025-11-05T10:30:00.123456+00:00") % 1_000_000 == 123_456


def test_seconds_text() -> None:
    assert [seconds_text(s) for s in (60, 60.0, 0.5, 604800)] == ["60", "60", "0.5", "604800"]


# rule management


def test_rules_sorted_by_name_and_alerts_in_rule_order(feed: Feed) -> None:
    engine = AlertEngine([rule(name="zeta", threshold=1), rule(name="alpha", threshold=1)])
    assert [r.name for r in engine.rules()] == ["alpha", "zeta"]
    assert [a["rule"] for a in engine.evaluate(feed.at(0))] == ["alpha", "zeta"]


def test_set_rule_replacing_resets_its_state(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=3)])
    run(engine, [feed.at(0), feed.at(1)])
    engine.set_rule(rule(threshold=3, severity="critical"))
    assert run(engine, [feed.at(2), feed.at(3)]) == []
    [alert] = engine.evaluate(feed.at(4))
    assert (alert["activity_ids"], alert["severity"]) == ([3, 4, 5], "critical")
    assert engine.rules() == [rule(threshold=3, severity="critical")]


def test_remove_rule(feed: Feed) -> None:
    engine = AlertEngine([rule(threshold=1)])
    assert engine.remove_rule("r") is True
    assert engine.remove_rule("r") is False
    assert engine.rules() == [] and engine.evaluate(feed.at(0)) == []


def test_no_rules_no_alerts(feed: Feed) -> None:
    assert AlertEngine().evaluate(feed.at(0)) == []


def test_caps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AlertEngine(max_groups=0)
    with pytest.raises(ValueError):
        AlertEngine(max_values=0)
