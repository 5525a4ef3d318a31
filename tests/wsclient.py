"""WebSocket clients for tests: Tornado's, and a raw socket that can refuse to read."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://", 1) + "/api/metrics/live" + query


class Feed:
    """A live-feed client that keeps every message and flattens activities in order."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []
        self.activities: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, base_url: str, query: str = "", **kwargs: Any) -> Feed:
        feed = cls(await websocket_connect(ws_url(base_url, query), **kwargs))
        hello = await feed.next()
        assert hello is not None and hello["type"] == "hello", hello
        return feed

    async def next(self) -> dict[str, Any] | None:
        raw = await self.conn.read_message()
        if raw is None:
            return None
        message = json.loads(raw)
        self.messages.append(message)
        if message["type"] == "activities":
            self.activities.extend(message["items"])
        return message

    async def until(self, count: int) -> list[dict[str, Any]]:
        """Read until `count` activities have arrived in all (or the socket closes)."""
        while len(self.activities) < count:
            if await self.next() is None:
                break
        return self.activities

    @property
    def ids(self) -> list[int]:
        return [a["id"] for a in self.activities]

    def close(self) -> None:
        self.conn.close()


class RawClient:
    """A blocking socket speaking just enough WebSocket; it reads only when told to."""

    def __init__(self, port: int, query: str = "", rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /api/metrics/live{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def frame(self) -> tuple[int, bytes]:
        """The next frame's opcode and payload (server frames are unmasked)."""
        first, second = self._exact(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._exact(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._exact(8))
        return first & 0x0F, self._exact(size)

    def close(self) -> None:
        self.sock.close()
