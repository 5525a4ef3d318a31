"""Activity tracker: record what users do, keep the recent history, and show it live."""

__version__ = "0.1.0"
