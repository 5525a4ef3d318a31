"""REST endpoints: record one or a batch, list with filters, summarize, export."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, datetime

from tornado.iostream import StreamClosedError

from ..activity import ActivityInput, ValidationError, check_text, encode_list
from ..service import ActivityService, IdempotencyConflict, Recorded
from ..store import Chained
from . import params
from .base import APIHandler
from .errors import ApiError

DEFAULT_LIMIT = 100
DEFAULT_TOP = 10
KEY_MAX = 256
EXPORT_COLUMNS = ("id", "user_id", "action", "timestamp", "details")
# Spreadsheets run a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class MetricsHandler(APIHandler):
    """An API handler with the activity service."""

    def initialize(  # type: ignore[override]
        self, service: ActivityService, max_body_size: int, max_batch: int = 1000
    ) -> None:
        super().initialize(max_body_size)
        self.service = service
        self.max_batch = max_batch

    async def record(
        self, inputs: list[ActivityInput], keys: list[str | None], key_field: str
    ) -> Recorded:
        """Record through the service; a reused key becomes a 422 (a 503 is the base's)."""
        try:
            return await self.service.track(inputs, keys)
        except IdempotencyConflict as exc:
            index = None if key_field == "Idempotency-Key" else exc.index
            message = f"{key_field} was used before with a different body"
            raise ApiError(422, message, key_field, index) from None

    @staticmethod
    def idempotency_key(value: object, index: int | None) -> str | None:
        """An Idempotency-Key header or batch event_id: 1-256 characters, or absent."""
        name = "Idempotency-Key" if index is None else "event_id"
        prefix = "" if index is None else f"item {index}: "
        if value is None:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= KEY_MAX or not value.strip():
            raise ApiError(400, f"{prefix}{name} must be 1-{KEY_MAX} characters", name, index)
        try:
            check_text(value, name)
        except ValidationError as exc:
            raise ApiError(400, prefix + exc.message, name, index) from None
        return value


class TrackHandler(MetricsHandler):
    """POST /api/metrics/track: validate, record, answer once durable with the activity."""

    async def post(self) -> None:
        data = self.activity_input()
        # Two keys would be joined into one by headers.get(); refuse them, as a query
        # field given twice is refused.
        sent = self.request.headers.get_list("Idempotency-Key")
        if len(sent) > 1:
            raise ApiError(400, "Idempotency-Key must be given once", "Idempotency-Key")
        key = self.idempotency_key(sent[0], None) if sent else None
        activities, fresh = await self.record([data], [key], "Idempotency-Key")
        if not fresh[0]:
            self.set_header("Idempotent-Replayed", "true")
        self.write_json(activities[0].json)


class BatchHandler(MetricsHandler):
    """POST /api/metrics/track/batch: a JSON array, all validated before any is recorded."""

    async def post(self) -> None:
        items = self.json_body(list)
        if not items:
            raise ApiError(400, "batch is empty")
        if len(items) > self.max_batch:
            raise ApiError(400, f"batch has {len(items)} items; at most {self.max_batch}")
        inputs, keys = [], []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise ApiError(400, f"item {index}: must be a JSON object", None, index)
            inputs.append(self.validated(item, index))
            keys.append(self.idempotency_key(item.get("event_id"), index))
        activities, fresh = await self.record(inputs, keys, "event_id")
        self.write_json(
            b'{"count":%d,"recorded":%d,"items":%s}'
            % (len(activities), sum(fresh), encode_list(activities))
        )


class ActivitiesHandler(MetricsHandler):
    """GET /api/metrics/activities: the newest matching activities, oldest first."""

    async def get(self) -> None:
        query = params.query(
            self.request.arguments, default_limit=DEFAULT_LIMIT, cap=self.service.capacity
        )
        self.write_json(encode_list(await self.service.query(query)))


class SummaryHandler(MetricsHandler):
    """GET /api/metrics/summary: totals, top actions and users, per-minute counts."""

    async def get(self) -> None:
        args = self.request.arguments
        # limit is checked as the other readers check it, then ignored: a summary covers
        # every match, in memory and with --db alike.
        query = replace(params.query(args, default_limit=None, cap=None), limit=None)
        top = params.limit(args, "top", DEFAULT_TOP, 1000)
        self.write_value(await self.service.summary(query, top))


def csv_safe(value: str | None) -> str:
    """The cell text, with a leading quote where a spreadsheet would see a formula."""
    if value is None:
        return ""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def csv_rows(chunk: list[Chained], chain: bool) -> bytes:
    """CSV lines for a chunk of activities, each text cell neutralised."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for a, prev_hash, digest in chunk:
        row = [a.id, csv_safe(a.user_id), csv_safe(a.action), a.timestamp, csv_safe(a.details)]
        writer.writerow(row + [prev_hash.hex(), digest.hex()] if chain else row)
    return out.getvalue().encode()


def ndjson_lines(chunk: list[Chained], chain: bool) -> bytes:
    """One JSON object per line; with the chain, each also has prev_hash and hash."""
    if not chain:
        return b"".join(link.activity.json + b"\n" for link in chunk)
    return b"".join(
        b'%s,"prev_hash":"%s","hash":"%s"}\n'
        % (a.json[:-1], prev_hash.hex().encode(), digest.hex().encode())
        for a, prev_hash, digest in chunk
    )


class ExportHandler(MetricsHandler):
    """GET /api/metrics/export?format=csv|ndjson[&chain=1]: every match, streamed in chunks."""

    async def get(self) -> None:
        args = self.request.arguments
        fmt = params.single(args, "format") or "csv"
        if fmt not in ("csv", "ndjson"):
            raise ApiError(400, "format must be csv or ndjson", "format")
        chain = params.flag(args, "chain")
        query = params.query(args, default_limit=None, cap=None)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        media = "text/csv; charset=UTF-8" if fmt == "csv" else "application/x-ndjson"
        self.set_header("Content-Type", media)
        self.set_header("Content-Disposition", f'attachment; filename="activities-{stamp}.{fmt}"')
        if fmt == "csv":
            columns = EXPORT_COLUMNS + (("prev_hash", "hash") if chain else ())
            self.write(",".join(columns).encode() + b"\r\n")
        encode = csv_rows if fmt == "csv" else ndjson_lines
        async for chunk in self.service.scan(query):
            self.write(encode(chunk, chain))
            try:
                # Hand each chunk to the socket before making the next: memory stays flat.
                await self.flush()
            except StreamClosedError:
                return  # the client went away; nothing left to tell it
        self.finish()


def routes(
    service: ActivityService, max_body_size: int, max_batch: int
) -> list[tuple[str, type, dict]]:
    """The REST routes, with what their handlers need."""
    deps = {"service": service, "max_body_size": max_body_size, "max_batch": max_batch}
    return [
        (r"/api/metrics/track", TrackHandler, deps),
        (r"/api/metrics/track/batch", BatchHandler, deps),
        (r"/api/metrics/activities", ActivitiesHandler, deps),
        (r"/api/metrics/summary", SummaryHandler, deps),
        (r"/api/metrics/export", ExportHandler, deps),
    ]
