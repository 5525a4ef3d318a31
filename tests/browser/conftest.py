"""Browser-test fixtures: `python run.py` as a subprocess, Debian's Chromium via Playwright.

Playwright's sync API cannot run inside an asyncio loop, so these tests are plain
functions; the server runs in its own process and REST calls use http.client.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from ..servers import ROOT, free_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DASHBOARD_PATH = "/api/ui-dashboard/metrics-dashboard-ui"
START_TIMEOUT = 15.0


class Server:
    """`python run.py` on a fixed port, which can be stopped and started again."""

    def __init__(self, port: int, args: Sequence[str] = (), token: str | None = None) -> None:
        self.port = port
        self.args = list(args)
        self.token = token  # sent as `Authorization: Bearer` by the REST helpers
        self.base_url = f"http://127.0.0.1:{port}"
        self.dashboard_url = self.base_url + DASHBOARD_PATH
        self.proc: subprocess.Popen[str] | None = None
        self._log = tempfile.TemporaryFile(mode="w+")
        self._conn: http.client.HTTPConnection | None = None

    def start(self) -> None:
        """Start the server and return once it prints its URL and answers."""
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        ready = threading.Event()
        proc = self.proc

        def read_stdout() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "Activity tracker on" in line:
                    ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.proc = None
                proc.kill()
                pytest.fail(f"server did not start on port {self.port}:\n{self.log()}")
        assert self.request("GET", "/api/metrics/activities?limit=0")[0] == 200

    def stop(self) -> None:
        """SIGTERM, as an operator would send; the server must exit 0."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        self._drop_connection()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"server ignored SIGTERM:\n{self.log()}")
        assert code == 0, f"server exited {code}:\n{self.log()}"

    def restart(self) -> None:
        """Stop, then start again on the same port (a fresh in-memory store)."""
        self.stop()
        self.start()

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read()

    def close(self) -> None:
        self.stop()
        self._log.close()

    # -- REST, from the test thread ------------------------------------------------------

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON body) over a kept-alive connection."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else None
            except (http.client.HTTPException, ConnectionError):
                self._drop_connection()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def track(self, user_id: str, action: str, details: str | None = None) -> dict:
        """Record one activity and return it."""
        status, body = self.request(
            "POST",
            "/api/metrics/track",
            {"user_id": user_id, "action": action, "details": details},
        )
        assert status == 200, body
        return body

    def activities(self, limit: int = 1000) -> list[dict]:
        """GET /api/metrics/activities, oldest first."""
        status, body = self.request("GET", f"/api/metrics/activities?limit={limit}")
        assert status == 200, body
        return body


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium; missing means skip, except under CI, where it means fail."""
    if not os.path.exists(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (install Debian's chromium package)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so browser tests must run", pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """One headless Chromium per module; each test gets its own context.

    Module scope, not session: while Playwright's sync API is active it holds an asyncio
    loop as running, which would break the pytest-tornado tests that run afterwards.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed; CI is set", pytrace=False)
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    """Start `python run.py` with extra flags on a free port; all are stopped afterwards."""
    started: list[Server] = []

    def make(args: Sequence[str] = (), token: str | None = None) -> Server:
        srv = Server(free_port(), args, token)
        started.append(srv)
        srv.start()
        return srv

    try:
        yield make
    finally:
        for srv in started:
            srv.close()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    """A fresh `python run.py` on a free port for each test, stopped afterwards."""
    return make_server()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """new_page(**context_kwargs): a page in a fresh context; uncaught page errors fail the test.

    1280x800 and en-US unless the arguments say otherwise; a 5 s default timeout.
    """
    contexts: list[Any] = []
    errors: list[str] = []

    def make(**context_kwargs: Any) -> Any:
        options = {"viewport": {"width": 1280, "height": 800}, "locale": "en-US"}
        context = browser.new_context(**{**options, **context_kwargs})
        contexts.append(context)
        context.set_default_timeout(5000)
        pg = context.new_page()
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        return pg

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def page(new_page: Callable[..., Any]) -> Any:
    """A page in a fresh context; uncaught page errors fail the test."""
    return new_page()


@pytest.fixture
def dashboard(page: Any, server: Server) -> Any:
    """The dashboard, open and live."""
    page.goto(server.dashboard_url)
    page.wait_for_selector("#connection-state[data-state=live]")
    return page
