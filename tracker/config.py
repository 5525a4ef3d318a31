"""Settings: every option in one table, read from flags with TRACKER_* fallbacks."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from typing import Any


def _opt(default: Any, help: str, minimum: float = 1, maximum: float = math.inf) -> Any:
    """A setting: its default, its --help text, and the numbers it accepts."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; defaults are the documented ones."""

    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8000, "TCP port to listen on (0: any free port)", minimum=0, maximum=65535)
    capacity: int = _opt(1000, "activities kept in the in-memory ring buffer", maximum=10_000_000)
    db: str = _opt("", "SQLite file for durable history (created if missing); empty: memory only")
    retention_days: float = _opt(
        0.0,
        "with --db, delete activities older than this many days; 0 keeps all",
        minimum=0,
        maximum=36_500,
    )
    max_rows: int = _opt(0, "with --db, keep at most this many activities; 0: no limit", minimum=0)
    signing_key: str = _opt(
        "",
        "with --db, the Ed25519 key (PEM, PKCS#8) that signs checkpoints; created (mode 0600) "
        "when missing; empty: the --db path with .signing-key.pem appended",
    )
    checkpoint_interval: float = _opt(
        60.0,
        "with --db, seconds between signed checkpoints of the audit chain (when it moved)",
        minimum=1,
        maximum=86_400,
    )
    redis: str = _opt(
        "",
        "redis://HOST:PORT/DB: share ids, history, idempotency keys and the live feed with "
        "every process on the same Redis and prefix",
    )
    redis_prefix: str = _opt("tracker:", "prefix of every Redis key this tracker uses")
    workers: int = _opt(
        1, "processes serving the port (SO_REUSEPORT); more than 1 needs --redis", maximum=256
    )
    rules: str = _opt("", "alert rules loaded at start: a JSON array, or TOML [[rules]] tables")
    webhook_url: tuple[str, ...] = _opt(
        (), "POST each alert, signed (Standard Webhooks), to this URL; repeatable"
    )
    webhook_secret: str = _opt("", "the webhooks' signing secret: whsec_ and base64")
    commit_timeout: float = _opt(
        5.0,
        "with --db, seconds a write waits for the file before it is refused (503, not "
        "stored); with --redis, Redis gets 2 s",
        minimum=0.1,
        maximum=3600,
    )
    shutdown_timeout: float = _opt(
        10.0,
        "seconds a stop waits for requests in flight and queued writes to finish",
        minimum=0,
        maximum=3600,
    )
    api_token: str = _opt(
        "", "require 'Authorization: Bearer TOKEN' on every API call and the live feed"
    )
    max_body_size: int = _opt(
        1024 * 1024, "largest request body in bytes; larger gets 413", maximum=1 << 30
    )
    max_batch: int = _opt(
        1000, "most activities in one POST /api/metrics/track/batch", maximum=100_000
    )
    allowed_origins: tuple[str, ...] = _opt(
        (),
        "comma-separated extra Origins allowed to open the live WebSocket (same-origin and "
        "Origin-less clients are always allowed; '*' allows any)",
    )
    ws_max_clients: int = _opt(5000, "live WebSocket clients at once; more get 503")
    ws_max_backlog: int = _opt(
        10_000, "activities queued for one slow WebSocket client before it is closed (4008)"
    )
    ws_max_backlog_bytes: int = _opt(
        8 << 20, "bytes queued for one slow WebSocket client before it is closed (4008)"
    )
    ws_max_message_size: int = _opt(
        4096, "largest message a WebSocket client may send, in bytes (the feed is one-way)"
    )
    ws_ping_interval: float = _opt(
        20.0, "seconds between WebSocket pings; a client silent for as long is dropped"
    )
    access_log: bool = _opt(False, "log every request, not just failures (1/0)", minimum=0)


def _env_name(name: str) -> str:
    return "TRACKER_" + name.upper()


def _convert(kind: type, raw: str) -> Any:
    """Turn a flag's or variable's text into the type of the setting's default."""
    if kind is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind is bool:
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(raw)
    return kind(raw)


def _check(value: object, spec: Field[Any]) -> None:
    """Refuse numbers outside the setting's range, NaN, infinity."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = spec.metadata["minimum"], spec.metadata["maximum"]
    if not math.isfinite(value) or not low <= value <= high:
        bound = f"from {low} to {high}" if math.isfinite(high) else f"at least {low}"
        raise ValueError(f"--{spec.name.replace('_', '-')} must be a number {bound}")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, then exit 2."""

    def error(self, message: str) -> Any:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting, each with its environment fallback."""
    parser = OneLineParser(
        prog="run.py",
        description="Activity tracker: REST ingest, live WebSocket feed and dashboard.",
    )
    for spec in fields(Settings):
        kind = type(spec.default)
        shown = ",".join(spec.default) if kind is tuple else spec.default
        parser.add_argument(
            "--" + spec.name.replace("_", "-"),
            dest=spec.name,
            default=None,
            # A list setting may be repeated, and each value may hold several, comma-separated.
            action="append" if kind is tuple else "store",
            metavar=kind.__name__.upper() if kind is not tuple else "LIST",
            help=f"{spec.metadata['help']} (env {_env_name(spec.name)}; default: {shown!r})",
            type=_named(kind),
        )
    return parser


def _named(kind: type) -> Any:
    """A converter whose name argparse shows in "invalid ... value" messages."""

    def convert(raw: str) -> Any:
        return _convert(kind, raw)

    convert.__name__ = kind.__name__
    return convert


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Flags first, then TRACKER_* variables, then defaults; exits with usage on bad values."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    values: dict[str, Any] = {}
    for spec in fields(Settings):
        value = getattr(args, spec.name)
        if type(spec.default) is tuple and value is not None:
            value = tuple(part for given in value for part in given)
        if value is None and _env_name(spec.name) in environ:
            try:
                value = _convert(type(spec.default), environ[_env_name(spec.name)])
            except ValueError:
                parser.error(f"{_env_name(spec.name)}: not a valid {spec.name}")
        if value is not None:
            try:
                _check(value, spec)
            except ValueError as exc:
                parser.error(str(exc))
            values[spec.name] = value
    return Settings(**values)
