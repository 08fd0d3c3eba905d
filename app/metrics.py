"""Prometheus metrics, one registry per application (tests build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests by route template, method and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.socket_connections = Gauge(
            "socketio_connections",
            "Open Socket.IO connections by namespace.",
            ["namespace"],
            registry=self.registry,
        )
        self.socket_refused = Counter(
            "socketio_connections_refused_total",
            "Socket.IO connections refused, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.yjs_updates = Counter(
            "yjs_updates_total",
            "Yjs updates received from clients: applied, unchanged, or the refusal's code.",
            ["outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
