"""APIHandler: JSON bodies in, JSON bodies and JSON errors out, in one place."""

from __future__ import annotations

import json
from typing import Any

from ..activity import FIELDS, ActivityInput, ValidationError, validate
from ..service import StoreUnavailable
from ..store import WriteFailed
from . import params
from .auth import require_token
from .errors import JSON_TYPE, ApiError, JSONErrors

FIELD_NAMES = tuple(name for name, _, _ in FIELDS)


class APIHandler(JSONErrors):
    """Base for /api endpoints: errors are JSON, never HTML pages or tracebacks."""

    def initialize(self, max_body_size: int = 1024 * 1024, **_: Any) -> None:
        self.max_body_size = max_body_size

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        if self.request.method == "GET":
            # What a reader answers must not be kept by a cache, or sniffed into another
            # type by a page that loads it as a script. (An answer to a POST is never
            # cached without freshness headers, RFC 9111 section 9.3.3.)
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StoreUnavailable | WriteFailed):
            # Storage (the --db file, Redis) cannot answer now: nothing was changed, and a
            # retry later may succeed.
            self.set_header("Retry-After", "1")
            message = f"storage unavailable ({exc}): nothing was recorded or changed; retry later"
            return self.send_json_error(503, message)
        super().write_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, StoreUnavailable | WriteFailed):
            return  # an outage, told once by the store or the Redis follower; no traceback
        super().log_exception(typ, value, tb)

    def compute_etag(self) -> None:
        # Every answer is Cache-Control: no-store, so no client can use an ETag; without
        # this Tornado hashes (SHA-1) every GET body and checks If-None-Match.
        return None

    def prepare(self) -> None:
        self.settings["lifecycle"].begin(self)  # shutdown lets it finish
        require_token(self.request, self.settings.get("api_token", ""))
        # The HTTP server's own cap is larger, so most oversized bodies get this JSON 413.
        if len(self.request.body) > self.max_body_size:
            raise ApiError(413, f"request body exceeds {self.max_body_size} bytes")

    def on_finish(self) -> None:
        self._end()

    def on_connection_close(self) -> None:
        self._end()
        super().on_connection_close()

    def _end(self) -> None:
        self.settings["lifecycle"].end(self)

    def write_json(self, encoded: bytes) -> None:
        """Finish with JSON bytes that were encoded already."""
        self.finish(encoded)

    def write_value(self, value: Any) -> None:
        """Finish with a value encoded as JSON."""
        self.write_json(json.dumps(value).encode())

    def json_body(self, kind: type = dict) -> Any:
        """The request body as a JSON object (or array), or a 400 that says what is wrong."""
        try:
            value = json.loads(self.request.body)
        except (ValueError, RecursionError):
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(value, kind):
            name = "object" if kind is dict else "array"
            raise ApiError(400, f"request body must be a JSON {name}")
        return value

    def argument(self, name: str) -> str | None:
        """One query-string or form value, exactly as sent; a repeated name is an error."""
        return params.single(self.request.arguments, name)

    def has_json_body(self) -> bool:
        """True when the body is declared as JSON and is not empty."""
        if not self.request.body:
            return False
        content_type = self.request.headers.get("Content-Type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        return media == "application/json" and bool(self.request.body.strip())

    def activity_input(self) -> ActivityInput:
        """The activity fields from a JSON body, or else from the query string and form."""
        if self.has_json_body():
            return self.validated(self.json_body())
        return self.validated(params.singles(self.request.arguments, FIELD_NAMES))

    @staticmethod
    def validated(values: dict[str, Any], index: int | None = None) -> ActivityInput:
        """Validate fields, turning a ValidationError into a 400 naming the field."""
        try:
            return validate(values)
        except ValidationError as exc:
            prefix = "" if index is None else f"item {index}: "
            raise ApiError(400, prefix + exc.message, exc.field, index) from None


class NotFoundHandler(APIHandler):
    """Answers every unknown path with the JSON 404."""

    def prepare(self) -> None:
        super().prepare()
        raise ApiError(404, f"no such endpoint: {self.request.path}")
