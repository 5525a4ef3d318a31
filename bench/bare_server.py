"""The framework's ceiling for bench/ingest.py: `python bench/bare_server.py --port P`.

run.py's setup (HTTPServer arguments, bind_sockets/add_sockets, asyncio.run, tornado.access
at WARNING, garbage-collector settings) with handlers that only answer constants: POST
/api/metrics/track one activity, GET /api/metrics/activities 100, with the fields and
values bench/ingest.py records in the project.

With --naive, the same setup serves SEED.md's tracker as a newcomer would write it: a
reference for what the contract's work (validation, ids, chain, keys) costs on this machine.
"""

import asyncio
import gc
import itertools
import json
import logging
import signal
import sys
from collections import deque
from datetime import UTC, datetime

import tornado.httpserver
import tornado.netutil
import tornado.web


def activity(id_: int) -> bytes:
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    item = {"id": id_, "user_id": "user_42", "action": "click", "timestamp": stamp}
    return json.dumps({**item, "details": "ingest-bench"}, separators=(",", ":")).encode()


class Constant(tornado.web.RequestHandler):
    def initialize(self, body: bytes) -> None:
        self.body = body

    def post(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.body)

    get = post


KEPT: deque[dict] = deque(maxlen=1000)  # --naive: SEED.md's window of the last 1,000
IDS = itertools.count(1)  # --naive: ids only so that ingest.py can check what was kept


class NaiveTrack(tornado.web.RequestHandler):
    """--naive: query arguments into a dict, kept and written back as JSON."""

    def post(self) -> None:
        activity = {
            "id": next(IDS),
            "user_id": self.get_argument("user_id"),
            "action": self.get_argument("action"),
            "timestamp": datetime.now().isoformat(),
            "details": self.get_argument("details", None),
        }
        KEPT.append(activity)
        self.write(activity)


class NaiveList(tornado.web.RequestHandler):
    """--naive: the newest `limit` activities."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(json.dumps(list(KEPT)[-int(self.get_argument("limit", "100")) :]))


async def main(port: int, naive: bool) -> None:
    many = b"[" + b",".join(activity(10_001 + i) for i in range(100)) + b"]"
    routes: list = [
        ("/api/metrics/track", Constant, {"body": activity(10_001)}),
        ("/api/metrics/activities", Constant, {"body": many}),
    ]
    if naive:
        routes = [("/api/metrics/track", NaiveTrack), ("/api/metrics/activities", NaiveList)]
    app = tornado.web.Application(routes, serve_traceback=False)
    gc.freeze()  # as run.py's tune_gc()
    gc.set_threshold(50_000, 10, 10)
    server = tornado.httpserver.HTTPServer(app, max_body_size=4 << 20, xheaders=False)
    server.add_sockets(tornado.netutil.bind_sockets(port, "127.0.0.1"))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    asyncio.run(main(int(sys.argv[sys.argv.index("--port") + 1]), "--naive" in sys.argv))
