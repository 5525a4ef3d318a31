"""Start the activity tracker: argv and environment -> settings -> app -> listen."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import tornado.httpserver
import tornado.netutil

from tracker.app import DASHBOARD_PATH, build
from tracker.config import Settings, load_settings
from tracker.store import StoreError

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


async def main(settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM, then close every connection and return 0."""
    try:
        service, hub, app = build(settings)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = tornado.httpserver.HTTPServer(
        app, max_body_size=settings.max_body_size * HARD_BODY_FACTOR, xheaders=False
    )
    try:
        sockets = tornado.netutil.bind_sockets(settings.port, settings.host)
    except OSError as exc:
        print(
            f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        service.close()
        return 2
    server.add_sockets(sockets)
    service.start_retention(settings.retention_days, settings.max_rows)
    port = sockets[0].getsockname()[1]
    print(f"Activity tracker on {display_url(settings, port)}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    server.stop()
    # close_all_connections() does not reach WebSockets: the hub closes them with 1001.
    hub.close_all()
    # Commit what is queued, so requests waiting on it are answered before we close.
    await asyncio.to_thread(service.close)
    await asyncio.sleep(0.1)  # let the answers and close frames reach the kernel
    await server.close_all_connections()
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Successful requests are not logged (it would cost more than the request); errors are.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    sys.exit(asyncio.run(main(load_settings(sys.argv[1:], os.environ))))
