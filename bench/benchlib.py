"""Helpers shared by the benchmarks: servers as subprocesses, CPU pinning, wrk, stats.

Not a benchmark itself; bench/ingest.py, bench/live.py and bench/soak.py import it
(running a script puts bench/ on sys.path).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# Every child we start, so that any exit path (error, Ctrl-C, SIGTERM) can stop them.
_CHILDREN: list[subprocess.Popen] = []
_CLIENT_PROCS: list[asyncio.subprocess.Process] = []  # from spawn_client()


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so `finally:` blocks clean up."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def track_child(proc: subprocess.Popen) -> subprocess.Popen:
    _CHILDREN.append(proc)
    return proc


def kill_children() -> None:
    """Last resort: SIGKILL every child still running (each by its own pid)."""
    for client in _CLIENT_PROCS:
        if client.returncode is None:
            try:
                client.kill()
            except ProcessLookupError:
                pass
    for proc in _CHILDREN:
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM if the benchmark dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc; Linux only)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_wait_seconds(pid: int) -> float:
    """Time the process's main thread spent runnable but waiting for a CPU
    (/proc/PID/schedstat, Linux): other processes taking its CPU. nan if unknown.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def process_status(pid: int) -> dict[str, int]:
    """Memory and thread figures from /proc/PID/status (kB for Vm*), plus open fds."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                    out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        pass
    return out


def server_environment() -> dict[str, str]:
    """Our environment without TRACKER_* variables: the server is configured by its
    command line only, so a token or --db set in the shell cannot skew a run.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


# Niceness for every process a benchmark starts (and itself): see set_nice().
NICE = 0


def set_nice(value: int) -> None:
    """Run our processes at this niceness (negative needs root; children inherit it):
    on a shared machine a negative value keeps other users' work off the benchmark's CPUs.
    """
    global NICE
    NICE = value
    if value:
        os.setpriority(os.PRIO_PROCESS, 0, value)


def pin_prefix(cpu: int | None) -> list[str]:
    """`taskset -c CPU` when pinning is wanted and possible, else nothing."""
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def pin_self(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE towards `want` (up to the hard limit); returns the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class Server:
    """A server subprocess on 127.0.0.1:port, its output kept in temporary files."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        cpu: int | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.headers = headers or {}
        self.argv = [*pin_prefix(cpu), *argv]
        self.dir = tempfile.mkdtemp(prefix=f"bench-{name}-")
        self.out_path = Path(self.dir, "stdout")
        self.err_path = Path(self.dir, "stderr")
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def start(self, ready_path: str, timeout: float = 15.0) -> None:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # Own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
            self.proc = track_child(
                subprocess.Popen(
                    self.argv,
                    cwd=REPO,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                    env=server_environment(),
                )
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} on start:\n{self.stderr()}"
                )
            try:
                status, _ = http_request(
                    self.port, "GET", ready_path, headers=self.headers, timeout=1.0
                )
                if status < 500:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready on port {self.port} after {timeout}s")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (a clean shutdown), then SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.returncode = proc.returncode
        return self.returncode

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def problems(self) -> list[str]:
        """Lines of its stderr that signal trouble: tracebacks, errors, warnings."""
        bad = re.compile(r"Traceback|ERROR|WARNING|Exception|CRITICAL")
        return [line for line in self.stderr().splitlines() if bad.search(line)]


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- client processes with a line-JSON command channel (bench/live.py, bench/soak.py) --


class ClientProc:
    """A client subprocess: commands go to its stdin, one JSON answer a line comes back."""

    def __init__(self, proc: asyncio.subprocess.Process, what: str = "client process") -> None:
        self.proc = proc
        self.what = what

    async def ask(self, command: str, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.what} exited ({await self.proc.wait()})")
        return json.loads(line)

    async def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        """Say quit (if it still listens), then wait for it; SIGKILL after 10 s."""
        try:
            await self.tell("quit")
        except (ConnectionError, RuntimeError):
            pass
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def spawn_client(
    script: str, args: Sequence[str], cpu: int | None, log: str
) -> asyncio.subprocess.Process:
    """`python SCRIPT ARGS` (pinned to cpu) in its own session, stderr appended to log;
    kill_children() kills it if it is still running.
    """
    with open(log, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *pin_prefix(cpu),
            python(),
            os.path.abspath(script),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            limit=64 * 1024 * 1024,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    _CLIENT_PROCS.append(proc)
    return proc


def run_async_main(main: Any) -> int:
    """asyncio.run(main) with signal handlers; on Ctrl-C/SIGTERM kill every child, 130."""
    raise_nofile(4096)
    install_signal_handlers()
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        kill_children()
        print("interrupted", file=sys.stderr)
        return 130


# -- the raw WebSocket handshake (the lean clients of bench/live.py and bench/soak.py) ----


def ws_upgrade_request(path: str, port: int, auth: bytes = b"") -> tuple[bytes, bytes]:
    """A WebSocket upgrade request for 127.0.0.1:port; returns (request, Sec-WebSocket-Key)."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n"
        + auth
        + b"\r\n"
    )
    return request, key


def read_response_head(sock: socket.socket) -> tuple[bytes, bytes, bool]:
    """Read an HTTP response head from a blocking socket: (head, bytes after it, whether
    the status is 101 Switching Protocols).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed during the WebSocket handshake")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest, b" 101 " in head.split(b"\r\n", 1)[0] + b" "


# The Lua reporter: wrk's own summary rounds; this prints exact numbers as one JSON line.
_LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"mean_us\":%.1f," ..
    "\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def lua_quote(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def write_wrk_script(
    directory: str,
    name: str,
    method: str,
    path: str,
    body: str = "",
    headers: dict[str, str] | None = None,
    body_file: str | None = None,
) -> str:
    """A static request (wrk pre-builds it: no Lua per request) plus the reporter.

    body_file: read the body from this file when wrk starts (for large bodies, e.g. a
    prebuilt batch), instead of the `body` string.
    """
    lines = [f"wrk.method = {lua_quote(method)}", f"wrk.path = {lua_quote(path)}"]
    for key, value in (headers or {}).items():
        lines.append(f"wrk.headers[{lua_quote(key)}] = {lua_quote(value)}")
    if body_file is not None:
        lines += [
            f'local fh = assert(io.open({lua_quote(body_file)}, "rb"))',
            'wrk.body = fh:read("*a")',
            "fh:close()",
        ]
    elif method != "GET":
        # A body string (even empty) makes wrk send Content-Length.
        lines.append(f"wrk.body = {lua_quote(body)}")
    script = Path(directory, name + ".lua")
    script.write_text("\n".join(lines) + "\n" + _LUA_DONE)
    return str(script)


def wrk_command(
    port: int, script: str, connections: int, threads: int, duration: float, cpu: int | None
) -> list[str]:
    return [
        *pin_prefix(cpu),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        script,
        f"http://127.0.0.1:{port}/",
    ]


def run_wrk(argv: list[str], duration: float) -> dict[str, Any]:
    """Run wrk to completion; returns its numbers (req/s, latency in ms, errors)."""
    proc = track_child(
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    try:
        out, err = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"wrk did not finish: {shlex.join(argv)}") from None
    match = re.search(r"^BENCH_JSON (\{.*\})$", out, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {shlex.join(argv)}\n{out}\n{err}")
    raw = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return {
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "requests": raw["requests"],
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "bytes_per_req": raw["bytes"] / raw["requests"] if raw["requests"] else 0,
        "errors": errors,
    }


def run_wrk_on(server: Server, argv: list[str], duration: float) -> tuple[dict[str, Any], float]:
    """run_wrk, plus what the server process did meanwhile: "server_wait" (share of the
    run it waited for its CPU) and "server_util" in the result; returns (result, server
    CPU seconds).
    """
    pid = server.proc.pid  # type: ignore[union-attr]
    cpu0, wait0, t0 = process_cpu_seconds(pid), process_wait_seconds(pid), time.monotonic()
    res = run_wrk(argv, duration)
    wall = time.monotonic() - t0
    cpu = process_cpu_seconds(pid) - cpu0
    res["server_wait"] = (process_wait_seconds(pid) - wait0) / wall
    res["server_util"] = cpu / wall
    return res, cpu


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return ordered[min(int(rank), len(ordered)) - 1]


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "tracker", "run.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev + (" (tracker/ or run.py modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_line() -> str:
    import tornado

    return (
        f"python {platform.python_version()}, tornado {tornado.version}, "
        f"{cpu_count()} CPUs usable, load avg {os.getloadavg()[0]:.2f}, "
        f"git {git_revision()}"
    )


def verdict(ok: bool) -> str:
    """How a report names a target's outcome."""
    return "met" if ok else "MISSED"


def add_server_options(p: argparse.ArgumentParser, example: str) -> None:
    """The options every benchmark shares: the server, its token, pinning, JSON output."""
    p.add_argument(
        "--server-args",
        default="",
        help="extra run.py arguments (one shell-quoted string); {tmp} is replaced by a fresh "
        f"temporary directory, e.g. '{example}'",
    )
    p.add_argument(
        "--server-cmd",
        default=f"{shlex.quote(python())} run.py",
        help="project server command (run from the repo root); --port P is appended",
    )
    p.add_argument(
        "--token",
        help="run the server with --api-token TOKEN; every request and client sends it, so "
        "the cost of the check is measured too",
    )
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for the servers")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU for load and clients")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the servers, load generators and clients; e.g. -10 (as root) "
        "shields them from other work on a shared machine",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")


def apply_pinning(args: argparse.Namespace) -> None:
    """No CPUs to pin to (--no-pin, or a single CPU): server_cpu and client_cpu are None."""
    if args.no_pin or cpu_count() < 2:
        args.server_cpu = args.client_cpu = None


def python() -> str:
    return sys.executable


# -- realistic activities (for batch bodies and the soak test) ------------------------

_ACTIONS = (
    ("view", 40),
    ("click", 25),
    ("search", 10),
    ("update", 8),
    ("login", 6),
    ("logout", 4),
    ("export", 3),
    ("delete", 2),
    ("permission_change", 2),
)
_AGENTS = (
    "Firefox 131 on Linux",
    "Chrome 129 on Windows 10",
    "Safari 17.6 on macOS 14.6",
    "Edge 129 on Windows 11",
    "okhttp/4.12.0 (Android app 3.18.2)",
)
_PAGES = ("/reports/2025/q3", "/settings/profile", "/billing/invoices", "/admin/users", "/home")


def realistic_activity(rng: Any, unicode: bool = False) -> dict[str, str | None]:
    """One {"user_id", "action", "details"} item of realistic size (details: ~10% null,
    mostly 30-200 characters, ~2% about 1 KB, like a stack trace or a diff).
    unicode: sometimes put non-ASCII characters in details.
    """
    user = f"user_{rng.randint(1, 5000):04d}"
    action = rng.choices([a for a, _ in _ACTIONS], [w for _, w in _ACTIONS])[0]
    roll = rng.random()
    ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if roll < 0.10:
        details = None
    elif roll < 0.12:
        frames = "".join(
            f'\n  File "/srv/app/{rng.choice(("api", "jobs", "models"))}/mod{i}.py", '
            f"line {rng.randint(10, 900)}, in handler_{i}"
            for i in range(rng.randint(10, 16))
        )
        details = f"Client error report from {ip}: Traceback (most recent call last):{frames}"
    elif roll < 0.45:
        details = (
            f"Viewed {rng.choice(_PAGES)}?page={rng.randint(1, 40)}&sort=desc from {ip} "
            f"({rng.choice(_AGENTS)})"
        )
    elif roll < 0.65:
        fields = rng.sample(["email", "display_name", "timezone", "phone", "avatar", "role"], 2)
        details = f"Updated fields {', '.join(fields)}; request id {rng.getrandbits(64):016x}"
    elif roll < 0.85:
        words = " ".join(
            rng.choice(("invoice", "overdue", "march", "acme", "refund", "contract", "q3"))
            for _ in range(rng.randint(1, 5))
        )
        hits, ms = rng.randint(0, 500), rng.randint(3, 900)
        details = f"Search '{words}' returned {hits} results in {ms} ms"
    else:
        details = f"Login from {ip} via SSO ({rng.choice(('okta', 'google', 'azure-ad'))})"
    if unicode and details is not None and rng.random() < 0.2:
        details += rng.choice((" — café ünïcode", " 日本語のメモ", " emoji ✅🚀"))
    return {"user_id": user, "action": action, "details": details}


def batch_body(size: int, seed: int = 1) -> bytes:
    """A JSON array of `size` realistic items, compact, deterministic for a seed."""
    import random

    rng = random.Random(seed)
    items = [realistic_activity(rng) for _ in range(size)]
    return json.dumps(items, separators=(",", ":")).encode()
