"""Soak test: sustained mixed ingest with live listeners and churning clients.

    python bench/soak.py                               # 2 minutes, 500/s, 100 listeners
    python bench/soak.py --duration 600 --rate 1000
    python bench/soak.py --server-args "--db {tmp}/soak.db"

One run, one machine, only 127.0.0.1: starts `python run.py --host 127.0.0.1 --port P
[--server-args]` (pinned to --server-cpu; everything else on --client-cpu), then for
--duration seconds:

- --senders (4) HTTP keep-alive clients POST /api/metrics/track at a steady total --rate
  (500/s), rotating query string, JSON body and form body, realistic fields (some
  non-ASCII); every 50th request carries an Idempotency-Key and is sent again at once
  (the answer must be the same activity, marked Idempotent-Replayed);
- one more keep-alive client POSTs /api/metrics/track/batch every --batch-every (2 s), of
  1..--batch-max (1,000) items; every 4th batch carries event_ids (at most 200 items) and
  is sent again at once (recorded must be 0, the ids the same);
- --listeners (100) WebSocket clients stay connected (lean raw-socket clients from
  bench/live.py, over --workers processes) and record every id they get;
- a churn process opens one more WebSocket every ~--churn-every (0.5 s), some with
  `since=` a recent id, reads for a random --hold-min..--hold-max (0.2-3 s) and hangs up
  (a clean close, a FIN without a close frame, or a reset), checking its own stream.

Checks: every acknowledged id (from POST and batch answers) reaches every listener that
stayed connected exactly once, in order (missed, duplicates, out of order, unexpected
ids); answers echo what was sent; non-2xx and exceptions; close codes seen; churners' ids
contiguous from where the server said they start; 1001 to every listener on shutdown;
tracebacks or errors in the server's stderr. Memory: the server's VmRSS at start, after
--settle (20 s) of load and at the end; goal end <= 1.10 x the 20 s value.

`python bench/soak.py --worker listen|churn ...` is a client process (internal).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import random
import select
import shlex
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import benchlib as bl
import live  # the lean WebSocket client (bench/live.py)

LIVE_PATH = live.LIVE_PATH
READY_PATH = "/api/metrics/activities?limit=1"
TARGET_RSS_RATIO = 1.10


# ======================================================================================
# Client processes
# ======================================================================================


def record_ids(st: dict[str, Any], ids: list[int]) -> None:
    """Append ids to a client's runs of consecutive ids; count ids at or below the highest
    seen so far (a duplicate, or out of order).
    """
    if not ids:
        return
    runs = st["runs"]
    first = ids[0]
    st["ids"] += len(ids)
    if ids[-1] - first == len(ids) - 1 and ids == list(range(first, first + len(ids))):
        chunks = [(first, ids[-1])]
    else:
        chunks = [(x, x) for x in ids]
    for a, b in chunks:
        if a <= st["top"]:
            st["backwards"] += 1
        if runs and runs[-1][1] + 1 == a:
            runs[-1][1] = b
        else:
            runs.append([a, b])
        st["top"] = max(st["top"], b)


def new_state(since: int | None = None) -> dict[str, Any]:
    return {
        "since": since,
        "hello_last": None,
        "hellos": 0,
        "reset": None,
        "runs": [],
        "ids": 0,
        "top": -1,
        "backwards": 0,
        "before_hello": 0,
        "other": {},
        "close": None,
    }


def on_message(st: dict[str, Any], payload: bytes) -> int | None:
    """Update a client's state from one text message; returns the hello's last_id."""
    if payload.startswith(live.ACTIVITIES_PREFIX):
        if not st["hellos"]:
            st["before_hello"] += 1
        record_ids(st, [int(x) for x in live.ID_RE.findall(payload)])
        return None
    match = live.TYPE_RE.search(payload)
    kind = match.group(1).decode() if match else "?"
    if kind == "hello":
        st["hellos"] += 1
        found = live.LAST_ID_RE.search(payload)
        if found and st["hello_last"] is None:
            st["hello_last"] = int(found.group(1))
            if st["top"] < 0:
                # Ids from here on must be new: after `since` (a replay) or after last_id.
                st["top"] = st["since"] if st["since"] is not None else st["hello_last"]
            return st["hello_last"]
    elif kind == "reset":
        reason = json.loads(payload).get("reason")
        st["reset"] = reason
        st["top"] = -1  # the whole buffer follows: any start is fine
    else:
        st["other"][kind] = st["other"].get(kind, 0) + 1
    return None


class Listeners(live.Worker):
    """N WebSocket clients that stay connected and keep every id they get, as runs."""

    def __init__(self, port: int, count: int, token: str | None) -> None:
        self.state: dict[int, dict[str, Any]] = {}
        super().__init__(port, count, batch=50, token=token)

    def on_text(self, client: live.Client, payload: bytes, kernel_ns: int, app_ns: int) -> None:
        st = self.state.setdefault(client.fd, new_state())
        self.msgs += 1
        hello = on_message(st, payload)
        if hello is not None:
            client.hello = True
        client.last = max(client.last, st["top"])

    def drop(self, client: live.Client, why: str) -> None:
        if client.open:
            self.state.setdefault(client.fd, new_state())["close"] = why
        super().drop(client, why)

    def report(self) -> dict[str, Any]:
        clients = []
        for fd, client in self.clients.items():
            st = self.state.get(fd, new_state())
            clients.append({**st, "open": client.open})
        return {
            **self.status(),
            "clients": clients,
            "bad_frames": self.bad_frames,
            "closes": self.closes,
            "cpu_s": sum(os.times()[:2]) - self.cpu0,
            "wall_s": time.monotonic() - self.wall0,
        }


class Churner(live.Worker):
    """Opens a WebSocket every ~interval, holds it for a random time, hangs up."""

    MODES = ("clean", "fin", "rst")

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.port, 0, batch=1, token=args.token)
        self.args = args
        self.rng = random.Random(args.seed)
        self.state: dict[int, dict[str, Any]] = {}
        self.deadline: dict[int, float] = {}
        self.running = True
        self.latest = 0  # the highest id any churner saw: a recent `since`
        self.attempts = 0
        self.stats: Counter[str] = Counter()
        self.problems: list[str] = []

    def connect_one(self) -> None:
        args, rng = self.args, self.rng
        # Spread evenly rather than drawn: every run covers every mode, with and without since.
        n = self.attempts
        self.attempts += 1
        since = None
        if self.latest and int((n + 1) * args.since_share) > int(n * args.since_share):
            since = max(0, self.latest - rng.randint(0, 300))
        path = LIVE_PATH + (f"?since={since}" if since is not None else "")
        mode = self.MODES[n % len(self.MODES)]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(bl.ws_upgrade_request(path, self.port, self.auth)[0])
            head, rest, switched = bl.read_response_head(sock)
            if not switched:
                status = head.split(b"\r\n", 1)[0]
                self.stats["handshake_refused"] += 1
                self.note(f"handshake refused: {status[:80]!r}")
                sock.close()
                return
        except OSError as exc:
            self.stats["handshake_error"] += 1
            self.note(f"handshake: {type(exc).__name__}: {exc}")
            sock.close()
            return
        sock.setblocking(False)
        client = live.Client(sock)
        self.clients[client.fd] = client
        self.state[client.fd] = {**new_state(since), "mode": mode, "closing": False}
        hold = rng.uniform(args.hold_min, args.hold_max)
        self.deadline[client.fd] = time.monotonic() + hold
        self.ep.register(client.fd, select.EPOLLIN)
        self.stats["connections"] += 1
        self.stats[f"since={'yes' if since is not None else 'no'}"] += 1
        if rest:
            self.feed(client, rest, 0, 0)

    def note(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def on_text(self, client: live.Client, payload: bytes, kernel_ns: int, app_ns: int) -> None:
        st = self.state[client.fd]
        if st["closing"]:
            return
        was_empty = not st["runs"]
        on_message(st, payload)
        if was_empty and st["runs"]:
            # The first id: right after `since` (or the hello's last_id), unless a reset
            # said the whole buffer follows.
            if st["reset"] is None:
                start = st["since"] if st["since"] is not None else st["hello_last"]
                if start is None or st["runs"][0][0] != start + 1:
                    self.stats["wrong_first_id"] += 1
                    self.note(
                        f"first id {st['runs'][0][0]}, expected {start} + 1 "
                        f"(since {st['since']}, hello last_id {st['hello_last']})"
                    )
        if st["runs"]:
            self.latest = max(self.latest, st["runs"][-1][1])

    def hang_up(self, client: live.Client) -> None:
        st = self.state[client.fd]
        mode = st["mode"]
        self.stats[f"hang_up_{mode}"] += 1
        if mode == "clean":
            st["closing"] = True
            self.send(client, live.masked_frame(0x8, (1000).to_bytes(2, "big")))
            self.deadline[client.fd] = time.monotonic() + 2.0  # for the server's answer
            return
        if mode == "rst":
            # Linger on with a zero timeout: close() sends a reset, as a crashed client.
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.drop(client, f"client_{mode}")

    def drop(self, client: live.Client, why: str) -> None:
        if not client.open:
            return
        st = self.state[client.fd]
        if st["closing"]:
            # Our clean close: the server's close frame (or its absence) is the answer.
            self.stats["clean_close_answered" if why == "1000" else f"clean_close_{why}"] += 1
        elif not why.startswith("client_"):
            self.stats[f"server_closed_{why}"] += 1
            self.note(f"server closed a churner: {why}")
        self.finish(client.fd, st)
        self.deadline.pop(client.fd, None)
        super().drop(client, why)
        del self.clients[client.fd]

    def finish(self, fd: int, st: dict[str, Any]) -> None:
        runs = st["runs"]
        self.stats["ids"] += st["ids"]
        if len(runs) > 1:
            self.stats["gaps"] += len(runs) - 1
            self.note(f"gap in a churner's stream: runs {runs[:5]}")
        self.stats["backwards"] += st["backwards"]
        self.stats["before_hello"] += st["before_hello"]
        if st["hellos"] != 1:
            self.stats["hello_count_wrong"] += 1
        if st["reset"]:
            self.stats[f"reset_{st['reset']}"] += 1
        for kind, n in st["other"].items():
            self.stats[f"message_{kind}"] += n
        self.state.pop(fd, None)

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.ep.register(stdin, select.EPOLLIN)
        pending = b""
        args, rng = self.args, self.rng
        next_open = time.monotonic()
        while True:
            now = time.monotonic()
            wake = next_open if self.running else now + 1.0
            if self.deadline:
                wake = min(wake, min(self.deadline.values()))
            for fd, _event in self.ep.poll(max(0.0, wake - now), 1024):
                client = self.clients.get(fd)
                if client is not None:
                    self.on_readable(client)
                    continue
                chunk = os.read(stdin, 65536)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    command = line.decode().strip()
                    if command == "stop":
                        self.running = False
                        for fd2 in list(self.deadline):
                            self.deadline[fd2] = 0.0
                    elif command == "report":
                        self.reply(
                            {
                                "stats": dict(self.stats),
                                "problems": self.problems,
                                "closes": self.closes,
                                "bad_frames": self.bad_frames,
                                "open": len(self.clients),
                            }
                        )
                    elif command == "quit":
                        for client in list(self.clients.values()):
                            client.sock.close()
                        return
            now = time.monotonic()
            for fd, when in list(self.deadline.items()):
                if when <= now and fd in self.clients:
                    client = self.clients[fd]
                    if self.state[fd]["closing"]:
                        self.drop(client, "no_close_answer")
                    else:
                        self.hang_up(client)
            if self.running and now >= next_open:
                self.connect_one()
                next_open = max(now, next_open) + rng.uniform(
                    0.5 * args.churn_every, 1.5 * args.churn_every
                )


# ======================================================================================
# Parent: server, client processes, senders, report.
# ======================================================================================


async def spawn(args: argparse.Namespace, extra: list[str], log: str) -> bl.ClientProc:
    argv = ["--port", str(args.port), *(["--token", args.token] if args.token else []), *extra]
    return bl.ClientProc(await bl.spawn_client(__file__, argv, args.client_cpu, log))


class HttpConn:
    """One keep-alive HTTP/1.1 connection with a minimal response reader."""

    def __init__(self, port: int, auth: str) -> None:
        self.port, self.auth = port, auth
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.opened = 0

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.opened += 1
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{self.auth}"
        for key, value in (headers or {}).items():
            head += f"{key}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed before the answer")
        status = int(status_line.split()[1])
        answer_headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        if "chunked" in answer_headers.get("transfer-encoding", ""):
            raise ConnectionError("chunked answer: not expected here")
        payload = await self.reader.readexactly(int(answer_headers.get("content-length", 0)))
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        return status, answer_headers, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Load:
    """The senders: single POSTs at a steady rate, and occasional batches."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.auth = f"Authorization: Bearer {args.token}\r\n" if args.token else ""
        self.acked: set[int] = set()
        self.statuses: Counter[str] = Counter()  # "kind status" -> count
        self.exceptions: Counter[str] = Counter()
        self.problems: list[str] = []
        self.mismatches = 0
        self.replays = Counter()  # kind -> replays checked
        self.replay_bad = 0
        self.late_ms: list[float] = []
        # kind -> [(seconds since the load started, round trip ms)]
        self.rtt: dict[str, list[tuple[float, float]]] = {}
        self.t0 = 0.0
        self.batch_items = 0
        self.connections = 0
        self.stopping = False

    def note(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    async def call(
        self,
        conn: HttpConn,
        kind: str,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes] | None:
        sent = time.monotonic()
        try:
            status, answer_headers, payload = await asyncio.wait_for(
                conn.request(method, path, body, headers), self.args.request_timeout
            )
            self.rtt.setdefault(kind, []).append((sent - self.t0, (time.monotonic() - sent) * 1000))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.exceptions[f"{kind} {type(exc).__name__}"] += 1
            self.note(f"{kind}: {type(exc).__name__}: {exc}")
            conn.close()
            return None
        self.statuses[f"{kind} {status}"] += 1
        if not 200 <= status < 300:
            self.note(f"{kind}: status {status}: {payload[:200]!r}")
            return None
        return status, answer_headers, payload

    @staticmethod
    def request_for(item: dict[str, Any], form: int) -> tuple[str, bytes, dict[str, str]]:
        fields = {k: v for k, v in item.items() if v is not None}
        if form == 0:
            return f"/api/metrics/track?{urlencode(fields)}", b"", {}
        if form == 1:
            body = json.dumps(item).encode()
            return "/api/metrics/track", body, {"Content-Type": "application/json"}
        return (
            "/api/metrics/track",
            urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )

    def matches(self, sent: dict[str, Any], got: dict[str, Any]) -> bool:
        return all(got.get(k) == sent.get(k) for k in ("user_id", "action", "details"))

    async def single(self, index: int, start: float, stop: float) -> None:
        args = self.args
        rng = random.Random(args.seed * 1000 + index)
        conn = HttpConn(args.port, self.auth)
        per = args.rate / args.senders
        loop = asyncio.get_running_loop()
        seq = 0
        try:
            while not self.stopping:
                target = start + (index / args.rate) + seq / per
                if target >= stop:
                    break
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.late_ms.append(max(0.0, loop.time() - target) * 1000)
                item = bl.realistic_activity(rng, unicode=True)
                path, body, headers = self.request_for(item, seq % 3)
                keyed = seq % 50 == 49
                if keyed:
                    headers = {**headers, "Idempotency-Key": f"soak-{index}-{seq}"}
                seq += 1
                res = await self.call(conn, "single", "POST", path, body, headers)
                if res is None:
                    continue
                got = json.loads(res[2])
                if not self.matches(item, got):
                    self.mismatches += 1
                    self.note(f"single: sent {item}, answer {got}")
                self.acked.add(got["id"])
                if keyed:
                    again = await self.call(conn, "single_replay", "POST", path, body, headers)
                    if again is None:
                        continue
                    self.replays["single"] += 1
                    if (
                        json.loads(again[2]).get("id") != got["id"]
                        or again[1].get("idempotent-replayed") != "true"
                    ):
                        self.replay_bad += 1
                        self.note(f"single replay: {again[1]} {again[2][:200]!r}")
        finally:
            self.connections += conn.opened
            conn.close()

    async def batches(self, start: float, stop: float) -> None:
        args = self.args
        rng = random.Random(args.seed * 1000 + 999)
        conn = HttpConn(args.port, self.auth)
        loop = asyncio.get_running_loop()
        number = 0
        try:
            while not self.stopping:
                target = start + args.batch_every * (number + 0.5)
                if target >= stop:
                    break
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                keyed = number % 4 == 3
                size = rng.randint(1, min(args.batch_max, 200) if keyed else args.batch_max)
                items = [bl.realistic_activity(rng, unicode=True) for _ in range(size)]
                if keyed:
                    for i, item in enumerate(items):
                        item["event_id"] = f"soak-batch-{number}-{i}"
                body = json.dumps(items).encode()
                headers = {"Content-Type": "application/json"}
                number += 1
                res = await self.call(
                    conn, "batch", "POST", "/api/metrics/track/batch", body, headers
                )
                if res is None:
                    continue
                answer = json.loads(res[2])
                got = answer.get("items", [])
                ids = [a["id"] for a in got]
                if (
                    answer.get("count") != size
                    or answer.get("recorded") != size
                    or len(ids) != size
                ):
                    self.mismatches += 1
                    self.note(
                        f"batch of {size}: count {answer.get('count')} "
                        f"recorded {answer.get('recorded')}"
                    )
                if ids and ids != list(range(ids[0], ids[0] + len(ids))):
                    self.mismatches += 1
                    self.note(f"batch of {size}: ids not consecutive")
                if not all(self.matches(s, g) for s, g in zip(items, got, strict=False)):
                    self.mismatches += 1
                    self.note(f"batch of {size}: an answer item differs from what was sent")
                self.acked.update(ids)
                self.batch_items += size
                if keyed:
                    again = await self.call(
                        conn, "batch_replay", "POST", "/api/metrics/track/batch", body, headers
                    )
                    if again is None:
                        continue
                    self.replays["batch"] += 1
                    replay = json.loads(again[2])
                    same = [a["id"] for a in replay.get("items", [])] == ids
                    if replay.get("recorded") != 0 or not same:
                        self.replay_bad += 1
                        self.note(
                            f"batch replay of {size}: recorded {replay.get('recorded')}, "
                            f"ids {'same' if same else 'differ'}"
                        )
                        # New ids, if any were recorded again, are acknowledged too.
                        self.acked.update(a["id"] for a in replay["items"])
        finally:
            self.connections += conn.opened
            conn.close()


def check_listener(client: dict[str, Any], acked_sorted: list[int]) -> dict[str, int]:
    """Missed / unexpected / duplicate ids of one listener against the acknowledged ids
    after its hello.
    """
    start = client["hello_last"] or 0
    expected = acked_sorted[bisect_right(acked_sorted, start) :]
    runs = sorted((a, b) for a, b in client["runs"])
    merged: list[list[int]] = []
    distinct = 0
    for a, b in runs:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    covered = 0
    for a, b in merged:
        distinct += b - a + 1
        covered += bisect_right(expected, b) - bisect_left(expected, a)
    return {
        "expected": len(expected),
        "received": client["ids"],
        "missed": len(expected) - covered,
        "unexpected": distinct - covered,
        "duplicates": client["ids"] - distinct,
        "out_of_order": client["backwards"],
        "runs": len(client["runs"]),
    }


class FsyncProbe(threading.Thread):
    """Writes and fsyncs a small file every 100 ms in a directory: how slow the disk's
    fsync is meanwhile (to tell a stalled --db commit on a busy disk from a server stall).
    """

    def __init__(self, directory: str, t0: float) -> None:
        super().__init__(daemon=True)
        self.path = os.path.join(directory, "fsync-probe")
        self.t0 = t0
        self.times: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not self.halt.wait(0.1):
                begin = time.monotonic()
                os.pwrite(fd, os.urandom(4096), 0)
                os.fsync(fd)
                self.times.append((begin - self.t0, (time.monotonic() - begin) * 1000))
        finally:
            os.close(fd)


def mb(kb: int | None) -> str:
    return f"{kb / 1024:.1f} MB" if kb else "n/a"


async def main_async(args: argparse.Namespace, argv: list[str]) -> int:
    command = shlex.join(["python", "bench/soak.py", *argv])
    environment = bl.environment_line()
    bl.pin_self(args.client_cpu)
    tmp = tempfile.mkdtemp(prefix="bench-soak-")
    if not args.keep:
        # Also on an error or Ctrl-C (not on SIGKILL): the database can be large.
        atexit.register(shutil.rmtree, tmp, True)
    log = os.path.join(tmp, "clients.stderr")
    args.port = bl.free_port()
    server = bl.Server(
        "project",
        [
            *shlex.split(args.server_cmd),
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
            *(["--api-token", args.token] if args.token else []),
            *shlex.split(args.server_args.format(tmp=tmp)),
        ],
        args.port,
        args.server_cpu,
        headers=bl.auth_headers(args.token),
    )
    load = Load(args)
    mem: dict[str, dict[str, int]] = {}
    samples: list[tuple[float, dict[str, int]]] = []
    listeners: list[bl.ClientProc] = []
    churner: bl.ClientProc | None = None
    out: dict[str, Any] = {}
    code = None
    try:
        server.start(READY_PATH)
        pid = server.proc.pid  # type: ignore[union-attr]
        mem["start"] = bl.process_status(pid)
        per = [args.listeners // args.workers] * args.workers
        for i in range(args.listeners % args.workers):
            per[i] += 1
        for count in per:
            if count:
                listeners.append(
                    await spawn(args, ["--worker", "listen", "--worker-clients", str(count)], log)
                )
        for proc in listeners:
            assert proc.proc.stdout is not None
            line = await asyncio.wait_for(proc.proc.stdout.readline(), 60)
            if not line:
                raise RuntimeError(f"a listener process failed to connect; see {log}")
        await asyncio.sleep(0.5)
        status = [await p.ask("status") for p in listeners]
        out["hellos_at_start"] = sum(s["hellos"] for s in status)
        churner = await spawn(
            args,
            [
                "--worker",
                "churn",
                "--seed",
                str(args.seed),
                "--churn-every",
                str(args.churn_every),
                "--hold-min",
                str(args.hold_min),
                "--hold-max",
                str(args.hold_max),
                "--since-share",
                str(args.since_share),
            ],
            log,
        )
        mem["listeners connected"] = bl.process_status(pid)

        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1
        load.t0 = start  # the loop's clock is time.monotonic()
        probe = None
        if "--db" in args.server_args:
            probe = FsyncProbe(tmp, start)
            probe.start()
        stop = start + args.duration
        settle = min(args.settle, args.duration / 2)
        cpu0, wait0, wall0 = (
            bl.process_cpu_seconds(pid),
            bl.process_wait_seconds(pid),
            time.monotonic(),
        )

        async def sampler() -> None:
            taken_settle = False
            while loop.time() < stop:
                now = loop.time() - start
                snap = bl.process_status(pid)
                samples.append((now, snap))
                if not taken_settle and now >= settle:
                    mem[f"after {settle:g} s"] = snap
                    taken_settle = True
                await asyncio.sleep(min(1.0, max(0.01, stop - loop.time())))

        async def progress() -> None:
            last = 0
            while loop.time() < stop:
                await asyncio.sleep(10)
                n = sum(load.statuses.values())
                snap = samples[-1][1] if samples else {}
                print(
                    f"t={loop.time() - start:5.0f}s requests {n} (+{n - last}), acked ids "
                    f"{len(load.acked)}, errors {sum(load.exceptions.values())} exc, RSS "
                    f"{mb(snap.get('VmRSS'))}, fds {snap.get('fds')}",
                    file=sys.stderr,
                    flush=True,
                )
                last = n

        tasks = [asyncio.create_task(load.single(i, start, stop)) for i in range(args.senders)]
        tasks.append(asyncio.create_task(load.batches(start, stop)))
        side = [asyncio.create_task(sampler()), asyncio.create_task(progress())]
        gathered = asyncio.gather(*tasks)
        # On Ctrl-C the tasks are cancelled: retrieve that, so it is not logged at exit.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.wait_for(gathered, args.duration + args.request_timeout + 30)
        mem["end"] = bl.process_status(pid)
        if probe is not None:
            probe.halt.set()
            probe.join(5)
            out["fsync"] = probe.times
        wall = time.monotonic() - wall0
        out["server_util"] = (bl.process_cpu_seconds(pid) - cpu0) / wall
        out["server_wait"] = (bl.process_wait_seconds(pid) - wait0) / wall
        out["load_s"] = loop.time() - start
        for task in side:
            task.cancel()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await churner.tell("stop")

        # Every listener must reach the last acknowledged id.
        last_acked = max(load.acked, default=0)
        t0 = time.monotonic()
        while True:
            status = [await p.ask("status") for p in listeners]
            open_ = sum(s["open"] for s in status)
            min_last = min((s["min_last"] for s in status if s["open"]), default=-1)
            if min_last >= last_acked or open_ == 0 or time.monotonic() - t0 > args.drain_timeout:
                break
            await asyncio.sleep(0.05)
        out["caught_up_s"] = time.monotonic() - t0
        out["caught_up"] = min_last >= last_acked
        await asyncio.sleep(max(0.0, 2.5 - out["caught_up_s"]))  # churners' closes land
        out["server_last_id"] = live.server_last_id(args.port, args.token)
        out["last_acked"] = last_acked
        out["listener_reports"] = [await p.ask("report") for p in listeners]
        out["churn"] = await churner.ask("report")
        mem["after drain"] = bl.process_status(pid)
        # Shutdown with the listeners connected: each should get 1001.
        code = server.stop()
        await asyncio.sleep(0.5)
        out["after_shutdown"] = [await p.ask("report") for p in listeners]
    finally:
        if code is None:
            code = server.stop()
        for proc in [*listeners, *([churner] if churner else [])]:
            await proc.stop()
        bl.kill_children()

    # -- analysis ---------------------------------------------------------------------------
    acked_sorted = sorted(load.acked)
    clients = [c for r in out["listener_reports"] for c in r["clients"]]
    stayed = [c for c in clients if c["open"]]
    checks = [check_listener(c, acked_sorted) for c in stayed]
    total = Counter()
    for chk in checks:
        total.update(chk)
    worst_missed = max((c["missed"] for c in checks), default=0)
    listener_closes: Counter[str] = Counter()
    for r in out["listener_reports"]:
        listener_closes.update(r["closes"])
    shutdown_closes: Counter[str] = Counter()
    for r in out["after_shutdown"]:
        shutdown_closes.update(r["closes"])
    shutdown_closes.subtract(listener_closes)
    shutdown_closes = +shutdown_closes
    other_msgs: Counter[str] = Counter()
    for c in clients:
        other_msgs.update(c["other"])
    bad_hellos = sum(1 for c in clients if c["hellos"] != 1)
    before_hello = sum(c["before_hello"] for c in clients)
    bad_frames = sum(r["bad_frames"] for r in out["listener_reports"])
    churn = out["churn"]["stats"]
    problems = server.problems()
    client_err = open(log, errors="replace").read().strip() if os.path.exists(log) else ""
    settle_key = next((k for k in mem if k.startswith("after ") and k != "after drain"), None)
    rss_settle = mem.get(settle_key, {}).get("VmRSS") if settle_key else None
    rss_end = mem.get("end", {}).get("VmRSS")
    rss_ratio = rss_end / rss_settle if rss_end and rss_settle else float("nan")
    requests = sum(load.statuses.values())
    non2xx = sum(n for k, n in load.statuses.items() if not k.split()[-1].startswith("2"))
    exceptions = sum(load.exceptions.values())
    late = sorted(load.late_ms)

    print()
    print("## Soak test")
    print()
    print(f"- command: `{command}`")
    print(f"- environment: {environment}")
    print(f"- server: `{server.command}`")
    pin = (
        f"server on CPU {args.server_cpu}, every client on CPU {args.client_cpu}"
        if args.server_cpu is not None
        else "no pinning"
    )
    print(
        f"- load for {out['load_s']:.0f} s: {args.senders} keep-alive clients POSTing at "
        f"{args.rate:g}/s in total (query string / JSON / form in turn; every 50th with an "
        f"Idempotency-Key, sent twice), a batch of 1-{args.batch_max} items every "
        f"{args.batch_every:g} s (every 4th with event_ids, sent twice); {args.listeners} "
        f"WebSocket listeners over {args.workers} processes; one more WebSocket every "
        f"~{args.churn_every:g} s held {args.hold_min:g}-{args.hold_max:g} s; {pin}"
    )
    print(
        f"- noise: server CPU use {out['server_util']:.0%} of one core; the server was waiting "
        f"for its CPU (runnable, another process on it) {out['server_wait']:.0%} of the run "
        "(a few % is a clean run)"
    )
    print()
    print("| check | result |")
    print("|---|---|")
    print(
        f"| requests served | {requests:,} "
        f"({', '.join(f'{k}: {n:,}' for k, n in sorted(load.statuses.items()))}) |"
    )
    print(
        f"| activities acknowledged | {len(load.acked):,} ({load.batch_items:,} in batches); "
        f"server's last id {out['server_last_id']:,}, highest acknowledged {out['last_acked']:,} |"
    )
    print(
        f"| errors | {non2xx} non-2xx, {exceptions} exceptions"
        + (f" ({dict(load.exceptions)})" if exceptions else "")
        + f"; answers that differ from what was sent: {load.mismatches} |"
    )
    print(
        f"| idempotent retries | {dict(load.replays) or 'none'} checked, {load.replay_bad} wrong |"
    )
    for kind, pairs in sorted(load.rtt.items()):
        ms = [m for _, m in pairs]
        slow = sorted(pairs, key=lambda p: -p[1])[:3]
        print(
            f"| round trip, {kind} | p50 {bl.percentile(ms, 50):.1f} ms, p99 "
            f"{bl.percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms; over 500 ms: "
            f"{sum(m > 500 for m in ms)}; slowest at "
            + ", ".join(f"t={t:.1f}s ({m:.0f} ms)" for t, m in slow)
            + " |"
        )
    if out.get("fsync"):
        ms = [m for _, m in out["fsync"]]
        slow = sorted(out["fsync"], key=lambda p: -p[1])[:3]
        print(
            f"| fsync probe (4 KB every 0.1 s, in the run's temporary directory) | p50 "
            f"{bl.percentile(ms, 50):.1f} ms, p99 {bl.percentile(ms, 99):.1f} ms, max "
            f"{max(ms):.1f} ms; slowest at "
            + ", ".join(f"t={t:.1f}s ({m:.0f} ms)" for t, m in slow)
            + " |"
        )
    print(
        f"| sender lateness (behind schedule) | p50 {bl.percentile(late, 50):.1f} ms, p99 "
        f"{bl.percentile(late, 99):.1f} ms, max {max(late, default=0):.1f} ms; "
        f"{load.connections} connection(s) opened |"
    )
    print(
        f"| listeners that stayed connected | {len(stayed)} / {args.listeners} (all at the last "
        f"acknowledged id: {out['caught_up']}, {out['caught_up_s']:.2f} s after the load) |"
    )
    print(
        f"| missed acknowledged ids (goal 0) | {total['missed']} in total, worst listener "
        f"{worst_missed}: {bl.verdict(total['missed'] == 0 and len(stayed) == args.listeners)} |"
    )
    print(
        f"| duplicates / out of order / unexpected ids | {total['duplicates']} / "
        f"{total['out_of_order']} / {total['unexpected']} "
        f"(unexpected: recorded but not acknowledged, e.g. a request that failed) |"
    )
    print(f"| deliveries to listeners | {total['received']:,} of {total['expected']:,} expected |")
    print(
        f"| listener protocol | hellos at start {out['hellos_at_start']}, clients without "
        f"exactly one hello {bad_hellos}, activities before hello {before_hello}, bad frames "
        f"{bad_frames}, other messages {dict(other_msgs) or 'none'} |"
    )
    print(
        f"| close codes seen by listeners | during the run: {dict(listener_closes) or 'none'}; "
        f"at server shutdown: {dict(shutdown_closes) or 'none'} |"
    )
    churn_closes = {k: v for k, v in churn.items() if "close" in k or k.startswith("server")}
    print(
        f"| churning clients | {churn.get('connections', 0)} connections "
        f"({churn.get('since=yes', 0)} with since), hang-ups clean/FIN/RST "
        f"{churn.get('hang_up_clean', 0)}/{churn.get('hang_up_fin', 0)}/"
        f"{churn.get('hang_up_rst', 0)}, {churn.get('ids', 0):,} ids received; closes "
        f"{churn_closes or 'none'}; resets "
        f"{ {k: v for k, v in churn.items() if k.startswith('reset_')} or 'none' } |"
    )
    churn_bad = {
        k: churn.get(k, 0)
        for k in (
            "handshake_error",
            "handshake_refused",
            "wrong_first_id",
            "gaps",
            "backwards",
            "before_hello",
            "hello_count_wrong",
        )
        if churn.get(k)
    }
    print(f"| churner stream problems | {churn_bad or 'none'} |")
    print(
        "| server RSS (VmRSS) | "
        + ", ".join(f"{k}: {mb(v.get('VmRSS'))}" for k, v in mem.items())
        + f"; peak (VmHWM) {mb(mem.get('after drain', {}).get('VmHWM'))} |"
    )
    print(
        f"| RSS end / after {settle:g} s (goal <= {TARGET_RSS_RATIO:.2f}) | {rss_ratio:.3f}: "
        f"{bl.verdict(rss_ratio <= TARGET_RSS_RATIO)} |"
    )
    print(
        "| server open fds / threads | "
        + ", ".join(f"{k}: {v.get('fds')} / {v.get('Threads')}" for k, v in mem.items())
        + " |"
    )
    print(
        f"| server exit, stderr | exit code {code}; suspicious stderr lines {len(problems)}"
        + (f" (first: {'; '.join(problems[:3])})" if problems else "")
        + " |"
    )
    print()
    step = max(1, len(samples) // 12)
    timeline = ", ".join(
        f"{max(t, 0):.0f}s {s.get('VmRSS', 0) / 1024:.1f}" for t, s in samples[::step] if s
    )
    print(f"- RSS over the run (MB): {timeline}")
    problems_seen = load.problems + out["churn"]["problems"]
    if problems_seen:
        print(f"- first problems: {'; '.join(problems_seen[:8])}")
    if client_err:
        print(f"- client processes' stderr: {client_err[:500]}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "memory": mem,
                    "samples": samples,
                    "statuses": load.statuses,
                    "exceptions": load.exceptions,
                    "listener_checks": checks,
                    "churn": out["churn"],
                    "out": {k: v for k, v in out.items() if "reports" not in k},
                },
                fh,
                indent=2,
                default=str,
            )
    if not args.keep:
        shutil.rmtree(server.dir, ignore_errors=True)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Soak test: sustained ingest, live listeners, churning clients "
        "(see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=120, help="seconds of load")
    p.add_argument("--rate", type=float, default=500, help="single POSTs per second, in total")
    p.add_argument("--senders", type=int, default=4, help="keep-alive clients for single POSTs")
    p.add_argument("--batch-every", type=float, default=2.0, help="seconds between batches")
    p.add_argument("--batch-max", type=int, default=1000, help="largest batch (items)")
    p.add_argument("--listeners", type=int, default=100, help="WebSocket clients that stay")
    p.add_argument("--workers", type=int, default=2, help="processes for the listeners")
    p.add_argument("--churn-every", type=float, default=0.5, help="seconds between churners")
    p.add_argument("--hold-min", type=float, default=0.2, help="shortest churner connection")
    p.add_argument("--hold-max", type=float, default=3.0, help="longest churner connection")
    p.add_argument(
        "--since-share", type=float, default=0.3, help="share of churners that resume with since"
    )
    p.add_argument("--settle", type=float, default=20, help="seconds before the RSS reference")
    p.add_argument("--request-timeout", type=float, default=10, help="seconds per request")
    p.add_argument(
        "--drain-timeout", type=float, default=15, help="seconds for listeners to catch up"
    )
    p.add_argument("--seed", type=int, default=1)
    bl.add_server_options(p, "--db {tmp}/soak.db")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory and logs")
    p.add_argument("--worker", choices=["listen", "churn"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-clients", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bl.apply_pinning(args)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker == "listen":
        Listeners(args.port, args.worker_clients, args.token).run()
        return 0
    if args.worker == "churn":
        Churner(args).run()
        return 0
    bl.set_nice(args.nice)
    return bl.run_async_main(main_async(args, argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
