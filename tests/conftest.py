"""Fixtures: a fresh service, hub and app per test, served on a real socket."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from tracker.app import Tracker, build
from tracker.config import Settings
from tracker.hub import LiveHub
from tracker.service import ActivityService

from .servers import Server

BACKENDS = ("memory", "db")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run tests marked both_backends once in memory and once with a --db file."""
    marked = metafunc.definition.get_closest_marker("both_backends")
    if marked and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Where the service under test keeps activities: "memory" or "db"."""
    return getattr(request, "param", "memory")


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Settings:
    """Defaults, changed by a test's @pytest.mark.settings(name=value, ...);
    db=True (or the "db" backend) means a fresh database file in the test's temporary folder."""
    marker = request.node.get_closest_marker("settings")
    values = dict(marker.kwargs) if marker else {}
    if values.get("db") is True or backend == "db":
        values["db"] = str(tmp_path / "activities.db")
    return Settings(**values)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Make `python run.py` servers over a database file (by default a fresh one)."""
    made: list[Server] = []

    def make(*extra: str, db: str | None = None) -> Server:
        made.append(Server(db or str(tmp_path / "activities.db"), *extra))
        return made[-1]

    yield make
    for each in made:
        if each.proc is not None:
            each.proc.kill()
            each.proc.wait()


@pytest.fixture
def tracker(settings: Settings, io_loop: Any) -> Iterator[Tracker]:
    """Every part, wired as run.py wires them, on the test's IOLoop."""
    parts = build(settings)
    yield parts
    parts.service.close()


@pytest.fixture
def service(tracker: Tracker) -> ActivityService:
    return tracker.service


@pytest.fixture
def hub(tracker: Tracker) -> LiveHub:
    return tracker.hub


@pytest.fixture
def app(tracker: Tracker, io_loop: Any) -> Any:
    return tracker.app


class Api:
    """A small client for the REST endpoints of the server under test."""

    def __init__(self, client: AsyncHTTPClient, base_url: str) -> None:
        self.client = client
        self.base_url = base_url

    async def request(
        self, method: str, path: str, body: Any = None, headers: Any = None
    ) -> HTTPResponse:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        if method == "POST" and body is None:
            body = b""
        return await self.client.fetch(
            self.base_url + path, method=method, body=body, headers=headers, raise_error=False
        )

    async def track(self, query: str = "", **kwargs: Any) -> HTTPResponse:
        return await self.request("POST", "/api/metrics/track" + query, **kwargs)

    async def activities(self, query: str = "") -> list[dict]:
        response = await self.request("GET", "/api/metrics/activities" + query)
        assert response.code == 200, response.body
        return json.loads(response.body)


@pytest.fixture
def api(http_client: AsyncHTTPClient, base_url: str, app: Any) -> Api:
    return Api(http_client, base_url)


def error_of(response: HTTPResponse) -> dict:
    """The error object of a JSON error response, after checking its shape."""
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert set(body) == {"error"}
    error = body["error"]
    assert error["status"] == response.code
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) <= {"status", "message", "field", "index"}
    assert "Traceback" not in response.body.decode()
    return error
