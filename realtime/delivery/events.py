"""A server-to-client event: a name, a payload, its class, and what it supersedes."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from app.events import EventClass
from realtime.delivery.encoding import Encoded, encode_event


class Event:
    """One event for any number of recipients, encoded at most once per namespace."""

    __slots__ = ("_encoded", "_namespace", "data", "key", "kind", "name")

    def __init__(self, name: str, data: Any, kind: EventClass, key: Hashable = None) -> None:
        self.name = name
        self.data = data
        self.kind = kind
        # For replaceable and mergeable classes: events with the same key (and class,
        # namespace and connection) supersede each other while they wait.
        self.key = key
        self._namespace: str | None = None
        self._encoded: Encoded | None = None

    def encoded(self, namespace: str) -> Encoded:
        # Nearly every event goes to one namespace: one cached encoding, no dict.
        if self._namespace != namespace or self._encoded is None:
            self._namespace = namespace
            self._encoded = encode_event(namespace, self.name, self.data)
        return self._encoded

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self.kind.value}, key={self.key!r})"
