"""Security monitoring end to end: rules over REST and from a file, alerts on the live feed
and across restarts, signed webhooks to a real receiver, and Prometheus metrics."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from tracker.activity import ActivityInput
from tracker.alerts.rules import load_rules_file
from tracker.app import Tracker

from .conftest import Api, error_of
from .rules import BRUTE_FORCE
from .servers import ROOT, Server, run_refused
from .wsclient import Feed

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "s3cret-token"


async def put_rule(api: Api, name: str, rule: dict[str, Any]) -> Any:
    return await api.request("PUT", f"/api/alerts/rules/{name}", body=rule)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "change,field",
    [
        ({"threshold": 0}, "threshold"),
        ({"severity": "urgent"}, "severity"),
        ({"kind": "sometimes"}, "kind"),
        ({"window_s": -1}, "window_s"),
        ({"group_by": "details"}, "group_by"),
        ({"match": {"action": []}}, "match.action"),
        ({"surprise": 1}, "surprise"),
        ({"name": "another-name"}, "name"),
        ({"field": "user_id"}, "field"),  # not for kind count
    ],
)
async def test_a_bad_rule_is_a_400_naming_the_field_and_changes_nothing(
    api: Api, change: dict[str, Any], field: str
) -> None:
    response = await put_rule(api, "brute-force", {**BRUTE_FORCE, **change})
    assert response.code == 400
    assert error_of(response)["field"] == field
    rules = await api.request("GET", "/api/alerts/rules")
    assert json.loads(rules.body) == []


@pytest.mark.gen_test
async def test_a_bad_rule_name_or_body_is_a_400(api: Api) -> None:
    assert error_of(await put_rule(api, "has%20space", BRUTE_FORCE))["field"] == "name"
    response = await api.request("PUT", "/api/alerts/rules/x", body=b"{not json")
    assert response.code == 400 and "JSON" in error_of(response)["message"]


@pytest.mark.gen_test
async def test_rules_are_created_replaced_listed_and_deleted(api: Api) -> None:
    created = await put_rule(api, "brute-force", BRUTE_FORCE)
    assert created.code == 201
    assert json.loads(created.body) == {
        **BRUTE_FORCE,
        "name": "brute-force",
        "field": None,
        "match": {"user_id": None, "action": ["login_failed"]},
    }
    replaced = await put_rule(api, "brute-force", {**BRUTE_FORCE, "threshold": 10})
    assert replaced.code == 200 and json.loads(replaced.body)["threshold"] == 10
    spray = {
        "severity": "critical",
        "kind": "distinct",
        "field": "user_id",
        "threshold": 20,
        "window_s": 60,
        "match": {"action": ["login_failed"]},
    }
    assert (await put_rule(api, "password-spraying", spray)).code == 201
    listed = json.loads((await api.request("GET", "/api/alerts/rules")).body)
    assert [rule["name"] for rule in listed] == ["brute-force", "password-spraying"]
    assert (await api.request("DELETE", "/api/alerts/rules/brute-force")).code == 204
    gone = await api.request("DELETE", "/api/alerts/rules/brute-force")
    assert gone.code == 404 and "brute-force" in error_of(gone)["message"]


def login_failed(user: str) -> str:
    return f"?user_id={user}&action=login_failed"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.both_backends
async def test_an_alert_reaches_the_live_feed_right_after_its_activity(
    http_server: Any, base_url: str, api: Api
) -> None:
    await put_rule(api, "brute-force", BRUTE_FORCE)
    feed = await Feed.connect(base_url)
    for user in ("u1", "u2", "u1", "u1", "u1"):
        assert (await api.track(login_failed(user))).code == 200
    seen: list[Any] = []
    while not any(m["type"] == "alert" for m in seen) or len(feed.activities) < 5:
        message = await feed.next()
        assert message is not None
        seen.append(message)
    kinds = [(m["type"], [a["id"] for a in m.get("items", [])]) for m in seen]
    flat = [x for kind, ids in kinds for x in (ids if kind == "activities" else ["alert"])]
    # The third failure by u1 is activity 4: the alert follows it, before activity 5.
    assert flat == [1, 2, 3, 4, "alert", 5]
    alert = next(m["alert"] for m in seen if m["type"] == "alert")
    assert alert == {
        "id": 1,
        "rule": "brute-force",
        "severity": "high",
        "group": {"user_id": "u1"},
        "count": 3,
        "activity_ids": [1, 3, 4],
        "fired_at": alert["fired_at"],
        "message": "3 login_failed by u1 in 60 s",
    }
    listed = json.loads((await api.request("GET", "/api/alerts?rule=brute-force")).body)
    assert listed == [alert]
    assert json.loads((await api.request("GET", "/api/alerts?severity=low")).body) == []
    feed.close()


@pytest.mark.gen_test(timeout=30)
async def test_recording_from_another_thread_fires_alerts_too(api: Api, tracker: Tracker) -> None:
    await put_rule(api, "brute-force", BRUTE_FORCE)

    def record() -> None:
        for _ in range(3):
            tracker.service.record(ActivityInput("t", "login_failed", None))

    thread = threading.Thread(target=record)
    thread.start()
    thread.join()
    alerts = json.loads((await api.request("GET", "/api/alerts")).body)
    assert [a["group"] for a in alerts] == [{"user_id": "t"}]


@pytest.mark.gen_test
async def test_bad_alert_filters_are_400(api: Api) -> None:
    for query, field in (("?severity=urgent", "severity"), ("?limit=x", "limit")):
        assert error_of(await api.request("GET", "/api/alerts" + query))["field"] == field


# -- from a file, across restarts ---------------------------------------------------------


@pytest.mark.parametrize(
    "name,text",
    [
        ("rules.toml", '[[rules]]\nname = "x"\nseverity = "high"\nkind = "count"\nthreshold = 0\n'),
        ("rules.json", '[{"name": "x", "severity": "high"'),
        ("rules.json", '[{"name": "x", "severity": "high", "kind": "first_seen"}]'),
    ],
)
def test_a_malformed_rules_file_stops_start_with_one_line(
    tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = run_refused("--rules", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr
    assert "Traceback" not in result.stderr


RULES_TOML = """
[[rules]]
name = "brute-force"
severity = "high"
kind = "count"
match = { action = ["login_failed"] }
group_by = "user_id"
threshold = 3
window_s = 60

[[rules]]
name = "first-export"
severity = "medium"
kind = "first_seen"
match = { action = ["export_all"] }
group_by = "user_id"
field = "action"
"""


def test_rules_and_alerts_are_kept_across_a_restart(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES_TOML)
    server = Server(str(tmp_path / "a.db"), "--rules", str(rules)).start()
    try:
        for _ in range(3):
            server.request("POST", "/api/metrics/track?user_id=mallory&action=login_failed")
        server.request("POST", "/api/metrics/track?user_id=mallory&action=export_all")
        status, _, _ = server.request(
            "PUT",
            "/api/alerts/rules/spray",
            {
                "severity": "critical",
                "kind": "distinct",
                "field": "user_id",
                "threshold": 20,
                "window_s": 60,
            },
        )
        assert status == 201
        before = server.request("GET", "/api/alerts")[1]
        assert [a["rule"] for a in before] == ["brute-force", "first-export"]
        assert server.stop() == 0
        server.extra = ()  # no --rules now: what was kept comes back by itself
        server.start()
        assert server.request("GET", "/api/alerts")[1] == before
        names = [r["name"] for r in server.request("GET", "/api/alerts/rules")[1]]
        assert names == ["brute-force", "first-export", "spray"]
        _, made, _ = server.request("POST", "/api/metrics/track?user_id=eve&action=export_all")
        assert server.request("GET", "/api/alerts")[1][-1]["activity_ids"] == [made["id"]]
        assert server.request("GET", "/api/alerts")[1][-1]["id"] == 3
    finally:
        if server.proc is not None:
            server.stop()


# -- webhooks, to a real receiver -----------------------------------------------------------


class Receiver:
    """A local webhook receiver; `answers` says what each POST gets (then 200)."""

    def __init__(self, answers: list[int | str] | None = None) -> None:
        self.answers = list(answers or [])
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.received.append((headers, body))
                answer = receiver.answers.pop(0) if receiver.answers else 200
                if answer == "hang":
                    time.sleep(30)
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(answers: list[int | str] | None = None) -> Receiver:
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for each in made:
        each.close()


def alerting_server(tmp_path: Path, url: str, *extra: str) -> Server:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{**BRUTE_FORCE, "name": "brute-force", "threshold": 1}]))
    return Server(
        str(tmp_path / "a.db"),
        "--rules",
        str(rules),
        "--webhook-url",
        url,
        "--webhook-secret",
        SECRET,
        *extra,
    )


def until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_webhooks_are_signed_so_standard_webhooks_verifies_them(
    tmp_path: Path, receiver: Any
) -> None:
    hook = receiver()
    server = alerting_server(tmp_path, hook.url).start()
    try:
        server.request("POST", "/api/metrics/track?user_id=u1&action=login_failed")
        until(lambda: hook.received)
        headers, body = hook.received[0]
        event = Webhook(SECRET).verify(body, headers)  # raises if the signature is wrong
        assert event["type"] == "alert.fired"
        assert event["data"]["rule"] == "brute-force" and event["data"]["id"] == 1
        until(
            lambda: server.request("GET", "/api/alerts/deliveries")[1][0]["status"] == "delivered"
        )
    finally:
        server.stop()


def test_retries_after_500s_keep_the_same_webhook_id(tmp_path: Path, receiver: Any) -> None:
    hook = receiver([500, 503])
    server = alerting_server(tmp_path, hook.url).start()
    try:
        server.request("POST", "/api/metrics/track?user_id=u1&action=login_failed")
        until(lambda: len(hook.received) == 3, timeout=20)  # retries after 2 s, then 5 s
        ids = {headers["webhook-id"] for headers, _ in hook.received}
        assert len(ids) == 1
        deliveries = server.request("GET", "/api/alerts/deliveries")[1]
        assert [(d["status"], d["attempts"]) for d in deliveries] == [("delivered", 3)]
    finally:
        server.stop()


def test_a_receiver_that_never_answers_does_not_slow_ingest(tmp_path: Path, receiver: Any) -> None:
    hook = receiver(["hang"] * 10)
    server = alerting_server(tmp_path, hook.url).start()
    try:
        started = time.monotonic()
        for i in range(200):  # each one fires an alert, and a delivery that hangs
            status, _, _ = server.request(
                "POST", f"/api/metrics/track?user_id=u{i}&action=login_failed"
            )
            assert status == 200
        # All answered before the first delivery even timed out (10 s).
        assert time.monotonic() - started < 10
        assert len(server.request("GET", "/api/alerts?limit=1000")[1]) == 200
    finally:
        server.stop()


def test_pending_deliveries_survive_a_restart(tmp_path: Path, receiver: Any) -> None:
    hook = receiver([500])
    server = alerting_server(tmp_path, hook.url).start()
    server.request("POST", "/api/metrics/track?user_id=u1&action=login_failed")
    until(lambda: hook.received)
    assert server.stop() == 0  # stopped before the retry (2 s later)
    kept = sqlite3.connect(server.db).execute("SELECT status, attempts FROM deliveries")
    assert kept.fetchall() == [("pending", 1)]
    server.start()
    try:
        until(lambda: len(hook.received) == 2, timeout=20)
        assert hook.received[0][0]["webhook-id"] == hook.received[1][0]["webhook-id"]
        until(
            lambda: server.request("GET", "/api/alerts/deliveries")[1][-1]["status"] == "delivered"
        )
    finally:
        server.stop()


# -- Prometheus ----------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(db=True)
async def test_metrics_parse_and_count_what_happened(
    http_server: Any, base_url: str, api: Api
) -> None:
    await put_rule(api, "brute-force", BRUTE_FORCE)
    feed = await Feed.connect(base_url)
    for _ in range(4):
        await api.track(login_failed("u1"))
    await api.request(
        "POST", "/api/metrics/track/batch", body=[{"user_id": "b", "action": "a"}] * 5
    )
    response = await api.request("GET", "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    found = samples(response.body.decode())
    assert found[("tracker_activities_recorded_total", ())] == 9
    assert found[("tracker_alerts_fired_total", (("rule", "brute-force"),))] == 1
    assert found[("tracker_live_clients", ())] == 1
    assert found[("tracker_store_commit_seconds_count", ())] == 5  # one group commit each
    assert ("tracker_webhook_deliveries_total", (("outcome", "delivered"),)) not in found
    feed.close()


@pytest.mark.gen_test
@pytest.mark.settings(api_token=TOKEN)
async def test_metrics_need_the_token_when_one_is_set(api: Api) -> None:
    assert (await api.request("GET", "/metrics")).code == 401
    authorized = await api.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert authorized.code == 200 and b"tracker_live_clients" in authorized.body


def test_the_readme_rules_load_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "rules.toml").write_text(block)
    rules = load_rules_file(tmp_path / "rules.toml")
    assert [r.name for r in rules] == ["brute-force", "password-spraying", "first-export"]
    assert [r.kind for r in rules] == ["count", "distinct", "first_seen"]


@pytest.mark.gen_test
async def test_a_limit_above_the_alerts_lists_them_all(api: Api) -> None:
    await put_rule(api, "every", {**BRUTE_FORCE, "threshold": 1, "cooldown_s": 0})
    for i in range(3):
        await api.track(login_failed(f"u{i}"))
    listed = json.loads((await api.request("GET", "/api/alerts?limit=5")).body)
    assert [a["id"] for a in listed] == [1, 2, 3]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(db=True, commit_timeout=0.3)
async def test_a_rule_that_cannot_be_saved_is_a_503_not_a_hang(api: Api, settings: Any) -> None:
    lock = sqlite3.connect(settings.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    try:
        await api.track(login_failed("u"))  # a write waits for it too: 503, and the writer
        refused = await put_rule(api, "brute-force", BRUTE_FORCE)  # does not drop the rule
        assert refused.code == 503 and refused.headers["Retry-After"] == "1"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert (await put_rule(api, "brute-force", BRUTE_FORCE)).code == 201
    assert [
        r["name"] for r in json.loads((await api.request("GET", "/api/alerts/rules")).body)
    ] == ["brute-force"]
