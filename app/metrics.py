"""Prometheus metrics, one registry per application (tests build many)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

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

        self.delivery_replaced = Counter(
            "delivery_replaced_total",
            "Events that replaced a waiting one with the same key (latest wins), by class.",
            ["class"],
            registry=self.registry,
        )
        self.delivery_merged = Counter(
            "delivery_merged_total",
            "Events merged into a waiting one (AI chunks, Yjs updates, awareness), by class.",
            ["class"],
            registry=self.registry,
        )
        self.delivery_dropped = Counter(
            "delivery_dropped_total",
            "Events dropped with the backlog of a connection closed as a slow consumer.",
            ["class"],
            registry=self.registry,
        )
        self.delivery_slow_consumers = Counter(
            "delivery_slow_consumers_total",
            "Connections closed because their backlog passed its bound (slow_consumer).",
            registry=self.registry,
        )
        self.cluster_up = Gauge(
            "cluster_link_up",
            "1 while this node's link to the others through Redis is up (REDIS_URL set).",
            registry=self.registry,
        )
        self.cluster_outages = Counter(
            "cluster_outages_total",
            "Times the Redis link went down (each outage once, however long).",
            registry=self.registry,
        )
        self.cluster_published = Counter(
            "cluster_published_total",
            "Room events published to the other nodes.",
            registry=self.registry,
        )
        self.cluster_received = Counter(
            "cluster_received_total",
            "Room events received from other nodes for rooms with members here.",
            registry=self.registry,
        )
        self.cluster_dropped = Counter(
            "cluster_dropped_total",
            "Room events not published because the Redis link was down or stuck.",
            registry=self.registry,
        )
        self.cluster_subscriptions = Gauge(
            "cluster_subscriptions",
            "Room channels this node is subscribed to (rooms with members here).",
            registry=self.registry,
        )
        self.buffered = BufferedBytes()
        self.registry.register(self.buffered)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BufferedBytes(Collector):
    """``delivery_buffered_bytes``: the backlog of every open connection, as a histogram
    read when scraped (nothing is observed on the delivery path)."""

    BUCKETS = (0, 1024, 16_384, 65_536, 262_144, 1_048_576, 4_194_304)

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[int]] = lambda: ()

    def collect(self) -> Iterator[Metric]:
        counts = [0] * len(self.BUCKETS)
        total = count = 0
        for size in self.source():
            total += size
            count += 1
            for index, bound in enumerate(self.BUCKETS):
                if size <= bound:
                    counts[index] += 1
        cumulative = [(str(bound), n) for bound, n in zip(self.BUCKETS, counts, strict=True)]
        yield HistogramMetricFamily(
            "delivery_buffered_bytes",
            "Bytes waiting in each open connection's outbox (beyond its socket buffer).",
            buckets=[*cumulative, ("+Inf", count)],
            sum_value=total,
        )
