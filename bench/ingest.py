"""Ingest benchmark: REST requests vs bare Tornado, batches, --db vs memory; or any A/B,
e.g. `python bench/ingest.py --ab "--db {tmp}/a.db" "--db {tmp}/b.db" --target 0.9`.
See bench/README.md.
"""

import json
import sys
from collections import Counter, namedtuple
from typing import Any

import benchlib as bl

TRACK = f"{bl.TRACK}?user_id=user_42&action=click&details=ingest-bench"
LIST, PREFILL, WARMUP = "/api/metrics/activities?limit=100", 200, 1.0
JSON = {"Content-Type": "application/json"}
# A row: load, server A, server B (or None), the target's kind ("ratio": B/A; "rate": of B,
# or of A alone) and value (or None).
ROWS = [  # --only section, then a row
    ("POST", ("POST", "bare", "project", "ratio", 0.85)),
    ("POST", ("POST", "bare", "naive", "ratio", None)),  # the machine's reference: no target
    ("POST", ("POST", "naive", "project", "ratio", None)),
    ("GET", ("GET", "bare", "project", "ratio", 0.85)),
    ("BATCH", ("BATCH100", "project", None, "", None)),
    ("BATCH", ("BATCH1000", "project", None, "rate", 200_000)),
    ("DB", ("POST", "project", "db", "ratio", 0.60)),
    ("DB", ("BATCH1000", "project", "db", "rate", 100_000)),
]
HEAD = (
    "load: A / B | req/s (activities/s for batches) | ratio B/A | target | p50 ms | p99 ms | "
    "server CPU us per request (activity), A / B (A/B) | redis CPU us | server CPU use | "
    "waiting for its CPU"
)
AB_LOADS = {"POST": "POST", "BATCH": "BATCH1000", "GET": "GET"}  # --only name: load


# A wrk load; items: activities recorded per answer (0: a reader).
Load = namedtuple("Load", "label script connections items body")


def parse_args(argv: list[str]) -> Any:
    p = bl.options("REST ingest: project vs bare Tornado, batches, --db, A/B", "--capacity 5000")
    p.add_argument("--rounds", type=int, default=9, help="rounds (medians are reported)")
    p.add_argument("--duration", type=float, default=2, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=16, help="wrk -c for single requests")
    p.add_argument("--only", help="POST,GET,BATCH,DB (default all); with --ab POST,BATCH,GET")
    p.add_argument("--ab", nargs=2, metavar=("A", "B"), help="two server configurations")
    p.add_argument("--target", type=float, help="with --ab: the least B/A that meets the target")
    args = p.parse_args(argv)
    known = list(AB_LOADS) if args.ab else list(dict.fromkeys(section for section, _ in ROWS))
    args.sections = (args.only or ("POST,BATCH" if args.ab else ",".join(known))).upper().split(",")
    if not args.sections or set(args.sections) - set(known):
        p.error(f"--only: choose from {', '.join(known)}")
    return args


def make_loads(bench: bl.Bench, args: Any) -> dict[str, Load]:
    """Static wrk requests; batches of 4 connections (a batch is milliseconds of server CPU:
    1 to 8 connections gave the same rate).
    """
    h, tmp, c = bench.headers, bench.tmp, args.connections
    post = bl.wrk_script(tmp, "post", "POST", TRACK, h)
    loads = {"POST": Load("POST /api/metrics/track", post, c, 1, None)}
    loads["GET"] = Load(f"GET {LIST}", bl.wrk_script(tmp, "get", "GET", LIST, h), c, 0, None)
    for size in (100, 1000):
        body = bl.batch_body(size, seed=size)
        script = bl.wrk_script(tmp, f"batch{size}", "POST", bl.BATCH, {**h, **JSON}, body)
        loads[f"BATCH{size}"] = Load(f"batches of {size:,}", script, 4, size, body)
    return loads


def make_plan(bench: bl.Bench, args: Any) -> tuple[list, list]:
    """The servers, each load's servers in plan order, and the rows to report."""
    if args.ab:
        bench.server("A", args.ab[0])
        bench.server("B", args.ab[1])
        rows = [(AB_LOADS[s], "A", "B", "ratio", args.target) for s in args.sections]
    else:
        rows = [row for section, row in ROWS if section in args.sections]
        names = {name for row in rows for name in row[1:3] if name}
        extra = {"db": "--db {tmp}/bench.db", "naive": "--naive"}
        for name in ("bare", "naive", "project", "db"):
            if name in names:
                bench.server(name, extra.get(name, ""), name in ("bare", "naive"))
    plan = [
        (key, [s for s in bench.servers if any(r[0] == key and s.name in r[1:3] for r in rows)])
        for key in dict.fromkeys(r[0] for r in rows)
    ]
    return plan, rows


def measure(bench: bl.Bench, args: Any, plan: list, loads: dict[str, Load]) -> tuple:
    """Warm-up, then the rounds; results[load][server] = one dict per round, and what the
    recording servers acknowledged (wrk-counted, and at most how many were cut off).
    """
    results = {key: {s.name: [] for s in sides} for key, sides in plan}
    acked, slack = Counter(), Counter()

    def run(server: bl.Server, key: str, seconds: float) -> dict[str, Any]:
        load, records = loads[key], server.name != "bare"
        for _ in range(PREFILL if key == "GET" and records else 0):  # GET's newest 100: POSTs
            status = bl.http_request(server.port, "POST", TRACK, None, bench.headers)[0]
            acked[server.name] += status == 200
        argv = bl.wrk_argv(server.port, load.script, load.connections, seconds, args.client_cpu)
        snap = bl.snapshot([server, *([bench.redis] if bench.redis else [])])
        res = bl.run_wrk(argv, seconds)
        use, items = bl.usage(snap), max(1, load.items)
        per_item = max(1, res["requests"] * items) / 1e6
        if records:
            acked[server.name] += (res["requests"] - res["errors"].get("status", 0)) * load.items
            slack[server.name] += load.connections * load.items
        res.update(use[server.name], rate=res["rps"] * items)
        res["cpu_us"] = use[server.name]["cpu_s"] / per_item
        if bench.redis:
            res["redis_us"] = use["redis"]["cpu_s"] / per_item
        return res

    for key, sides in plan:  # a batch must be accepted whole once before it is measured
        for server, load in ((s, loads[key]) for s in sides):
            if load.body and server.name != "bare":
                head = {**bench.headers, **JSON}
                answer = bl.http_request(server.port, "POST", bl.BATCH, load.body, head)
                if answer[0] != 200 or json.loads(answer[1]).get("recorded") != load.items:
                    raise RuntimeError(f"{server.name}: {load.label} answered {answer}"[:300])
                acked[server.name] += load.items
            run(server, key, WARMUP)
    for rnd in range(args.rounds):
        for key, sides in plan:
            for server in sides if rnd % 2 == 0 else sides[::-1]:
                results[key][server.name].append(r := run(server, key, args.duration))
                done = f"{r['rate']:9.0f}/s, {r['cpu_us']:5.1f} us, waited {r['wait']:.0%}"
                bl.progress(f"round {rnd + 1}/{args.rounds} {key:9} {server.name:7} {done}")
    return results, acked, slack


def check_store(bench: bl.Bench, server: bl.Server, acked: int, slack: int) -> str:
    """The buffer read back: ids consecutive, the last one as many as were acknowledged."""
    path = "/api/metrics/activities?limit=1000000"
    status, body = bl.http_request(server.port, "GET", path, headers=bench.headers)
    ids = [item["id"] for item in json.loads(body)] if status == 200 else []
    gaps, last = sum(b != a + 1 for a, b in zip(ids, ids[1:], strict=False)), ids[-1] if ids else 0
    ok = gaps == 0 and acked <= last <= acked + slack
    return (
        f"{server.name}: {len(ids)} ids read back, {gaps} not consecutive; last id {last:,}, "
        f"{acked:,} acknowledged (+ at most {slack:,} cut off): {'ok' if ok else 'PROBLEM'}"
    )


def row(results: dict, loads: dict, key: str, a: str, b: str | None, kind: str, goal: Any) -> str:
    """One table row: medians on A (/ B), the median of per-round ratios B/A, the verdict."""
    ra, rb = results[key][a], results[key][b] if b else []
    pairs = list(zip(ra, rb, strict=True)) if b else []

    def both(field: str, fmt: str) -> str:
        values = [bl.median([r[field] for r in runs if field in r]) for runs in (ra, rb) if runs]
        return " / ".join(format(v, fmt) for v in values if v == v) or "-"

    ratio = bl.median([y["rate"] / x["rate"] for x, y in pairs if x["rate"]])
    cpu = bl.median([x["cpu_us"] / y["cpu_us"] for x, y in pairs if y["cpu_us"]])
    value = ratio if kind == "ratio" else bl.median([r["rate"] for r in rb or ra])
    target = "-"
    if goal:
        cond = f"B/A >= {goal}" if kind == "ratio" else f">= {goal:,}/s"
        target = f"{bl.verdict(value >= goal)} ({cond})"
    name, ratio, cpu = (f"{a} / {b}", f"{ratio:.3f}", f" ({cpu:.2f})") if b else (a, "-", "")
    return (
        f"{loads[key].label}: {name} | {both('rate', ',.0f')} | {ratio} | {target} | "
        f"{both('p50_ms', '.2f')} | {both('p99_ms', '.2f')} | {both('cpu_us', '.1f')}{cpu} | "
        f"{both('redis_us', '.1f')} | {both('util', '.0%')} | {both('wait', '.0%')}"
    )


def report(bench: bl.Bench, args: Any, loads: dict, results: dict, rows: list, notes: list) -> None:
    waits = [r["wait"] for runs in results.values() for rs in runs.values() for r in rs]
    bench.head(
        "Ingest benchmark" + " (A/B)" * bool(args.ab),
        f"{args.rounds} rounds x {args.duration:g} s per wrk run (`wrk -t1 -c{args.connections}`, "
        f"batches -c4) after {WARMUP:g} s of warm-up; medians; ratio: median of per-round B/A",
        f"noise: servers waiting for their CPU {bl.median(waits):.0%} of the median run, "
        f"{max(waits, default=0):.0%} of the worst (a few % is clean)",
    )
    bl.table(HEAD, [row(results, loads, *r) for r in rows])
    for key, a, b, *_ in [r for r in rows if r[2]]:
        pairs = zip(results[key][a], results[key][b], strict=True)
        ratios = ", ".join(f"{y['rate'] / x['rate']:.2f}" for x, y in pairs if x["rate"])
        print(f"- {key} {b}/{a} per round: {ratios}")
    errors = [(k, n, r["errors"]) for k, rs in results.items() for n, s in rs.items() for r in s]
    print(f"\n### Checks\n\n- wrk errors: {[e for e in errors if e[2]] or 'none'}")
    for note in notes:
        print(f"- {note}")
    bench.tail({"runs": results, "notes": notes})


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bench = bl.Bench(args, "ingest.py", argv)
    loads, (plan, rows) = make_loads(bench, args), make_plan(bench, args)
    with bench.running():
        results, acked, slack = measure(bench, args, plan, loads)
        stores = [s for s in bench.servers if s.name != "bare"]
        notes = [check_store(bench, s, acked[s.name], slack[s.name]) for s in stores]
        sizes = {n: bl.med(rs, "bytes_per_req", ".0f") for n, rs in results.get("GET", {}).items()}
        notes += [f"GET answer bytes: {sizes}"] if sizes else []
        tmp = bench.tmp
        du, fs = bl.output("du", "-sh", tmp).split()[0], bl.output("stat", "-f", "-c", "%T", tmp)
        notes.append(f"temporary directory: {du} on {fs} (fsync on tmpfs is free)")
    report(bench, args, loads, results, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(bl.run_main(lambda: main(sys.argv[1:])))
