"""Filters, paging, summary, export and batch ingest, against a real in-process server."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from tracker.activity import Activity, ActivityInput, ValidationError
from tracker.query import Query, summarize
from tracker.service import ActivityService

from .conftest import Api, error_of
from .wsclient import Feed

PEOPLE = ["alice", "bob", "carol"]
ACTIONS = ["login", "view", "view", "update", "logout"]

# Every reader here must answer the same in memory and with a --db file.
pytestmark = pytest.mark.both_backends


def seed(service: ActivityService, rounds: int = 4) -> list[Activity]:
    """A known mix: every person does every action, `rounds` times."""
    made = []
    for r in range(rounds):
        for person in PEOPLE:
            for action in ACTIONS:
                made.append(service.record(ActivityInput(person, action, f"r{r}")))
    return made


def ids(activities: list[dict] | list[Activity]) -> list[int]:
    return [a["id"] if isinstance(a, dict) else a.id for a in activities]


@pytest.mark.gen_test
async def test_filter_by_user(api: Api, service: ActivityService) -> None:
    made = seed(service)
    got = await api.activities("?user_id=bob&limit=1000")
    assert ids(got) == [a.id for a in made if a.user_id == "bob"]


@pytest.mark.gen_test
async def test_repeated_filter_means_any_of(api: Api, service: ActivityService) -> None:
    made = seed(service)
    got = await api.activities("?user_id=bob&user_id=carol&action=login&action=logout")
    expected = [
        a.id for a in made if a.user_id in ("bob", "carol") and a.action in ("login", "logout")
    ]
    assert ids(got) == expected


@pytest.mark.gen_test
async def test_filter_by_action_with_limit_gives_newest_matches(
    api: Api, service: ActivityService
) -> None:
    made = seed(service)
    got = await api.activities("?action=view&limit=5")
    assert ids(got) == [a.id for a in made if a.action == "view"][-5:]


@pytest.mark.gen_test
async def test_since_is_inclusive_and_until_exclusive(api: Api, service: ActivityService) -> None:
    early = seed(service, 1)
    late = seed(service, 1)
    boundary = late[0].timestamp
    assert early[-1].timestamp < boundary  # the two groups are apart in time
    since = await api.activities(f"?since={quote(boundary)}&limit=1000")
    until = await api.activities(f"?until={quote(boundary)}&limit=1000")
    assert ids(since) == ids(late) and ids(until) == ids(early)
    # The same instant written with another offset, with "Z", and without an offset (UTC).
    moment = datetime.fromisoformat(boundary)
    for text in (
        moment.astimezone(timezone(timedelta(hours=2))).isoformat(),
        boundary.replace("+00:00", "Z"),
        boundary.replace("+00:00", ""),
    ):
        assert ids(await api.activities(f"?since={quote(text)}&limit=1000")) == ids(late)


@pytest.mark.gen_test
async def test_unescaped_plus_in_offset_is_understood(api: Api, service: ActivityService) -> None:
    made = seed(service, 1)
    got = await api.activities(f"?since={made[3].timestamp}&limit=1000")  # "+" not escaped
    assert ids(got) == ids(made[3:])


@pytest.mark.gen_test
async def test_filters_combine(api: Api, service: ActivityService) -> None:
    made = seed(service)
    cut = made[20]
    got = await api.activities(
        f"?user_id=alice&action=view&since={quote(made[5].timestamp)}&before_id={cut.id}"
    )
    expected = [
        a.id
        for a in made
        if a.user_id == "alice"
        and a.action == "view"
        and a.timestamp >= made[5].timestamp
        and a.id < cut.id
    ]
    assert ids(got) == expected and expected


@pytest.mark.gen_test
async def test_paging_back_with_before_id_sees_everything_once(
    api: Api, service: ActivityService, backend: str
) -> None:
    for i in range(service.capacity + 250):
        service.record(ActivityInput(f"u{i % 7}", "view", None))
    seen: list[int] = []
    page = await api.activities("?limit=70")
    while page:
        seen = ids(page) + seen
        page = await api.activities(f"?limit=70&before_id={page[0]['id']}")
    # Memory keeps the newest `capacity`; the database keeps them all.
    first = 1 if backend == "db" else 251
    assert seen == list(range(first, service.capacity + 251))


@pytest.mark.gen_test
async def test_before_id_zero_or_one_matches_nothing(api: Api, service: ActivityService) -> None:
    seed(service, rounds=1)
    for before in (0, 1):
        assert await api.activities(f"?before_id={before}&limit=2") == []
        export = await api.request("GET", f"/api/metrics/export?format=ndjson&before_id={before}")
        assert export.body == b""
        summary = json.loads(
            (await api.request("GET", f"/api/metrics/summary?before_id={before}")).body
        )
        assert summary["total"] == 0
    assert ids(await api.activities("?before_id=2&limit=2")) == [1]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query,field",
    [
        ("since=yesterday", "since"),
        ("until=2025-13-01", "until"),
        ("since=2025-11-05T10:00:00Z&until=2025-11-05T09:00:00Z", "until"),
        ("before_id=-1", "before_id"),
        ("before_id=abc", "before_id"),
        ("user_id=", "user_id"),
        ("action=", "action"),
        ("limit=ten", "limit"),
        ("since=2025-11-05T10:00:00Z&since=2025-11-06T10:00:00Z", "since"),
    ],
)
async def test_malformed_filters_are_400(api: Api, query: str, field: str) -> None:
    for path in ("/api/metrics/activities", "/api/metrics/summary", "/api/metrics/export"):
        response = await api.request("GET", f"{path}?{query}")
        assert response.code == 400, path
        assert error_of(response)["field"] == field


@pytest.mark.gen_test
async def test_summary_matches_hand_computed_numbers(api: Api, service: ActivityService) -> None:
    seed(service, 2)  # 3 people x 5 actions x 2 rounds = 30
    service.record(ActivityInput("dave", "login", None))
    response = await api.request("GET", "/api/metrics/summary?top=2")
    summary = json.loads(response.body)
    assert summary["total"] == 31
    assert summary["distinct_users"] == 4
    assert summary["actions"] == [{"action": "view", "count": 12}, {"action": "login", "count": 7}]
    assert summary["users"] == [{"user_id": "alice", "count": 10}, {"user_id": "bob", "count": 10}]
    assert sum(point["count"] for point in summary["per_minute"]) == 31

    filtered = json.loads(
        (await api.request("GET", "/api/metrics/summary?user_id=bob&action=view")).body
    )
    assert filtered["total"] == 4 and filtered["distinct_users"] == 1
    assert filtered["actions"] == [{"action": "view", "count": 4}]


def test_per_minute_series_fills_quiet_minutes_with_zero() -> None:
    def at(minute: int, second: int) -> Activity:
        stamp = f"2025-11-05T10:{minute:02d}:{second:02d}.000000+00:00"
        return Activity.create(minute * 100 + second, ActivityInput("u", "a", None), stamp)

    series = summarize([at(1, 5), at(1, 59), at(4, 0)], top=5)["per_minute"]
    assert series == [
        {"minute": "2025-11-05T10:01:00+00:00", "count": 2},
        {"minute": "2025-11-05T10:02:00+00:00", "count": 0},
        {"minute": "2025-11-05T10:03:00+00:00", "count": 0},
        {"minute": "2025-11-05T10:04:00+00:00", "count": 1},
    ]


@pytest.mark.gen_test
async def test_csv_export_parses_back_to_the_filtered_activities(
    api: Api, service: ActivityService
) -> None:
    made = seed(service)
    response = await api.request("GET", "/api/metrics/export?format=csv&user_id=carol")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="activities-') and ".csv" in disposition
    rows = list(csv.DictReader(io.StringIO(response.body.decode())))
    expected = [a for a in made if a.user_id == "carol"]
    assert [int(r["id"]) for r in rows] == ids(expected)
    assert rows[0] == {
        "id": str(expected[0].id),
        "user_id": "carol",
        "action": expected[0].action,
        "timestamp": expected[0].timestamp,
        "details": expected[0].details,
    }


@pytest.mark.gen_test
async def test_ndjson_export_has_every_match_with_no_default_limit(
    api: Api, service: ActivityService
) -> None:
    for i in range(300):
        service.record(ActivityInput("u", "view" if i % 3 else "login", None))
    response = await api.request("GET", "/api/metrics/export?format=ndjson&action=view")
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = response.body.decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        a.to_dict() for a in await service.query(Query()) if a.action == "view"
    ]
    assert len(lines) == 200


@pytest.mark.gen_test
async def test_csv_export_neutralises_formulas(api: Api, service: ActivityService) -> None:
    dangerous = ['=HYPERLINK("x")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    for value in dangerous:
        service.record(ActivityInput(value, value, value))
    service.record(ActivityInput("plain", "a=b", None))
    response = await api.request("GET", "/api/metrics/export?format=csv")
    rows = list(csv.DictReader(io.StringIO(response.body.decode(), newline="")))
    for row, value in zip(rows[:-1], dangerous, strict=True):
        assert row["user_id"] == row["action"] == row["details"] == "'" + value
    assert rows[-1]["user_id"] == "plain" and rows[-1]["action"] == "a=b"
    assert rows[-1]["details"] == ""


@pytest.mark.gen_test
async def test_bad_export_format_is_400(api: Api) -> None:
    response = await api.request("GET", "/api/metrics/export?format=xlsx")
    assert response.code == 400 and error_of(response)["field"] == "format"


@pytest.mark.gen_test
async def test_batch_records_all_with_consecutive_ids(api: Api, service: ActivityService) -> None:
    items = [{"user_id": f"u{i}", "action": "view", "details": None} for i in range(50)]
    response = await api.request("POST", "/api/metrics/track/batch", body=items)
    assert response.code == 200
    body = json.loads(response.body)
    assert body["count"] == 50 and ids(body["items"]) == list(range(1, 51))
    assert [a["user_id"] for a in await api.activities()] == [f"u{i}" for i in range(50)]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "items,index,field",
    [
        ([{"user_id": "a", "action": "b"}, {"user_id": "", "action": "b"}], 1, "user_id"),
        ([{"user_id": "a", "action": "b"}] * 3 + [{"user_id": "a"}], 3, "action"),
        ([{"user_id": "a", "action": "b"}, "not an object"], 1, None),
        ([{"user_id": "a", "action": "b", "details": 7}], 0, "details"),
    ],
)
async def test_batch_is_all_or_nothing(
    api: Api, service: ActivityService, items: list, index: int, field: str | None
) -> None:
    response = await api.request("POST", "/api/metrics/track/batch", body=items)
    assert response.code == 400
    error = error_of(response)
    assert error["index"] == index and error.get("field") == field
    assert f"item {index}" in error["message"]
    assert service.last_id == 0 and await api.activities() == []


@pytest.mark.gen_test
@pytest.mark.settings(max_batch=10)
@pytest.mark.parametrize("body", [[], [{"user_id": "a", "action": "b"}] * 11, {"items": []}])
async def test_batch_shape_and_size_are_checked(
    api: Api, service: ActivityService, body: object
) -> None:
    response = await api.request("POST", "/api/metrics/track/batch", body=body)
    assert response.code == 400
    error_of(response)
    assert service.last_id == 0


@pytest.mark.gen_test
async def test_batch_reaches_live_clients_as_one_message(
    http_server: object, base_url: str, api: Api
) -> None:
    feed = await Feed.connect(base_url)
    items = [{"user_id": f"u{i}", "action": "view"} for i in range(100)]
    assert (await api.request("POST", "/api/metrics/track/batch", body=items)).code == 200
    message = await feed.next()
    assert message is not None and ids(message["items"]) == list(range(1, 101))
    feed.close()


@pytest.mark.gen_test
async def test_filtered_live_feed_gets_only_matches(
    http_server: object, base_url: str, api: Api, service: ActivityService
) -> None:
    seed(service, 1)
    watcher = await Feed.connect(base_url, "?user_id=bob&action=login&action=update&since=0")
    everyone = await Feed.connect(base_url)
    made = seed(service, 2)
    await everyone.until(len(made))
    service.record(ActivityInput("bob", "login", "last"))
    got = await watcher.until(6 + 1)
    assert all(a["user_id"] == "bob" and a["action"] in ("login", "update") for a in got)
    assert [a["details"] for a in got] == ["r0", "r0", "r0", "r0", "r1", "r1", "last"]
    watcher.close()
    everyone.close()


@pytest.mark.gen_test
async def test_bad_live_filter_is_400(http_server: object, http_client, base_url: str) -> None:
    response = await http_client.fetch(base_url + "/api/metrics/live?user_id=", raise_error=False)
    assert response.code == 400 and error_of(response)["field"] == "user_id"


@pytest.mark.gen_test
async def test_a_limit_above_the_matches_exports_them_all(
    api: Api, service: ActivityService
) -> None:
    for i in range(3):
        service.record(ActivityInput("few", "view", str(i)))
    export = await api.request("GET", "/api/metrics/export?format=ndjson&user_id=few&limit=5")
    assert len(export.body.splitlines()) == 3


@pytest.mark.gen_test
async def test_recording_in_process_refuses_bad_input_whole_and_uses_no_id(
    api: Api, service: ActivityService
) -> None:
    good, bad = ActivityInput("ok", "view", None), ActivityInput("ok", "view", "\ud800")
    with pytest.raises(ValidationError) as caught:
        service.record_many([good, bad])
    assert caught.value.field == "details"
    assert service.record(good).id == 1
