"""The dashboard page: static HTML under a strict Content-Security-Policy."""

from __future__ import annotations

from pathlib import Path

import tornado.web

from .errors import JSONErrors

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# No inline script or style, nothing from other origins, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class DashboardHandler(JSONErrors):
    """GET /api/ui-dashboard/metrics-dashboard-ui: the HTML page, not a JSON API."""

    def initialize(self, page: Path = STATIC_DIR / "dashboard.html") -> None:
        self.page = page

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.page.read_bytes())


class StaticHandler(tornado.web.StaticFileHandler):
    """The dashboard's assets, with the same no-sniffing rule as the page."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")

    def set_extra_headers(self, path: str) -> None:
        # The page's URL is unversioned: revalidate assets so an upgrade never mixes versions.
        self.set_header("Cache-Control", "no-cache")


def routes() -> list[tuple[str, type, dict]]:
    """The dashboard page's route (its assets are served under /static/)."""
    return [(r"/api/ui-dashboard/metrics-dashboard-ui", DashboardHandler, {})]
