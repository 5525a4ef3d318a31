"""The framework's ceiling: the tracker's REST routes on bare Tornado, doing no work.

Started by bench/ingest.py as `python bench/bare_server.py --port P`. It mirrors run.py's
setup on purpose -- same HTTPServer arguments, same bind_sockets/add_sockets, same
asyncio.run main, same logging config (tornado.access at WARNING), same garbage-collector
settings -- so the only thing that differs from the project is what the handlers do:

- POST /api/metrics/track returns a constant, precomputed activity-shaped JSON object
  (no argument parsing, no validation, no recording);
- GET /api/metrics/activities returns a constant, precomputed JSON array of --items
  activities with the same fields and values the benchmark records in the project, so
  the body has the same shape and (within a few bytes of id digits) the same size.

SIGINT/SIGTERM stop it, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from datetime import UTC, datetime

import tornado.httpserver
import tornado.netutil
import tornado.web

JSON_TYPE = "application/json; charset=UTF-8"
# run.py passes max_body_size * HARD_BODY_FACTOR (1 MiB * 4) to HTTPServer.
MAX_BODY_SIZE = 4 * 1024 * 1024


def activity_json(id_: int, user_id: str, action: str, details: str | None) -> bytes:
    """One activity object, encoded the way the project encodes it (compact separators)."""
    timestamp = datetime.now(UTC).isoformat(timespec="microseconds")
    return json.dumps(
        {
            "id": id_,
            "user_id": user_id,
            "action": action,
            "timestamp": timestamp,
            "details": details,
        },
        separators=(",", ":"),
    ).encode()


class TrackHandler(tornado.web.RequestHandler):
    def initialize(self, body: bytes) -> None:
        self.body = body

    def post(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(self.body)


class ActivitiesHandler(tornado.web.RequestHandler):
    def initialize(self, body: bytes) -> None:
        self.body = body

    def get(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(self.body)


def make_app(args: argparse.Namespace) -> tornado.web.Application:
    first = args.first_id
    one = activity_json(first, args.user_id, args.action, args.details)
    items = [
        activity_json(first + i, args.user_id, args.action, args.details) for i in range(args.items)
    ]
    array = b"[" + b",".join(items) + b"]"
    return tornado.web.Application(
        [
            (r"/api/metrics/track", TrackHandler, {"body": one}),
            (r"/api/metrics/activities", ActivitiesHandler, {"body": array}),
        ],
        serve_traceback=False,
    )


async def main(args: argparse.Namespace) -> int:
    app = make_app(args)
    # The same garbage-collector settings as run.py's tune_gc().
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
    server = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY_SIZE, xheaders=False)
    sockets = tornado.netutil.bind_sockets(args.port, args.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    print(f"Bare server on http://{args.host}:{port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()
    print("Stopped.", flush=True)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--items", type=int, default=100, help="activities in the GET body")
    parser.add_argument("--first-id", type=int, default=10_001, help="id of the first item")
    parser.add_argument("--user-id", default="user_42")
    parser.add_argument("--action", default="click")
    parser.add_argument("--details", default="ingest-bench")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # The same logging setup as run.py.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
