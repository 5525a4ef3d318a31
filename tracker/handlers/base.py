"""APIHandler: JSON bodies in, JSON bodies and JSON errors out, in one place."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import tornado.web

from ..activity import FIELDS, ActivityInput, ValidationError, validate

JSON_TYPE = "application/json; charset=UTF-8"
FIELD_NAMES = tuple(name for name, _, _ in FIELDS)


class ApiError(tornado.web.HTTPError):
    """An HTTP error whose message and field reach the client in the JSON error body."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status, reason=HTTPStatus(status).phrase)
        self.message = message
        self.field = field


def error_body(status: int, message: str, field: str | None = None) -> bytes:
    """The one error shape every endpoint (and the live feed's refusals) uses."""
    error: dict[str, Any] = {"status": status, "message": message}
    if field is not None:
        error["field"] = field
    return json.dumps({"error": error}).encode()


class APIHandler(tornado.web.RequestHandler):
    """Base for /api endpoints: errors are JSON, never HTML pages or tracebacks."""

    def initialize(self, max_body_size: int = 1024 * 1024, **_: Any) -> None:
        self.max_body_size = max_body_size

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def prepare(self) -> None:
        # The HTTP server's own cap is larger, so most oversized bodies get this JSON 413.
        if len(self.request.body) > self.max_body_size:
            raise ApiError(413, f"request body exceeds {self.max_body_size} bytes")

    def write_json(self, encoded: bytes) -> None:
        """Finish with JSON bytes that were encoded already."""
        self.finish(encoded)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        field = None
        if isinstance(exc, ApiError):
            message, field = exc.message, exc.field
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal server error"
        else:
            message = self._reason.lower()
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(error_body(status_code, message, field))

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object, or a 400 that says what is wrong."""
        try:
            value = json.loads(self.request.body)
        except (ValueError, RecursionError):
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "request body must be a JSON object")
        return value

    def argument(self, name: str) -> str | None:
        """One query-string or form value, exactly as sent; a repeated name is an error."""
        raw = self.request.arguments.get(name)
        if not raw:
            return None
        if len(raw) > 1:
            raise ApiError(400, f"{name} must be given once", name)
        try:
            return raw[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"{name} is not valid UTF-8", name) from None

    def has_json_body(self) -> bool:
        """True when the body is declared as JSON and is not empty."""
        content_type = self.request.headers.get("Content-Type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        return media == "application/json" and bool(self.request.body.strip())

    def activity_input(self) -> ActivityInput:
        """The activity fields from a JSON body, or else from the query string and form."""
        if self.has_json_body():
            body = self.json_body()
            values = {name: body.get(name) for name in FIELD_NAMES}
        else:
            values = {name: self.argument(name) for name in FIELD_NAMES}
        return self.validated(values)

    @staticmethod
    def validated(values: dict[str, Any], prefix: str = "") -> ActivityInput:
        """Validate fields, turning a ValidationError into a 400 naming the field."""
        try:
            return validate(values)
        except ValidationError as exc:
            raise ApiError(400, prefix + exc.message, exc.field) from None


class NotFoundHandler(APIHandler):
    """Answers every unknown path with the JSON 404."""

    def prepare(self) -> None:
        raise ApiError(404, f"no such endpoint: {self.request.path}")
