"""Bearer-token access: one check for every API handler and the live feed."""

from __future__ import annotations

import hmac

from tornado.httputil import HTTPServerRequest

from .errors import ApiError

# A browser cannot set headers on a WebSocket, so it offers the token as a subprotocol,
# "bearer.<token>", beside this one, which the server selects: never in a URL or a log.
WS_PROTOCOL = "tracker"
_TOKEN_PROTOCOL = "bearer."


def presented_token(request: HTTPServerRequest, websocket: bool = False) -> str | None:
    """The token from `Authorization: Bearer`, or from a WebSocket's subprotocols."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if websocket:
        for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            offered = offered.strip()
            if offered.startswith(_TOKEN_PROTOCOL):
                return offered[len(_TOKEN_PROTOCOL) :]
    return None


def require_token(request: HTTPServerRequest, expected: str, websocket: bool = False) -> None:
    """Raise a 401 unless the request carries the configured token (none: open)."""
    if not expected:
        return
    given = presented_token(request, websocket)
    if given is None:
        raise ApiError(401, "this server needs 'Authorization: Bearer <token>'")
    # Constant time, so the answer's timing does not leak how much of a guess was right.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "wrong token")
