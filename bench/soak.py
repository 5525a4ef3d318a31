"""Soak test: sustained mixed ingest with live listeners and churning clients: nothing
lost or duplicated, no errors, memory flat. See bench/README.md.
"""

import argparse
import contextlib
import http.client
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import benchlib as bl

BATCH_EVERY, CHURN_EVERY, SINCE_SHARE, HOLD = 2.0, 0.5, 0.3, (0.2, 3.0)
MAX_RSS_RATIO, TIMEOUT, DRAIN = 1.10, 10.0, 15.0
FORM, JSON = "application/x-www-form-urlencoded", "application/json"
FIELDS = ("user_id", "action", "details")
REPORT = """
| check | result |
|---|---|
| requests | {requests:,}: {statuses} |
| activities acknowledged | {acked:,} ({load.batch_items:,} in batches); last id {out[last_id]:,} |
| errors | {non2xx} non-2xx, exceptions {exceptions}, answers that differ {load.mismatches} |
| idempotent replays | {replays}, wrong {load.replay_bad} |
{rtt}
| listeners connected to the end | {stayed} / {args.listeners}; caught up: {out[caught_up]} |
| missed acknowledged ids (goal 0) | {chk[missed]} of {chk[expected]:,}: {verdict} |
| listener problems | {problems} |
| listener closes | during the run {closes}; at server shutdown {at_exit} |
| churners | {churn[stats]}; closes {churn[closes]} |
| churner ids, problems | {churn_chk[received]:,} of {churn_chk[expected]:,}; {churn_problems} |
| server RSS | {rss} |
| RSS end / after {out[settle]:g} s (goal <= {goal}) | {ratio:.3f}: {rss_verdict} |
| server fds / threads | {fds} |
| server CPU use, waiting for its CPU | {out[util]:.0%}, {out[wait]:.0%} (a few % is clean) |
"""


def parse_args(argv: list[str]) -> Any:
    p = bl.options("Soak test: sustained ingest, listeners, churners", "--db {tmp}/soak.db")
    p.add_argument("--duration", type=float, default=120, help="seconds of load")
    p.add_argument("--rate", type=float, default=500, help="single POSTs per second, in total")
    p.add_argument("--senders", type=int, default=4, help="keep-alive clients for single POSTs")
    p.add_argument("--listeners", type=int, default=100, help="WebSocket clients that stay")
    p.add_argument("--client-procs", type=int, default=2, help="processes for the listeners")
    p.add_argument("--settle", type=float, default=20, help="seconds before the RSS reference")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--churner", type=int, help=argparse.SUPPRESS)  # the churn process's port
    return p.parse_args(argv)


class Churner(bl.WsClients):
    """Opens a WebSocket every ~CHURN_EVERY s (some with since=), holds it for a while,
    hangs up in turn with a clean close, a FIN or a reset; reports every stream it had.
    """

    def __init__(self, args: Any) -> None:
        super().__init__(args.token)
        self.port, self.rng, self.deadline = args.churner, random.Random(args.seed), {}
        self.running, self.latest, self.opened, self.next_open = True, 0, 0, time.monotonic()
        self.stats: Counter[str] = Counter()
        self.done: list[dict[str, Any]] = []

    def open_one(self) -> None:
        n, since = self.opened, None
        self.opened += 1
        self.latest = max([self.latest, *(s.top for s in self.streams.values())])
        if self.latest and int((n + 1) * SINCE_SHARE) > int(n * SINCE_SHARE):  # spread evenly
            since = max(0, self.latest - self.rng.randint(0, 300))
        path = bl.LIVE if since is None else f"{bl.LIVE}?since={since}"
        try:
            stream = self.connect(self.port, path, since)
        except (OSError, RuntimeError) as exc:
            self.stats[f"handshake failed: {exc}"] += 1
            return
        stream.mode = ("clean", "fin", "rst")[n % 3]
        self.deadline[stream.fd] = time.monotonic() + self.rng.uniform(*HOLD)
        self.stats.update(connections=1, with_since=since is not None)

    def hang_up(self, stream: Any) -> None:
        self.stats[f"hang_up_{stream.mode}"] += 1
        if stream.mode == "clean":  # then wait for the server's close frame
            stream.closing = True
            self.send(stream, bl.masked_frame(0x8, (1000).to_bytes(2, "big")))
            self.deadline[stream.fd] = time.monotonic() + 2.0
            return
        if stream.mode == "rst":  # linger 0: close() sends a reset, as a crashed client does
            stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.drop(stream, f"client_{stream.mode}")

    def drop(self, stream: Any, why: str) -> None:
        if stream.open and stream.closing:  # the answer to our close
            why = "clean_close_answered" if why == "1000" else f"clean_close_{why}"
        if stream.open:
            super().drop(stream, why)
            self.done.append(self.streams.pop(stream.fd).state())
            self.deadline.pop(stream.fd, None)

    def tick(self) -> float:
        now = time.monotonic()
        for fd, when in list(self.deadline.items()):
            if when <= now and (stream := self.streams.get(fd)):
                if stream.closing:
                    self.drop(stream, "no_close_answer")
                else:
                    self.hang_up(stream)
        if self.running and now >= self.next_open:
            self.open_one()
            self.next_open = max(now, self.next_open) + self.rng.uniform(0.5, 1.5) * CHURN_EVERY
        wake = min([self.next_open if self.running else now + 1, *self.deadline.values()])
        return max(0.0, wake - time.monotonic())

    def command(self, line: str) -> bool:
        if line == "stop":  # no new ones; hang up the others now
            self.running, self.deadline = False, dict.fromkeys(self.deadline, 0.0)
        return line == "stop" or super().command(line)

    def report(self) -> dict[str, Any]:
        clients = self.done + [s.state() for s in self.streams.values()]
        return {"stats": self.stats, "closes": self.closes, "clients": clients, "bad_frames": 0}


class Load:
    """The senders (threads): single POSTs at a steady rate and occasional batches, answers
    checked; the counts are shared, under a lock.
    """

    def __init__(self, args: Any, port: int, headers: dict[str, str]) -> None:
        self.args, self.port, self.headers, self.lock = args, port, headers, threading.Lock()
        self.acked: set[int] = set()
        self.statuses, self.exceptions, self.replays = Counter(), Counter(), Counter()
        self.problems: list[str] = []
        self.mismatches = self.replay_bad = self.batch_items = 0
        self.rtt: dict[str, list[float]] = {}  # kind -> round trips in ms

    def call(self, conn: http.client.HTTPConnection, kind: str, request: tuple) -> Any:
        """One POST: (response, answer's activities, recorded) if 2xx, else None (counted)."""
        path, body, head = request
        sent = time.monotonic()
        try:
            conn.request("POST", path, body, {**self.headers, **head})
            resp = conn.getresponse()
            status, answer = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            with self.lock:
                self.exceptions[f"{kind} {type(exc).__name__}"] += 1
                return self.problems.append(f"{kind}: {type(exc).__name__}: {exc}")
        with self.lock:
            self.rtt.setdefault(kind, []).append((time.monotonic() - sent) * 1000)
            self.statuses[f"{kind} {status}"] += 1
            if not 200 <= status < 300:
                return self.problems.append(f"{kind}: status {status}: {answer[:200]!r}")
        answer = json.loads(answer)
        return resp, answer.get("items", [answer]), answer.get("recorded", 1)

    def exchange(self, conn: Any, kind: str, request: tuple, items: list, keyed: bool) -> None:
        """Send; the answer must hold what was sent, all recorded, with consecutive ids; if
        keyed, send again: the same ids, nothing recorded (a single says it is a replay).
        """
        if (res := self.call(conn, kind, request)) is None:
            return
        ids, sent = [a["id"] for a in res[1]], [[a.get(k) for k in FIELDS] for a in items]
        same = [[a.get(k) for k in FIELDS] for a in res[1]] == sent
        again = self.call(conn, f"{kind} replay", request) if keyed else None
        with self.lock:
            self.acked.update(ids)
            if not same or res[2] != len(items) or ids != list(range(ids[0], ids[0] + len(ids))):
                self.mismatches += 1
                self.problems.append(f"{kind} of {len(items)}: recorded {res[2]}, ids {ids[:3]}")
            if again:
                self.replays[kind] += 1
                self.acked.update(a["id"] for a in again[1])  # any recorded again
                header = again[0].getheader("Idempotent-Replayed") == "true"
                replayed = again[2] == 0 if kind == "batch" else header
                self.replay_bad += [a["id"] for a in again[1]] != ids or not replayed

    def paced(self, start: float, stop: float, every: float, send: Any) -> None:
        """send(conn, n) at start + n * every until stop, on one keep-alive connection."""
        conn, n = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT), 0
        while (target := start + n * every) < stop:
            time.sleep(max(0.0, target - time.monotonic()))
            send(conn, n)
            n += 1
        conn.close()

    def single(self, index: int, start: float, stop: float) -> None:
        """Query string, JSON and form bodies in turn; every 50th keyed and sent twice."""
        rng = random.Random(self.args.seed * 1000 + index)

        def send(conn: http.client.HTTPConnection, n: int) -> None:
            item = bl.realistic_activity(rng, unicode=True)
            fields = urlencode({k: v for k, v in item.items() if v is not None})
            path, body, head = bl.TRACK, fields.encode(), {"Content-Type": FORM}
            if n % 3 == 0:
                path, body, head = f"{bl.TRACK}?{fields}", b"", {}
            elif n % 3 == 1:
                body, head = json.dumps(item).encode(), {"Content-Type": JSON}
            if keyed := n % 50 == 49:
                head["Idempotency-Key"] = f"soak-{index}-{n}"
            self.exchange(conn, "single", (path, body, head), [item], keyed)

        every = self.args.senders / self.args.rate
        self.paced(start + index / self.args.rate, stop, every, send)

    def batches(self, start: float, stop: float) -> None:
        """1..1,000 items; every 4th with event_ids (at most 200, so that memory still
        holds their keys) and sent twice.
        """
        rng = random.Random(self.args.seed * 1000 + 999)

        def send(conn: http.client.HTTPConnection, n: int) -> None:
            keyed = n % 4 == 3
            size = rng.randint(1, 200 if keyed else 1000)
            items = [bl.realistic_activity(rng, unicode=True) for _ in range(size)]
            for i, item in enumerate(items if keyed else []):
                item["event_id"] = f"soak-batch-{n}-{i}"
            request = (bl.BATCH, json.dumps(items).encode(), {"Content-Type": JSON})
            self.exchange(conn, "batch", request, items, keyed)
            self.batch_items += len(items)  # only this thread writes it

        self.paced(start + BATCH_EVERY / 2, stop, BATCH_EVERY, send)


def process_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads from /proc/PID/status, and open fds."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def soak(bench: bl.Bench, args: Any, argv: list[str], load: Load) -> tuple:
    """Listeners and the churner connect; the load runs, memory sampled every second; the
    listeners must catch up; then the server stops with them connected.
    """
    server = bench.servers[0]
    pid = server.proc.pid  # type: ignore[union-attr]
    mem, samples, out = {"start": process_status(pid)}, [], {}
    listeners = bl.ws_pool(bench, [server.port], args.listeners)
    churner = bl.Pool(args.client_cpu, bench.log)
    try:
        churner.start(__file__, [[*argv, "--churner", str(server.port)]])
        mem["listeners connected"] = process_status(pid)
        start = time.monotonic() + 0.1
        stop, out["settle"] = start + args.duration, min(args.settle, args.duration / 2)
        senders = [(load.single, (i, start, stop)) for i in range(args.senders)]
        threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in senders]
        threads.append(threading.Thread(target=load.batches, args=(start, stop), daemon=True))
        snap = bl.snapshot([server])
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            time.sleep(1.0)
            samples.append((time.monotonic() - start, process_status(pid)))
            if samples[-1][0] >= out["settle"] and "settle" not in mem:
                mem["settle"] = samples[-1][1]
            if len(samples) % 10 == 0:
                rss = samples[-1][1].get("VmRSS")
                bl.progress(f"t={samples[-1][0]:.0f}s: {len(load.acked)} acked, RSS {rss} kB")
        mem["end"], use = process_status(pid), bl.usage(snap)[server.name]
        churner.tell("stop")
        out["last_acked"] = max(load.acked, default=0)
        out["drain"], out["caught_up"], _ = listeners.caught_up(out["last_acked"], DRAIN)
        time.sleep(max(0.0, 2.5 - out["drain"]))  # the churners' closes land
        out.update(use, last_id=bl.last_id(server.port, bench.headers))
        out["listeners"], out["churn"] = listeners.all("report"), churner.all("report")
        mem["after drain"] = process_status(pid)
        server.stop()  # with the listeners connected: each should get 1001
        time.sleep(0.5)
        out["after"] = listeners.all("report")
    finally:
        listeners.stop()
        churner.stop()
    return out, mem, samples


def report(bench: bl.Bench, args: Any, load: Load, out: dict, mem: dict, samples: list) -> None:
    """REPORT (its fields are this function's locals), the RSS timeline, the checks."""
    acked_ids, churn, goal = sorted(load.acked), out["churn"][0], MAX_RSS_RATIO
    chk, churn_chk = (bl.check_clients(r, acked_ids) for r in (out["listeners"], [churn]))
    problems, churn_problems = bl.problems(chk), bl.problems(churn_chk)
    stayed = sum(c["open"] for r in out["listeners"] for c in r["clients"])
    verdict = bl.verdict(not chk["missed"] and stayed == args.listeners)
    requests, statuses = load.statuses.total(), dict(sorted(load.statuses.items()))
    acked, exceptions, replays = len(load.acked), dict(load.exceptions), dict(load.replays)
    non2xx = sum(n for k, n in load.statuses.items() if not k.split()[-1].startswith("2"))
    rtt = "\n".join(
        f"| round trip, {k} | p50 {bl.percentile(v, 50):.1f}, p99 {bl.percentile(v, 99):.1f}, "
        f"max {max(v):.0f} ms |"
        for k, v in sorted(load.rtt.items())
    )
    during = sum((Counter(r["closes"]) for r in out["listeners"]), Counter())
    at_exit = dict(sum((Counter(r["closes"]) for r in out["after"]), Counter()) - during)
    closes, kb = dict(during) or "none", {k: v.get("VmRSS", 0) for k, v in mem.items()}
    rss = ", ".join(f"{k} {v / 1024:.1f} MB" for k, v in kb.items())
    rss += f"; peak {mem['after drain'].get('VmHWM', 0) / 1024:.1f} MB"
    ratio = kb["end"] / kb["settle"] if kb.get("settle") else float("nan")
    rss_verdict = bl.verdict(ratio <= MAX_RSS_RATIO)
    fds = ", ".join(f"{k} {v.get('fds')} / {v.get('Threads')}" for k, v in mem.items())
    bench.head(
        "Soak test",
        f"{args.duration:g} s: {args.senders} senders at {args.rate:g}/s in all, a batch every "
        f"{BATCH_EVERY:g} s, {args.listeners} listeners, a churner every ~{CHURN_EVERY:g} s",
    )
    print(REPORT.format_map(locals()))
    rss = [f"{t:.0f}s {s['VmRSS'] / 1024:.1f}" for t, s in samples[:: -(-len(samples) // 12)]]
    print(f"- RSS over the run (MB): {', '.join(rss)}")
    print(f"- first problems: {'; '.join(load.problems[:8]) or 'none'}")
    bench.tail({"memory": mem, "samples": samples, "statuses": load.statuses, "out": out})


def main(args: Any, argv: list[str]) -> int:
    bench = bl.Bench(args, "soak.py", argv, clients=True)
    server = bench.server("project", "--host 127.0.0.1")
    with bench.running():
        load = Load(args, server.port, bench.headers)
        out, mem, samples = soak(bench, args, argv, load)
    report(bench, args, load, out, mem, samples)
    return 0


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    if args.churner:
        churner = Churner(args)
        churner.reply({"ready": 0})
        churner.run()
    else:
        sys.exit(bl.run_main(lambda: main(args, sys.argv[1:])))
