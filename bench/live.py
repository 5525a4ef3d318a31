"""Live-feed benchmark: delivery latency to the last of N WebSocket clients, and ingest cost.

    python bench/live.py                          # defaults: 100 and 1000 clients, 50/s, 10 s
    python bench/live.py --clients 100,1000 --rate 50 --duration 10 --ingest-rounds 3
    python bench/live.py --server-args "--ws-max-backlog 20000"   # extra run.py flags

One run, one machine: starts `python run.py --port P` (pinned to --server-cpu), then

1. latency, for each N in --clients: N lean WebSocket clients (raw sockets + epoll, a
   hand-written handshake and frame parser, spread over --workers subprocesses pinned to
   --client-cpu) subscribe to /api/metrics/live; a sender POSTs /api/metrics/track at a
   steady --rate (open loop) for --warmup + --duration seconds. For every activity id the
   latency is  max over the N clients of receipt time - time the POST was written,
   measured two ways (both CLOCK_REALTIME, comparable across processes):
     kernel: the kernel's receive timestamp of the frame (SO_TIMESTAMPNS) -- when the
             server's write reached that client's socket; independent of client speed;
     app:    time.time_ns() when the client process read it -- includes client delay.
   The gap between the two is the client side's own delay: if it is small, the clients
   are not the bottleneck. Every client must get every id once, in order (checked).
2. ingest: wrk POST /api/metrics/track (as bench/ingest.py) with no client connected and
   with --ingest-clients connected (rounds alternate), medians; the clients drain and
   check the feed (order, gaps), and must catch up with the last id after each run.

Targets (reported, not asserted): p99 to the last of 1,000 clients < 50 ms; ingest with
100 clients >= 75% of ingest with none.

`python bench/live.py --worker ...` is the client process mode (internal).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import select
import shlex
import socket
import struct
import sys
import tempfile
import time
from typing import Any

import benchlib as bl

LIVE_PATH = "/api/metrics/live"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS == it
TARGET_P99_MS = 50.0
TARGET_INGEST_RATIO = 0.75
ID_RE = re.compile(rb'"id":(\d+)')
LAST_ID_RE = re.compile(rb'"last_id":(\d+)')
TYPE_RE = re.compile(rb'"type":"([a-z_]+)"')
ACTIVITIES_PREFIX = b'{"type":"activities"'


# ======================================================================================
# Worker: N WebSocket clients in one process, one epoll loop, commands on stdin.
# ======================================================================================


class Client:
    __slots__ = ("sock", "fd", "buf", "frag", "last", "open", "hello", "close_code")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.frag: bytes | None = None
        self.last = -1  # last activity id seen; -1 until the hello says where we stand
        self.open = True
        self.hello = False
        self.close_code: int | None = None


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client-to-server frame (clients must mask); payloads here are < 126 bytes."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


class Worker:
    def __init__(self, port: int, count: int, batch: int, token: str | None = None) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
        self.count = count
        self.batch = batch
        self.clients: dict[int, Client] = {}
        self.ep = select.epoll()
        self.timing = False
        self.reset()

    def reset(self) -> None:
        self.msgs = 0
        self.ids = 0
        self.gaps = 0  # an id skipped
        self.dups = 0  # an id seen again, or out of order
        self.bad_frames = 0
        self.other_types: dict[str, int] = {}
        self.closes: dict[str, int] = {}
        self.recvs = 0
        self.no_kernel_ts = 0
        # id -> [clients that got it, latest kernel receive ns, latest app receive ns]
        self.seen: dict[int, list[int]] = {}
        self.cpu0 = sum(os.times()[:2])
        self.wall0 = time.monotonic()

    # -- connecting ---------------------------------------------------------------------

    def connect_all(self) -> None:
        for start in range(0, self.count, self.batch):
            group = []
            for _ in range(min(self.batch, self.count - start)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.settimeout(30)
                sock.connect(("127.0.0.1", self.port))
                request, key = bl.ws_upgrade_request(LIVE_PATH, self.port, self.auth)
                sock.sendall(request)
                group.append((sock, key))
            for sock, key in group:
                head, rest, switched = bl.read_response_head(sock)
                if not switched:
                    raise RuntimeError(f"handshake refused: {head[:300]!r}")
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                if b"sec-websocket-accept: " + accept.lower() not in head.lower():
                    raise RuntimeError("handshake: wrong Sec-WebSocket-Accept")
                sock.setblocking(False)
                client = Client(sock)
                self.clients[client.fd] = client
                self.ep.register(client.fd, select.EPOLLIN)
                if rest:
                    self.feed(client, rest, 0, time.time_ns())

    # -- receiving ----------------------------------------------------------------------

    def on_readable(self, client: Client) -> None:
        try:
            data, anc, _flags, _addr = client.sock.recvmsg(65536, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        app_ns = time.time_ns()
        self.recvs += 1
        if not data:
            self.drop(client, "eof")
            return
        kernel_ns = 0
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack_from("qq", cdata)
                kernel_ns = sec * 1_000_000_000 + nsec
        if not kernel_ns:
            self.no_kernel_ts += 1
        self.feed(client, data, kernel_ns, app_ns)

    def feed(self, client: Client, chunk: bytes, kernel_ns: int, app_ns: int) -> None:
        data = client.buf + chunk if client.buf else chunk
        off, size = 0, len(data)
        while size - off >= 2:
            b0, b1 = data[off], data[off + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - off < 4:
                    break
                length, head = int.from_bytes(data[off + 2 : off + 4], "big"), 4
            elif length == 127:
                if size - off < 10:
                    break
                length, head = int.from_bytes(data[off + 2 : off + 10], "big"), 10
            if b1 & 0x80:  # servers must not mask
                self.bad_frames += 1
                head += 4
            if size - off < head + length:
                break
            payload = data[off + head : off + head + length]
            off += head + length
            opcode = b0 & 0x0F
            if opcode == 0x0:  # continuation
                if client.frag is None:
                    self.bad_frames += 1
                    continue
                client.frag += payload
                if b0 & 0x80:
                    payload, client.frag = client.frag, None
                    self.on_text(client, payload, kernel_ns, app_ns)
            elif opcode in (0x1, 0x2):
                if b0 & 0x80:
                    self.on_text(client, payload, kernel_ns, app_ns)
                else:
                    client.frag = payload
            elif opcode == 0x9:  # ping: answer with a masked pong
                self.send(client, masked_frame(0xA, payload))
            elif opcode == 0x8:  # close: answer, then hang up
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                client.close_code = code
                self.send(client, masked_frame(0x8, payload[:2]))
                self.drop(client, str(code))
                return
            elif opcode != 0xA:
                self.bad_frames += 1
        client.buf = data[off:] if off < size else b""

    def on_text(self, client: Client, payload: bytes, kernel_ns: int, app_ns: int) -> None:
        self.msgs += 1
        if payload.startswith(ACTIVITIES_PREFIX):
            if self.timing:
                ids = [int(x) for x in ID_RE.findall(payload)]
                if not ids:
                    return
                first, last, count = ids[0], ids[-1], len(ids)
                seen = self.seen
                for id_ in ids:
                    rec = seen.get(id_)
                    if rec is None:
                        seen[id_] = [1, kernel_ns, app_ns]
                    else:
                        rec[0] += 1
                        if kernel_ns > rec[1]:
                            rec[1] = kernel_ns
                        rec[2] = app_ns  # one process reads in order: the latest is the max
            else:
                # Drain mode: no per-id work, only what checks order cheaply.
                match = ID_RE.search(payload)
                if match is None:
                    return
                first = int(match.group(1))
                count = payload.count(b'"id":')
                tail = payload.rfind(b'{"id":')
                last = int(ID_RE.match(payload, tail + 1).group(1)) if tail >= 0 else first
            self.ids += count
            if client.last >= 0:
                if first <= client.last:
                    self.dups += 1
                elif first != client.last + 1:
                    self.gaps += 1
            if last - first != count - 1:
                self.gaps += 1
            client.last = last
            return
        match = TYPE_RE.search(payload)
        kind = match.group(1).decode() if match else "?"
        if kind == "hello":
            client.hello = True
            found = LAST_ID_RE.search(payload)
            if found and client.last < 0:
                client.last = int(found.group(1))
        else:
            self.other_types[kind] = self.other_types.get(kind, 0) + 1

    def send(self, client: Client, frame: bytes) -> None:
        try:
            client.sock.send(frame)
        except OSError:
            pass

    def drop(self, client: Client, why: str) -> None:
        if not client.open:
            return
        client.open = False
        self.closes[why] = self.closes.get(why, 0) + 1
        try:
            self.ep.unregister(client.fd)
        except (OSError, ValueError):
            pass
        client.sock.close()

    # -- the loop and the parent's commands --------------------------------------------

    def status(self) -> dict[str, Any]:
        live = [c for c in self.clients.values() if c.open]
        lasts = [c.last for c in live]
        return {
            "open": len(live),
            "hellos": sum(c.hello for c in self.clients.values()),
            "min_last": min(lasts) if lasts else -1,
            "max_last": max(lasts) if lasts else -1,
        }

    def report(self) -> dict[str, Any]:
        cpu = sum(os.times()[:2]) - self.cpu0
        return {
            **self.status(),
            "msgs": self.msgs,
            "ids": self.ids,
            "gaps": self.gaps,
            "dups": self.dups,
            "bad_frames": self.bad_frames,
            "other_types": self.other_types,
            "closes": self.closes,
            "recvs": self.recvs,
            "no_kernel_ts": self.no_kernel_ts,
            "cpu_s": cpu,
            "wall_s": time.monotonic() - self.wall0,
            "seen": self.seen,
        }

    def run(self) -> None:
        bl.raise_nofile(self.count + 256)
        self.connect_all()
        self.reply({"ready": len(self.clients)})
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.ep.register(stdin, select.EPOLLIN)
        pending = b""
        clients = self.clients
        while True:
            for fd, _event in self.ep.poll(1.0, 1024):
                client = clients.get(fd)
                if client is not None:
                    self.on_readable(client)
                    continue
                chunk = os.read(stdin, 65536)
                if not chunk:
                    return  # the parent is gone
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not self.command(line.decode().strip()):
                        return

    def command(self, line: str) -> bool:
        if line == "timing on":
            self.timing = True
        elif line == "timing off":
            self.timing = False
        elif line == "reset":
            self.reset()
        elif line == "status":
            self.reply(self.status())
        elif line == "report":
            self.reply(self.report())
        elif line == "quit":
            for client in list(self.clients.values()):
                if client.open:
                    self.send(client, masked_frame(0x8, (1000).to_bytes(2, "big")))
                    client.sock.close()
                    client.open = False
            return False
        return True

    @staticmethod
    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


# ======================================================================================
# Parent: server, workers, sender, wrk, report.
# ======================================================================================


class Pool:
    """N clients spread over worker processes."""

    def __init__(
        self,
        port: int,
        clients: int,
        workers: int,
        cpu: int | None,
        log: str,
        token: str | None = None,
    ):
        self.port, self.clients, self.cpu, self.log = port, clients, cpu, log
        self.token = token
        self.workers_wanted = max(1, min(workers, clients))
        self.workers: list[bl.ClientProc] = []
        self.counts: list[int] = []  # clients per worker

    async def start(self) -> float:
        t0 = time.monotonic()
        per = [self.clients // self.workers_wanted] * self.workers_wanted
        for i in range(self.clients % self.workers_wanted):
            per[i] += 1
        for count in per:
            argv = ["--worker", "--port", str(self.port), "--worker-clients", str(count)]
            argv += ["--token", self.token] if self.token else []
            proc = await bl.spawn_client(__file__, argv, self.cpu, self.log)
            self.workers.append(bl.ClientProc(proc, "worker"))
            self.counts.append(count)
        for worker, count in zip(self.workers, self.counts, strict=True):
            assert worker.proc.stdout is not None
            line = await asyncio.wait_for(worker.proc.stdout.readline(), 120)
            if not line:
                raise RuntimeError(f"worker failed to connect; see {self.log}")
            ready = json.loads(line)["ready"]
            if ready != count:
                raise RuntimeError(f"worker connected {ready} of {count}")
        return time.monotonic() - t0

    async def all(self, command: str) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.ask(command, 60) for w in self.workers)))

    async def tell(self, command: str) -> None:
        await asyncio.gather(*(w.tell(command) for w in self.workers))

    async def wait_caught_up(self, last_id: int, timeout: float) -> tuple[float, dict]:
        """Poll until every open client has seen last_id; returns (seconds, status)."""
        t0 = time.monotonic()
        while True:
            statuses = await self.all("status")
            merged = {
                "open": sum(s["open"] for s in statuses),
                "hellos": sum(s["hellos"] for s in statuses),
                "min_last": min(s["min_last"] for s in statuses),
            }
            waited = time.monotonic() - t0
            if merged["min_last"] >= last_id or merged["open"] == 0 or waited > timeout:
                return waited, merged
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        self.workers, self.counts = [], []


class Sender:
    """POSTs at a steady rate (open loop) over keep-alive connections; records timings."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.records: list[dict[str, Any]] = []

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        self.opened += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def post(self, seq: int, late_ms: float) -> None:
        path = f"/api/metrics/track?user_id=live_bench&action=ping&details=seq-{seq}"
        request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Length: 0\r\n{self.auth}\r\n"
        ).encode()
        rec: dict[str, Any] = {"seq": seq, "late_ms": late_ms, "id": None, "status": None}
        self.records.append(rec)
        reader, writer = await self._conn()
        rec["send_ns"] = time.time_ns()
        writer.write(request)
        status_line = await reader.readline()
        rec["status"] = int(status_line.split()[1])
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        rec["resp_ns"] = time.time_ns()
        match = ID_RE.search(body)
        rec["id"] = int(match.group(1)) if match else None
        self.idle.append((reader, writer))

    async def run(self, rate: float, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        total = int(rate * seconds)
        start = loop.time() + 0.05
        tasks = []
        for seq in range(total):
            target = start + seq / rate
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late_ms = (loop.time() - target) * 1000
            tasks.append(asyncio.create_task(self.post(seq, late_ms)))
        await asyncio.gather(*tasks)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle = []


def server_last_id(port: int, token: str | None) -> int:
    status, body = bl.http_request(
        port, "GET", "/api/metrics/activities?limit=1", headers=bl.auth_headers(token)
    )
    items = json.loads(body) if status == 200 else []
    return items[-1]["id"] if items else 0


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        key: sum(r[key] for r in reports)
        for key in ("open", "hellos", "msgs", "ids", "gaps", "dups", "bad_frames", "recvs")
    }
    merged["no_kernel_ts"] = sum(r["no_kernel_ts"] for r in reports)
    merged["cpu_s"] = sum(r["cpu_s"] for r in reports)
    merged["wall_s"] = max(r["wall_s"] for r in reports)
    merged["min_last"] = min(r["min_last"] for r in reports)
    closes: dict[str, int] = {}
    others: dict[str, int] = {}
    for r in reports:
        for k, v in r["closes"].items():
            closes[k] = closes.get(k, 0) + v
        for k, v in r["other_types"].items():
            others[k] = others.get(k, 0) + v
    merged["closes"], merged["other_types"] = closes, others
    seen: dict[int, list[int]] = {}
    for r in reports:
        for key, (count, kns, ans) in r["seen"].items():
            id_ = int(key)
            rec = seen.setdefault(id_, [0, 0, 0])
            rec[0] += count
            rec[1] = max(rec[1], kns)
            rec[2] = max(rec[2], ans)
    merged["seen"] = seen
    return merged


async def latency_phase(
    args: argparse.Namespace, server: bl.Server, clients: int, log: str
) -> dict[str, Any]:
    port = server.port
    pid = server.proc.pid  # type: ignore[union-attr]
    pool = Pool(port, clients, args.workers, args.client_cpu, log, args.token)
    try:
        connect_s = await pool.start()
        await asyncio.sleep(0.5)  # let the hellos land
        await pool.all("status")
        await pool.tell("reset")
        await pool.tell("timing on")
        sender = Sender(port, args.token)
        cpu0, wait0, t0 = bl.process_cpu_seconds(pid), bl.process_wait_seconds(pid), time.time()
        await sender.run(args.rate, args.warmup + args.duration)
        wall = time.time() - t0
        server_util = (bl.process_cpu_seconds(pid) - cpu0) / wall
        server_wait = (bl.process_wait_seconds(pid) - wait0) / wall
        sender.close()
        last = max((r["id"] or 0) for r in sender.records)
        caught_s, status = await pool.wait_caught_up(last, timeout=10)
        merged = merge_reports(await pool.all("report"))
    finally:
        await pool.stop()
    warm_n = int(args.rate * args.warmup)
    measured = [r for r in sender.records if r["seq"] >= warm_n]
    kernel_ms, app_ms, client_ms = [], [], []
    missing = incomplete = bad_status = 0
    for rec in measured:
        if rec["status"] != 200 or rec["id"] is None:
            bad_status += 1
            continue
        got = merged["seen"].get(rec["id"])
        if got is None:
            missing += 1
            continue
        if got[0] != clients:
            incomplete += 1
        app_ms.append((got[2] - rec["send_ns"]) / 1e6)
        if got[1]:
            kernel_ms.append((got[1] - rec["send_ns"]) / 1e6)
            client_ms.append((got[2] - got[1]) / 1e6)
    sent_ids = {r["id"] for r in sender.records if r["id"] is not None}
    extra_ids = sorted(set(merged["seen"]) - sent_ids)
    over = [id_ for id_, rec in merged["seen"].items() if rec[0] > clients]
    # Deliveries expected after the reset: every client, every id sent.
    expected = clients * len(sent_ids)
    return {
        "clients": clients,
        "connect_s": connect_s,
        "server_util": server_util,
        "server_wait": server_wait,
        "sent": len(measured),
        "warmup_sent": len(sender.records) - len(measured),
        "rate": args.rate,
        "sender_late_p99_ms": bl.percentile([r["late_ms"] for r in sender.records], 99),
        "sender_connections": sender.opened,
        "post_rtt_p99_ms": bl.percentile(
            [(r["resp_ns"] - r["send_ns"]) / 1e6 for r in measured if "resp_ns" in r], 99
        ),
        "kernel_p50_ms": bl.percentile(kernel_ms, 50),
        "kernel_p99_ms": bl.percentile(kernel_ms, 99),
        "kernel_max_ms": max(kernel_ms, default=float("nan")),
        "app_p50_ms": bl.percentile(app_ms, 50),
        "app_p99_ms": bl.percentile(app_ms, 99),
        "app_max_ms": max(app_ms, default=float("nan")),
        # Latest app receipt - latest kernel receipt of the same id: the client's own delay.
        "client_delay_p99_ms": bl.percentile(client_ms, 99),
        "missing_ids": missing,
        "incomplete_ids": incomplete,
        "bad_status": bad_status,
        "deliveries": merged["ids"],
        "expected_deliveries": expected,
        "extra_ids": extra_ids[:10],
        "over_delivered_ids": len(over),
        "gaps": merged["gaps"],
        "dups": merged["dups"],
        "bad_frames": merged["bad_frames"],
        "closes": merged["closes"],
        "other_types": merged["other_types"],
        "hellos": status["hellos"],
        "open_at_end": status["open"],
        "caught_up_s": caught_s,
        "client_cpu_pct": 100 * merged["cpu_s"] / merged["wall_s"] if merged["wall_s"] else 0,
        "no_kernel_ts": merged["no_kernel_ts"],
        "msgs": merged["msgs"],
    }


async def ingest_run(
    args: argparse.Namespace,
    server: bl.Server,
    script: str,
    clients: int,
    log: str,
) -> dict[str, Any]:
    pool = None
    if clients:
        pool = Pool(server.port, clients, args.workers, args.client_cpu, log, args.token)
    extra: dict[str, Any] = {}
    try:
        if pool is not None:
            await pool.start()
            await asyncio.sleep(0.3)
            await pool.tell("reset")
        first = server_last_id(server.port, args.token) + 1
        cmd = bl.wrk_command(
            server.port, script, args.connections, 1, args.ingest_duration, args.client_cpu
        )
        loop = asyncio.get_running_loop()
        res, cpu = await loop.run_in_executor(
            None, bl.run_wrk_on, server, cmd, args.ingest_duration
        )
        # Requests wrk cut off at the end may still be recorded: let them land first.
        await asyncio.sleep(0.3)
        last = server_last_id(server.port, args.token)
        res["server_cpu_us_per_req"] = cpu / res["requests"] * 1e6 if res["requests"] else 0
        res["recorded"] = last - first + 1
        if pool is not None:
            caught_s, status = await pool.wait_caught_up(last, timeout=15)
            report = merge_reports(await pool.all("report"))
            extra = {
                "caught_up_s": caught_s,
                "caught_up": status["min_last"] >= last,
                "open_at_end": status["open"],
                "client_msgs": report["msgs"],
                "client_ids": report["ids"],
                "expected_ids": clients * (last - first + 1),
                "gaps": report["gaps"],
                "dups": report["dups"],
                "closes": report["closes"],
                "other_types": report["other_types"],
                "client_cpu_pct": 100 * report["cpu_s"] / report["wall_s"],
            }
    finally:
        if pool is not None:
            await pool.stop()
    res.update(extra)
    res["clients"] = clients
    return res


def fmt_ms(value: float) -> str:
    return f"{value:.1f}" if value == value else "n/a"


async def main_async(args: argparse.Namespace) -> int:
    environment = bl.environment_line()  # before pinning ourselves to one CPU
    bl.pin_self(args.client_cpu)
    tmp = tempfile.mkdtemp(prefix="bench-live-")
    worker_log = os.path.join(tmp, "workers.stderr")
    port = bl.free_port()
    server = bl.Server(
        "project",
        [
            *shlex.split(args.server_cmd),
            "--port",
            str(port),
            *(["--api-token", args.token] if args.token else []),
            *shlex.split(args.server_args.format(tmp=tmp)),
        ],
        port,
        args.server_cpu,
        headers=bl.auth_headers(args.token),
    )
    track = "/api/metrics/track?user_id=user_42&action=click&details=live-bench"
    script = bl.write_wrk_script(tmp, "post", "POST", track, headers=bl.auth_headers(args.token))
    latency: dict[int, list[dict[str, Any]]] = {n: [] for n in args.clients}
    ingest: dict[int, list[dict[str, Any]]] = {0: [], args.ingest_clients: []}
    try:
        server.start("/api/metrics/activities?limit=1")
        for rnd in range(args.latency_rounds):
            for clients in args.clients:
                result = await latency_phase(args, server, clients, worker_log)
                latency[clients].append(result)
                print(
                    f"latency round {rnd + 1}/{args.latency_rounds} N={clients}: kernel "
                    f"p50/p99 {fmt_ms(result['kernel_p50_ms'])}/"
                    f"{fmt_ms(result['kernel_p99_ms'])} ms, app p50/p99 "
                    f"{fmt_ms(result['app_p50_ms'])}/{fmt_ms(result['app_p99_ms'])} ms, "
                    f"client CPU {result['client_cpu_pct']:.0f}%",
                    file=sys.stderr,
                    flush=True,
                )
        if args.ingest_rounds > 0:
            await ingest_run(args, server, script, 0, worker_log)  # warm-up, not counted
        for rnd in range(args.ingest_rounds):
            order = [0, args.ingest_clients] if rnd % 2 == 0 else [args.ingest_clients, 0]
            for clients in order:
                res = await ingest_run(args, server, script, clients, worker_log)
                ingest[clients].append(res)
                print(
                    f"ingest round {rnd + 1}/{args.ingest_rounds} clients={clients}: "
                    f"{res['rps']:.0f} req/s, server util {res['server_util']:.0%}, "
                    f"{res['server_cpu_us_per_req']:.0f} us/req"
                    + (
                        f", clients caught up in {res['caught_up_s']:.2f}s, "
                        f"client CPU {res['client_cpu_pct']:.0f}%"
                        if clients
                        else ""
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        code = server.stop()
        bl.kill_children()

    print()
    print("## Live-feed benchmark")
    print()
    print(f"- environment: {environment}")
    print(f"- server: `{server.command}`")
    pin = (
        f"server on CPU {args.server_cpu}; sender, client workers and wrk on CPU {args.client_cpu}"
        if args.server_cpu is not None
        else "no pinning"
    )
    print(
        f"- pinning: {pin}; niceness {args.nice}; {args.workers} client worker process(es) "
        "per client set"
    )
    print(
        f"- latency: open-loop POST at {args.rate:g}/s for {args.warmup:g} s warm-up + "
        f"{args.duration:g} s measured, {args.latency_rounds} round(s) per client count, "
        "medians over rounds; latency of an activity = max over all clients of receipt - "
        "send (kernel: the SO_TIMESTAMPNS receive timestamp; app: when the client process "
        "read it); target judged on both"
    )
    if args.clients:
        print()
        print(
            "| clients | activities | last-client p50 / p99 / max (kernel) | "
            "last-client p50 / p99 / max (app) | client-side delay p99 | "
            "delivered / expected | server CPU / waiting | client CPU | "
            "target: 1000 clients p99 < 50 ms |"
        )
        print("|---|---|---|---|---|---|---|---|---|")

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return bl.median([r[key] for r in runs])

    for clients, runs in latency.items():
        k99, a99 = med(runs, "kernel_p99_ms"), med(runs, "app_p99_ms")
        if clients == 1000:
            verdict = ", ".join(
                f"{name} {bl.verdict(v < TARGET_P99_MS)}"
                for name, v in (("kernel", k99), ("app", a99))
            )
        else:
            verdict = "-"
        print(
            f"| {clients} | {sum(r['sent'] for r in runs)} | "
            f"{fmt_ms(med(runs, 'kernel_p50_ms'))} / {fmt_ms(k99)} / "
            f"{fmt_ms(med(runs, 'kernel_max_ms'))} ms | "
            f"{fmt_ms(med(runs, 'app_p50_ms'))} / {fmt_ms(a99)} / "
            f"{fmt_ms(med(runs, 'app_max_ms'))} ms | "
            f"{fmt_ms(med(runs, 'client_delay_p99_ms'))} ms | "
            f"{sum(r['deliveries'] for r in runs)} / "
            f"{sum(r['expected_deliveries'] for r in runs)} | "
            f"{med(runs, 'server_util'):.0%} / {med(runs, 'server_wait'):.0%} | "
            f"{med(runs, 'client_cpu_pct'):.0f}% | {verdict} |"
        )
    if args.clients:
        print()
    for clients, runs in latency.items():
        per_round = "; ".join(
            f"{fmt_ms(r['kernel_p99_ms'])}/{fmt_ms(r['app_p99_ms'])} "
            f"(server waited {r['server_wait']:.0%})"
            for r in runs
        )
        print(f"- N={clients}: p99 kernel/app per round (ms): {per_round}")
        for i, r in enumerate(runs):
            problems = {
                k: r[k]
                for k in (
                    "missing_ids",
                    "incomplete_ids",
                    "bad_status",
                    "over_delivered_ids",
                    "gaps",
                    "dups",
                    "bad_frames",
                    "no_kernel_ts",
                )
                if r[k]
            }
            if r["extra_ids"]:
                problems["unexpected_ids"] = r["extra_ids"]
            if r["closes"]:
                problems["closes"] = r["closes"]
            if r["other_types"]:
                problems["other_messages"] = r["other_types"]
            if r["hellos"] != r["clients"]:
                problems["hellos"] = r["hellos"]
            print(
                f"  - round {i + 1}: connected in {r['connect_s']:.1f} s; {r['msgs']} messages; "
                f"sender late p99 {r['sender_late_p99_ms']:.1f} ms over "
                f"{r['sender_connections']} connection(s); POST round trip p99 "
                f"{r['post_rtt_p99_ms']:.1f} ms; all clients at the last id "
                f"{r['caught_up_s']:.2f} s after the last response; anomalies: "
                f"{problems or 'none'}"
            )
    if args.ingest_rounds > 0:
        none, some = ingest[0], ingest[args.ingest_clients]
        ratios = [s["rps"] / n["rps"] for n, s in zip(none, some, strict=True) if n["rps"]]
        cpu_ratios = [
            n["server_cpu_us_per_req"] / s["server_cpu_us_per_req"]
            for n, s in zip(none, some, strict=True)
            if s["server_cpu_us_per_req"]
        ]
        print()
        print(
            f"Ingest: `{shlex.join(bl.wrk_command(port, script, args.connections, 1, args.ingest_duration, args.client_cpu))}`, "  # noqa: E501
            f"{args.ingest_rounds} rounds x {args.ingest_duration:g} s, medians; ratio = median "
            "of per-round ratios"
        )
        print()
        print(
            "| clients connected | req/s | ratio | p50 / p99 | server CPU us/req | "
            "server CPU util | server waiting for its CPU | client CPU | target |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for clients, runs in ((0, none), (args.ingest_clients, some)):
            ratio = bl.median(ratios) if clients else 1.0
            target = bl.verdict(ratio >= TARGET_INGEST_RATIO) + " (>= 0.75)" if clients else ""
            client_cpu = (
                f"{bl.median([r['client_cpu_pct'] for r in runs]):.0f}%" if clients else "-"
            )
            print(
                f"| {clients} | {bl.median([r['rps'] for r in runs]):.0f} | {ratio:.2f} | "
                f"{bl.median([r['p50_ms'] for r in runs]):.2f} / "
                f"{bl.median([r['p99_ms'] for r in runs]):.2f} ms | "
                f"{bl.median([r['server_cpu_us_per_req'] for r in runs]):.0f} | "
                f"{bl.median([r['server_util'] for r in runs]):.0%} | "
                f"{bl.median([r['server_wait'] for r in runs]):.0%} | {client_cpu} | {target} |"
            )
        print()
        print(
            f"- per-round req/s ratios: {', '.join(f'{x:.2f}' for x in ratios)}; "
            f"CPU-per-request ratios (none/with): {', '.join(f'{x:.2f}' for x in cpu_ratios)}"
        )
        for i, r in enumerate(some):
            print(
                f"- round {i + 1} with {r['clients']} clients: {r['client_msgs']} messages, "
                f"{r['client_ids']} / {r['expected_ids']} activity deliveries, caught up "
                f"{r['caught_up']} in {r['caught_up_s']:.2f} s, gaps {r['gaps']}, dups "
                f"{r['dups']}, closes {r['closes'] or 'none'}, open {r['open_at_end']}, "
                f"wrk errors {r['errors'] or 'none'}"
            )
        errs = [r["errors"] for r in none if r["errors"]]
        print(f"- wrk errors with no clients: {errs or 'none'}")
    problems = server.problems()
    print(
        f"- server: exit code {code}, suspicious stderr lines: {len(problems)}"
        + (f" (first: {'; '.join(problems[:3])})" if problems else "")
    )
    worker_err = (
        open(worker_log, errors="replace").read().strip() if os.path.exists(worker_log) else ""
    )
    print(f"- client workers' stderr: {worker_err[:500] or 'empty'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"latency": latency, "ingest": ingest}, fh, indent=2, default=str)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Live-feed benchmark (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clients", default="100,1000", help="comma-separated client counts")
    p.add_argument("--rate", type=float, default=50, help="activities per second")
    p.add_argument("--duration", type=float, default=10, help="measured seconds per N")
    p.add_argument("--warmup", type=float, default=1, help="seconds sent before measuring")
    p.add_argument("--latency-rounds", type=int, default=3, help="rounds per client count")
    p.add_argument("--workers", type=int, default=2, help="client processes per client set")
    p.add_argument("--ingest-clients", type=int, default=100)
    p.add_argument("--ingest-rounds", type=int, default=3, help="0 skips the ingest part")
    p.add_argument("--ingest-duration", type=float, default=5, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=16, help="wrk -c")
    bl.add_server_options(p, "--db {tmp}/bench.db")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-clients", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.clients = [int(x) for x in str(args.clients).split(",") if x.strip()]
    bl.apply_pinning(args)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        Worker(args.port, args.worker_clients, batch=50, token=args.token).run()
        return 0
    bl.set_nice(args.nice)
    return bl.run_async_main(main_async(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
