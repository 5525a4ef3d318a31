"""The dashboard in a real Chromium against a real `python run.py`."""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest

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


def wait_for_rows(
    page: Any, ids: list[int], timeout: float = 5000, list_selector: str = "#activity-log"
) -> None:
    """Wait until the list (the log unless told) shows exactly these ids, top to bottom."""
    page.wait_for_function(
        """([selector, ids]) => {
            const shown = [...document.querySelectorAll(`${selector} > li`)];
            return shown.length === ids.length
                && shown.every((row, i) => Number(row.dataset.id) === ids[i]);
        }""",
        arg=[list_selector, ids],
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
    # The summary (uPlot styles its elements through the CSSOM), the filters, Export.
    page.wait_for_selector("#rate-chart canvas")
    page.wait_for_selector("#top-users > li")
    page.hover("#rate-chart .u-over")
    page.wait_for_function(
        "() => !document.getElementById('rate-legend').textContent.startsWith('This minute')"
    )
    page.click("#top-users > li:first-child .top-name")
    wait_for_text(page, "#filter-status", "Showing user “csp”")
    with page.expect_download():
        page.click("#export-ndjson")
    page.click("#filter-clear")
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
    # The summary's request may be refused before the socket's: the state follows.
    wait_for_state(page, "unauthorized")
    assert page.is_visible("#token-dialog")

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


# -- filters, summary, export --------------------------------------------------------------

# A query parameter of a filter sent with an empty value (the server answers 400 for it).
EMPTY_FILTER = re.compile(r"[?&](user_id|action)=(&|$)")


def wait_for_summary(page: Any, total: int, timeout: float = 5000) -> None:
    """Wait until the summary panel shows `total` activities and is not marked stale."""
    page.wait_for_function(
        """total => document.getElementById('stat-total').dataset.value === String(total)
            && document.getElementById('summary').getAttribute('aria-busy') === 'false'""",
        arg=total,
        timeout=timeout,
    )


def shown_summary(page: Any) -> dict[str, Any]:
    """The figures the summary panel shows: totals, top lists, the chart's numbers."""
    return page.evaluate(
        """() => {
            const top = (id, key) => [...document.querySelectorAll(`#${id} > li`)].map(li => ({
                [key]: li.querySelector('.top-name').textContent,
                count: Number(li.dataset.count),
                text: li.querySelector('.top-count').textContent,
            }));
            const number = id => Number(document.getElementById(id).dataset.value);
            const chart = document.getElementById('rate-chart');
            const minutes = [...document.querySelectorAll('#rate-table tbody tr')].map(row =>
                [row.querySelector('time').dateTime, Number(row.querySelector('td').textContent)]);
            return {
                total: number('stat-total'),
                total_text: document.getElementById('stat-total').textContent,
                distinct_users: number('stat-users'),
                actions: top('top-actions', 'action'),
                users: top('top-users', 'user_id'),
                window_total: Number(chart.dataset.windowTotal),
                peak: Number(chart.dataset.peak),
                legend: document.getElementById('rate-legend').textContent,
                minutes: Object.fromEntries(minutes),
                canvas: chart.querySelector('canvas') !== null,
            };
        }"""
    )


def assert_summary_matches(page: Any, expected: dict[str, Any]) -> None:
    """The panel's figures are those of GET /api/metrics/summary."""
    shown = shown_summary(page)
    assert shown["total"] == expected["total"]
    assert shown["total_text"] == f"{expected['total']:,}"
    assert shown["distinct_users"] == expected["distinct_users"]
    assert shown["actions"] == [
        {"action": a["action"], "count": a["count"], "text": f"{a['count']:,}"}
        for a in expected["actions"]
    ]
    assert shown["users"] == [
        {"user_id": u["user_id"], "count": u["count"], "text": f"{u['count']:,}"}
        for u in expected["users"]
    ]
    # Everything was recorded in the last few minutes: all of it is in the chart's hour.
    per_minute = {p["minute"]: p["count"] for p in expected["per_minute"]}
    assert shown["window_total"] == sum(per_minute.values())
    assert shown["peak"] == max(per_minute.values(), default=0)
    assert f"Last hour {shown['window_total']:,}" in shown["legend"]
    # The screen-reader table of the last minutes agrees minute by minute.
    assert set(per_minute) <= set(shown["minutes"])
    assert shown["minutes"] == {m: per_minute.get(m, 0) for m in shown["minutes"]}
    assert shown["canvas"]  # uPlot drew the chart


def test_user_filter_narrows_the_log_and_the_live_feed(dashboard: Any, server: Server) -> None:
    page = dashboard
    sockets: list[str] = []
    requests: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("request", lambda request: requests.append(request.url))
    for user, action in [("alice", "login"), ("bob", "login"), ("alice", "view"), ("carol", "x")]:
        server.track(user, action)
    wait_for_rows(page, [4, 3, 2, 1])

    # Typed key by key: the filter applies once typing pauses, not at every key.
    page.locator("#filter-user").press_sequentially("alice", delay=40)
    wait_for_rows(page, [3, 1])
    assert row_texts(page, ".cell-user") == ["alice", "alice"]
    filtered = [url for url in sockets if "user_id=" in url]
    # Not a reconnect per key (five keys; a stalled machine may let one pause through).
    assert 1 <= len(filtered) < len("alice"), filtered
    assert "since=0" in filtered[-1] and filtered[-1].endswith("user_id=alice")
    # The filter is visible, clearable, and kept in the page's URL.
    assert page.text_content("#filter-status") == "Showing user “alice”"
    assert page.is_visible("#filter-clear")
    assert "user_id=alice" in page.url
    assert "user_id=alice" in page.get_attribute("#export-csv", "href")

    # Live: another user's activity first, then a matching one; only the second shows.
    other = server.track("bob", "purchase")
    mine = server.track("alice", "purchase")
    wait_for_rows(page, [mine["id"], 3, 1])
    assert page.locator(f'#activity-log > li[data-id="{other["id"]}"]').count() == 0

    # Refresh reloads with the filter too.
    with page.expect_response(re.compile(r"/api/metrics/activities\?")) as reloaded:
        page.click("#refresh")
    assert reloaded.value.status == 200 and "user_id=alice" in reloaded.value.url
    page.wait_for_selector("#refresh:not([disabled])")
    assert row_ids(page) == [mine["id"], 3, 1]

    # A reload keeps the filter (it is in the URL).
    page.reload()
    wait_for_state(page, "live")
    wait_for_rows(page, [mine["id"], 3, 1])
    assert page.input_value("#filter-user") == "alice"

    # A filter that matches nothing says so.
    page.fill("#filter-action", "nothing-like-this")
    page.press("#filter-action", "Enter")
    page.wait_for_selector("#log-no-match:not([hidden])")
    assert row_ids(page) == [] and page.is_hidden("#log-empty")

    # Clear: everything again, and the feed is unfiltered.
    page.click("#filter-clear")
    wait_for_rows(page, [mine["id"], other["id"], 4, 3, 2, 1])
    assert page.is_hidden("#filter-clear")
    assert page.text_content("#filter-status") == "Showing all activities"
    assert "user_id" not in sockets[-1] and "action" not in sockets[-1]
    assert "user_id" not in page.url
    # A blank filter was never sent as an empty value.
    assert not [url for url in sockets + requests if EMPTY_FILTER.search(url)]


def test_summary_shows_the_server_figures_and_stays_live(dashboard: Any, server: Server) -> None:
    page = dashboard
    # Seven users and five actions with uneven counts: the top 5 leave some out.
    users = {"ann": 9, "ben": 7, "cat": 5, "dan": 4, "eve": 3, "fay": 2, "gus": 1}
    actions = ["view", "view", "login", "search", "view", "buy", "login", "share"]
    names = [name for name, n in users.items() for _ in range(n)]
    items = [{"user_id": name, "action": actions[i % len(actions)]} for i, name in enumerate(names)]
    items.append({"user_id": "<b>bold</b>", "action": "<img src=x onerror=alert(1)>"})
    status, body = server.request("POST", "/api/metrics/track/batch", items)
    assert status == 200, body
    status, expected = server.request("GET", "/api/metrics/summary?top=5")
    assert status == 200 and expected["total"] == len(items)
    wait_for_summary(page, expected["total"])
    assert_summary_matches(page, expected)
    # Names are text: the markup-looking user is a name, not an element.
    assert page.locator("#summary img, #summary b").count() == 0

    # Soon after live activity, not at the next periodic refresh (every 5 s): the figures
    # just settled, so only the live trigger can update them within 3 s.
    for _ in range(3):
        server.track("zed", "rare")
    status, expected = server.request("GET", "/api/metrics/summary?top=5")
    wait_for_summary(page, expected["total"], timeout=3000)
    assert_summary_matches(page, expected)

    # A top action is a filter: the summary, the log and the chart narrow to it.
    top_action = expected["actions"][0]["action"]
    page.click("#top-actions > li:first-child .top-name")
    assert page.input_value("#filter-action") == top_action
    status, narrowed = server.request(
        "GET", f"/api/metrics/summary?top=5&action={quote(top_action)}"
    )
    assert narrowed["total"] < expected["total"]
    wait_for_summary(page, narrowed["total"])
    assert_summary_matches(page, narrowed)
    assert [a["action"] for a in narrowed["actions"]] == [top_action]
    page.wait_for_function(
        "n => document.querySelectorAll('#activity-log > li').length === n",
        arg=narrowed["total"],
    )
    assert set(row_texts(page, ".cell-action")) == {top_action}


@pytest.mark.parametrize("token", [None, "export-token"], ids=["link", "with-token"])
def test_export_downloads_the_filtered_activities_as_csv(
    page: Any, make_server: Callable[..., Server], token: str | None
) -> None:
    server = make_server(["--api-token", token] if token else [], token=token)
    if token:  # as if entered in the dialog earlier in this tab
        page.add_init_script(f"sessionStorage.setItem('tracker.token', {json.dumps(token)})")
    export_requests: list[Any] = []
    page.on(
        "request",
        lambda r: export_requests.append(r) if "/api/metrics/export" in r.url else None,
    )
    page.goto(server.dashboard_url)
    wait_for_state(page, "live")
    server.track("alice", "login", 'said "hi", then\nleft')
    server.track("bob", "login", "not alice")
    server.track("alice", "note", '=HYPERLINK("http://x")')
    server.track("alice", "logout", None)
    wait_for_rows(page, [4, 3, 2, 1])

    page.fill("#filter-user", "alice")
    page.press("#filter-user", "Enter")
    wait_for_rows(page, [4, 3, 1])
    with page.expect_download() as info:
        page.click("#export-csv")
    download = info.value
    assert re.fullmatch(r"activities-\d{8}T\d{6}Z\.csv", download.suggested_filename)
    text = Path(download.path()).read_text(encoding="utf-8")

    def cell(value: str | None) -> str:
        value = value or ""
        return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

    status, expected = server.request("GET", "/api/metrics/activities?user_id=alice&limit=1000")
    assert status == 200 and [a["id"] for a in expected] == [1, 3, 4]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["id", "user_id", "action", "timestamp", "details"]
    assert rows[1:] == [
        [str(a["id"]), a["user_id"], a["action"], a["timestamp"], cell(a["details"])]
        for a in expected
    ]
    if token:  # fetched with the header, saved from a Blob; the token is never in the URL
        assert download.url.startswith("blob:")
        [request] = export_requests
        assert request.headers.get("authorization") == f"Bearer {token}"
        url = request.url
    else:  # a plain link: the browser streams the server's file to disk
        url = download.url
    assert "format=csv" in url and "user_id=alice" in url and "token" not in url
