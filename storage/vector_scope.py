"""What a vector search may return (``Scope``), as a Qdrant filter and as a check made
here on a passage's payload: the same conditions, matched as Qdrant matches them
(storage/vectors.py uses the filter with a Qdrant server, the check in local mode)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qdrant_client import models as qm

# The payload fields a scope reads.
SCOPE_FIELDS = ["kind", "ref", "approved", "owner", "tags"]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a search may return: knowledge entries (``all``, ``approved`` ones, or
    approved ones and ``owner``'s) and the passages of ``documents``."""

    knowledge: Literal["all", "approved", "approved_or_own"] | None
    owner: str | None = None
    documents: Sequence[str] = ()
    tags: Sequence[str] = ()
    kinds: frozenset[str] = field(default_factory=lambda: frozenset({"knowledge", "document"}))


def refs_filter(kind: str, refs: Sequence[str]) -> qm.Filter:
    return qm.Filter(
        must=[
            qm.FieldCondition(key="kind", match=qm.MatchValue(value=kind)),
            qm.FieldCondition(key="ref", match=qm.MatchAny(any=list(refs))),
        ]
    )


def scope_filter(scope: Scope) -> qm.Filter | None:
    either: list[qm.Filter] = []
    if scope.knowledge is not None and "knowledge" in scope.kinds:
        must: list[qm.Condition] = [
            qm.FieldCondition(key="kind", match=qm.MatchValue(value="knowledge"))
        ]
        must += [
            qm.FieldCondition(key="tags", match=qm.MatchValue(value=tag)) for tag in scope.tags
        ]
        approved = qm.FieldCondition(key="approved", match=qm.MatchValue(value=True))
        if scope.knowledge == "approved":
            must.append(approved)
        elif scope.knowledge == "approved_or_own":
            own = qm.FieldCondition(key="owner", match=qm.MatchValue(value=scope.owner or ""))
            must.append(qm.Filter(should=[approved, own]))
        either.append(qm.Filter(must=must))
    if scope.documents and "document" in scope.kinds:
        either.append(refs_filter("document", scope.documents))
    if not either:
        return None
    return either[0] if len(either) == 1 else qm.Filter(should=list(either))


def in_scope(scope: Scope) -> Callable[[dict[str, Any]], bool]:
    """Whether a payload is in ``scope``: ``scope_filter(scope)`` evaluated here, each
    condition matched as Qdrant matches a keyword (an array matches if one of its
    values does; a bool matches only a bool)."""
    knowledge = scope.knowledge if "knowledge" in scope.kinds else None
    documents = frozenset(scope.documents) if "document" in scope.kinds else frozenset()
    owner = scope.owner or ""

    def check(payload: dict[str, Any]) -> bool:
        if (
            knowledge is not None
            and _has(payload, "kind", "knowledge")
            and all(_has(payload, "tags", tag) for tag in scope.tags)
            and (
                knowledge == "all"
                or _has(payload, "approved", True)
                or (knowledge == "approved_or_own" and _has(payload, "owner", owner))
            )
        ):
            return True
        return (
            bool(documents)
            and _has(payload, "kind", "document")
            and any(isinstance(ref, str) and ref in documents for ref in _values(payload, "ref"))
        )

    return check


def _values(payload: dict[str, Any], key: str) -> list[Any]:
    value = payload.get(key)
    return value if isinstance(value, list) else [value]


def _has(payload: dict[str, Any], key: str, wanted: str | bool) -> bool:
    # Qdrant keeps bool and str apart (True is not 1); our values are only these two.
    return any(type(value) is type(wanted) and value == wanted for value in _values(payload, key))
