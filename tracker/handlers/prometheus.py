"""GET /metrics: the Prometheus text format, behind the token when one is set."""

from __future__ import annotations

from ..metrics import Metrics
from .base import APIHandler


class MetricsExportHandler(APIHandler):
    """Every series of this process, as prometheus_client renders them."""

    def initialize(self, metrics: Metrics, max_body_size: int) -> None:  # type: ignore[override]
        super().initialize(max_body_size)
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", self.metrics.content_type)
        self.finish(self.metrics.render())


def routes(metrics: Metrics, max_body_size: int) -> list[tuple[str, type, dict]]:
    """The scrape route."""
    return [
        (r"/metrics", MetricsExportHandler, {"metrics": metrics, "max_body_size": max_body_size})
    ]
