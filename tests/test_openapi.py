"""tracker/openapi.json against the real server: every route documented, every answer as
documented (status, content type, headers, body schema), so the description cannot drift.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
import referencing
import referencing.jsonschema
import tornado.routing
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from tracker.activity import ActivityInput
from tracker.app import build
from tracker.config import Settings
from tracker.handlers import openapi
from tracker.handlers.base import APIHandler
from tracker.service import ActivityService

from .conftest import Api
from .rules import BRUTE_FORCE
from .wsclient import Feed

DOCUMENT = json.loads(openapi.load_document())
_URI = "urn:tracker:openapi"
# OpenAPI 3.1 schemas are JSON Schema 2020-12; the whole document is one resource, so a
# "#/components/..." reference inside any schema resolves against it.
REGISTRY = referencing.Registry().with_resource(
    _URI,
    referencing.Resource.from_contents(
        DOCUMENT, default_specification=referencing.jsonschema.DRAFT202012
    ),
)
HTTP_METHODS = ("get", "head", "post", "delete", "patch", "put", "options")
TOKEN = "openapi-test-token"
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


# -- the description as data ---------------------------------------------------------------


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def pointer_to(*tokens: str) -> str:
    return "".join("/" + _escape(token) for token in tokens)


def at(pointer: str) -> Any:
    """The part of the document at a JSON pointer."""
    node: Any = DOCUMENT
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def deref(pointer: str) -> tuple[str, Any]:
    """Follow OpenAPI references ({"$ref": "#/..."}) to the object they name."""
    node = at(pointer)
    while isinstance(node, dict) and "$ref" in node:
        assert node["$ref"].startswith("#/"), node["$ref"]
        pointer = node["$ref"][1:]
        node = at(pointer)
    return pointer, node


def validate(schema_pointer: str, instance: Any) -> None:
    """Validate an instance against the schema at a pointer (and whatever it references)."""
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{_URI}#{schema_pointer}"},
        registry=REGISTRY,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{schema_pointer} at {list(e.path)}: {e.message}" for e in errors[:5]
    )


def operations() -> Iterator[tuple[str, str, dict]]:
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def media_type(response: HTTPResponse) -> str:
    return response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def conform_to(response_pointer: str, response: HTTPResponse, method: str = "GET") -> Any:
    """Check headers, content type and body against a documented response; the body."""
    pointer, spec = deref(response_pointer)
    for name in spec.get("headers", {}):
        header_pointer, header = deref(pointer + pointer_to("headers", name))
        value = response.headers.get(name)
        if value is None:
            assert not header.get("required"), f"{name} header missing ({pointer})"
            continue
        validate(header_pointer + "/schema", value)
    content = spec.get("content")
    if method == "HEAD" or not content:
        assert not response.body, f"{pointer} documents no body: {response.body[:200]!r}"
        return None
    media = media_type(response)
    assert media in content, f"{pointer}: Content-Type {media!r} not in {sorted(content)}"
    schema_pointer = pointer + pointer_to("content", media, "schema")
    text = response.body.decode("utf-8")
    assert "Traceback" not in text
    if media == "application/json":
        body = json.loads(text)
        validate(schema_pointer, body)
        return body
    validate(schema_pointer, text)
    if media == "application/x-ndjson":
        item_pointer = pointer + pointer_to("content", media, "x-item-schema")
        assert text == "" or text.endswith("\n")
        items = [json.loads(line) for line in text.splitlines()]
        for item in items:
            validate(item_pointer, item)
        return items
    if media == "text/csv":
        assert text.endswith("\r\n")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows[0] == ["id", "user_id", "action", "timestamp", "details"]
        assert all(len(row) == 5 for row in rows)
        return rows
    if media == "text/html":
        assert text.lstrip().lower().startswith("<!doctype html")
    return text


def conform(method: str, path: str, response: HTTPResponse) -> Any:
    """Check a response of a documented operation; returns its parsed body."""
    operation = DOCUMENT["paths"][path][method.lower()]
    status = str(response.code)
    documented = sorted(operation["responses"])
    assert status in documented, f"{method} {path}: {status} not in {documented}: {response.body!r}"
    return conform_to(
        pointer_to("paths", path, method.lower(), "responses", status), response, method
    )


# -- the app under test --------------------------------------------------------------------


def _rules(router: tornado.routing.RuleRouter) -> Iterator[tornado.routing.Rule]:
    for rule in router.rules:
        if isinstance(rule.target, tornado.routing.RuleRouter):
            yield from _rules(rule.target)
        else:
            yield rule


def app_routes(app: tornado.web.Application) -> dict[str, type]:
    """Path -> handler class of every route, except the static files under /static/."""
    found: dict[str, type] = {}
    for rule in _rules(app.default_router):
        target = rule.target
        if isinstance(target, type) and issubclass(target, tornado.web.StaticFileHandler):
            continue
        matcher = rule.matcher
        assert isinstance(matcher, tornado.routing.PathMatches), rule
        try:
            path = matcher.reverse()
        except AssertionError:  # named groups: documented as a templated path
            path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", matcher.regex.pattern).rstrip("$")
        assert path is not None and isinstance(target, type), rule
        found[path] = target
    return found


def implemented_methods(handler: type) -> set[str]:
    """The HTTP methods a handler class defines (the rest answer 405)."""
    base = tornado.web.RequestHandler
    return {m for m in HTTP_METHODS if getattr(handler, m) is not getattr(base, m)}


async def fetch(
    client: AsyncHTTPClient,
    url: str,
    method: str = "GET",
    body: bytes | str | None = None,
    headers: dict | None = None,
) -> HTTPResponse:
    if body is None and method in ("POST", "PUT", "PATCH"):
        body = b""
    request = HTTPRequest(
        url, method=method, body=body, headers=headers, allow_nonstandard_methods=True
    )
    return await client.fetch(request, raise_error=False)


def seed(service: ActivityService) -> None:
    for user, action, details in (
        ("alice", "login", None),
        ("bob", "view", "=cmd|' /C calc'!A0"),
        ("alice", "logout", 'quote " and, comma\nnewline'),
    ):
        service.record(ActivityInput(user, action, details))


# -- the description itself ----------------------------------------------------------------


def test_every_reference_resolves_and_every_schema_is_valid() -> None:
    def walk(node: Any, pointer: str) -> Iterator[tuple[str, Any]]:
        yield pointer, node
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, pointer + pointer_to(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, f"{pointer}/{index}")

    for pointer, node in walk(DOCUMENT, ""):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            deref(pointer)
    for schema in DOCUMENT["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))


def test_every_operation_documents_its_errors() -> None:
    routes = app_routes(build(Settings()).app)
    for path, method, op in operations():
        codes = set(op["responses"])
        assert {"404", "405"} <= codes, (method, path)
        if op.get("security", DOCUMENT["security"]) != []:
            assert "401" in codes, (method, path)
        if issubclass(routes[path], APIHandler):
            assert {"400", "413"} <= codes, (method, path)
        for code in codes:
            if (path, code) == (READY, "503"):
                continue  # a readiness report, not an error: it says which check failed
            if code.startswith(("4", "5")):
                pointer, spec = deref(pointer_to("paths", path, method, "responses", code))
                ref = spec["content"]["application/json"]["schema"]["allOf"][0]["$ref"]
                assert ref == "#/components/schemas/Error", (method, path, code)


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    routes = app_routes(build(Settings()).app)
    assert set(routes) == set(DOCUMENT["paths"])
    for path, handler in routes.items():
        documented = {m for m in DOCUMENT["paths"][path] if m in HTTP_METHODS}
        assert implemented_methods(handler) == documented, (path, handler)


@pytest.mark.gen_test
async def test_served_description_is_the_file(api: Api) -> None:
    response = await api.request("GET", "/api/openapi.json")
    assert response.body == openapi.load_document()
    assert conform("GET", "/api/openapi.json", response) == DOCUMENT
    etag = {"If-None-Match": response.headers["ETag"]}
    again = await api.request("GET", "/api/openapi.json", headers=etag)
    assert again.code == 304
    conform("GET", "/api/openapi.json", again)


# -- POST /api/metrics/track ---------------------------------------------------------------

TRACK = "/api/metrics/track"
RULE = "/api/alerts/rules/{name}"
HEALTH = "/healthz"
READY = "/readyz"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


@pytest.mark.gen_test
async def test_track_answers_as_documented(api: Api) -> None:
    ok = [
        await api.track("?user_id=user_123&action=login&details=Successful+login"),
        await api.track(body={"user_id": "u", "action": "a", "details": None}),
        await api.track(body={"user_id": " \u00e9\U0001f600", "action": "a" * 128, "x": 1}),
        await api.track(body="user_id=form+user&action=view&details=d", headers=FORM),
        await api.track("?user_id=q", body="action=split", headers=FORM),
        await api.track("?user_id=u&action=a&details=" + "d" * 4096),
    ]
    for response in ok:
        assert response.code == 200, response.body
        conform("POST", TRACK, response)
    first = json.loads(ok[0].body)
    assert first["details"] == "Successful login" and first["id"] == 1


@pytest.mark.gen_test
async def test_track_replays_an_idempotency_key_as_documented(api: Api) -> None:
    headers = {"Idempotency-Key": "order-42-paid"}
    first = await api.track("?user_id=u&action=pay", headers=headers)
    again = await api.track("?user_id=u&action=pay", headers=headers)
    assert first.code == again.code == 200
    assert conform("POST", TRACK, first) == conform("POST", TRACK, again)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query,body,headers,field",
    [
        ("", None, None, "user_id"),
        ("?user_id=u", None, None, "action"),
        ("?user_id=+++&action=a", None, None, "user_id"),
        ("?user_id=" + "u" * 257 + "&action=a", None, None, "user_id"),
        ("?user_id=u&action=" + "a" * 129, None, None, "action"),
        ("?user_id=u&action=a&details=" + "d" * 4097, None, None, "details"),
        ("?user_id=u&user_id=v&action=a", None, None, "user_id"),
        ("?user_id=u%00&action=a", None, None, "user_id"),
        ("?user_id=%ff&action=a", None, None, "user_id"),
        ("?user_id=u", "user_id=v&action=a", FORM, "user_id"),
        ("", {"user_id": 1, "action": "a"}, None, "user_id"),
        ("", {"user_id": "u", "action": "a", "details": 5}, None, "details"),
        ("", {"user_id": "u", "action": "\t"}, None, "action"),
        ("", "{not json", {"Content-Type": "application/json"}, None),
        # A lone surrogate cannot be written as UTF-8: CSV export 500ed, the store's
        # writer thread died.
        ("", '{"user_id": "\\ud800", "action": "a"}', JSON, "user_id"),
        ("", [{"user_id": "u", "action": "a"}], None, None),
        ("?user_id=u&action=a", None, {"Idempotency-Key": "k" * 257}, "Idempotency-Key"),
        ("?user_id=u&action=a", None, {"Idempotency-Key": "  "}, "Idempotency-Key"),
    ],
)
async def test_track_refusals_are_documented(
    api: Api, query: str, body: Any, headers: dict | None, field: str | None
) -> None:
    response = await api.track(query, body=body, headers=headers)
    assert response.code == 400
    error = conform("POST", TRACK, response)["error"]
    assert error.get("field") == field, error


# -- POST /api/metrics/track/batch ---------------------------------------------------------

BATCH = "/api/metrics/track/batch"


@pytest.mark.gen_test
async def test_batch_answers_as_documented(api: Api) -> None:
    items = [
        {"user_id": "u1", "action": "login"},
        {"user_id": "u2", "action": "view", "details": "home", "event_id": "e-2"},
        {"user_id": "u3", "action": "view", "details": None, "extra": [1]},
    ]
    first = await api.request("POST", BATCH, body=items)
    again = await api.request("POST", BATCH, body=items[1:2])
    assert first.code == again.code == 200
    body = conform("POST", BATCH, first)
    assert body["count"] == body["recorded"] == 3
    replay = conform("POST", BATCH, again)
    assert replay["recorded"] == 0 and replay["items"] == body["items"][1:2]


@pytest.mark.gen_test
@pytest.mark.settings(max_batch=3)
@pytest.mark.parametrize(
    "body,field,index",
    [
        ([], None, None),
        ({"user_id": "u", "action": "a"}, None, None),
        ("[1,", None, None),
        ([{"user_id": "u", "action": "a"}] * 4, None, None),
        ([{"user_id": "u", "action": "a"}, "x"], None, 1),
        ([{"user_id": "u", "action": "a"}, {"user_id": "u"}], "action", 1),
        ([{"user_id": "u", "action": "a", "event_id": ""}], "event_id", 0),
        ([{"user_id": "u", "action": "a", "event_id": 7}], "event_id", 0),
    ],
)
async def test_batch_refusals_are_documented(
    api: Api, service: ActivityService, body: Any, field: str | None, index: int | None
) -> None:
    headers = {"Content-Type": "application/json"}
    response = await api.request("POST", BATCH, body=body, headers=headers)
    assert response.code == 400
    error = conform("POST", BATCH, response)["error"]
    assert (error.get("field"), error.get("index")) == (field, index), error
    assert service.last_id == 0


@pytest.mark.gen_test
@pytest.mark.settings(db=True)
@pytest.mark.parametrize(
    "item,field", [({"user_id": "\ud800"}, "user_id"), ({"event_id": "\udc00"}, "event_id")]
)
async def test_a_lone_surrogate_is_a_documented_400_with_a_database(
    api: Api, item: dict, field: str
) -> None:
    body = json.dumps([{"user_id": "u", "action": "a", **item}])
    response = await api.request("POST", BATCH, body=body, headers=JSON)
    assert response.code == 400
    assert conform("POST", BATCH, response)["error"]["field"] == field
    assert (await api.track("?user_id=u&action=a")).code == 200  # the store still writes


# -- the readers ---------------------------------------------------------------------------

READERS = ["/api/metrics/activities", "/api/metrics/summary", "/api/metrics/export"]
SINCE = quote("2000-01-01T00:00:00+00:00")


@pytest.mark.gen_test
@pytest.mark.parametrize("path", READERS)
@pytest.mark.parametrize(
    "query",
    [
        "",
        "?limit=0",
        "?limit=2",
        "?user_id=alice&user_id=bob&action=login&action=view&action=logout",
        f"?since={SINCE}&until=2999-01-01T00:00:00Z&before_id=3",
        "?since=2000-01-01&until=2999-01-01T00:00:00",
        "?user_id=nobody",
    ],
)
async def test_readers_answer_as_documented(
    api: Api, service: ActivityService, path: str, query: str
) -> None:
    seed(service)
    response = await api.request("GET", path + query)
    assert response.code == 200, response.body
    conform("GET", path, response)


@pytest.mark.gen_test
async def test_activities_limit_above_capacity_is_clamped(
    api: Api, service: ActivityService
) -> None:
    seed(service)
    response = await api.request("GET", "/api/metrics/activities?limit=" + "9" * 40)
    assert len(conform("GET", "/api/metrics/activities", response)) == 3


@pytest.mark.gen_test
async def test_summary_and_export_formats_answer_as_documented(
    api: Api, service: ActivityService
) -> None:
    seed(service)
    summary = await api.request("GET", "/api/metrics/summary?top=1")
    body = conform("GET", "/api/metrics/summary", summary)
    assert body["total"] == 3 and len(body["actions"]) == len(body["users"]) == 1
    top = await api.request("GET", "/api/metrics/summary?top=" + "9" * 30)
    assert conform("GET", "/api/metrics/summary", top)["total"] == 3
    csv_rows = conform("GET", "/api/metrics/export", await api.request("GET", READERS[2]))
    assert len(csv_rows) == 4 and csv_rows[2][4].startswith("'=")
    lines = await api.request("GET", READERS[2] + "?format=ndjson")
    assert [a["id"] for a in conform("GET", "/api/metrics/export", lines)] == [1, 2, 3]


@pytest.mark.gen_test
@pytest.mark.parametrize("path", READERS)
@pytest.mark.parametrize(
    "query,field",
    [
        ("?limit=-1", "limit"),
        ("?limit=abc", "limit"),
        ("?limit=1&limit=2", "limit"),
        ("?limit=%EF%BC%91", "limit"),  # a full-width digit is not an ASCII digit
        ("?before_id=" + "9" * 19, "before_id"),
        ("?since=yesterday", "since"),
        ("?until=2025-11-05T25:00:00Z", "until"),
        ("?since=2025-11-05T10:00:00Z&until=2025-11-05T09:00:00Z", "until"),
        ("?since=0001-01-01T00:00:00%2B01:00", "since"),  # out of range in UTC: was a 500
        ("?until=9999-12-31T23:59:59-01:00", "until"),
        ("?user_id=", "user_id"),
        ("?action=a&action=", "action"),
        ("?user_id=%C3%28", "user_id"),
    ],
)
async def test_reader_refusals_are_documented(api: Api, path: str, query: str, field: str) -> None:
    response = await api.request("GET", path + query)
    assert response.code == 400, response.body
    assert conform("GET", path, response)["error"]["field"] == field


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "path,query,field",
    [
        ("/api/metrics/summary", "?top=-3", "top"),
        ("/api/metrics/summary", "?limit=" + "9" * 19, "limit"),
        ("/api/metrics/export", "?format=xml", "format"),
        ("/api/metrics/export", "?format=csv&format=ndjson", "format"),
    ],
)
async def test_summary_and_export_refusals_are_documented(
    api: Api, path: str, query: str, field: str
) -> None:
    response = await api.request("GET", path + query)
    assert response.code == 400, response.body
    assert conform("GET", path, response)["error"]["field"] == field


# -- GET /api/metrics/live -----------------------------------------------------------------

LIVE = "/api/metrics/live"
MESSAGES = pointer_to("paths", LIVE, "get", "responses", "101", "x-websocket-messages")


@pytest.mark.gen_test
async def test_live_messages_are_documented(
    base_url: str, api: Api, service: ActivityService
) -> None:
    seed(service)
    feed = await Feed.connect(base_url, "?since=1&user_id=alice&action=logout")
    resumed = await Feed.connect(base_url, "?since=99&store=another")
    await api.track("?user_id=alice&action=logout")
    await feed.until(2)
    await resumed.until(4)
    for message in feed.messages + resumed.messages:
        validate(MESSAGES, message)
    kinds = [m["type"] for m in resumed.messages]
    assert kinds[:3] == ["hello", "reset", "activities"]
    feed.close()
    resumed.close()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query,field",
    [
        ("?since=-1", "since"),
        ("?since=x", "since"),
        ("?user_id=", "user_id"),
        ("?action=", "action"),
    ],
)
async def test_live_parameter_refusals_are_documented(
    http_client: AsyncHTTPClient, base_url: str, query: str, field: str
) -> None:
    response = await fetch(http_client, base_url + LIVE + query, headers=UPGRADE)
    assert response.code == 400
    assert conform("GET", LIVE, response)["error"]["field"] == field


@pytest.mark.gen_test
@pytest.mark.settings(ws_max_clients=1)
async def test_live_at_capacity_is_a_documented_503(
    http_client: AsyncHTTPClient, base_url: str
) -> None:
    feed = await Feed.connect(base_url)
    response = await fetch(http_client, base_url + LIVE, headers=UPGRADE)
    assert response.code == 503
    conform("GET", LIVE, response)
    feed.close()


# Tornado's own refusals of an upgrade come out in the Error shape too (SPEC.md: "Errors,
# for every endpoint").
@pytest.mark.gen_test
@pytest.mark.parametrize(
    "headers,status",
    [
        ({}, 400),
        ({**UPGRADE, "Connection": "keep-alive"}, 400),
        ({k: v for k, v in UPGRADE.items() if k != "Sec-WebSocket-Key"}, 400),
        ({**UPGRADE, "Origin": "http://evil.example"}, 403),
        ({**UPGRADE, "Sec-WebSocket-Version": "12"}, 426),
    ],
)
async def test_live_upgrade_refusals_are_documented(
    http_client: AsyncHTTPClient, base_url: str, headers: dict, status: int
) -> None:
    response = await fetch(http_client, base_url + LIVE, headers=headers)
    assert response.code == status
    conform("GET", LIVE, response)


# -- GET /api/ui-dashboard/metrics-dashboard-ui --------------------------------------------

DASHBOARD = "/api/ui-dashboard/metrics-dashboard-ui"


@pytest.mark.gen_test
@pytest.mark.settings(api_token=TOKEN)
async def test_dashboard_answers_as_documented_without_a_token(api: Api) -> None:
    response = await api.request("GET", DASHBOARD)
    assert response.code == 200
    conform("GET", DASHBOARD, response)


# -- errors every path shares: 404, 405, 413, 401, 503 -------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize(
    "path", ["/", "/api", "/api/metrics", "/api/metrics/track/", "/api/openapi.yaml", "/x%00y"]
)
async def test_unknown_paths_are_a_documented_404(
    http_client: AsyncHTTPClient, base_url: str, method: str, path: str
) -> None:
    response = await fetch(http_client, base_url + path, method)
    assert response.code == 404
    conform_to("/components/responses/NotFound", response, method)


def _not_allowed() -> Iterator[Any]:
    for path, item in DOCUMENT["paths"].items():
        for method in HTTP_METHODS:
            if method not in item:
                yield pytest.param(path, method.upper(), id=f"{method}-{path}")


@pytest.mark.gen_test
@pytest.mark.parametrize("path,method", list(_not_allowed()))
async def test_other_methods_are_a_documented_405(
    http_client: AsyncHTTPClient, base_url: str, path: str, method: str
) -> None:
    response = await fetch(http_client, base_url + path, method)
    assert response.code == 405
    operation = next(iter(op for m, op in DOCUMENT["paths"][path].items() if m in HTTP_METHODS))
    assert "405" in operation["responses"]
    conform_to("/components/responses/MethodNotAllowed", response, method)


def _api_operations() -> Iterator[Any]:
    """The operations of API handlers: JSON answers, a body limit and the token."""
    routes = app_routes(build(Settings()).app)
    for path, method, _ in operations():
        if issubclass(routes[path], APIHandler):
            yield pytest.param(path, method.upper(), id=f"{method}-{path}")


@pytest.mark.gen_test
@pytest.mark.settings(max_body_size=256)
@pytest.mark.parametrize("path,method", list(_api_operations()))
async def test_a_body_over_the_limit_is_a_documented_413(
    http_client: AsyncHTTPClient, base_url: str, service: ActivityService, path: str, method: str
) -> None:
    body = json.dumps([{"user_id": "u", "action": "a", "details": "d" * 300}])
    headers = {"Content-Type": "application/json"}
    response = await fetch(http_client, base_url + path, method, body, headers)
    assert response.code == 413
    conform(method, path, response)
    assert service.last_id == 0


@pytest.mark.gen_test
@pytest.mark.settings(api_token=TOKEN, db=True)  # with --db, so every endpoint has its part
@pytest.mark.parametrize("path,method", list(_api_operations()) + [(LIVE, "GET")])
async def test_a_missing_or_wrong_token_is_a_documented_401(
    http_client: AsyncHTTPClient, base_url: str, path: str, method: str
) -> None:
    body = json.dumps([{"user_id": "u", "action": "a"}]) if path == BATCH else None
    query = "?user_id=u&action=a" if path == TRACK else ""
    url = base_url + path.replace("{name}", "brute-force") + query
    if path == RULE:
        body = json.dumps(BRUTE_FORCE)
    json_type = {"Content-Type": "application/json"}
    for auth, status in (({}, 401), ({"Authorization": "Bearer nope"}, 401)):
        headers = {**json_type, **auth, **(UPGRADE if path == LIVE else {})}
        response = await fetch(http_client, url, method, body, headers)
        assert response.code == status
        conform(method, path, response)
    if path != LIVE:
        headers = {**json_type, "Authorization": f"Bearer {TOKEN}"}
        if path == RULE and method == "DELETE":  # something to delete
            await fetch(http_client, url, "PUT", json.dumps(BRUTE_FORCE), headers)
        response = await fetch(http_client, url, method, body, headers)
        assert response.code in (200, 201, 204)
        conform(method, path, response)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(db=True, commit_timeout=0.3)
@pytest.mark.parametrize("path", [TRACK, BATCH])
async def test_a_store_that_cannot_commit_is_a_documented_503(
    api: Api, service: ActivityService, settings: Settings, path: str
) -> None:
    body = [{"user_id": "u", "action": "a"}] if path == BATCH else {"user_id": "u", "action": "a"}
    lock = sqlite3.connect(settings.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        response = await api.request("POST", path, body=body)
        assert response.code == 503
        assert response.headers["Retry-After"] == "1"
        conform("POST", path, response)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert (await api.request("POST", path, body=body)).code == 200
    assert [a["id"] for a in await api.activities()] == [2]  # the 503's id was never stored


@pytest.mark.gen_test
@pytest.mark.settings(api_token=TOKEN)
@pytest.mark.parametrize("path", [HEALTH, READY])
async def test_probes_answer_as_documented_without_a_token(api: Api, path: str) -> None:
    response = await api.request("GET", path)
    assert response.code == 200
    assert conform("GET", path, response)["status"] in ("ok", "ready")


# -- regressions found against the description ---------------------------------------------


@pytest.mark.gen_test
async def test_summary_ignores_limit_as_documented(api: Api, service: ActivityService) -> None:
    seed(service)
    response = await api.request("GET", "/api/metrics/summary?limit=1")
    assert conform("GET", "/api/metrics/summary", response)["total"] == 3
