"""The one JSON error shape, and the exception that carries it."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import tornado.web

JSON_TYPE = "application/json; charset=UTF-8"


class ApiError(tornado.web.HTTPError):
    """An HTTP error whose message and field reach the client in the JSON error body."""

    def __init__(
        self, status: int, message: str, field: str | None = None, index: int | None = None
    ) -> None:
        super().__init__(status, reason=HTTPStatus(status).phrase)
        self.message = message
        self.field = field
        self.index = index


def error_body(
    status: int, message: str, field: str | None = None, index: int | None = None
) -> bytes:
    """The one error shape every endpoint (and the live feed's refusals) uses."""
    error: dict[str, Any] = {"status": status, "message": message}
    if field is not None:
        error["field"] = field
    if index is not None:
        error["index"] = index  # which item of a batch is at fault
    return json.dumps({"error": error}).encode()
