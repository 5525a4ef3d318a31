"""Regenerate docs/dashboard.png: a real server, realistic activities, real Chromium.

Usage: python docs/make_screenshot.py [--out docs/dashboard.png] [--width 1280 --height 800]
Needs Playwright for Python and a Chromium (Debian's /usr/bin/chromium by default).

The server runs with a temporary --db seeded with most of an hour of made-up
traffic (timestamps in the past), so the rate chart and the top lists have a history;
the activities in the log's top rows are then recorded over HTTP as any client would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracker.activity import Activity, ActivityInput, format_timestamp  # noqa: E402
from tracker.store import SQLiteStore  # noqa: E402

DASHBOARD = "/api/ui-dashboard/metrics-dashboard-ui"

# The seeded history: who did what, and how often (weights).
HISTORY_USERS = [("user_123", 9), ("maria.k", 7), ("user_456", 6), ("jdoe", 3), ("ops-bot", 2)]
HISTORY_ACTIONS = [
    ("view_page", 12),
    ("login", 5),
    ("search", 5),
    ("add_to_cart", 3),
    ("logout", 3),
    ("checkout", 1),
]
HISTORY_MINUTES = 56

# Oldest first, as a morning on a small web shop might look.
ACTIVITIES = [
    ("user_123", "login", "Successful login"),
    ("user_123", "view_page", "/pricing"),
    ("maria.k", "signup", "Referred by newsletter (campaign: nov-25)"),
    ("maria.k", "login", "Successful login"),
    ("user_456", "search", 'query="noise cancelling headphones", 42 results'),
    ("user_456", "add_to_cart", "SKU 88-1204 × 1"),
    ("ops-bot", "deploy", "api v2.14.1 rolled out to eu-west"),
    ("user_123", "update_profile", "Changed display name"),
    ("jdoe", "login_failed", "Wrong password (attempt 2 of 5)"),
    ("user_456", "checkout", "Order #10293 · €149.00 · card"),
    ("maria.k", "invite", "Invited 3 teammates"),
    ("jdoe", "password_reset", "Reset link sent to j***@example.com"),
    ("user_789", "export", None),
    ("user_456", "logout", None),
    ("maria.k", "create_project", "“Q4 launch plan”"),
    ("user_123", "download", "invoice-2025-11.pdf (182 KB)"),
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_history(db: str) -> None:
    """Write HISTORY_MINUTES of past traffic (a morning ramp) into a new database."""
    rng = random.Random(7)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    users, user_weights = zip(*HISTORY_USERS, strict=True)
    actions, action_weights = zip(*HISTORY_ACTIONS, strict=True)
    activities = []
    for minute in range(HISTORY_MINUTES, 0, -1):
        start = now - timedelta(minutes=minute)
        ramp = 1 - minute / HISTORY_MINUTES  # busier towards now
        wave = 1 + 0.6 * ((HISTORY_MINUTES - minute) % 9 in (3, 4))  # a few busy spells
        per_minute = max(0, round(rng.gauss(2 + 9 * ramp * wave, 1.6)))
        for second in sorted(rng.uniform(0, 59.9) for _ in range(per_minute)):
            data = ActivityInput(
                rng.choices(users, user_weights)[0], rng.choices(actions, action_weights)[0]
            )
            moment = format_timestamp(start + timedelta(seconds=second))
            activities.append(Activity.create(len(activities) + 1, data, moment))
    store = SQLiteStore(db)
    store.append(activities).result(timeout=10)
    store.close()


# Armed for the picture: a deploy, a failed login and an export each raise an alert.
RULES = [
    {"name": "first-export", "severity": "medium", "kind": "first_seen",
     "match": {"action": ["export"]}, "group_by": "user_id", "field": "action"},
    {"name": "failed-login", "severity": "high", "kind": "count",
     "match": {"action": ["login_failed"]}, "group_by": "user_id", "threshold": 1,
     "window_s": 60},
    {"name": "production-deploy", "severity": "low", "kind": "first_seen",
     "match": {"action": ["deploy"]}, "field": "user_id"},
]  # fmt: skip


def start_server(port: int, db: str) -> subprocess.Popen:
    """`python run.py --port PORT --db DB` with RULES, returned once it prints its URL."""
    rules = os.path.join(os.path.dirname(db), "rules.json")
    with open(rules, "w") as out:
        json.dump(RULES, out)
    args = ["--port", str(port), "--db", db, "--rules", rules, "--checkpoint-interval", "1"]
    proc = subprocess.Popen(
        [sys.executable, "run.py", "--host", "127.0.0.1", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "Activity tracker on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc


def track(base: str, user_id: str, action: str, details: str | None) -> None:
    """Record one activity over HTTP, as any client would."""
    body = json.dumps({"user_id": user_id, "action": action, "details": details}).encode()
    request = urllib.request.Request(
        base + "/api/metrics/track", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def main() -> None:
    """Start a server, fill it, photograph the dashboard, stop the server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument(
        "--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"), help="browser"
    )
    parser.add_argument("--dark", action="store_true", help="use the dark colour scheme")
    parser.add_argument(
        "--viewport-only", action="store_true", help="only the first screen, not the full page"
    )
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workdir = tempfile.TemporaryDirectory()
    db = os.path.join(workdir.name, "screenshot.db")
    seed_history(db)
    server = start_server(port, db)
    try:
        for user_id, action, details in ACTIVITIES[:-1]:
            track(base, user_id, action, details)
            time.sleep(0.35)  # spread the timestamps a little, as real traffic would be
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=args.chromium,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(
                viewport={"width": args.width, "height": args.height},
                device_scale_factor=1,
                color_scheme="dark" if args.dark else "light",
                locale="en-GB",
            )
            page.goto(base + DASHBOARD)
            page.wait_for_selector("#connection-state[data-state=live]")
            # The last one arrives live, so the picture shows the arrival highlight.
            last = ACTIVITIES[-1]
            track(base, *last)
            # A function, not an expression string: the page's CSP forbids eval.
            page.wait_for_function(
                "action => document.querySelector('#activity-log li .cell-action')"
                "?.textContent === action",
                arg=last[1],
            )
            # The summary has caught up with the last one (it refreshes soon after activity).
            total = json.load(urllib.request.urlopen(base + "/api/metrics/summary"))["total"]
            page.wait_for_function(
                "n => document.getElementById('stat-total').dataset.value === String(n)",
                arg=total,
            )
            page.wait_for_timeout(1200)  # a signed checkpoint; then check the chain again
            page.click("#integrity")
            page.wait_for_selector("#integrity[data-state=ok]")
            page.fill("#user-id", "user_123")
            page.fill("#action", "share")
            page.wait_for_timeout(300)  # let the arrival highlight settle part way
            page.screenshot(path=args.out, full_page=not args.viewport_only)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
        workdir.cleanup()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
