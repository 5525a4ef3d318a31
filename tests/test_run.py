"""`python run.py` as a user starts it: flags, the printed URL, a clean stop on signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tracker.config import Settings, load_settings

from .servers import ROOT, free_port, run_refused, start


def test_help_lists_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for name in Settings.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        assert flag in out, flag
        assert "TRACKER_" + name.upper() in out


def test_flags_beat_environment_which_beats_defaults() -> None:
    env = {"TRACKER_PORT": "9001", "TRACKER_CAPACITY": "50", "TRACKER_ALLOWED_ORIGINS": "a, b"}
    settings = load_settings(["--port", "9002"], env)
    assert settings.port == 9002 and settings.capacity == 50
    assert settings.allowed_origins == ("a", "b")
    assert load_settings([], {}) == Settings()


BAD_FLAGS = [
    ["--capacity", "0"],
    ["--capacity", "x"],
    ["--port", "p"],
    ["--port", "70000"],
    ["--port", "-1"],
    ["--retention-days", "nan"],
    ["--retention-days", "inf"],
    ["--retention-days", "-1"],
    ["--retention-days", "1e9"],
    ["--max-rows", "-5"],
    ["--ws-ping-interval", "nan"],
]


@pytest.mark.parametrize("argv", BAD_FLAGS)
def test_bad_or_out_of_range_flag_is_one_line_and_exit_2(argv: list[str]) -> None:
    result = run_refused(*argv)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert argv[0] in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_out_of_range_environment_value_is_refused_too() -> None:
    result = run_refused(env={"TRACKER_PORT": "70000"})
    assert result.returncode == 2 and "--port" in result.stderr


@pytest.mark.parametrize("name", ["data#1.db", "what?.db", "100%.db"])
def test_db_path_is_used_exactly_as_given(tmp_path: Path, name: str) -> None:
    port = free_port()
    proc, _ = start("--port", str(port), "--db", str(tmp_path / name))
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/metrics/track?user_id=u&action=login", method="POST"
        )
        urllib.request.urlopen(request, timeout=5).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    made = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert made == [name, name + ".signing-key.pem"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_records_then_exits_zero_on_signal(sig: signal.Signals) -> None:
    port = free_port()
    proc, url = start("--port", str(port))
    try:
        assert url == f"http://localhost:{port}/api/ui-dashboard/metrics-dashboard-ui"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/metrics/track?user_id=user_123&action=login",
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["id"] == 1
        with urllib.request.urlopen(url.replace("localhost", "127.0.0.1"), timeout=5) as page:
            assert b"Activity Tracking" in page.read()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_refused("--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.__dataclass_fields__:
        flag, env = "--" + name.replace("_", "-"), "TRACKER_" + name.upper()
        assert f"| `{flag}` | `{env}` |" in readme, flag


def test_watch_prints_the_live_feed() -> None:
    port = free_port()
    proc, _ = start("--port", str(port))
    try:
        for user in ("a", "b"):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/metrics/track?user_id={user}&action=login",
                method="POST",
            )
            urllib.request.urlopen(request, timeout=5).read()
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tracker.watch",
                f"ws://127.0.0.1:{port}/api/metrics/live",
                "--since",
                "0",
                "--user-id",
                "b",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watcher.stdout is not None
        assert json.loads(watcher.stdout.readline())["user_id"] == "b"
        proc.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=10) == 0
        assert "closed: 1001" in watcher.stderr.read()
    finally:
        proc.kill()
        proc.wait()
