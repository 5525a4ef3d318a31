"""Ingest benchmark: REST single requests vs bare Tornado, batches, and --db vs memory.

    python bench/ingest.py                       # everything: ~2.6 min
    python bench/ingest.py --only POST,GET       # the project-vs-bare rows only
    python bench/ingest.py --only BATCH,DB --rounds 5
    python bench/ingest.py --server-args "--capacity 5000"   # extra run.py flags

Sections (--only, comma-separated; default all):
  POST   POST /api/metrics/track?user_id=...&action=...&details=...   project vs bare
  GET    GET  /api/metrics/activities?limit=100 (buffer pre-filled)    project vs bare
  BATCH  POST /api/metrics/track/batch with prebuilt JSON arrays of --batch-sizes
         realistic items (default 100 and 1,000): activities/s, in memory
  DB     single POST and batches of --db-batch (1,000), with `--db {tmp}/bench.db`,
         against the in-memory project in the same rounds: ratio

Servers, all on free ports of 127.0.0.1, pinned to --server-cpu (wrk to --client-cpu):
  project: `python run.py --port P [--server-args]`
  bare:    `python bench/bare_server.py --port P` -- same HTTPServer setup and logging
           as run.py, handlers that return precomputed constant bodies (the ceiling)
  db:      `python run.py --port P [--server-args] --db {tmp}/bench.db` (--db-args)
In every round each load runs against every server it compares, back to back (order
reversed every other round); tables show medians over rounds, and ratios are medians of
per-round ratios. A run shared by two sections (e.g. the in-memory POST) is measured once.
Targets (reported, not asserted): POST >= 0.90 of bare, GET >= 0.85 of bare; batches of
1,000 >= 200,000 activities/s; with --db, single POST >= 0.60 of in-memory and batches of
1,000 >= 100,000 activities/s.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import benchlib as bl

USER_ID, ACTION, DETAILS = "user_42", "click", "ingest-bench"
TRACK_PATH = f"/api/metrics/track?user_id={USER_ID}&action={ACTION}&details={DETAILS}"
BATCH_PATH = "/api/metrics/track/batch"
LIST_PATH = "/api/metrics/activities?limit=100"
READY_PATH = "/api/metrics/activities?limit=1"
SECTIONS = ("POST", "GET", "BATCH", "DB")
TARGETS = {"POST": 0.90, "GET": 0.85}
TARGET_BATCH_RATE = 200_000  # activities/s, batches of 1,000, in memory
TARGET_DB_POST_RATIO = 0.60  # single POST with --db / in memory
TARGET_DB_BATCH_RATE = 100_000  # activities/s, batches of 1,000, with --db


@dataclass
class Load:
    """One wrk workload: its script, connections, and activities per request."""

    key: str
    label: str
    script: str
    connections: int
    items: int  # activities recorded per successful request (0: a reader)
    request_bytes: int = 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="REST ingest benchmark: project vs bare Tornado, batches, --db "
        "(see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=2, help="seconds per wrk run")
    # Many short rounds: the host's noise comes in bursts of seconds, which two back-to-back
    # short runs share; per-round POST ratios spread from 0.81 to 1.03 over 21 rounds.
    p.add_argument("--rounds", type=int, default=9, help="rounds (medians are reported)")
    p.add_argument("--warmup", type=float, default=1, help="seconds of wrk warm-up per run kind")
    p.add_argument("--connections", type=int, default=16, help="wrk -c for single requests")
    p.add_argument(
        "--batch-connections",
        type=int,
        default=4,
        help="wrk -c for batches (each batch is milliseconds of server CPU: a few in "
        "flight saturate the one server core)",
    )
    p.add_argument("--threads", type=int, default=1, help="wrk -t")
    p.add_argument("--prefill", type=int, default=200, help="activities recorded before GET")
    p.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)}",
    )
    p.add_argument(
        "--batch-sizes", default="100,1000", help="items per batch for the BATCH section"
    )
    p.add_argument("--db-batch", type=int, default=1000, help="items per batch in the DB section")
    p.add_argument(
        "--db-args",
        default="--db {tmp}/bench.db",
        help="run.py arguments that make the DB server (added after --server-args); {tmp} "
        "is the benchmark's temporary directory",
    )
    p.add_argument(
        "--tmp-dir",
        default=None,
        help="where the temporary directory (and so the --db file) is created; default: "
        "$TMPDIR or /tmp. The file system matters for --db: fsync on tmpfs is free",
    )
    bl.add_server_options(p, "--capacity 5000")
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (database, logs)"
    )
    args = p.parse_args(argv)
    args.sections = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown or not args.sections:
        p.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    bl.apply_pinning(args)
    return args


def fmt_lat(result: dict[str, Any]) -> str:
    return f"{result['p50_ms']:.2f} / {result['p99_ms']:.2f} ms"


def filesystem_of(path: str) -> str:
    """The mount point and file system type holding path (from /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                fields = line.split()
                mount = fields[1]
                if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(
                    mount
                ) >= len(best):
                    best, kind = mount, f"{fields[2]} ({fields[0]})"
    except OSError:
        pass
    return f"{kind} mounted on {best or '?'}"


def post_many(port: int, path: str, count: int, headers: dict[str, str]) -> None:
    """`count` POSTs over one keep-alive connection; each must answer 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(count):
            conn.request("POST", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST {path} on port {port} got {resp.status}")
    finally:
        conn.close()


def check_store(server: bl.Server, acked: int, slack: int) -> list[str]:
    """Read the buffer back: ids strictly consecutive, and as many as were acknowledged."""
    notes = []
    status, body = bl.http_request(
        server.port, "GET", "/api/metrics/activities?limit=1000000", headers=server.headers
    )
    if status != 200:
        return [f"{server.name}: GET whole buffer: status {status}"]
    items = json.loads(body)
    ids = [item["id"] for item in items]
    if any(b != a + 1 for a, b in zip(ids, ids[1:], strict=False)):
        notes.append(f"{server.name}: ids in the buffer are NOT consecutive and increasing")
    last = ids[-1] if ids else 0
    if last < acked:
        notes.append(f"{server.name}: last id {last} < {acked} acknowledged activities: LOST")
    elif last > acked + slack:
        notes.append(f"{server.name}: last id {last} > {acked} acknowledged + {slack} in flight")
    notes.append(
        f"{server.name}: last id {last}; wrk-counted activities {acked} (difference "
        f"{last - acked}: requests cut off at the end of wrk runs, at most {slack})"
    )
    return notes


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bl.set_nice(args.nice)
    bl.install_signal_handlers()
    command = shlex.join(["python", "bench/ingest.py", *argv])
    environment = bl.environment_line()
    tmp = tempfile.mkdtemp(prefix="bench-ingest-", dir=args.tmp_dir)
    if not args.keep:
        # Also on an error or Ctrl-C (not on SIGKILL): the database can be large.
        atexit.register(shutil.rmtree, tmp, True)
    auth = bl.auth_headers(args.token)
    token_args = ["--api-token", args.token] if args.token else []
    sections = args.sections
    want_db = "DB" in sections

    # -- loads ----------------------------------------------------------------------------
    # The bare server ignores the header; sending it keeps both requests the same size.
    loads: dict[str, Load] = {
        "POST": Load(
            "POST",
            "POST /api/metrics/track",
            bl.write_wrk_script(tmp, "post", "POST", TRACK_PATH, headers=auth),
            args.connections,
            1,
        ),
        "GET": Load(
            "GET",
            f"GET {LIST_PATH}",
            bl.write_wrk_script(tmp, "get", "GET", LIST_PATH, headers=auth),
            args.connections,
            0,
        ),
    }
    batch_sizes = list(args.batch_sizes) if "BATCH" in sections else []
    if want_db and args.db_batch not in batch_sizes:
        batch_sizes.append(args.db_batch)
    bodies: dict[int, bytes] = {}
    for size in batch_sizes:
        body = bl.batch_body(size, seed=size)
        bodies[size] = body
        body_file = os.path.join(tmp, f"batch{size}.json")
        with open(body_file, "wb") as fh:
            fh.write(body)
        script = bl.write_wrk_script(
            tmp,
            f"batch{size}",
            "POST",
            BATCH_PATH,
            headers={**auth, "Content-Type": "application/json"},
            body_file=body_file,
        )
        loads[f"BATCH{size}"] = Load(
            f"BATCH{size}",
            f"POST {BATCH_PATH}, {size:,} items",
            script,
            args.batch_connections,
            size,
            len(body),
        )

    # -- plan: per round, each load against the servers that need it ------------------------
    plan: list[tuple[str, list[str]]] = []
    if "POST" in sections or want_db:
        names = ["project", "bare"] if "POST" in sections else ["project"]
        plan.append(("POST", names + (["db"] if want_db else [])))
    if "GET" in sections:
        plan.append(("GET", ["project", "bare"]))
    for size in sorted(batch_sizes, reverse=True):
        names = []
        if size in args.batch_sizes and "BATCH" in sections:
            names.append("project")
        if want_db and size == args.db_batch:
            names = ["project", "db"]
        plan.append((f"BATCH{size}", names))
    needed = {name for _, names in plan for name in names}

    # -- servers --------------------------------------------------------------------------
    def project_argv(port: int, extra: str) -> list[str]:
        return [
            *shlex.split(args.server_cmd),
            "--port",
            str(port),
            *token_args,
            *shlex.split(args.server_args.format(tmp=tmp)),
            *shlex.split(extra.format(tmp=tmp)),
        ]

    servers: dict[str, bl.Server] = {}
    port = bl.free_port()
    servers["project"] = bl.Server(
        "project", project_argv(port, ""), port, args.server_cpu, headers=auth
    )
    if "bare" in needed:
        port = bl.free_port()
        servers["bare"] = bl.Server(
            "bare",
            [
                bl.python(),
                str(bl.BENCH / "bare_server.py"),
                "--port",
                str(port),
                "--user-id",
                USER_ID,
                "--action",
                ACTION,
                "--details",
                DETAILS,
            ],
            port,
            args.server_cpu,
        )
    if want_db:
        port = bl.free_port()
        servers["db"] = bl.Server(
            "db", project_argv(port, args.db_args), port, args.server_cpu, headers=auth
        )

    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        key: {name: [] for name in names} for key, names in plan
    }
    # Activities acknowledged per recording server (wrk-counted), and the most that may
    # have been recorded without wrk counting them (cut off at the end of a run).
    acked = {"project": 0, "db": 0}
    slack = {"project": 0, "db": 0}
    notes: list[str] = []
    dirty = False  # the project's buffer holds batch items, not the POST ones GET expects
    try:
        for server in servers.values():
            server.start(READY_PATH)
        recorders = [n for n in ("project", "db") if n in servers]
        for name in recorders:
            post_many(servers[name].port, TRACK_PATH, args.prefill, auth)
            acked[name] += args.prefill
            # Every batch body must be accepted whole before it is measured.
            for size, body in bodies.items():
                status, answer = bl.http_request(
                    servers[name].port,
                    "POST",
                    BATCH_PATH,
                    body=body,
                    headers={**auth, "Content-Type": "application/json"},
                    timeout=30,
                )
                if status != 200 or json.loads(answer).get("recorded") != size:
                    raise RuntimeError(
                        f"{name}: batch of {size} answered {status}: {answer[:300]!r}"
                    )
                acked[name] += size
                dirty = dirty or name == "project"

        def wrk(name: str, key: str, seconds: float) -> dict[str, Any]:
            nonlocal dirty
            server, load = servers[name], loads[key]
            if key == "GET" and name == "project" and dirty:
                post_many(server.port, TRACK_PATH, args.prefill, auth)
                acked["project"] += args.prefill
                dirty = False
            cmd = bl.wrk_command(
                server.port, load.script, load.connections, args.threads, seconds, args.client_cpu
            )
            res, cpu = bl.run_wrk_on(server, cmd, seconds)
            res["cpu_us_per_req"] = cpu / res["requests"] * 1e6 if res["requests"] else 0.0
            res["activities_per_s"] = res["rps"] * load.items
            if name in acked and load.items:
                # Non-2xx answers are counted by wrk as requests too: only count 2xx.
                ok = res["requests"] - res["errors"].get("status", 0)
                acked[name] += ok * load.items
                slack[name] += load.connections * load.items
                if name == "project" and key != "POST":
                    dirty = True
            return res

        if args.warmup > 0:
            for key, names in plan:
                for name in names:
                    wrk(name, key, args.warmup)
        for rnd in range(args.rounds):
            for key, names in plan:
                order = names if rnd % 2 == 0 else names[::-1]
                for name in order:
                    res = wrk(name, key, args.duration)
                    results[key][name].append(res)
                    extra = (
                        f"{res['activities_per_s']:9.0f} activities/s  "
                        if loads[key].items > 1
                        else ""
                    )
                    print(
                        f"round {rnd + 1}/{args.rounds} {key:9} {name:7} "
                        f"{res['rps']:8.0f} req/s  {extra}p50 {res['p50_ms']:.2f} ms  "
                        f"p99 {res['p99_ms']:.2f} ms  server waited {res['server_wait']:.0%}  "
                        f"errors {res['errors'] or 'none'}",
                        file=sys.stderr,
                        flush=True,
                    )
        if "GET" in sections:
            if dirty:
                post_many(servers["project"].port, TRACK_PATH, args.prefill, auth)
                acked["project"] += args.prefill
            sizes = {}
            for name in ("project", "bare"):
                status, body = bl.http_request(servers[name].port, "GET", LIST_PATH, headers=auth)
                count = len(json.loads(body)) if status == 200 else -1
                sizes[name] = (status, count, len(body))
            notes.append(
                "GET body after the runs: "
                + ", ".join(f"{n} status {s} items {c} bytes {b}" for n, (s, c, b) in sizes.items())
            )
        for name in recorders:
            notes += check_store(servers[name], acked[name], slack[name])
        db_files = {f: os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if ".db" in f}
    finally:
        codes = {name: server.stop() for name, server in servers.items()}
        bl.kill_children()

    # -- report -----------------------------------------------------------------------------
    def med(key: str, name: str, field: str) -> float:
        return bl.median([r[field] for r in results[key][name]])

    def ratios(key: str, num: str, den: str, field: str = "rps") -> list[float]:
        return [
            a[field] / b[field]
            for a, b in zip(results[key][num], results[key][den], strict=True)
            if b[field]
        ]

    summary: dict[str, Any] = {}
    print()
    print("## Ingest benchmark")
    print()
    print(f"- command: `{command}`")
    print(f"- environment: {environment}")
    for name, server in servers.items():
        print(f"- {name}: `{server.command}`")
    example = bl.wrk_command(
        servers["project"].port,
        loads["POST"].script,
        args.connections,
        args.threads,
        args.duration,
        args.client_cpu,
    )
    print(
        f"- load: `{shlex.join(example)}` (single requests; batches use "
        f"`-c{args.batch_connections}` and a script that posts a prebuilt body)"
    )
    print(
        f"- {args.rounds} rounds x {args.duration:g} s per run, {args.warmup:g} s warm-up; "
        "medians over rounds; ratio = median of per-round ratios"
    )
    pinning = (
        f"servers on CPU {args.server_cpu}, wrk on CPU {args.client_cpu}"
        if args.server_cpu is not None
        else "no pinning"
    )
    print(f"- pinning: {pinning}; niceness {args.nice}")
    waits = [r["server_wait"] for runs in results.values() for rs in runs.values() for r in rs]
    print(
        f"- noise: the server under test was waiting for its CPU (runnable, another process "
        f"on it) {bl.median(waits):.0%} of the time in the median run, "
        f"{max(waits, default=float('nan')):.0%} in the worst; a few % is a clean run"
    )

    single = [e for e in ("POST", "GET") if e in sections]
    if single:
        print()
        print("### Single requests: project vs bare Tornado")
        print()
        print("| endpoint | project req/s | bare req/s | ratio | project p50/p99 | bare p50/p99 |")
        print("|---|---|---|---|---|---|")
        for key in single:
            rs = ratios(key, "project", "bare")
            row = {
                "project_rps": med(key, "project", "rps"),
                "bare_rps": med(key, "bare", "rps"),
                "ratio": bl.median(rs),
                "ratios": rs,
            }
            summary[key] = row
            print(
                f"| {loads[key].label} | {row['project_rps']:.0f} | {row['bare_rps']:.0f} | "
                f"{row['ratio']:.2f} | {med(key, 'project', 'p50_ms'):.2f} / "
                f"{med(key, 'project', 'p99_ms'):.2f} ms | {med(key, 'bare', 'p50_ms'):.2f} / "
                f"{med(key, 'bare', 'p99_ms'):.2f} ms |"
            )
        print()
        for key in single:
            row, target = summary[key], TARGETS[key]
            per_round = ", ".join(f"{r:.2f}" for r in row["ratios"])
            print(
                f"- {key}: ratio {row['ratio']:.3f} vs target >= {target:.2f}: "
                f"{bl.verdict(row['ratio'] >= target)} (per round: {per_round})"
            )
        print()
        print(
            "Server CPU time per request (from /proc, less sensitive to a noisy machine than "
            "req/s; cpu ratio = bare/project, the throughput ratio if both were CPU-bound)."
        )
        print()
        print(
            "| endpoint | project CPU us/req | bare CPU us/req | cpu ratio | server util p/b | "
            "server waiting for its CPU p/b |"
        )
        print("|---|---|---|---|---|---|")
        for key in single:
            # bare/project of CPU per request: the req/s ratio if both were CPU-bound
            cpu_ratios = ratios(key, "bare", "project", "cpu_us_per_req")
            summary[key]["cpu_ratio"] = bl.median(cpu_ratios)
            print(
                f"| {key} | {med(key, 'project', 'cpu_us_per_req'):.0f} | "
                f"{med(key, 'bare', 'cpu_us_per_req'):.0f} | {bl.median(cpu_ratios):.2f} | "
                f"{med(key, 'project', 'server_util'):.0%} / "
                f"{med(key, 'bare', 'server_util'):.0%} | "
                f"{med(key, 'project', 'server_wait'):.0%} / "
                f"{med(key, 'bare', 'server_wait'):.0%} |"
            )

    if "BATCH" in sections:
        print()
        print("### Batches: `POST /api/metrics/track/batch`, in memory")
        print()
        print(
            "| items per batch | request / response bytes | batches/s | activities/s | "
            "p50 / p99 per batch | server CPU us/activity | server util | "
            "server waiting for its CPU | target |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for size in args.batch_sizes:
            key = f"BATCH{size}"
            rate = med(key, "project", "activities_per_s")
            cpu_act = med(key, "project", "cpu_us_per_req") / size
            summary[key] = {"activities_per_s": rate, "cpu_us_per_activity": cpu_act}
            target = (
                f"{bl.verdict(rate >= TARGET_BATCH_RATE)} (>= {TARGET_BATCH_RATE:,}/s)"
                if size == 1000
                else "-"
            )
            print(
                f"| {size:,} | {loads[key].request_bytes:,} / "
                f"{med(key, 'project', 'bytes_per_req'):,.0f} | {med(key, 'project', 'rps'):.0f} | "
                f"{rate:,.0f} | {med(key, 'project', 'p50_ms'):.1f} / "
                f"{med(key, 'project', 'p99_ms'):.1f} ms | {cpu_act:.1f} | "
                f"{med(key, 'project', 'server_util'):.0%} | "
                f"{med(key, 'project', 'server_wait'):.0%} | {target} |"
            )
        print()
        print(
            f"- bodies: realistic items (`bench/benchlib.py` `batch_body`: 5,000 users, "
            f"9 actions, details ~10% null, mostly 30-200 characters, ~2% ~1 KB), "
            f"{bodies[max(args.batch_sizes)].__len__() / max(args.batch_sizes):.0f} bytes per "
            f"item; the default --max-body-size (1 MiB) holds them; -c{args.batch_connections}"
        )

    if want_db:
        key_b = f"BATCH{args.db_batch}"
        print()
        print(f"### Durable store (`{args.db_args}`) vs in memory")
        print()
        print(
            "| load | in memory | --db | ratio | target | p50 / p99 in memory | p50 / p99 --db | "
            "server CPU us/activity mem / db | server waiting for its CPU mem / db |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        rows = (
            ("POST", "single POST, req/s", 1),
            (key_b, f"batches of {args.db_batch:,}, activities/s", args.db_batch),
        )
        for key, label, items in rows:
            field = "rps" if items == 1 else "activities_per_s"
            mem, db = med(key, "project", field), med(key, "db", field)
            rs = ratios(key, "db", "project", field)
            ratio = bl.median(rs)
            if key == "POST":
                target = f"{bl.verdict(ratio >= TARGET_DB_POST_RATIO)} (ratio >= 0.60)"
            elif args.db_batch == 1000:
                target = f"{bl.verdict(db >= TARGET_DB_BATCH_RATE)} (>= {TARGET_DB_BATCH_RATE:,}/s)"
            else:
                target = "-"
            summary[f"DB_{key}"] = {"memory": mem, "db": db, "ratio": ratio, "ratios": rs}
            print(
                f"| {label} | {mem:,.0f} | {db:,.0f} | {ratio:.2f} | {target} | "
                f"{med(key, 'project', 'p50_ms'):.2f} / {med(key, 'project', 'p99_ms'):.2f} ms | "
                f"{med(key, 'db', 'p50_ms'):.2f} / {med(key, 'db', 'p99_ms'):.2f} ms | "
                f"{med(key, 'project', 'cpu_us_per_req') / items:.1f} / "
                f"{med(key, 'db', 'cpu_us_per_req') / items:.1f} | "
                f"{med(key, 'project', 'server_wait'):.0%} / {med(key, 'db', 'server_wait'):.0%} |"
            )
        print()
        for key, _label, _items in rows:
            per_round = ", ".join(f"{r:.2f}" for r in summary[f"DB_{key}"]["ratios"])
            print(f"- {key} --db/in-memory per round: {per_round}")
        files = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sorted(db_files.items()))
        print(
            f"- database at the end: {files or 'none'}, on {filesystem_of(tmp)}; "
            f"{acked['db']:,} activities acknowledged by the DB server"
        )
        print(
            "- the --db server's CPU time includes its SQLite writer thread, which shares its "
            "CPU (the whole process is pinned), so its 'waiting for its CPU' is partly its own "
            "writer: judge the noise by the in-memory column"
        )

    print()
    print("### Checks")
    print()
    errors = [
        (key, name, i + 1, r["errors"])
        for key, runs in results.items()
        for name, rs in runs.items()
        for i, r in enumerate(rs)
        if r["errors"]
    ]
    print(f"- wrk errors: {errors or 'none'}")
    for note in notes:
        print(f"- {note}")
    for name, server in servers.items():
        problems = server.problems()
        shown = "; ".join(problems[:3]) if problems else "none"
        print(
            f"- {name}: exit code {codes[name]}, suspicious stderr lines: {len(problems)} ({shown})"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, "runs": results, "notes": notes}, fh, indent=2)
    if not args.keep:
        for server in servers.values():
            shutil.rmtree(server.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        bl.kill_children()
        print("interrupted", file=sys.stderr)
        sys.exit(130)
