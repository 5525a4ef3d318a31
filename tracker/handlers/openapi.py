"""GET /api/openapi.json: the hand-written OpenAPI description kept beside the code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .base import APIHandler

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
SPEC_URL = "/api/openapi.json"


def load_document(path: Path = SPEC_PATH) -> bytes:
    """The description's bytes, checked to be a JSON object once, at start."""
    raw = path.read_bytes()
    if not isinstance(json.loads(raw), dict):
        raise ValueError(f"{path}: not a JSON object")
    return raw


class OpenAPIHandler(APIHandler):
    """Serves the description as it is on disk; like every API path, behind the token."""

    def initialize(self, document: bytes, etag: str, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.document = document
        self.etag = etag

    def compute_etag(self) -> str:
        # It changes only with the code: clients may revalidate and get a 304.
        return self.etag

    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.write_json(self.document)


def routes(max_body_size: int = 1024 * 1024) -> list[tuple[str, type, dict]]:
    """The description's route."""
    document = load_document()
    etag = f'"{hashlib.sha256(document).hexdigest()[:32]}"'
    deps = {"document": document, "etag": etag, "max_body_size": max_body_size}
    return [(SPEC_URL, OpenAPIHandler, deps)]
