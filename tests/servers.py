"""Servers for tests: `python run.py` as a user starts it, on a free port of 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start run.py and wait for the line with the dashboard URL."""
    # The log goes to a file: a pipe nobody reads would block a server that logs a lot.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, **(env or {})},
    )
    proc.log = log  # type: ignore[attr-defined]
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "http://" in line, (line, server_log(proc))
    return proc, line.strip().split()[-1]


def run_refused(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run run.py with arguments it should refuse; what it did, for the test's asserts."""
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
    )


def server_log(proc: subprocess.Popen) -> str:
    """What a server started by start() has written to stderr so far."""
    log = proc.log  # type: ignore[attr-defined]
    log.seek(0)
    return log.read()


class Server:
    """`python run.py` on a free port (over a database file when `db` is given), restartable."""

    def __init__(self, db: str | None, *extra: str, port: int | None = None) -> None:
        self.db, self.extra, self.port = db, extra, port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        database = ["--db", self.db] if self.db else []
        self.proc, _ = start("--port", str(self.port), *database, *self.extra)
        return self

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        payload = json.dumps(body) if body is not None else None
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=payload, headers={**all_headers, **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, json.loads(data) if data else None, response

    def request_quietly(self, method: str, path: str) -> int | None:
        """A request whose answer may never come (the server is killed): its status or None."""
        try:
            return self.request(method, path)[0]
        except (OSError, http.client.HTTPException):
            return None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.proc = None
        return code

    def all_activities(self) -> list[dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/api/metrics/export?format=ndjson")
        lines = conn.getresponse().read().decode().splitlines()
        conn.close()
        return [json.loads(line) for line in lines]


class RedisServer:
    """A private redis-server on a free port, in memory only; can stop and start (empty)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # by its pid; with --save '' nothing survives
            self.proc.wait()
            self.proc = None


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
