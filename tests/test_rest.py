"""REST endpoints against a real in-process server: SEED.md's examples and SPEC.md's rules."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest

from tracker.activity import ActivityInput
from tracker.service import ActivityService

from .conftest import Api, error_of

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
KEYS = ["id", "user_id", "action", "timestamp", "details"]


async def record_many(api: Api, count: int, prefix: str = "u") -> None:
    for i in range(count):
        response = await api.track(f"?user_id={prefix}{i}&action=view")
        assert response.code == 200


@pytest.mark.gen_test
@pytest.mark.both_backends
async def test_seed_examples_work_verbatim(api: Api) -> None:
    login = await api.track("?user_id=user_123&action=login&details=Successful+login")
    view = await api.track("?user_id=user_456&action=view&details=Viewed+analytics+page")
    assert login.code == view.code == 200
    assert login.headers["Content-Type"].startswith("application/json")
    first, second = json.loads(login.body), json.loads(view.body)
    # The activity's canonical form (RFC 8785): the same bytes the audit chain hashes.
    assert list(first) == sorted(KEYS)
    assert first["user_id"] == "user_123" and first["action"] == "login"
    assert first["details"] == "Successful login"
    assert second["details"] == "Viewed analytics page"
    assert second["id"] > first["id"]
    assert await api.activities("?limit=20") == [first, second]


@pytest.mark.gen_test
async def test_timestamp_is_utc_iso_with_microseconds(api: Api) -> None:
    before = datetime.now(UTC)
    body = json.loads((await api.track("?user_id=a&action=b")).body)
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    moment = datetime.fromisoformat(body["timestamp"])
    assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC)


@pytest.mark.gen_test
async def test_json_body_is_accepted(api: Api) -> None:
    response = await api.track(body={"user_id": "u1", "action": "update", "details": None})
    assert response.code == 200
    assert json.loads(response.body)["details"] is None
    assert [a["user_id"] for a in await api.activities()] == ["u1"]


@pytest.mark.gen_test
async def test_form_body_is_accepted(api: Api) -> None:
    response = await api.track(
        body="user_id=form+user&action=login&details=a%26b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 200
    assert json.loads(response.body)["user_id"] == "form user"
    assert json.loads(response.body)["details"] == "a&b"


@pytest.mark.gen_test
async def test_details_omitted_is_null(api: Api) -> None:
    body = json.loads((await api.track("?user_id=a&action=b")).body)
    assert body["details"] is None


@pytest.mark.gen_test
async def test_values_are_stored_as_given(api: Api) -> None:
    values = {"user_id": "  spaced  ", "action": "vue\u0301 \U0001f600", "details": "a\tb\x01c"}
    response = await api.track(body=values)
    assert response.code == 200
    stored = (await api.activities())[0]
    assert {k: stored[k] for k in values} == values


@pytest.mark.gen_test
async def test_values_at_the_limits_are_accepted(api: Api) -> None:
    values = {"user_id": "u" * 256, "action": "a" * 128, "details": "d" * 4096}
    assert (await api.track(body=values)).code == 200


@pytest.mark.gen_test
@pytest.mark.both_backends
async def test_limit_defaults_to_100_newest(api: Api) -> None:
    await record_many(api, 150)
    got = await api.activities()
    assert [a["id"] for a in got] == list(range(51, 151))


@pytest.mark.gen_test
@pytest.mark.both_backends
async def test_limit_zero_returns_empty_array(api: Api) -> None:
    await record_many(api, 3)
    response = await api.request("GET", "/api/metrics/activities?limit=0")
    assert response.body == b"[]"
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.gen_test
@pytest.mark.both_backends
async def test_limit_above_capacity_returns_whole_buffer(
    api: Api, service: ActivityService
) -> None:
    await record_many(api, 5)
    assert len(await api.activities("?limit=1000000")) == 5
    assert len(await api.activities("?limit=" + "9" * 40)) == 5


@pytest.mark.gen_test
@pytest.mark.both_backends
async def test_activities_are_oldest_first(api: Api) -> None:
    for action in ("login", "view", "update", "logout"):
        await api.track(f"?user_id=u&action={action}")
    got = await api.activities("?limit=3")
    assert [a["action"] for a in got] == ["view", "update", "logout"]
    assert [a["id"] for a in got] == sorted(a["id"] for a in got)


@pytest.mark.gen_test(timeout=60)
async def test_eviction_keeps_exactly_the_newest_capacity(
    api: Api, service: ActivityService
) -> None:
    await record_many(api, service.capacity + 500)
    got = await api.activities(f"?limit={service.capacity}")
    ids = [a["id"] for a in got]
    assert len(ids) == service.capacity
    assert ids == list(range(501, service.capacity + 501))
    assert got[0]["user_id"] == "u500" and got[-1]["user_id"] == f"u{service.capacity + 499}"


BAD_TRACKS = [
    # (query, JSON body or None, status, field)
    ("", None, 400, "user_id"),
    ("?action=login", None, 400, "user_id"),
    ("?user_id=&action=login", None, 400, "user_id"),
    ("?user_id=%20%20&action=login", None, 400, "user_id"),
    ("?user_id=u", None, 400, "action"),
    ("?user_id=u&action=%09", None, 400, "action"),
    ("?user_id=" + "u" * 257 + "&action=a", None, 400, "user_id"),
    ("?user_id=u&action=" + "a" * 129, None, 400, "action"),
    ("?user_id=u&action=a&details=" + "d" * 4097, None, 400, "details"),
    ("?user_id=u&user_id=v&action=a", None, 400, "user_id"),
    ("?user_id=%ff&action=a", None, 400, "user_id"),
    ("?user_id=a%00b&action=a", None, 400, "user_id"),
    ("", {"user_id": 5, "action": "a"}, 400, "user_id"),
    ("", {"user_id": "u", "action": ["a"]}, 400, "action"),
    ("", {"user_id": None, "action": "a"}, 400, "user_id"),
    ("", {"user_id": "u", "action": "a", "details": {"x": 1}}, 400, "details"),
    ("", {"user_id": "u", "action": "a", "details": True}, 400, "details"),
    ("", {"action": "a"}, 400, "user_id"),
    ("", {"user_id": " ", "action": "a"}, 400, "user_id"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("query,body,status,field", BAD_TRACKS)
@pytest.mark.both_backends
async def test_bad_track_input_is_refused_and_changes_nothing(
    api: Api, service: ActivityService, query: str, body: dict | None, status: int, field: str
) -> None:
    await record_many(api, 3)
    before = await api.activities()
    response = await api.track(query, body=body)
    assert response.code == status
    assert error_of(response).get("field") == field
    assert await api.activities() == before
    assert service.last_id == 3


RAW_BAD_BODIES = [
    (b'{"user_id": "u", "action": "a"', "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b'"just a string"', "application/json", 400),
    (b"\xff\xfe{}", "application/json", 400),
    (b"[" * 100_000, "application/json", 400),
    (
        b'{"user_id": "u", "action": "a", "details": "' + b"x" * (1024 * 1024) + b'"}',
        "application/json",
        413,
    ),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("body,content_type,status", RAW_BAD_BODIES)
async def test_malformed_or_oversized_bodies_are_refused(
    api: Api, service: ActivityService, body: bytes, content_type: str, status: int
) -> None:
    response = await api.track(body=body, headers={"Content-Type": content_type})
    assert response.code == status
    error_of(response)
    assert service.last_id == 0
    assert await api.activities() == []


@pytest.mark.gen_test
@pytest.mark.parametrize("limit", ["abc", "-1", "1.5", "", "1e3", "%EF%BC%91"])
async def test_bad_limit_is_a_400(api: Api, limit: str) -> None:
    response = await api.request("GET", f"/api/metrics/activities?limit={limit}")
    assert response.code == 400
    assert error_of(response)["field"] == "limit"


@pytest.mark.gen_test
async def test_unknown_api_path_is_a_json_404(api: Api) -> None:
    response = await api.request("GET", "/api/metrics/nope")
    assert response.code == 404
    assert "/api/metrics/nope" in error_of(response)["message"]


@pytest.mark.gen_test
async def test_wrong_method_is_a_json_405(api: Api, service: ActivityService) -> None:
    response = await api.request("GET", "/api/metrics/track?user_id=u&action=a")
    assert response.code == 405
    error_of(response)
    assert service.last_id == 0


@pytest.mark.gen_test(timeout=60)
async def test_eight_threads_record_concurrently(api: Api, service: ActivityService) -> None:
    errors: list[BaseException] = []
    ids: list[list[int]] = [[] for _ in range(8)]

    def worker(n: int) -> None:
        try:
            for i in range(1000):
                ids[n].append(service.record(ActivityInput(f"t{n}", "view", str(i))).id)
        except BaseException as exc:  # noqa: BLE001 - any failure fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    every = [i for chunk in ids for i in chunk]
    assert len(set(every)) == 8000 and max(every) == 8000
    for chunk in ids:
        assert chunk == sorted(chunk)
    got = await api.activities(f"?limit={service.capacity}")
    assert [a["id"] for a in got] == list(range(8001 - service.capacity, 8001))
