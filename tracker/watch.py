"""Print the live feed in a terminal: python -m tracker.watch [URL] [--since ID] [--token T]."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from urllib.parse import urlencode

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def watch(url: str, token: str | None) -> int:
    """Print each activity as one JSON line until the server closes the feed."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn = await websocket_connect(HTTPRequest(url, headers=headers))
    while (raw := await conn.read_message()) is not None:
        message = json.loads(raw)
        if message["type"] == "activities":
            for activity in message["items"]:
                print(json.dumps(activity), flush=True)
        else:
            print(f"# {raw}", file=sys.stderr, flush=True)
    print(f"# closed: {conn.close_code} {conn.close_reason or ''}", file=sys.stderr)
    return 0


def main() -> int:
    """Parse the command line and watch."""
    parser = argparse.ArgumentParser(prog="python -m tracker.watch", description=__doc__)
    parser.add_argument("url", nargs="?", default="ws://localhost:8000/api/metrics/live")
    parser.add_argument("--since", type=int, help="replay activities after this id first")
    parser.add_argument("--user-id", action="append", default=[], help="only this user")
    parser.add_argument("--action", action="append", default=[], help="only this action")
    parser.add_argument("--token", help="the server's --api-token, if it has one")
    args = parser.parse_args()
    query = [("user_id", u) for u in args.user_id] + [("action", a) for a in args.action]
    if args.since is not None:
        query.append(("since", str(args.since)))
    url = args.url + ("?" + urlencode(query) if query else "")
    try:
        return asyncio.run(watch(url, args.token))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
