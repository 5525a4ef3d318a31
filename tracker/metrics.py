"""Metrics: the process's own prometheus_client registry and the series it exports."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .service import ActivityService

# Commits take about a millisecond on an idle SSD; a stuck lock holds them for seconds.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Recorded(Collector):
    """tracker_activities_recorded_total, read from the service when scraped."""

    def __init__(self, service: ActivityService) -> None:
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "tracker_activities_recorded",
            "Activities recorded by this process.",
            value=self.service.recorded_total,
        )


class Metrics:
    """Counters and gauges of one tracker; labels stay bounded (rule names, outcomes)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: ActivityService) -> None:
        # A registry of its own: the default one is global, and tests build many apps.
        self.registry = CollectorRegistry()
        self.registry.register(_Recorded(service))
        self.live_clients = Gauge(
            "tracker_live_clients", "Live WebSocket clients connected.", registry=self.registry
        )
        self.alerts_fired = Counter(
            "tracker_alerts_fired", "Alerts fired, by rule.", ["rule"], registry=self.registry
        )
        self.deliveries = Counter(
            "tracker_webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, retry, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "tracker_store_commit_seconds",
            "Time of each group commit to the --db file.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )

    def forget_rule(self, name: str) -> None:
        """Drop a deleted rule's series, so rule labels stay bounded."""
        try:
            self.alerts_fired.remove(name)
        except KeyError:
            pass

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)
