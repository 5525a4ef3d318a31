"""Settings: every option in one table, read from flags with TRACKER_* fallbacks."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; defaults are the documented ones."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on", "minimum": 0})
    capacity: int = field(
        default=1000, metadata={"help": "activities kept in the in-memory ring buffer"}
    )
    max_body_size: int = field(
        default=1024 * 1024,
        metadata={"help": "largest request body in bytes; larger ones get 413"},
    )
    max_batch: int = field(
        default=1000,
        metadata={"help": "most activities in one POST /api/metrics/track/batch"},
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "comma-separated extra Origins allowed to open the live WebSocket "
            "(same-origin and Origin-less clients are always allowed; '*' allows any)"
        },
    )
    ws_max_backlog: int = field(
        default=10_000,
        metadata={
            "help": "activities queued for one slow WebSocket client before it is "
            "closed with code 4008"
        },
    )
    db: str = field(
        default="",
        metadata={
            "help": "SQLite file for durable history (created if missing); empty: memory only"
        },
    )
    retention_days: float = field(
        default=0.0,
        metadata={
            "help": "with --db, delete activities older than this; 0 keeps all",
            "minimum": 0,
        },
    )
    max_rows: int = field(
        default=0,
        metadata={
            "help": "with --db, keep at most this many activities; 0: no limit",
            "minimum": 0,
        },
    )
    ws_ping_interval: float = field(
        default=20.0,
        metadata={"help": "seconds between WebSocket pings; unanswered clients are dropped"},
    )


def _env_name(name: str) -> str:
    return "TRACKER_" + name.upper()


def _convert(kind: type, raw: str) -> object:
    """Turn a flag's or variable's text into the type of the setting's default."""
    if kind is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return kind(raw)


def _check_minimum(value: object, spec: Field[Any]) -> None:
    minimum = spec.metadata.get("minimum", 1)
    if isinstance(value, (int, float)) and value < minimum:
        raise ValueError(f"--{spec.name.replace('_', '-')} must be at least {minimum}")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting, each with its environment fallback."""
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Activity tracker: REST ingest, live WebSocket feed and dashboard.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for spec in fields(Settings):
        kind = type(spec.default)
        default = spec.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + spec.name.replace("_", "-"),
            dest=spec.name,
            default=None,
            metavar=spec.name.upper(),
            help=f"{spec.metadata['help']} (env {_env_name(spec.name)}; default: {shown})",
            type=lambda raw, kind=kind: _convert(kind, raw),
        )
    return parser


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Flags first, then TRACKER_* variables, then defaults; exits with usage on bad values."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    values: dict[str, object] = {}
    for spec in fields(Settings):
        value = getattr(args, spec.name)
        if value is None and _env_name(spec.name) in environ:
            try:
                value = _convert(type(spec.default), environ[_env_name(spec.name)])
            except ValueError:
                parser.error(f"{_env_name(spec.name)}: not a valid {spec.name}")
        if value is not None:
            try:
                _check_minimum(value, spec)
            except ValueError as exc:
                parser.error(str(exc))
            values[spec.name] = value
    return Settings(**values)  # type: ignore[arg-type]
