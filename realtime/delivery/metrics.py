"""Delivery's counters, resolved per event class once so the slow path does no lookups."""

from __future__ import annotations

from prometheus_client import Counter

from app.events import EventClass


class DeliveryMetrics:
    def __init__(
        self, replaced: Counter, merged: Counter, dropped: Counter, slow_consumers: Counter
    ) -> None:
        self._replaced = {kind: replaced.labels(kind.value) for kind in EventClass}
        self._merged = {kind: merged.labels(kind.value) for kind in EventClass}
        self._dropped = {kind: dropped.labels(kind.value) for kind in EventClass}
        self._slow_consumers = slow_consumers

    def replaced(self, kind: EventClass) -> None:
        self._replaced[kind].inc()

    def merged(self, kind: EventClass) -> None:
        self._merged[kind].inc()

    def dropped(self, kind: EventClass) -> None:
        self._dropped[kind].inc()

    def slow_consumer(self) -> None:
        self._slow_consumers.inc()
