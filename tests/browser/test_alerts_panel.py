"""The dashboard's security panels (alerts, rules, audit integrity) in a real Chromium."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from .. import rules
from .conftest import Server
from .test_dashboard import SocketProxy, row_texts, wait_for_rows, wait_for_state, wait_for_text

BRUTE_FORCE = {"name": "brute-force", **rules.BRUTE_FORCE}
SPRAY = {
    "name": "spray",
    "severity": "critical",
    "kind": "distinct",
    "match": {"action": ["login_failed"]},
    "group_by": "action",
    "field": "user_id",
    "threshold": 3,
    "window_s": 300,
}
NEW_ACTION = {"name": "new-action", "severity": "low", "kind": "first_seen", "field": "action"}

ALERTS_REQUEST = re.compile(r"/api/alerts\?")
RED = "rgb(209, 67, 67)"  # --bad in the light colour scheme


def rules_file(tmp_path: Path, *rules: dict) -> str:
    """A --rules file (a JSON array) holding these rules."""
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(list(rules)), encoding="utf-8")
    return str(path)


def shown_alerts(page: Any) -> list[dict[str, Any]]:
    """The Alerts panel's rows, top to bottom, as text."""
    return page.eval_on_selector_all(
        "#alerts-list > li",
        """rows => rows.map(row => ({
            id: Number(row.dataset.id),
            severity: row.querySelector('.severity').textContent,
            severity_class: row.querySelector('.severity').className,
            rule: row.querySelector('.alert-rule').textContent,
            group: row.querySelector('.alert-group').textContent,
            group_is_button: row.querySelector('.alert-group').tagName === 'BUTTON',
            message: row.querySelector('.alert-message').textContent,
            time: row.querySelector('time').textContent,
            fired_at: row.querySelector('time').dateTime,
            is_new: row.classList.contains('is-new'),
        }))""",
    )


def server_alerts(server: Server) -> list[dict]:
    """GET /api/alerts, oldest first."""
    status, body = server.request("GET", "/api/alerts?limit=1000")
    assert status == 200, body
    return body


def fail_logins(server: Server, user_id: str, times: int = 3) -> list[int]:
    """A burst of failed logins for one user: enough to fire brute-force."""
    return [server.track(user_id, "login_failed", "wrong password")["id"] for _ in range(times)]


def open_dashboard(page: Any, server: Server) -> None:
    """Open the page and wait until it is live and the rules are listed."""
    page.goto(server.dashboard_url)
    wait_for_state(page, "live")
    page.wait_for_function(
        "() => !document.getElementById('rules-list').hidden"
        " || !document.getElementById('rules-empty').hidden"
    )


@pytest.fixture
def zoned_page(new_page: Callable[..., Any]) -> Any:
    """A page in another time zone and a 24-hour locale; uncaught page errors fail the test."""
    return new_page(locale="en-GB", timezone_id="Asia/Kolkata")


def test_a_burst_fires_an_alert_that_appears_live(
    zoned_page: Any, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    page = zoned_page
    server = make_server(["--rules", rules_file(tmp_path, BRUTE_FORCE)])
    alert_requests: list[str] = []
    page.on("request", lambda r: alert_requests.append(r.url) if "/api/alerts?" in r.url else None)
    page.add_init_script(
        """window.__cspViolations = [];
        document.addEventListener('securitypolicyviolation', event => {
            window.__cspViolations.push(event.violatedDirective + ' ' + event.blockedURI);
        });"""
    )
    open_dashboard(page, server)
    page.evaluate("window.__sameDocument = true")
    assert page.is_visible("#alerts-empty") and page.is_hidden("#alerts-list")
    loaded = len(alert_requests)
    assert loaded == 1 and alert_requests[0].endswith("/api/alerts?limit=50")

    # Noise that fires nothing, then a burst of POSTs that does.
    server.track("bob", "login_failed")
    server.track("mallory", "login")
    fail_logins(server, "mallory")
    [alert] = server_alerts(server)
    wait_for_rows(page, [alert["id"]], list_selector="#alerts-list")

    [shown] = shown_alerts(page)
    assert shown["severity"] == "high" and "severity-high" in shown["severity_class"]
    assert shown["rule"] == "brute-force"
    assert shown["group"] == "user_id: mallory" and shown["group_is_button"]
    assert shown["message"] == alert["message"] == "3 login_failed by mallory in 60 s"
    # Its time as the log shows times: local, 24-hour here; the full UTC value on hover.
    assert shown["fired_at"] == alert["fired_at"]
    local = datetime.fromisoformat(alert["fired_at"]).astimezone(ZoneInfo("Asia/Kolkata"))
    assert shown["time"] == local.strftime("%H:%M:%S")
    row = f'#alerts-list > li[data-id="{alert["id"]}"]'
    assert page.get_attribute(f"{row} time", "title") == alert["fired_at"]
    assert shown["is_new"]  # briefly highlighted
    assert "brute-force" in page.text_content("#alerts-announce")
    assert page.is_hidden("#alerts-empty")
    wait_for_text(page, "#alerts-summary", "1 shown")

    # Another one goes on top. All of it came over the socket: no reload, no REST call.
    fail_logins(server, "eve")
    newest = server_alerts(server)[-1]
    assert newest["group"] == {"user_id": "eve"}
    wait_for_rows(page, [newest["id"], alert["id"]], list_selector="#alerts-list")
    assert [a["group"] for a in shown_alerts(page)] == ["user_id: eve", "user_id: mallory"]
    assert page.evaluate("window.__sameDocument") is True
    assert len(alert_requests) == loaded

    # A reload lists them from GET /api/alerts, still newest on top.
    page.reload()
    wait_for_rows(page, [newest["id"], alert["id"]], list_selector="#alerts-list")
    assert not any(a["is_new"] for a in shown_alerts(page))  # not new: no highlight
    assert page.evaluate("window.__cspViolations") == []


def test_clicking_an_alert_group_filters_the_log(
    page: Any, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(["--rules", rules_file(tmp_path, BRUTE_FORCE, SPRAY, NEW_ACTION)])
    open_dashboard(page, server)
    server.track("alice", "login")
    mallory = fail_logins(server, "mallory")
    server.track("bob", "login_failed")
    mallory.append(server.track("mallory", "logout")["id"])
    server.track("carol", "login_failed")  # the third distinct user: spray fires
    everything = [a["id"] for a in server.activities()]
    wait_for_rows(page, everything[::-1])
    alerts = server_alerts(server)
    assert [a["rule"] for a in alerts] == [
        "new-action",  # login
        "new-action",  # login_failed
        "brute-force",
        "new-action",  # logout
        "spray",
    ]
    wait_for_rows(page, [a["id"] for a in reversed(alerts)], list_selector="#alerts-list")
    groups = [(a["group"], a["group_is_button"]) for a in shown_alerts(page)]
    assert groups[0] == ("action: login_failed", True)
    assert groups[-1] == ("all", False)  # a rule without group_by: nothing to filter by

    # The user group: the log's user filter takes it, visibly, and the log narrows.
    page.click('#alerts-list .alert-group:text-is("user_id: mallory")')
    assert page.input_value("#filter-user") == "mallory"
    assert page.input_value("#filter-action") == ""
    assert "is-active" in page.get_attribute("#filter-user", "class")
    wait_for_text(page, "#filter-status", "Showing user “mallory”")
    wait_for_rows(page, mallory[::-1])
    assert set(row_texts(page, ".cell-user")) == {"mallory"}
    assert "user_id=mallory" in page.url
    # Still live, filtered: another user's activity stays out, mallory's comes in.
    server.track("bob", "login")
    latest = server.track("mallory", "login")
    wait_for_rows(page, [latest["id"], *mallory[::-1]])

    # The action group: the action filter, and the user filter is cleared.
    page.click('#alerts-list .alert-group:text-is("action: login_failed")')
    assert page.input_value("#filter-action") == "login_failed"
    assert page.input_value("#filter-user") == ""
    wait_for_text(page, "#filter-status", "Showing action “login_failed”")
    failed = [a["id"] for a in server.activities() if a["action"] == "login_failed"]
    wait_for_rows(page, failed[::-1])
    # The alerts themselves are not filtered.
    assert len(shown_alerts(page)) == len(server_alerts(server))


def test_rule_list_shows_what_is_armed(
    page: Any, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(["--rules", rules_file(tmp_path, SPRAY, BRUTE_FORCE, NEW_ACTION)])
    open_dashboard(page, server)

    def shown_rules() -> list[tuple[str, str, str, str]]:
        return page.eval_on_selector_all(
            "#rules-list > li",
            """items => items.map(item => [
                item.querySelector('.severity').textContent,
                item.querySelector('.rule-name').textContent,
                item.querySelector('.rule-kind').textContent,
                item.querySelector('.rule-description').textContent,
            ])""",
        )

    # As the server lists them (by name), each in one line.
    assert shown_rules() == [
        ["high", "brute-force", "count", "count ≥ 3 login_failed per user_id in 60 s"],
        ["low", "new-action", "first_seen", "first_seen: a new action"],
        [
            "critical",
            "spray",
            "distinct",
            "distinct ≥ 3 user_id among login_failed per action in 5 min",
        ],
    ]
    assert page.is_hidden("#rules-empty")
    cooldown = page.get_attribute(
        '#rules-list > li[data-name="brute-force"] .rule-description', "title"
    )
    assert cooldown == "Then quiet for 5 min per group"

    # A rule added over REST shows after a Refresh; one deleted goes.
    rule = {"severity": "medium", "kind": "count", "threshold": 100, "window_s": 10}
    status, body = server.request("PUT", "/api/alerts/rules/flood", rule)
    assert status == 201, body
    status, body = server.request("DELETE", "/api/alerts/rules/spray")
    assert status in (200, 204), body
    page.click("#refresh")
    page.wait_for_selector('#rules-list > li[data-name="flood"]')
    assert [r[1] for r in shown_rules()] == ["brute-force", "flood", "new-action"]
    assert shown_rules()[1] == ["medium", "flood", "count", "count ≥ 100 activities in 10 s"]


def wait_for_checkpoint(server: Server, last_id: int, timeout: float = 10.0) -> dict:
    """Poll GET /api/audit/checkpoints until one covers `last_id` (written every second)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = server.request("GET", "/api/audit/checkpoints?limit=1")
        assert status == 200, body
        if body and body[-1]["last_id"] >= last_id:
            return body[-1]
        assert time.monotonic() < deadline, f"no checkpoint through #{last_id}"
        time.sleep(0.1)


def test_integrity_indicator_shows_tampering_in_red(
    page: Any, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    db = tmp_path / "audit.db"
    server = make_server(["--db", str(db), "--checkpoint-interval", "1"])
    for n in range(3):
        server.track(f"user-{n}", "login", f"attempt {n}")
    checkpoint = wait_for_checkpoint(server, 3)
    verify_requests: list[str] = []
    page.on(
        "request",
        lambda r: verify_requests.append(r.url) if "/api/audit/verify" in r.url else None,
    )
    page.goto(server.dashboard_url)
    wait_for_state(page, "live")
    page.wait_for_selector("#integrity[data-state=ok]:not([aria-busy])")
    assert page.text_content("#integrity-text") == "Verified through #3"
    # One checkpoint or two (one may have landed between the writes), all signed.
    assert re.fullmatch(
        r"3 rows · [12] checkpoints? · signatures checked", page.text_content("#integrity-detail")
    )
    checkpoint_line = page.text_content("#integrity-checkpoint")
    assert checkpoint_line.startswith("Last checkpoint ")
    assert checkpoint_line.endswith(f" · through #{checkpoint['last_id']}")
    assert page.get_attribute("#integrity-checkpoint time", "title") == checkpoint["timestamp"]
    assert page.evaluate("getComputedStyle(document.getElementById('integrity')).color") != RED
    # Verified once at start; never on a timer (the summary refreshes every 5 s; not this).
    page.wait_for_timeout(1500)
    assert len(verify_requests) == 1

    # Someone edits a stored row behind the server's back.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE activities SET details='x' WHERE id=2")
    conn.close()
    status, verdict = server.request("GET", "/api/audit/verify")
    assert status == 200 and verdict["ok"] is False and verdict["first_bad_id"] == 2

    page.click("#integrity")
    page.wait_for_selector("#integrity[data-state=tampered]")
    text = page.text_content("#integrity-text")
    assert "tampered" in text.lower() and "#2" in text
    assert page.text_content("#integrity-detail") == verdict["reason"]
    assert page.evaluate("getComputedStyle(document.getElementById('integrity')).color") == RED
    assert (
        page.evaluate("getComputedStyle(document.getElementById('integrity-detail')).color") == RED
    )
    assert len(verify_requests) == 2


def test_integrity_and_rules_in_memory_mode(page: Any, server: Server) -> None:
    page.goto(server.dashboard_url)
    wait_for_state(page, "live")
    page.wait_for_selector("#integrity[data-state=empty]")
    assert page.text_content("#integrity-text") == "Nothing to verify yet"
    wait_for_text(page, "#integrity-checkpoint", "No checkpoints (memory mode)")
    page.wait_for_selector("#rules-empty:not([hidden])")
    assert page.locator("#rules-list > li").count() == 0
    assert page.is_visible("#alerts-empty")

    server.track("u", "login")
    server.track("u", "logout")
    page.click("#integrity")  # verifies the buffer's chain again
    page.wait_for_selector("#integrity[data-state=ok]")
    assert page.text_content("#integrity-text") == "Verified through #2"
    assert page.text_content("#integrity-checkpoint") == "No checkpoints (memory mode)"


def test_alert_fields_render_as_text(
    page: Any, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(["--rules", rules_file(tmp_path, BRUTE_FORCE)])
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    open_dashboard(page, server)
    payload = "<img src=x onerror=alert(1)>"
    ids = fail_logins(server, payload)
    [alert] = server_alerts(server)
    wait_for_rows(page, [alert["id"]], list_selector="#alerts-list")

    [shown] = shown_alerts(page)
    assert shown["group"] == f"user_id: {payload}"
    assert shown["message"] == alert["message"] == f"3 login_failed by {payload} in 60 s"
    assert payload in page.text_content("#alerts-announce")
    assert page.locator("#security img, #security script").count() == 0

    # Its group is a filter like any other: the exact value, as text.
    page.click("#alerts-list .alert-group")
    assert page.input_value("#filter-user") == payload
    wait_for_rows(page, ids[::-1])
    assert set(row_texts(page, ".cell-user")) == {payload}
    assert page.locator("img:not(.uplot img)").count() == 0
    assert dialogs == []


def test_alerts_missed_while_offline_and_a_restart(
    page: Any, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(["--rules", rules_file(tmp_path, BRUTE_FORCE)])
    proxy = SocketProxy(page)
    open_dashboard(page, server)
    fail_logins(server, "mallory")
    [first] = server_alerts(server)
    wait_for_rows(page, [first["id"]], list_selector="#alerts-list")

    # The socket drops, and an alert fires meanwhile: the feed does not replay alerts, so
    # the panel catches up over REST when the feed is back.
    proxy.refuse = True
    proxy.current.close(code=4008, reason="too slow")
    wait_for_state(page, "live", negate=True)
    fail_logins(server, "eve")
    missed = server_alerts(server)[-1]
    proxy.refuse = False
    wait_for_state(page, "live", timeout=10_000)
    wait_for_rows(page, [missed["id"], first["id"]], list_selector="#alerts-list")

    # A restart without --db is another store: its alerts are another list.
    server.stop()
    wait_for_state(page, "live", negate=True)
    server.start()
    wait_for_state(page, "live", timeout=10_000)
    page.wait_for_selector("#alerts-empty:not([hidden])")
    assert page.locator("#alerts-list > li").count() == 0
    fail_logins(server, "trudy")
    [fresh] = server_alerts(server)
    wait_for_rows(page, [fresh["id"]], list_selector="#alerts-list")
    assert shown_alerts(page)[0]["group"] == "user_id: trudy"


def test_panels_use_the_access_token(
    page: Any, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    token = "alerts-token"
    server = make_server(
        ["--api-token", token, "--rules", rules_file(tmp_path, BRUTE_FORCE)], token=token
    )
    refused: list[str] = []
    page.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
    page.goto(server.dashboard_url)
    page.wait_for_selector("#token-dialog[open]")
    page.fill("#token-input", token)
    page.press("#token-input", "Enter")
    wait_for_state(page, "live")
    # Asked for with the token once it came, without a reload.
    page.wait_for_selector('#rules-list > li[data-name="brute-force"]')
    page.wait_for_selector("#integrity[data-state=empty]")
    assert any("/api/alerts/rules" in url for url in refused)  # refused before the token

    fail_logins(server, "mallory")
    [alert] = server_alerts(server)
    wait_for_rows(page, [alert["id"]], list_selector="#alerts-list")
    with page.expect_response(ALERTS_REQUEST) as reloaded:
        page.click("#refresh")
    response = reloaded.value
    assert response.status == 200
    assert response.request.headers.get("authorization") == f"Bearer {token}"
    assert token not in response.url
    wait_for_rows(page, [alert["id"]], list_selector="#alerts-list")


def test_alerts_list_is_bounded(
    page: Any, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    new_user = {"name": "new-user", "severity": "medium", "kind": "first_seen", "field": "user_id"}
    server = make_server(["--rules", rules_file(tmp_path, new_user)])
    open_dashboard(page, server)
    # 250 new users in one request: 250 alerts, pushed live as fast as the server can.
    items = [{"user_id": f"user-{n:03}", "action": "signup"} for n in range(250)]
    status, body = server.request("POST", "/api/metrics/track/batch", items)
    assert status == 200, body
    alerts = server_alerts(server)
    assert len(alerts) == 250
    ids = [a["id"] for a in alerts]
    # The newest 200, newest on top.
    wait_for_rows(page, ids[::-1][:200], timeout=10_000, list_selector="#alerts-list")
    wait_for_text(page, "#alerts-summary", "200 shown")

    page.reload()  # a reload asks for the newest 50
    wait_for_rows(page, ids[::-1][:50], list_selector="#alerts-list")
