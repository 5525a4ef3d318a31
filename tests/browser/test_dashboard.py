"""The dashboard in a real Chromium against a real `python run.py`."""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from .conftest import Server

MAX_ROWS = 500
LIVE_SOCKET = re.compile(r"/api/metrics/live")


def row_ids(page: Any) -> list[int]:
    """The ids of the log's rows, top to bottom."""
    return page.eval_on_selector_all(
        "#activity-log > li", "rows => rows.map(row => Number(row.dataset.id))"
    )


def row_texts(page: Any, selector: str) -> list[str]:
    """The text of one cell in every row, top to bottom."""
    return page.eval_on_selector_all(
        f"#activity-log > li {selector}", "cells => cells.map(cell => cell.textContent)"
    )


def wait_for_rows(page: Any, ids: list[int], timeout: float = 5000) -> None:
    """Wait until the log shows exactly these ids, top to bottom."""
    page.wait_for_function(
        """ids => {
            const shown = [...document.querySelectorAll('#activity-log > li')];
            return shown.length === ids.length
                && shown.every((row, i) => Number(row.dataset.id) === ids[i]);
        }""",
        arg=ids,
        timeout=timeout,
    )


def wait_for_text(page: Any, selector: str, text: str) -> None:
    """Wait until the element's textContent is exactly `text`."""
    # A function, not an expression: the page's CSP forbids eval, which Playwright would use.
    page.wait_for_function(
        "([selector, text]) => document.querySelector(selector)?.textContent === text",
        arg=[selector, text],
    )


def wait_for_state(page: Any, state: str, *, negate: bool = False, timeout: float = 5000) -> None:
    """Wait until #connection-state's data-state is (or, negated, is not) `state`."""
    page.wait_for_function(
        """([state, negate]) => {
            const shown = document.getElementById('connection-state').dataset.state;
            return negate ? shown !== state : shown === state;
        }""",
        arg=[state, negate],
        timeout=timeout,
    )


class SocketProxy:
    """Routes the page's WebSocket through Playwright so a test can cut it."""

    def __init__(self, page: Any) -> None:
        self.refuse = False  # new connections are closed before reaching the server
        self.urls: list[str] = []  # of connections that reached the server
        self.current: Any = None
        page.route_web_socket(LIVE_SOCKET, self._route)

    def _route(self, ws: Any) -> None:
        if self.refuse:
            ws.close(code=4000, reason="refused by the test")
            return
        self.urls.append(ws.url)
        self.current = ws
        ws.connect_to_server()


def test_submitting_the_form_adds_the_row_without_reload(dashboard: Any, server: Server) -> None:
    page = dashboard
    page.evaluate("window.__sameDocument = true")
    page.fill("#user-id", "user_123")
    page.fill("#action", "login")
    page.fill("#details", "Successful login")
    page.press("#details", "Enter")

    page.wait_for_selector("#activity-log > li")
    [shown_id] = row_ids(page)
    assert row_texts(page, ".cell-user") == ["user_123"]
    assert row_texts(page, ".cell-action") == ["login"]
    assert row_texts(page, ".cell-details") == ["Successful login"]
    assert page.evaluate("window.__sameDocument") is True
    # The user stays for the next entry; what was said is cleared.
    assert page.input_value("#user-id") == "user_123"
    assert page.input_value("#action") == ""
    assert page.input_value("#details") == ""
    assert page.text_content("#form-status") == f"Recorded #{shown_id}."

    [stored] = server.activities()
    assert stored["id"] == shown_id
    assert (stored["user_id"], stored["action"], stored["details"]) == (
        "user_123",
        "login",
        "Successful login",
    )


def test_activity_from_outside_appears_live_in_local_time(browser: Any, server: Server) -> None:
    context = browser.new_context(locale="en-GB", timezone_id="Asia/Kolkata")
    try:
        page = context.new_page()
        page.goto(server.dashboard_url)
        wait_for_state(page, "live")

        activity = server.track("user_456", "purchase", "Order #10293")
        row = f'#activity-log > li[data-id="{activity["id"]}"]'
        # Within 2 s, without any click or reload.
        page.wait_for_selector(row, timeout=2000)

        assert page.text_content(f"{row} .cell-user") == "user_456"
        assert page.text_content(f"{row} .cell-action") == "purchase"
        assert page.text_content(f"{row} .cell-details") == "Order #10293"
        # Local time shown; the full UTC value on hover.
        assert page.get_attribute(f"{row} time", "title") == activity["timestamp"]
        local = datetime.fromisoformat(activity["timestamp"]).astimezone(ZoneInfo("Asia/Kolkata"))
        assert page.text_content(f"{row} time") == local.strftime("%H:%M:%S")
    finally:
        context.close()


def test_markup_in_fields_is_shown_as_text(dashboard: Any, server: Server) -> None:
    page = dashboard
    payload = '<img src=x onerror="window.__xss=1">'
    page.fill("#user-id", "mallory")
    page.fill("#action", "comment")
    page.fill("#details", payload)
    page.press("#details", "Enter")
    wait_for_rows(page, [1])
    server.track("<script>window.__xss=2</script>", "<b>bold</b>", "<i>x</i>&amp;")
    wait_for_rows(page, [2, 1])

    assert row_texts(page, ".cell-details") == ["<i>x</i>&amp;", payload]
    assert row_texts(page, ".cell-user") == ["<script>window.__xss=2</script>", "mallory"]
    assert row_texts(page, ".cell-action") == ["<b>bold</b>", "comment"]
    assert page.locator("#activity-log img, #activity-log script, #activity-log b").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_refused_submission_shows_the_server_message(dashboard: Any, server: Server) -> None:
    page = dashboard
    page.fill("#user-id", "")
    page.fill("#action", "login")
    with page.expect_response(re.compile(r"/api/metrics/track")) as refused:
        page.press("#action", "Enter")
    assert refused.value.status == 400

    page.wait_for_selector("#form-error:not([hidden])")
    assert page.text_content("#form-error") == "user_id is required"
    assert page.get_attribute("#user-id", "aria-invalid") == "true"
    assert page.input_value("#action") == "login"  # kept, to fix and send again
    assert server.activities() == []
    assert row_ids(page) == []


def test_restart_goes_offline_then_live_with_the_new_store(page: Any, server: Server) -> None:
    proxy = SocketProxy(page)
    page.goto(server.dashboard_url)
    wait_for_state(page, "live")
    for n in range(3):
        server.track(f"before-{n}", "login")
    wait_for_rows(page, [3, 2, 1])

    server.stop()
    wait_for_state(page, "live", negate=True)
    assert page.get_attribute("#connection-state", "data-state") in {"reconnecting", "offline"}

    # A fresh in-memory store on the same port: its ids start at 1 again.
    server.start()
    server.track("after-0", "login")
    server.track("after-1", "logout")
    wait_for_state(page, "live", timeout=10_000)  # on its own, no click
    assert "since=3" in proxy.urls[-1]  # it asked to resume the old store, was told to reset
    # Ids 1 and 2 are new activities, not the old ones again; old #3 is gone.
    wait_for_rows(page, [2, 1])
    assert row_texts(page, ".cell-user") == ["after-1", "after-0"]

    # Another restart, with the socket kept down: Refresh reloads the log over REST.
    proxy.refuse = True
    server.restart()
    server.track("again-0", "login")
    with page.expect_response(re.compile(r"/api/metrics/activities")) as reloaded:
        page.click("#refresh")
    assert reloaded.value.status == 200
    wait_for_rows(page, [1])  # replaced, not merged with the previous store's rows
    assert row_texts(page, ".cell-user") == ["again-0"]
    assert page.get_attribute("#connection-state", "data-state") != "live"

    proxy.refuse = False
    wait_for_state(page, "live", timeout=10_000)
    latest = server.track("again-1", "export")
    wait_for_rows(page, [latest["id"], 1])
    assert row_texts(page, ".cell-user") == ["again-1", "again-0"]


def test_dropped_socket_resumes_without_holes_or_duplicates(page: Any, server: Server) -> None:
    proxy = SocketProxy(page)
    page.goto(server.dashboard_url)
    wait_for_state(page, "live")
    for n in range(3):
        server.track("u", f"early-{n}")
    wait_for_rows(page, [3, 2, 1])

    # The socket drops (as when the server finds the client too slow), and reconnects
    # are refused while activities keep arriving at the server.
    proxy.refuse = True
    proxy.current.close(code=4008, reason="too slow")
    wait_for_state(page, "live", negate=True)
    missed = [server.track("u", f"missed-{n}")["id"] for n in range(4)]
    assert missed == [4, 5, 6, 7]

    proxy.refuse = False
    wait_for_state(page, "live", timeout=10_000)
    wait_for_rows(page, [7, 6, 5, 4, 3, 2, 1])
    # It resumed from the last id it saw, in the same store (not a reload from scratch).
    assert "since=3" in proxy.urls[-1] and "store=" in proxy.urls[-1]
    assert proxy.urls[0].endswith("since=0")


def test_pause_holds_rows_and_counts_new_ones(dashboard: Any, server: Server) -> None:
    page = dashboard
    for n in range(3):
        server.track("u", f"before-{n}")
    wait_for_rows(page, [3, 2, 1])

    page.click("#pause")
    assert page.get_attribute("#pause", "aria-pressed") == "true"
    ids = [server.track("u", f"while-paused-{n}")["id"] for n in range(20)]
    wait_for_text(page, "#pending-count", "20 new")
    assert page.is_visible("#pending-count")
    assert row_ids(page) == [3, 2, 1]

    page.click("#pause")
    assert page.get_attribute("#pause", "aria-pressed") == "false"
    wait_for_rows(page, [*reversed(ids), 3, 2, 1])
    assert row_texts(page, ".cell-action")[:20] == [f"while-paused-{n}" for n in range(19, -1, -1)]
    assert page.is_hidden("#pending-count")


def post_burst(server: Server, total: int, workers: int = 8) -> list[int]:
    """Record `total` activities over keep-alive connections from several threads."""
    ids: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            for n in range(worker, total, workers):
                body = json.dumps({"user_id": f"load-{worker}", "action": f"burst-{n}"})
                conn.request(
                    "POST", "/api/metrics/track", body, {"Content-Type": "application/json"}
                )
                response = conn.getresponse()
                data = response.read()
                assert response.status == 200, data
                ids[worker].append(json.loads(data)["id"])
        except BaseException as exc:  # reported on the test thread
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return sorted(i for chunk in ids for i in chunk)


def test_burst_keeps_newest_on_top_bounded_and_unique(dashboard: Any, server: Server) -> None:
    page = dashboard
    assert page.get_attribute("#activity-log", "data-max-rows") == str(MAX_ROWS)
    ids = post_burst(server, 5000)
    assert ids == list(range(1, 5001))

    newest = list(range(5000, 5000 - MAX_ROWS, -1))
    wait_for_rows(page, newest, timeout=20_000)
    shown = row_ids(page)
    assert len(shown) == len(set(shown)) <= MAX_ROWS
    assert page.get_attribute("#connection-state", "data-state") == "live"


def test_page_has_a_strict_csp_and_violates_none(page: Any, server: Server) -> None:
    console_errors: list[str] = []
    page.on(
        "console",
        lambda msg: console_errors.append(msg.text) if msg.type == "error" else None,
    )
    page.add_init_script(
        """window.__cspViolations = [];
        document.addEventListener('securitypolicyviolation', event => {
            window.__cspViolations.push(event.violatedDirective + ' ' + event.blockedURI);
        });"""
    )
    response = page.goto(server.dashboard_url)
    assert response is not None and response.ok
    directives = {
        part.split()[0]: part.split()[1:]
        for part in response.headers["content-security-policy"].split(";")
        if part.strip()
    }
    script_src = directives.get("script-src", directives.get("default-src"))
    assert script_src is not None
    assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
    assert "'unsafe-inline'" not in directives.get("style-src", directives["default-src"])

    # Use every part of the page.
    wait_for_state(page, "live")
    page.fill("#user-id", "csp")
    page.fill("#action", "check")
    page.press("#action", "Enter")
    page.wait_for_selector("#activity-log > li")
    page.click("#pause")
    server.track("csp", "while-paused")
    wait_for_text(page, "#pending-count", "1 new")
    page.click("#pause")
    wait_for_rows(page, [2, 1])
    page.click("#refresh")
    page.fill("#user-id", "")
    page.press("#action", "Enter")
    page.wait_for_selector("#form-error:not([hidden])")

    assert page.evaluate("window.__cspViolations") == []
    csp_errors = [text for text in console_errors if "Content Security Policy" in text]
    assert csp_errors == []

    # The detector works: an inline style attribute is a violation under this policy.
    page.evaluate("document.body.setAttribute('style', 'color: red')")
    page.wait_for_function("() => window.__cspViolations.length > 0")


def test_token_is_asked_for_once_and_never_put_in_a_url(
    page: Any, make_server: Callable[..., Server]
) -> None:
    token = "s3cret-token"
    server = make_server(["--api-token", token], token=token)
    socket_urls: list[str] = []
    page.on("websocket", lambda ws: socket_urls.append(ws.url))
    page.goto(server.dashboard_url)  # the page itself needs no token

    wait_for_state(page, "unauthorized")
    page.wait_for_selector("#token-dialog[open]")
    page.fill("#token-input", "wrong")
    page.press("#token-input", "Enter")
    wait_for_text(page, "#token-error", "wrong token")  # the server's message
    assert page.get_attribute("#connection-state", "data-state") == "unauthorized"

    page.fill("#token-input", token)
    page.press("#token-input", "Enter")
    wait_for_state(page, "live")
    assert not page.is_visible("#token-dialog")
    activity = server.track("user_123", "login")
    wait_for_rows(page, [activity["id"]])
    page.fill("#user-id", "user_123")
    page.fill("#action", "logout")
    page.press("#action", "Enter")  # the form sends the token too
    wait_for_rows(page, [activity["id"] + 1, activity["id"]])

    page.reload()  # kept for the tab: not asked again
    wait_for_state(page, "live")
    wait_for_rows(page, [activity["id"] + 1, activity["id"]])
    assert not page.is_visible("#token-dialog")
    assert socket_urls and not any(token in url for url in socket_urls)
