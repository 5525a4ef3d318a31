"""The one JSON error shape, the exception that carries it, and the writer every handler uses."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import tornado.web

JSON_TYPE = "application/json; charset=UTF-8"


class ApiError(tornado.web.HTTPError):
    """An HTTP error whose message and field reach the client in the JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(status, reason=HTTPStatus(status).phrase)
        self.message = message
        self.field = field
        self.index = index


def status_phrase(status: int) -> str:
    """The standard reason phrase of an HTTP status ("Not Found"), or "Error"."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


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


class JSONErrors(tornado.web.RequestHandler):
    """Mixed into every handler: any error it sends is the JSON shape, never HTML."""

    def send_json_error(
        self, status: int, message: str, field: str | None = None, index: int | None = None
    ) -> None:
        """Finish with the error body and its headers."""
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.set_header("Cache-Control", "no-store")
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="activity-tracker"')
        self.finish(error_body(status, message, field, index))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            return self.send_json_error(status_code, exc.message, exc.field, exc.index)
        if status_code >= 500:
            # The traceback goes to the server's log, never to the client.
            return self.send_json_error(status_code, "internal server error")
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            message = status_phrase(status_code).lower()
        self.send_json_error(status_code, message)
