"""Live-feed benchmark: latency to the last of N WebSocket clients (over --servers K),
and the ingest cost of connected clients. See bench/README.md.
"""

import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import benchlib as bl

SEND = f"{bl.TRACK}?user_id=live_bench&action=ping&details=seq-"
WARMUP, MAX_P99_MS, MIN_INGEST_RATIO, WAYS = 1.0, 50.0, 0.75, ("kernel", "app")
LATENCY_HEAD = (
    "clients | activities | last client p50 / p99 / max ms, kernel | same, app | client-side "
    f"delay p99 ms | ids delivered / expected | server CPU / waiting | client CPU | target p99 "
    f"< {MAX_P99_MS:g} ms"
)
INGEST_HEAD = (
    "clients connected | req/s | ratio | p50 / p99 ms | server CPU us/req | server CPU / "
    "waiting | client CPU | target"
)
ROUND = "- N={n} round {i}: p99 kernel / app {kernel_99:.1f} / {app_99:.1f} ms; POST p99 "
ROUND += "{rtt_p99:.1f} ms, {bad_status} not 200; anomalies: {problems}"
INGEST_ROUND = "- round {i} with clients: {received:,} / {expected:,} deliveries, caught up "
INGEST_ROUND += "{caught_up} in {caught_s:.2f} s, open {open}, anomalies {problems}"
ALERT_ROUND = "; alerts p99 kernel / app {alert_kernel_99:.1f} / {alert_app_99:.1f} ms"
RULES_EVERY = "--rules bench/rules-every.json"  # an alert right after every activity


def parse_args(argv: list[str]) -> Any:
    p = bl.options("Live-feed benchmark", "--redis {redis}")
    add = p.add_argument
    add("--clients", default="100,1000", help="comma-separated client counts ('' skips)")
    add("--servers", type=int, default=1, help="project servers; clients round-robin over them")
    add("--rate", type=float, default=50, help="activities per second while measuring latency")
    add("--duration", type=float, default=10, help="measured seconds per latency round")
    add("--rounds", type=int, default=3, help="rounds of each part (medians are reported)")
    add("--ingest-clients", type=int, default=100, help="clients in the ingest part (0 skips)")
    add("--ingest-duration", type=float, default=5, help="seconds per wrk run")
    add("--connections", type=int, default=16, help="wrk -c")
    add("--client-procs", type=int, default=2, help="processes the clients are spread over")
    add("--alerts", action="store_true", help=f"{RULES_EVERY}; time alerts too; no ingest part")
    args = p.parse_args(argv)
    args.ingest_clients = 0 if args.alerts else args.ingest_clients  # measured without rules
    args.kinds = ("", "alert_") if args.alerts else ("",)  # what is timed: activities, alerts
    args.clients = [int(x) for x in args.clients.split(",") if x.strip()]
    return args


def send_steady(port: int, headers: dict, rate: float, seconds: float) -> list[dict]:
    """POST at a steady rate from a pool of threads, each with a keep-alive connection, open
    loop (a slow answer does not delay the next send): when each was written, its id.
    """
    local, records = threading.local(), []

    def post(seq: int) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent = time.time_ns()
        local.conn.request("POST", f"{SEND}{seq}", headers=headers)
        resp = local.conn.getresponse()
        answer, rtt_ms = resp.read(), (time.time_ns() - sent) / 1e6
        id_ = json.loads(answer)["id"] if resp.status == 200 else None
        records.append({"seq": seq, "send_ns": sent, "rtt_ms": rtt_ms, "id": id_})

    start, futures = time.monotonic() + 0.05, []
    with ThreadPoolExecutor(8) as threads:
        for seq in range(int(rate * seconds)):
            time.sleep(max(0.0, start + seq / rate - time.monotonic()))
            futures.append(threads.submit(post, seq))
        for future in futures:
            future.result()
    return sorted(records, key=lambda r: r["seq"])


def live_round(bench: bl.Bench, args: Any, n: int, wrk: str = "") -> dict:
    """n clients round-robin over the servers, then POSTs to the first: the steady sender
    (timed), or wrk running `wrk`; every client must then get to the last id, each id once.
    """
    first, ports = bench.servers[0], [s.port for s in bench.servers]
    pool, out = bl.ws_pool(bench, ports, n) if n else None, {"n": n}
    try:
        if pool:
            time.sleep(0.5)  # the hellos land
            pool.tell("reset")
            pool.tell("timing off" if wrk else "timing on")
        start, snap = bl.last_id(first.port, bench.headers) + 1, bl.snapshot(bench.measured)
        if wrk:
            secs, cpu = args.ingest_duration, args.client_cpu
            argv = bl.wrk_argv(first.port, wrk, args.connections, secs, cpu)
            out.update(bl.run_wrk(argv, secs))
        else:
            secs = WARMUP + args.duration
            out["records"] = send_steady(first.port, bench.headers, args.rate, secs)
        use = [bl.usage(snap)[s.name] for s in bench.servers]
        out.update({k: sum(u[k] for u in use) for k in ("cpu_s", "util", "wait")})
        time.sleep(0.3 if wrk else 0)  # requests wrk cut off may still be recorded
        last = bl.last_id(first.port, bench.headers)
        if pool:
            out["caught_s"], out["caught_up"], out["open"] = pool.caught_up(last, 15)
            reports = pool.all("report")
            chk = bl.check_clients(reports, list(range(start, last + 1)))
            if args.alerts:  # one per activity, to every client: as many as ids expected
                out["alert_received"] = chk.pop("message alert", 0)
            for report in reports:
                chk.update({f"close {code}": k for code, k in report["closes"].items()})
            cpu_s, wall = sum(r["cpu_s"] for r in reports), max(r["wall_s"] for r in reports)
            out.update(received=chk["received"], expected=chk["expected"], client_cpu=cpu_s / wall)
            out.update(problems=bl.problems(chk), seen=[r["seen"] for r in reports])
    finally:
        if pool:
            pool.stop()
    return out


def latencies(args: Any, out: dict) -> dict:
    """From the send times and the latest receipts (kernel, app) by any client of each id
    (and with --alerts, of its alert: key -id): percentiles of the latency to the last
    client, and of the client side's own delay.
    """
    seen: dict[int, list[int]] = {}
    for part in out.pop("seen"):
        for key, times in part.items():
            old = seen.get(int(key), [0, 0])
            seen[int(key)] = [max(old[0], times[0]), max(old[1], times[1])]
    records = out.pop("records")
    for pre in args.kinds:
        kernel, app, delay = [], [], []
        for rec in records[int(args.rate * WARMUP) :]:
            if rec["id"] and (got := seen.get(-rec["id"] if pre else rec["id"])) is not None:
                app.append((got[1] - rec["send_ns"]) / 1e6)
                if got[0]:
                    kernel.append((got[0] - rec["send_ns"]) / 1e6)
                    delay.append((got[1] - got[0]) / 1e6)
        for name, values in (("kernel", kernel), ("app", app)):
            out.update({f"{pre}{name}_{p}": bl.percentile(values, p) for p in (50, 99, 100)})
        out.update({f"{pre}measured": len(app), f"{pre}delay_99": bl.percentile(delay, 99)})
    out.update(rtt_p99=bl.percentile([r["rtt_ms"] for r in records], 99))
    return out | {"bad_status": sum(r["id"] is None for r in records)}


def report_latency(args: Any, latency: dict[int, list[dict]]) -> None:
    rows, m = [], bl.med
    for n, rs, pre in [(n, rs, pre) for n, rs in latency.items() for pre in args.kinds]:
        k99, a99 = (bl.median([r[f"{pre}{w}_99"] for r in rs]) for w in WAYS)
        verdict = f"kernel {bl.verdict(k99 < MAX_P99_MS)}, app {bl.verdict(a99 < MAX_P99_MS)}"
        kernel, app = (" / ".join(m(rs, f"{pre}{w}_{p}") for p in (50, 99, 100)) for w in WAYS)
        received, expected = sum(r[pre + "received"] for r in rs), sum(r["expected"] for r in rs)
        rows.append(
            f"{n}{' alerts' * bool(pre)} | {sum(r[pre + 'measured'] for r in rs)} | {kernel} | "
            f"{app} | {m(rs, pre + 'delay_99')} | {received:,} / {expected:,} | "
            f"{m(rs, 'util', '.0%')} / {m(rs, 'wait', '.0%')} | {m(rs, 'client_cpu', '.0%')} | "
            f"{verdict if n == 1000 else '-'}"
        )
    bl.table(LATENCY_HEAD, rows)
    for rs in latency.values():
        for i, r in enumerate(rs):
            print(ROUND.format(i=i + 1, **r) + (ALERT_ROUND.format(**r) if args.alerts else ""))


def report_ingest(args: Any, ingest: dict[int, list[dict]]) -> None:
    none, some, m = ingest[0], ingest[args.ingest_clients], bl.med
    ratios = [s["rps"] / z["rps"] for z, s in zip(none, some, strict=True)]
    verdict = f"{bl.verdict(bl.median(ratios) >= MIN_INGEST_RATIO)} (>= {MIN_INGEST_RATIO})"
    rows = [
        f"{n} | {m(rs, 'rps', ',.0f')} | {f'{bl.median(ratios):.2f}' if n else '1'} | "
        f"{m(rs, 'p50_ms', '.2f')} / {m(rs, 'p99_ms', '.2f')} | {m(rs, 'cpu_us', '.0f')} | "
        f"{m(rs, 'util', '.0%')} / {m(rs, 'wait', '.0%')} | {m(rs, 'client_cpu', '.0%')} | "
        f"{verdict if n else ''}"
        for n, rs in ((0, none), (args.ingest_clients, some))
    ]
    bl.table(INGEST_HEAD, rows)
    print(f"- per-round ratios: {', '.join(f'{x:.2f}' for x in ratios)}")
    for i, r in enumerate(some):
        print(INGEST_ROUND.format(i=i + 1, **r))
    print(f"- wrk errors: {[r['errors'] for r in none + some if r['errors']] or 'none'}")


def main(args: Any, argv: list[str]) -> int:
    bench = bl.Bench(args, "live.py", argv, clients=True)
    for i in range(args.servers):
        name = f"project{i + 1}" if args.servers > 1 else "project"
        bench.server(name, RULES_EVERY if args.alerts else "")
    script = bl.wrk_script(bench.tmp, "post", "POST", SEND + "wrk", bench.headers)
    latency, ingest = {n: [] for n in args.clients}, {0: [], args.ingest_clients: []}
    with bench.running():
        for rnd in range(args.rounds):
            for n in args.clients:
                latency[n].append(r := latencies(args, live_round(bench, args, n)))
                bl.progress(f"round {rnd + 1} N={n}: p99 {r['kernel_99']:.1f} ms")
        if args.ingest_clients:
            live_round(bench, args, 0, script)  # warm-up
        for rnd in range(args.rounds if args.ingest_clients else 0):
            for n in [0, args.ingest_clients][:: 1 if rnd % 2 == 0 else -1]:
                ingest[n].append(r := live_round(bench, args, n, script))
                r["cpu_us"] = r["cpu_s"] / max(1, r["requests"]) * 1e6
                bl.progress(f"ingest round {rnd + 1} clients={n}: {r['rps']:.0f}/s")
    bench.head(
        "Live-feed benchmark",
        f"{args.servers} server(s); the clients round-robin over them, in {args.client_procs} "
        f"processes; POSTs to the first at {args.rate:g}/s, {WARMUP:g} s of warm-up then "
        f"{args.duration:g} s measured; {args.rounds} round(s); medians over rounds",
    )
    if args.clients:
        report_latency(args, latency)
    if args.ingest_clients:
        print(f"\nIngest: `wrk -c{args.connections}` POSTs for {args.ingest_duration:g} s:")
        report_ingest(args, ingest)
    bench.tail({"latency": latency, "ingest": ingest})
    return 0


if __name__ == "__main__":
    sys.exit(bl.run_main(lambda: main(parse_args(sys.argv[1:]), sys.argv[1:])))
