"""Readers benchmark: GET /api/metrics/activities?limit=1 latency while --summaries clients
loop GET /api/metrics/summary over a whole --db table, and while none do. See bench/README.md.
"""

import http.client
import json
import sys
import threading
import time
from typing import Any

import benchlib as bl

MAX_P99_MS, SUMMARY = 20.0, "/api/metrics/summary"
HEAD = (
    "summaries running | GET limit=1 p50 / p99 ms | samples | summaries done | server CPU / "
    f"waiting | wrong answers | target p99 < {MAX_P99_MS:g} ms"
)


def parse_args(argv: list[str]) -> Any:
    p = bl.options("Readers benchmark: GET latency while summaries run", "--capacity 5000")
    p.add_argument("--rows", type=int, default=1_000_000, help="activities in the database")
    p.add_argument("--db-file", default="{tmp}/readers.db", help="reused if it exists")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each phase")
    p.add_argument("--duration", type=float, default=5, help="seconds per phase")
    p.add_argument("--summaries", type=int, default=5, help="clients looping GET summary")
    return p.parse_args(argv)


def build(bench: bl.Bench, server: bl.Server, rows: int) -> int:
    """Top the table up to `rows` with batches of 1,000, each recorded whole."""
    have = start = bl.last_id(server.port, bench.headers)
    bodies = [bl.batch_body(1000, seed) for seed in range(10)]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    while have < rows:
        size = min(1000, rows - have)
        body = bodies[have // 1000 % 10] if size == 1000 else bl.batch_body(size)
        conn.request("POST", bl.BATCH, body, {**bench.headers, "Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200 or json.loads(resp.read())["recorded"] != size:
            raise RuntimeError(f"a batch of {size} was answered {resp.status}")
        have += size
    return have - start


def phase(bench: bl.Bench, args: Any, server: bl.Server, script: str, load: bool) -> dict:
    """Sequential GET limit=1 for --duration (each must answer the last id), with or
    without wrk looping summaries meanwhile; then wait until the server is idle.
    """
    last, wrk, times, wrong = bl.last_id(server.port, bench.headers), {}, [], 0
    argv = bl.wrk_argv(server.port, script, args.summaries, args.duration + 1, args.client_cpu, 120)
    thread = threading.Thread(target=lambda: wrk.update(bl.run_wrk(argv, args.duration + 1)))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    snap = bl.snapshot([server])
    if load:
        thread.start()
        time.sleep(0.5)  # the summaries are under way
    stop = time.monotonic() + args.duration
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        conn.request("GET", bl.READY, headers=bench.headers)
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - t0) * 1000)
        wrong += resp.status != 200 or [a["id"] for a in json.loads(body)] != [last]
    out = {"p50": bl.percentile(times, 50), "p99": bl.percentile(times, 99), "samples": len(times)}
    out.update(bl.usage(snap)[server.name], wrong=wrong)
    if load:
        thread.join()
        out.update(summaries=wrk["requests"], errors=wrk["errors"])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:  # summaries wrk cut off may still be running
        cpu = server.times()[0]
        time.sleep(0.2)
        if server.times()[0] - cpu < 0.02:  # under 10% of a CPU
            break
    out["idle_s"] = time.monotonic() - t0
    return out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bench = bl.Bench(args, "readers.py", argv)
    server = bench.server("db", f"--db {args.db_file}")
    script = bl.wrk_script(bench.tmp, "summary", "GET", SUMMARY, bench.headers)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    with bench.running():
        t0, added = time.monotonic(), build(bench, server, args.rows)
        build_s, last = time.monotonic() - t0, bl.last_id(server.port, bench.headers)
        summary = bl.http_request(server.port, "GET", SUMMARY, None, bench.headers)[1]
        total = json.loads(summary)["total"]
        for rnd in range(args.rounds):
            for load in (False, True) if rnd % 2 == 0 else (True, False):
                runs[load].append(r := phase(bench, args, server, script, load))
                bl.progress(f"round {rnd + 1} summaries {load}: p99 {r['p99']:.2f} ms")
    bench.head(
        "Readers benchmark",
        f"database: {last:,} rows ({added:,} added in {build_s:.0f} s); a summary counted "
        f"{total:,}: {'ok' if total == last else 'PROBLEM'}",
        f"{args.rounds} rounds of {args.duration:g} s without and with {args.summaries} wrk "
        "clients looping GET /api/metrics/summary, alternating; medians over rounds",
    )
    p99, rows, m = bl.median([r["p99"] for r in runs[True]]), [], bl.med
    for n, rs in ((0, runs[False]), (args.summaries, runs[True])):
        rows.append(
            f"{n} | {m(rs, 'p50', '.2f')} / {m(rs, 'p99', '.2f')} | {m(rs, 'samples', '.0f')} | "
            f"{m(rs, 'summaries', '.0f')} | {m(rs, 'util', '.0%')} / {m(rs, 'wait', '.0%')} | "
            f"{sum(r['wrong'] for r in rs)} | {bl.verdict(p99 < MAX_P99_MS) if n else ''}"
        )
    bl.table(HEAD, rows)
    print(f"- p99 with summaries per round (ms): {[round(r['p99'], 1) for r in runs[True]]}")
    print(f"- wrk errors: {[r['errors'] for r in runs[True] if r['errors']] or 'none'}")
    print(f"- seconds to idle after the summaries: {[round(r['idle_s'], 1) for r in runs[True]]}")
    bench.tail(runs)
    return 0


if __name__ == "__main__":
    sys.exit(bl.run_main(lambda: main(sys.argv[1:])))
