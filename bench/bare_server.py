"""The framework's ceiling for bench/ingest.py: `python bench/bare_server.py --port P`.

run.py's setup (HTTPServer arguments, bind_sockets/add_sockets, asyncio.run, tornado.access
at WARNING, garbage-collector settings) with handlers that only answer constants: POST
/api/metrics/track one activity, GET /api/metrics/activities 100, with the fields and
values bench/ingest.py records in the project.
"""

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


async def main(port: int) -> None:
    many = b"[" + b",".join(activity(10_001 + i) for i in range(100)) + b"]"
    routes = [("/api/metrics/track", Constant, {"body": activity(10_001)})]
    routes.append(("/api/metrics/activities", Constant, {"body": many}))
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
    asyncio.run(main(int(sys.argv[sys.argv.index("--port") + 1])))
