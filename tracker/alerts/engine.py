"""Incremental rule evaluation: sliding windows, distinct values, first sightings, cooldowns.

The engine has no clock and does no I/O: the time is each activity's own timestamp, so a
test replays activities with any timestamps and needs no sleeps.

Bounded work and memory, whatever the traffic:
- An activity a rule's match refuses costs two set lookups for that rule, nothing more.
- Each rule keeps at most `max_groups` groups; a new group beyond that evicts the least
  recently active one (its window, values and cooldown are forgotten, so it may fire again).
- count keeps the last `threshold` (time, id) pairs of a group; distinct keeps at most
  `threshold` values; first_seen remembers at most `max_values` values per group, evicting
  the least recently seen, so an evicted value that shows up again fires again.

Time never goes backwards for the engine: an activity stamped earlier than one already
seen (or with a timestamp that does not parse) is taken as happening at the latest time
seen, so windows stay ordered; its alert's fired_at is still its own timestamp.

Not thread-safe by itself: the caller serialises calls (the service records in one order).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..activity import Activity
from .rules import Rule

MICROS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Alert = dict[str, Any]


def to_micros(timestamp: str) -> int:
    """An activity timestamp as integer microseconds since the epoch (no offset: UTC)."""
    # Integers, not float seconds, so "exactly window_s older" is decided exactly.
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def seconds_text(seconds: float) -> str:
    """60 -> "60", 60.0 -> "60", 0.5 -> "0.5": how messages show a window."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


class _Group:
    """What one group of one rule remembers; subclasses add the kind's own state."""

    __slots__ = ("last_fired",)

    def __init__(self) -> None:
        self.last_fired: int | None = None


class _CountGroup(_Group):
    __slots__ = ("recent",)

    def __init__(self, threshold: int) -> None:
        super().__init__()
        # The newest `threshold` (time, id) pairs: if the oldest is inside the window, all are.
        self.recent: deque[tuple[int, int]] = deque(maxlen=threshold)


class _DistinctGroup(_Group):
    __slots__ = ("latest",)

    def __init__(self) -> None:
        super().__init__()
        # value -> (time, id) of its latest activity, ordered oldest first.
        self.latest: OrderedDict[str, tuple[int, int]] = OrderedDict()


class _FirstSeenGroup(_Group):
    __slots__ = ("seen",)

    def __init__(self) -> None:
        super().__init__()
        # An ordered set: values, least recently seen first.
        self.seen: OrderedDict[str, None] = OrderedDict()


class _RuleState:
    """One rule, its match as sets, and its groups (least recently active first)."""

    def __init__(self, rule: Rule, max_groups: int, max_values: int) -> None:
        self.rule = rule
        self.users = None if rule.match.user_id is None else frozenset(rule.match.user_id)
        self.actions = None if rule.match.action is None else frozenset(rule.match.action)
        # Stand-ins where a kind has none (first_seen: threshold, window; count: field).
        self.threshold = rule.threshold or 1
        self.field = rule.field or "user_id"
        self.window = max(1, round((rule.window_s or 0) * MICROS))
        self.cooldown = round(rule.cooldown_s * MICROS)
        self.max_groups = max_groups
        self.max_values = max_values
        self.groups: OrderedDict[str | None, Any] = OrderedDict()
        self.observe = {
            "count": self._observe_count,
            "distinct": self._observe_distinct,
            "first_seen": self._observe_first_seen,
        }[rule.kind]
        # What messages call the matching activities: the one action, when there is one.
        actions = rule.match.action
        self.what = actions[0] if actions is not None and len(actions) == 1 else None

    def group_of(self, key: str | None, make: type[_Group], *args: int) -> Any:
        """The group for a key, marked most recently active; made (evicting if full) if new."""
        group = self.groups.get(key)
        if group is not None:
            self.groups.move_to_end(key)
            return group
        if len(self.groups) >= self.max_groups:
            self.groups.popitem(last=False)
        group = self.groups[key] = make(*args)
        return group

    def key_of(self, activity: Activity) -> str | None:
        by = self.rule.group_by
        return None if by is None else getattr(activity, by)

    def cooling(self, group: _Group, now: int) -> bool:
        return group.last_fired is not None and now - group.last_fired < self.cooldown

    def _observe_count(self, activity: Activity, now: int) -> Alert | None:
        key = self.key_of(activity)
        group: _CountGroup = self.group_of(key, _CountGroup, self.threshold)
        recent = group.recent
        recent.append((now, activity.id))
        if len(recent) < self.threshold or now - recent[0][0] >= self.window:
            return None
        if self.cooling(group, now):
            return None
        group.last_fired = now
        ids = [activity_id for _, activity_id in recent]
        return self.alert(activity, key, len(ids), ids, self.count_message(key, len(ids)))

    def _observe_distinct(self, activity: Activity, now: int) -> Alert | None:
        key = self.key_of(activity)
        group: _DistinctGroup = self.group_of(key, _DistinctGroup)
        latest, threshold = group.latest, self.threshold
        value = getattr(activity, self.field)
        latest[value] = (now, activity.id)
        latest.move_to_end(value)
        while now - next(iter(latest.values()))[0] >= self.window:
            latest.popitem(last=False)  # never the value just added: it is `now`
        if len(latest) > threshold:
            latest.popitem(last=False)  # more than threshold values add nothing to decide
        if len(latest) < threshold or self.cooling(group, now):
            return None
        group.last_fired = now
        ids = [activity_id for _, activity_id in latest.values()]
        return self.alert(activity, key, len(ids), ids, self.distinct_message(key, len(ids)))

    def _observe_first_seen(self, activity: Activity, now: int) -> Alert | None:
        key = self.key_of(activity)
        group: _FirstSeenGroup = self.group_of(key, _FirstSeenGroup)
        seen = group.seen
        value = getattr(activity, self.field)
        if value in seen:
            seen.move_to_end(value)
            return None
        seen[value] = None
        if len(seen) > self.max_values:
            seen.popitem(last=False)
        if self.cooling(group, now):
            return None  # still remembered as seen: it will not fire later either
        group.last_fired = now
        return self.alert(activity, key, 1, [activity.id], self.first_seen_message(key, value))

    def alert(
        self, activity: Activity, key: str | None, count: int, ids: list[int], message: str
    ) -> Alert:
        by = self.rule.group_by
        return {
            "rule": self.rule.name,
            "severity": self.rule.severity,
            "group": {} if by is None else {by: key},
            "count": count,
            "activity_ids": ids,
            "fired_at": activity.timestamp,
            "message": message,
        }

    def describe(self, key: str | None) -> tuple[str | None, str]:
        """The action the activities share, if any, and " by <user>" when grouped by user."""
        by = self.rule.group_by
        what = key if by == "action" else self.what
        return what, f" by {key}" if by == "user_id" else ""

    def count_message(self, key: str | None, count: int) -> str:
        what, by_user = self.describe(key)
        window = seconds_text(self.rule.window_s or 0)
        return f"{count} {what or 'matching activities'}{by_user} in {window} s"

    def distinct_message(self, key: str | None, count: int) -> str:
        what, by_user = self.describe(key)
        window = seconds_text(self.rule.window_s or 0)
        what_part = f" for {what}" if what is not None else ""
        return f"{count} distinct {self.rule.field}{what_part}{by_user} in {window} s"

    def first_seen_message(self, key: str | None, value: str) -> str:
        if self.rule.group_by is None:
            return f"{self.rule.field} {value} first seen"
        return f"{key} first seen with {self.rule.field} {value}"


class AlertEngine:
    """Evaluates every rule against each activity as it is recorded; returns alert bodies."""

    def __init__(
        self, rules: Iterable[Rule] = (), max_groups: int = 10_000, max_values: int = 1_000
    ) -> None:
        if max_groups < 1 or max_values < 1:
            raise ValueError("max_groups and max_values must be at least 1")
        self.max_groups = max_groups
        self.max_values = max_values
        self._states: dict[str, _RuleState] = {}
        self._ordered: tuple[_RuleState, ...] = ()
        # The rules that may match an activity, by its action, in rule-name order: so a
        # rule about other actions costs one dict lookup, not a look at each rule.
        self._by_action: dict[str, tuple[_RuleState, ...]] = {}
        self._any_action: tuple[_RuleState, ...] = ()
        # The latest time seen: an activity stamped earlier is taken as happening now.
        self._now: int | None = None
        # The last timestamp parsed (a batch's activities share one).
        self._stamp: tuple[str, int] | None = None
        self.change_rules(rules)

    def set_rule(self, rule: Rule) -> None:
        """Create or replace a rule; a replaced rule starts again with no state."""
        self.change_rules([rule])

    def remove_rule(self, name: str) -> bool:
        """Remove a rule and its state; False if there was none by that name."""
        removed = name in self._states
        self.change_rules(remove=[name])
        return removed

    def change_rules(self, put: Iterable[Rule] = (), remove: Iterable[str] = ()) -> None:
        """Remove rules by name, then create or replace others (afresh); index once."""
        # Many changes, one index: loading 1,000 rules one by one re-indexed 1,000 times.
        for name in remove:
            self._states.pop(name, None)
        for rule in put:
            self._states[rule.name] = _RuleState(rule, self.max_groups, self.max_values)
        self._reorder()

    @property
    def armed(self) -> bool:
        """Whether there is any rule to evaluate."""
        return bool(self._ordered)

    def rules(self) -> list[Rule]:
        """Every rule, sorted by name."""
        return [state.rule for state in self._ordered]

    def evaluate(self, activity: Activity) -> list[Alert]:
        """The alerts this activity fires, in rule-name order, without ids (the caller's)."""
        alerts: list[Alert] = []
        now: int | None = None
        for state in self._by_action.get(activity.action, self._any_action):
            if state.users is not None and activity.user_id not in state.users:
                continue
            if now is None:
                now = self._clock(activity.timestamp)
            alert = state.observe(activity, now)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _clock(self, timestamp: str) -> int:
        """The activity's time, never earlier than one already seen (windows stay ordered)."""
        if self._stamp is not None and self._stamp[0] == timestamp:
            moment = self._stamp[1]
        else:
            try:
                moment = to_micros(timestamp)
            except (ValueError, OverflowError):
                # The service makes every timestamp; should one not parse, alerting goes on.
                moment = self._now or 0
            self._stamp = (timestamp, moment)
        if self._now is None or moment > self._now:
            self._now = moment
        return self._now

    def _reorder(self) -> None:
        """Rebuild the name order and the by-action index in one walk over the rules."""
        self._ordered = tuple(self._states[name] for name in sorted(self._states))
        # Every named action's list exists before the walk, so a rule about any action
        # lands in the lists of actions named only by rules after it, too.
        by_action: dict[str, list[_RuleState]] = {
            action: [] for state in self._ordered for action in state.actions or ()
        }
        any_action: list[_RuleState] = []
        for state in self._ordered:
            if state.actions is None:
                any_action.append(state)
                for states in by_action.values():
                    states.append(state)
            else:
                for action in state.actions:
                    by_action[action].append(state)
        self._any_action = tuple(any_action)
        self._by_action = {action: tuple(states) for action, states in by_action.items()}
