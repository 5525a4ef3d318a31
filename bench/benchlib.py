"""What the benchmarks in bench/ share; `python bench/benchlib.py PORTS COUNT OFFSET TOKEN`
is a WebSocket client process (see ws_pool). Not a benchmark: see bench/README.md.
"""

import argparse
import atexit
import base64
import contextlib
import gc
import hashlib
import http.client
import json
import os
import platform
import random
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRACK, BATCH, LIVE = "/api/metrics/track", "/api/metrics/track/batch", "/api/metrics/live"
READY = "/api/metrics/activities?limit=1"
TROUBLE = re.compile(r"Traceback|ERROR|WARNING|Exception|CRITICAL")  # in a server's stderr
_CHILDREN: list[subprocess.Popen] = []  # every process started, killed on any exit


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# Own session (a Ctrl-C reaches only us; we stop children in order), and die with us.
CHILD = {"start_new_session": True, "preexec_fn": _die_with_parent}


def run_main(main: Any) -> int:
    """main() with SIGTERM/SIGHUP as Ctrl-C; on the way out SIGKILL every child still
    running, each by its own pid; 130 when interrupted.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    raise_nofile(4096)
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for proc in _CHILDREN:
            if proc.poll() is None:
                proc.kill()


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def pin(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_and_wait(pid: int) -> tuple[float, float]:
    """Seconds of CPU used (user + system) by pid and every process below it (a server may be
    several), and of waiting runnable while another process had the CPU (/proc/PID/stat and
    schedstat, main threads).
    """
    stats, tree, cpu, wait = {}, [pid], 0.0, 0.0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as fh:
            stats[int(entry)] = fh.read().rsplit(")", 1)[1].split()
    for proc in tree:  # the list grows with each one's children as it goes
        tree += [child for child, fields in stats.items() if int(fields[1]) == proc]
        with contextlib.suppress(OSError, IndexError, KeyError, ValueError):
            cpu += (int(stats[proc][11]) + int(stats[proc][12])) / os.sysconf("SC_CLK_TCK")
            with open(f"/proc/{proc}/schedstat") as fh:
                wait += int(fh.read().split()[1]) / 1e9
    return cpu, wait


class Server:
    """A server process (and any it forks) on 127.0.0.1:port, pinned, stderr in a file.
    ready: a path that answers once it serves (None: accepting TCP is ready).
    """

    def __init__(self, name: str, argv: list[str], port: int, cpu: int | None, logs: str) -> None:
        self.name, self.port, self.argv = name, port, [*pin(cpu), *argv]
        self.err_path = Path(logs, f"{name}.stderr")
        self.headers: dict[str, str] = {}
        self.ready: str | None = READY
        self.proc: subprocess.Popen | None = None
        self.code: int | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env, **CHILD
            )
        _CHILDREN.append(self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.stderr()}")
            with contextlib.suppress(OSError):
                if self.ready is None:
                    socket.create_connection(("127.0.0.1", self.port), 1).close()
                    return
                if http_request(self.port, "GET", self.ready, headers=self.headers)[0] < 500:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready on port {self.port} after {timeout} s")

    def stop(self) -> int | None:
        """SIGINT (a clean shutdown), SIGKILL if it does not exit in time; the exit code."""
        if self.proc is not None and self.code is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.code = self.proc.returncode
        return self.code

    def times(self) -> tuple[float, float]:
        assert self.proc is not None
        return cpu_and_wait(self.proc.pid)

    def stderr(self) -> list[str]:
        path = self.err_path
        return path.read_text(errors="replace").splitlines() if path.exists() else []


def snapshot(servers: list[Server]) -> list[tuple[Server, float, float, float]]:
    return [(s, *s.times(), time.monotonic()) for s in servers]


def usage(snap: list[tuple[Server, float, float, float]]) -> dict[str, dict[str, float]]:
    """Per server since the snapshot: CPU seconds, and CPU use and wait as shares of wall."""
    out = {}
    for s, cpu0, wait0, t0 in snap:
        (cpu, wait), wall = s.times(), time.monotonic() - t0
        out[s.name] = dict(cpu_s=cpu - cpu0, util=(cpu - cpu0) / wall, wait=(wait - wait0) / wall)
    return out


def options(description: str, example: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark shares."""
    p = argparse.ArgumentParser(
        description=f"{description} (see bench/README.md)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    extra = f"e.g. '{example}'; {{tmp}}: the run's temporary directory, {{redis}}: --redis's URL"
    add("--server-args", default="", help=f"more run.py arguments, one string: {extra}")
    add("--server-cmd", default=f"{shlex.quote(sys.executable)} run.py", help="server command")
    add("--token", help="run servers with --api-token TOKEN; send it on every request")
    add("--redis", action="store_true", help="start a private redis-server for the run")
    add("--server-cpu", type=int, default=0, help="CPU for the servers (and redis)")
    add("--client-cpu", type=int, default=1, help="CPU for wrk and the clients")
    add("--no-pin", action="store_true", help="do not pin with taskset")
    add("--json", metavar="FILE", help="also write the raw numbers as JSON")
    add("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    return p


class Bench:
    """One benchmark run: pinning, its temporary directory, a private Redis, the servers."""

    def __init__(self, args: Any, script: str, argv: list[str], clients: bool = False) -> None:
        """clients: this process sends, or runs client processes: pin it to the client CPU."""
        self.args, self.command = args, shlex.join(["python", f"bench/{script}", *argv])
        import tornado

        dirty = output("git", "status", "--porcelain", "-uno", "--", "tracker", "run.py")
        self.environment = (
            f"python {platform.python_version()}, tornado {tornado.version}, "
            f"{len(os.sched_getaffinity(0))} CPUs usable, load avg {os.getloadavg()[0]:.2f}, git "
            f"{output('git', 'rev-parse', '--short', 'HEAD')}"
            f"{' (tracker/ or run.py modified)' * bool(dirty)}"
        )
        if args.no_pin or len(os.sched_getaffinity(0)) < 2:
            args.server_cpu = args.client_cpu = None
        if clients and args.client_cpu is not None:
            os.sched_setaffinity(0, {args.client_cpu})
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{script[:-3]}-")
        self.log = os.path.join(self.tmp, "clients.log")  # the client processes' stderr
        if not args.keep:  # also on an error or Ctrl-C: a database can be large
            atexit.register(shutil.rmtree, self.tmp, True)
        self.headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        self.servers: list[Server] = []
        self.redis: Server | None = None
        if args.redis:
            port = free_port()
            argv = f"redis-server --port {port} --bind 127.0.0.1 --appendonly no --dir".split()
            argv += [self.tmp, "--save", ""]
            self.redis = Server("redis", argv, port, args.server_cpu, self.tmp)
            self.redis.ready = None

    def expand(self, text: str) -> str:
        if "{redis}" in text and self.redis is None:
            raise SystemExit("{redis} in server arguments needs --redis")
        if self.redis is not None:
            text = text.replace("{redis}", f"redis://127.0.0.1:{self.redis.port}/0")
        return text.replace("{tmp}", self.tmp)

    def server(self, name: str, extra: str = "", bare: bool = False) -> Server:
        """A project server: --server-cmd, the port, the token, --server-args and `extra`
        (run.py arguments, or a whole command if it does not start with '-'); or
        bench/bare_server.py with `extra` as its arguments.
        """
        port, args = free_port(), self.args
        words, command = shlex.split(self.expand(extra)), shlex.split(args.server_cmd)
        if words and not words[0].startswith("-"):
            command, words = words, []
        if bare:
            command = [sys.executable, str(REPO / "bench" / "bare_server.py")]
        token = ["--api-token", args.token] if args.token and not bare else []
        common = [] if bare else shlex.split(self.expand(args.server_args))
        argv = [*command, "--port", str(port), *token, *common, *words]
        server = Server(name, argv, port, args.server_cpu, self.tmp)
        server.headers = {} if bare else self.headers
        self.servers.append(server)
        return server

    @property
    def measured(self) -> list[Server]:
        return self.servers + ([self.redis] if self.redis else [])

    @contextlib.contextmanager
    def running(self) -> Any:
        """Redis and the servers started; all stopped at the end, also on an error."""
        try:
            for server in ([self.redis] if self.redis else []) + self.servers:
                server.start()
            yield
        finally:
            for server in self.measured:
                server.stop()

    def head(self, title: str, *lines: str) -> None:
        args = self.args
        print(f"\n## {title}\n\n- command: `{self.command}`\n- environment: {self.environment}")
        for server in self.measured:
            print(f"- {server.name}: `{shlex.join(server.argv)}`")
        where = f"servers on CPU {args.server_cpu}, load and clients on CPU {args.client_cpu}"
        print(f"- pinning: {where if args.server_cpu is not None else 'none'}")
        for line in lines:
            print(f"- {line}")

    def tail(self, data: Any) -> None:
        """Every server's exit code and suspicious stderr lines, the clients' stderr; with
        --json, data to that file.
        """
        for server in self.measured:
            bad = [line for line in server.stderr() if TROUBLE.search(line)]
            shown = f": {'; '.join(bad[:3])}" if bad else ""
            print(f"- {server.name}: exit code {server.code}, stderr problems {len(bad)}{shown}")
        if os.path.exists(self.log) and (err := Path(self.log).read_text().strip()):
            print(f"- client processes' stderr: {err[:500]}")
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(data, indent=1, default=str))


def output(*cmd: str) -> str:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout.strip()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct 0..100); nan when empty."""
    ordered = sorted(values)
    return ordered[max(1, -int(-len(ordered) * pct // 100)) - 1] if ordered else float("nan")


def med(runs: list[dict], key: str, fmt: str = ".1f") -> str:
    """The median of one field over runs, formatted; "-" if the runs lack it."""
    return format(median([r[key] for r in runs]), fmt) if runs and key in runs[0] else "-"


def problems(checks: Counter[str]) -> Any:
    """The counts of check_clients that are problems, or "none"."""
    return {k: v for k, v in checks.items() if v and k not in ("expected", "received")} or "none"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(head: str, rows: list[str]) -> None:
    """A markdown table; the head and each row are cells joined by " | "."""
    print(f"\n| {head} |\n|" + "---|" * (head.count(" | ") + 1))
    for row in rows:
        print(f"| {row} |")
    print()


def http_request(port: int, method: str, path: str, body: Any = None, headers: Any = None) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def last_id(port: int, headers: dict[str, str]) -> int:
    status, body = http_request(port, "GET", READY, headers=headers)
    items = json.loads(body) if status == 200 else []
    return items[-1]["id"] if items else 0


# wrk's own summary rounds; this reporter prints exact numbers as one JSON line.
_LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"p50_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"connect\":%d,\"read\":%d,\"write\":%d," ..
    "\"status\":%d,\"timeout\":%d}\n", summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_script(tmp: str, name: str, method: str, path: str, headers: dict, body: Any = None) -> str:
    """A static request (wrk builds it once: no Lua per request) and the reporter; a body
    goes to a file that wrk reads when it starts.
    """
    q, stem = json.dumps, Path(tmp, name)  # a JSON string literal is a valid Lua one here
    lines = [f"wrk.method = {q(method)}", f"wrk.path = {q(path)}"]
    lines += [f"wrk.headers[{q(k)}] = {q(v)}" for k, v in headers.items()]
    if body is not None:
        stem.with_suffix(".body").write_bytes(body)
        lines.append(f'local f = io.open({q(str(stem.with_suffix(".body")))}, "rb")')
        lines.append('wrk.body = f:read("*a")')
    elif method != "GET":
        lines.append('wrk.body = ""')  # so that wrk sends Content-Length: 0
    stem.with_suffix(".lua").write_text("\n".join(lines) + "\n" + _LUA_DONE)
    return str(stem.with_suffix(".lua"))


def wrk_argv(port: int, script: str, conns: int, secs: float, cpu: Any, timeout: int = 2) -> list:
    options = f"-t1 -c{conns} -d{max(1, round(secs))}s --timeout {timeout}s -s".split()
    return [*pin(cpu), "wrk", *options, script, f"http://127.0.0.1:{port}/"]


def run_wrk(argv: list[str], seconds: float) -> dict[str, Any]:
    """Run wrk to the end: req/s, latency in ms, bytes per answer, errors."""
    pipe = subprocess.PIPE
    proc = subprocess.Popen(argv, stdout=pipe, stderr=pipe, text=True, **CHILD)
    _CHILDREN.append(proc)
    try:
        out, err = proc.communicate(timeout=seconds + 90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"wrk did not finish: {shlex.join(argv)}") from None
    if proc.returncode or not (match := re.search(r"^BENCH_JSON (\{.*\})$", out, re.MULTILINE)):
        raise RuntimeError(f"wrk failed ({proc.returncode}): {shlex.join(argv)}\n{out}\n{err}")
    raw = json.loads(match.group(1))
    n, errors = raw["requests"], ("connect", "read", "write", "status", "timeout")
    return {
        "requests": n,
        "rps": n / (raw["duration_us"] / 1e6),
        **{f"{k}_ms": raw[f"{k}_us"] / 1000 for k in ("p50", "p99", "max")},
        "bytes_per_req": raw["bytes"] / n if n else 0,
        "errors": {k: raw[k] for k in errors if raw[k]},
    }


_ACTIONS = "view click search update login logout export delete permission_change".split()
_WEIGHTS = (40, 25, 10, 8, 6, 4, 3, 2, 2)
_AGENTS = (
    "Firefox 131 on Linux|Chrome 129 on Windows 10|Safari 17.6 on macOS 14.6|"
    "Edge 129 on Windows 11|okhttp/4.12.0 (Android app 3.18.2)"
).split("|")
_PAGES = ("/reports/2025/q3", "/settings/profile", "/billing/invoices", "/admin/users", "/home")
_WORDS = ("invoice", "overdue", "march", "acme", "refund", "contract", "q3")


def realistic_activity(rng: Any, unicode: bool = False) -> dict[str, str | None]:
    """{"user_id", "action", "details"} of realistic size: 5,000 users, 9 actions, details
    ~10% null, mostly 30-200 characters, ~2% about 1 KB (a stack trace); unicode: some
    non-ASCII details.
    """
    r = rng.randint
    user, action = f"user_{r(1, 5000):04d}", rng.choices(_ACTIONS, _WEIGHTS)[0]
    roll, ip = rng.random(), f"10.{r(0, 255)}.{r(0, 255)}.{r(1, 254)}"
    details: str | None = None
    if 0.10 <= roll < 0.12:
        details = f"Client error report from {ip}: Traceback (most recent call last):" + "".join(
            f'\n  File "/srv/app/{rng.choice(("api", "jobs", "models"))}/mod{i}.py", '
            f"line {r(10, 900)}, in handler_{i}"
            for i in range(r(10, 16))
        )
    elif 0.12 <= roll < 0.45:
        page = rng.choice(_PAGES)
        details = f"Viewed {page}?page={r(1, 40)}&sort=desc from {ip} ({rng.choice(_AGENTS)})"
    elif 0.45 <= roll < 0.65:
        fields = rng.sample(["email", "display_name", "timezone", "phone", "avatar", "role"], 2)
        details = f"Updated fields {', '.join(fields)}; request id {rng.getrandbits(64):016x}"
    elif 0.65 <= roll < 0.85:
        words = " ".join(rng.choice(_WORDS) for _ in range(r(1, 5)))
        details = f"Search '{words}' returned {r(0, 500)} results in {r(3, 900)} ms"
    elif roll >= 0.85:
        details = f"Login from {ip} via SSO ({rng.choice(('okta', 'google', 'azure-ad'))})"
    if unicode and details is not None and rng.random() < 0.2:
        details += rng.choice((" — café ünïcode", " 日本語のメモ", " emoji ✅🚀"))
    return {"user_id": user, "action": action, "details": details}


def batch_body(size: int, seed: int = 1) -> bytes:
    """A compact JSON array of `size` realistic items, the same for a seed."""
    rng = random.Random(seed)
    items = [realistic_activity(rng) for _ in range(size)]
    return json.dumps(items, separators=(",", ":")).encode()


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same
ID_RE, LAST_ID_RE = re.compile(rb'"id":(\d+)'), re.compile(rb'"last_id":(\d+)')
TYPE_RE, ACTIVITIES = re.compile(rb'"type":"([a-z_]+)"'), b'{"type":"activities"'
ALERT_RE = re.compile(rb'"activity_ids":\[(?:\d+,)*(\d+)\]')  # an alert's last activity id


def ws_connect(port: int, path: str, auth: str) -> tuple[socket.socket, bytes]:
    """The upgrade, written by hand on a blocking socket, Sec-WebSocket-Accept checked;
    returns (socket, bytes after the answer's head). RuntimeError if refused.
    """
    sock = socket.create_connection(("127.0.0.1", port), 30)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: "
        f"Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    digest = hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    if not head.startswith(b"HTTP/1.1 101 ") or base64.b64encode(digest) not in head:
        sock.close()
        raise RuntimeError(f"handshake refused: {head[:100]!r}")
    return sock, rest


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client-to-server frame (clients must mask); payloads here are < 126 bytes."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + masked


def activity_ids(payload: bytes) -> range | list[int]:
    """The ids of a long activities message: a range from its first id and their count, if
    the last id agrees; else every id.
    """
    if match := ID_RE.search(payload):
        first, count = int(match.group(1)), payload.count(b'"id":')
        tail = ID_RE.match(payload, payload.rfind(b'{"id":') + 1)
        if tail and int(tail.group(1)) - first == count - 1:
            return range(first, first + count)
    return [int(x) for x in ID_RE.findall(payload)]


class Stream:
    """One client's connection and what it saw: hellos, a reset, ids as runs of consecutive
    ids, ids at or below an earlier one (backwards), other messages, the close.
    """

    STATE = "since hello_last hellos before_hello reset close top other runs count backwards open"
    __slots__ = (*STATE.split(), "sock", "fd", "buf", "frag", "mode", "closing")

    def __init__(self, sock: socket.socket, since: int | None = None) -> None:
        self.sock, self.fd, self.since, self.buf, self.frag = sock, sock.fileno(), since, b"", None
        self.open, self.hello_last, self.hellos, self.before_hello = True, None, 0, 0
        self.reset = self.close = self.mode = None  # mode, closing: a churner's
        self.top, self.closing = -1, False  # top: -1 until the hello says where we stand
        self.other: Counter[str] = Counter()
        self.forget()

    def forget(self) -> None:
        self.runs: list[list[int]] = []
        self.count = self.backwards = 0

    def on_message(self, payload: bytes) -> range | list[int]:
        if payload.startswith(ACTIVITIES):
            long, runs = len(payload) > 4096, self.runs  # long: a batch or a replay
            ids = activity_ids(payload) if long else [int(x) for x in ID_RE.findall(payload)]
            self.before_hello += not self.hellos
            self.count += len(ids)
            consecutive = ids and ids[-1] - ids[0] == len(ids) - 1
            for a, b in ((ids[0], ids[-1]),) if consecutive else zip(ids, ids, strict=True):
                self.backwards += a <= self.top
                if runs and runs[-1][1] + 1 == a:
                    runs[-1][1] = b
                else:
                    runs.append([a, b])
                if b > self.top:
                    self.top = b
            return ids
        kind = m.group(1).decode() if (m := TYPE_RE.search(payload)) else "?"
        if kind == "hello" and not self.hellos:
            found = LAST_ID_RE.search(payload)
            self.hello_last = int(found.group(1)) if found else 0
            if self.top < 0:  # what follows is after `since`, or after the hello's last_id
                self.top = self.since if self.since is not None else self.hello_last
        elif kind == "reset":
            self.reset, self.top = json.loads(payload).get("reason"), -1
        elif kind != "hello":
            self.other[kind] += 1
        self.hellos += kind == "hello"
        return []

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE.split()}


class WsClients:
    """Many WebSocket clients in one epoll loop (no asyncio): raw sockets, a minimal frame
    parser; driven by line commands on stdin, one JSON line answered per question.
    """

    def __init__(self, token: str | None = None) -> None:
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.streams: dict[int, Stream] = {}
        self.ep, self.timing, self.bad_frames = select.epoll(), False, 0
        self.closes: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        self.seen: dict[int, list[int]] = {}  # id -> [latest kernel receipt, latest app receipt]
        self.cpu0, self.wall0 = sum(os.times()[:2]), time.monotonic()
        for stream in self.streams.values():
            stream.forget()

    def connect(self, port: int, path: str = LIVE, since: int | None = None) -> Stream:
        sock, rest = ws_connect(port, path, self.auth)
        sock.setblocking(False)
        stream = self.streams[sock.fileno()] = Stream(sock, since)
        self.ep.register(stream.fd, select.EPOLLIN)
        self.feed(stream, rest, 0, time.time_ns())
        return stream

    def on_readable(self, stream: Stream) -> None:
        try:
            data, anc, _, _ = stream.sock.recvmsg(65536, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        app_ns, kernel_ns = time.time_ns(), 0
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack_from("qq", cdata)
                kernel_ns = sec * 1_000_000_000 + nsec
        if not data:
            return self.drop(stream, "eof")
        self.feed(stream, data, kernel_ns, app_ns)

    def feed(self, stream: Stream, chunk: bytes, kernel_ns: int, app_ns: int) -> None:
        """Parse frames: unmasked, 7/16/64-bit lengths, fragments; answer ping and close."""
        data = stream.buf + chunk if stream.buf else chunk
        off, size = 0, len(data)
        while size - off >= 2:
            b0, b1 = data[off], data[off + 1]
            length, head = b1 & 0x7F, 2
            if length >= 126:
                head = 4 if length == 126 else 10
                if size - off < head:
                    break
                length = int.from_bytes(data[off + 2 : off + head], "big")
            if b1 & 0x80:  # servers must not mask
                self.bad_frames, head = self.bad_frames + 1, head + 4
            if size - off < head + length:
                break
            payload, opcode = data[off + head : off + head + length], b0 & 15
            off += head + length
            if opcode in (1, 2) and b0 & 0x80:
                self.on_text(stream, payload, kernel_ns, app_ns)
            elif opcode in (0, 1, 2) and (opcode or stream.frag is not None):  # fragments
                stream.frag = (stream.frag or b"") + payload if opcode == 0 else payload
                if b0 & 0x80:
                    self.on_text(stream, stream.frag, kernel_ns, app_ns)
                    stream.frag = None
            elif opcode == 0x9:
                self.send(stream, masked_frame(0xA, payload))
            elif opcode == 0x8:
                self.send(stream, masked_frame(0x8, payload[:2]))
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                return self.drop(stream, str(code))
            elif opcode != 0xA:
                self.bad_frames += 1
        stream.buf = data[off:] if off < size else b""

    def on_text(self, stream: Stream, payload: bytes, kernel_ns: int, app_ns: int) -> None:
        ids = stream.on_message(payload)
        if self.timing:
            if not ids and (alert := ALERT_RE.search(payload)):  # seen[-id]: id's alert
                ids = [-int(alert.group(1))]
            seen = self.seen
            for id_ in ids:
                if (rec := seen.get(id_)) is None:
                    seen[id_] = [kernel_ns, app_ns]
                else:  # one process reads in order: its latest app receipt is the last
                    rec[0], rec[1] = max(rec[0], kernel_ns), app_ns

    def send(self, stream: Stream, frame: bytes) -> None:
        with contextlib.suppress(OSError):
            stream.sock.send(frame)

    def drop(self, stream: Stream, why: str) -> None:
        if stream.open:
            stream.open, stream.close = False, why
            self.closes[why] += 1
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(stream.fd)
            stream.sock.close()

    def status(self) -> dict[str, Any]:
        live = [s.top for s in self.streams.values() if s.open]
        hellos = sum(s.hellos > 0 for s in self.streams.values())
        return {"open": len(live), "hellos": hellos, "min_last": min(live, default=-1)}

    def report(self) -> dict[str, Any]:
        cpu, wall = sum(os.times()[:2]) - self.cpu0, time.monotonic() - self.wall0
        out = self.status() | {"clients": [s.state() for s in self.streams.values()]}
        out.update(bad_frames=self.bad_frames, closes=self.closes, seen=self.seen)
        return out | {"cpu_s": cpu, "wall_s": wall}

    def command(self, line: str) -> bool:
        """Answer one command; False to end the loop."""
        if line.startswith("timing"):
            self.timing = line == "timing on"
        elif line == "reset":
            self.reset()
        elif line in ("status", "report"):
            self.reply(getattr(self, line)())
        elif line == "quit":
            for stream in self.streams.values():
                self.send(stream, masked_frame(0x8, (1000).to_bytes(2, "big")))
                stream.sock.close()
        return line != "quit"

    def tick(self) -> float:
        """Periodic work between polls (a subclass's); returns the seconds to the next."""
        return 1.0

    def run(self) -> None:
        stdin, pending = sys.stdin.fileno(), b""
        os.set_blocking(stdin, False)
        self.ep.register(stdin, select.EPOLLIN)
        while True:
            for fd, _event in self.ep.poll(self.tick(), 1024):
                if (stream := self.streams.get(fd)) is not None:
                    self.on_readable(stream)
                elif not (chunk := os.read(stdin, 65536)):
                    return  # the parent is gone
                else:
                    *lines, pending = (pending + chunk).split(b"\n")
                    if not all(self.command(line.decode().strip()) for line in lines):
                        return

    @staticmethod
    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Pool:
    """Client processes, each answering one JSON line per command on its stdin."""

    def __init__(self, cpu: int | None, log: str) -> None:
        self.cpu, self.log, self.procs = cpu, log, []

    def start(self, script: str, argvs: list[list[str]]) -> "Pool":
        """One process per argv; each says it is ready with a first line."""
        with open(self.log, "ab") as err:
            for argv in argvs:
                cmd, pipe = [*pin(self.cpu), sys.executable, script, *argv], subprocess.PIPE
                proc = subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=err, **CHILD)
                self.procs.append(proc)
        _CHILDREN.extend(self.procs)
        for proc in self.procs:
            self.answer(proc, 180)
        return self

    def answer(self, proc: subprocess.Popen, timeout: float = 60) -> Any:
        assert proc.stdout is not None
        ready = select.select([proc.stdout], [], [], timeout)[0]
        if not ready or not (line := proc.stdout.readline()):
            tail = Path(self.log).read_text(errors="replace")[-800:]
            raise RuntimeError(f"a client process did not answer ({proc.poll()}): {tail}")
        return json.loads(line)

    def tell(self, command: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()

    def all(self, command: str) -> list[dict[str, Any]]:
        self.tell(command)
        return [self.answer(proc) for proc in self.procs]

    def caught_up(self, last: int, timeout: float) -> tuple[float, bool, int]:
        """Wait until every open client has seen `last`: (seconds, whether, open clients)."""
        t0 = time.monotonic()
        while True:
            status = self.all("status")
            opened = sum(s["open"] for s in status)
            done = min((s["min_last"] for s in status if s["open"]), default=-1) >= last
            if done or not opened or time.monotonic() - t0 > timeout:
                return time.monotonic() - t0, done, opened
            time.sleep(0.02)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.tell("quit")
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def ws_pool(bench: Bench, ports: list[int], count: int) -> Pool:
    """`count` WebSocket clients over --client-procs processes on the client CPU,
    round-robin over the ports.
    """
    procs, token = max(1, min(bench.args.client_procs, count)), bench.args.token or ""
    cut, where = [i * count // procs for i in range(procs + 1)], ",".join(map(str, ports))
    argvs = [[where, str(cut[i + 1] - cut[i]), str(cut[i]), token] for i in range(procs)]
    return Pool(bench.args.client_cpu, bench.log).start(__file__, argvs)


def check_clients(reports: list[dict[str, Any]], acked: list[int]) -> Counter[str]:
    """Every client of these WsClients reports against the sorted acknowledged ids it should
    have got: after `since`, or its hello's last_id, or its first id after a reset; up to
    its last id if it has closed. Counts missed, unexpected (received, never acknowledged),
    duplicated, out of order, and protocol problems; summed.
    """
    total: Counter[str] = Counter()
    for c in (c for r in reports for c in r["clients"]):
        start = c["since"] if c["since"] is not None else c["hello_last"] or 0
        start = c["runs"][0][0] - 1 if c["reset"] and c["runs"] else start
        end = bisect_right(acked, c["top"]) if not c["open"] else len(acked)
        expected, merged = acked[bisect_right(acked, start) : end], []
        for a, b in sorted(c["runs"]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        distinct = sum(b - a + 1 for a, b in merged)
        covered = sum(bisect_right(expected, b) - bisect_left(expected, a) for a, b in merged)
        missed, n = len(expected) - covered, c["count"]
        total.update(expected=len(expected), received=n, missed=missed, duplicates=n - distinct)
        total.update(unexpected=distinct - covered, out_of_order=c["backwards"])
        total.update(not_one_hello=c["hellos"] != 1, before_hello=c["before_hello"])
        total.update({f"message {k}": v for k, v in c["other"].items()})
        total["worst_missed"] = max(total["worst_missed"], missed)
    total["bad_frames"] = sum(r["bad_frames"] for r in reports)
    return total


if __name__ == "__main__":
    ports, count, offset, token = sys.argv[1:5]
    gc.disable()  # no cycles here; collections walking 1,000 clients cost more than messages
    raise_nofile(int(count) + 256)
    clients, port_list = WsClients(token or None), [int(p) for p in ports.split(",")]
    for i in range(int(count)):
        clients.connect(port_list[(int(offset) + i) % len(port_list)])
    clients.reply({"ready": len(clients.streams)})
    clients.run()
