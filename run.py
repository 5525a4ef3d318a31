"""Start the activity tracker: argv and environment -> settings -> app -> listen."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

import tornado.httpserver
import tornado.netutil

from tracker.app import DASHBOARD_PATH, StartError, Tracker, build
from tracker.config import Settings, load_settings
from tracker.workers import reserve_port, supervise

# A body up to this many times --max-body-size is read and refused with a JSON 413;
# beyond it Tornado drops the connection with a bare 400 before reading it.
HARD_BODY_FACTOR = 4


def display_url(settings: Settings, port: int) -> str:
    """The dashboard URL to print, with a name a browser on this machine can open."""
    host = settings.host
    if host in ("127.0.0.1", "0.0.0.0", "::", "", "localhost"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{DASHBOARD_PATH}"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_file_limit() -> None:
    """Every live client is an open file: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def tune_gc() -> None:
    """Collect garbage less often, and never walk the objects made at start."""
    # Batches and live fan-outs make thousands of short-lived objects at a time; at the
    # default threshold (700) collections cost batch ingest over 10% of its CPU.
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


def cannot_listen(settings: Settings, exc: OSError) -> None:
    """Tell on stderr that the port cannot be bound, and why."""
    print(
        f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr
    )


async def main(settings: Settings, ready: Callable[[], None] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then stop cleanly and return 0."""
    try:
        tracker = build(settings)
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tune_gc()
    server = tornado.httpserver.HTTPServer(
        tracker.app, max_body_size=settings.max_body_size * HARD_BODY_FACTOR, xheaders=False
    )
    try:
        # With workers, each binds the port with SO_REUSEPORT and the kernel spreads
        # connections over them.
        sockets = tornado.netutil.bind_sockets(
            settings.port, settings.host, reuse_port=settings.workers > 1
        )
    except OSError as exc:
        cannot_listen(settings, exc)
        tracker.service.close()
        return 2
    server.add_sockets(sockets)
    if not settings.api_token and not is_loopback(settings.host):
        logging.warning(
            "listening on %s without --api-token: anyone who can reach this port can read "
            "and record activities",
            settings.host,
        )
    await tracker.start()
    if ready is not None:
        ready()
    else:
        port = sockets[0].getsockname()[1]
        print(f"Activity tracker on {display_url(settings, port)}", flush=True)
    await first_signal()
    await shutdown(tracker, server, settings.shutdown_timeout)
    if ready is None:
        print("Stopped.", flush=True)
    return 0


async def first_signal() -> None:
    """Wait for SIGINT or SIGTERM; from then on, a second one exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
        signal.signal(sig, exit_now)


def exit_now(signum: int, frame: object) -> None:
    """A second signal: exit without waiting; SQLite's WAL keeps the --db file whole."""
    os.write(2, b"Stopped at once: second signal.\n")
    os._exit(1)


async def shutdown(tracker: Tracker, server: tornado.httpserver.HTTPServer, timeout: float) -> None:
    """Stop accepting, let requests in flight finish, close live clients, commit, close."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tracker.lifecycle.stopping = True  # /readyz answers 503 from now on
    server.stop()
    # close_all_connections() does not reach WebSockets: the hub closes them with 1001.
    tracker.hub.close_all()
    tracker.stop_upkeep()
    await tracker.lifecycle.drained(max(deadline - loop.time(), 0))
    await asyncio.sleep(0.05)  # let the last answers and close frames reach the kernel
    try:
        await asyncio.wait_for(server.close_all_connections(), max(deadline - loop.time(), 0.1))
    except TimeoutError:
        logging.warning("stopping with connections still open")
    # The leader's archive may be what requests in flight waited for: it stops after them.
    await tracker.stop_work()
    await tracker.close(max(deadline - loop.time(), 1.0))


def serve(settings: Settings) -> int:
    """One process, or --workers processes sharing the port."""
    if settings.workers > 1 and not settings.redis:
        print(
            "error: --workers above 1 needs --redis (the processes share its log)", file=sys.stderr
        )
        return 2
    if settings.workers == 1:
        return run(settings)
    try:
        reserved = reserve_port(settings.host, settings.port)
    except OSError as exc:
        cannot_listen(settings, exc)
        return 2
    # Port 0 becomes one free port, the same for every worker.
    settings = replace(settings, port=reserved.getsockname()[1])

    def worker(ready: Callable[[], None]) -> int:
        reserved.close()
        return run(settings, ready)

    def announce() -> None:
        url = display_url(settings, settings.port)
        print(f"Activity tracker ({settings.workers} workers) on {url}", flush=True)

    code = supervise(settings.workers, worker, on_ready=announce)
    print("Stopped.", flush=True)
    return code


def run(settings: Settings, ready: Callable[[], None] | None = None) -> int:
    """One server process, on asyncio's event loop."""
    return asyncio.run(main(settings, ready))


if __name__ == "__main__":
    settings = load_settings(sys.argv[1:], os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # By default successful requests are not logged (it costs more than the request does).
    access = logging.INFO if settings.access_log else logging.WARNING
    logging.getLogger("tornado.access").setLevel(access)
    raise_file_limit()
    sys.exit(serve(settings))
