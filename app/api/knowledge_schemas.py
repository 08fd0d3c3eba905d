"""Pydantic models of the knowledge base's REST bodies, queries and answers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from app.api.schemas import Input, Output, Query, Title
from app.wire import NO_NUL

MAX_TAGS = 20
Tag = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        min_length=1,
        max_length=50,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    ),
]
EntryText = Annotated[str, StringConstraints(min_length=1, max_length=100_000, pattern=NO_NUL)]
Source = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500, pattern=NO_NUL)]


class EntryCreate(Input):
    title: Title
    text: EntryText
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = Field(
        default_factory=list, description="lower-case words (a-z, 0-9, '_', '.', '-')"
    )
    source: Source | None = Field(None, description="where it comes from (a URL, a name)")


class EntryUpdate(Input):
    title: Title | None = None
    text: EntryText | None = None
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] | None = None
    source: Source | None = None


class EntryOut(Output):
    id: uuid.UUID
    title: str
    text: str
    tags: list[str]
    source: str | None
    owner_id: uuid.UUID | None = Field(description="who added it (null: a deleted user)")
    approved: bool = Field(description="users read approved entries only")
    approved_by: uuid.UUID | None
    approved_at: datetime | None
    created_at: datetime
    updated_at: datetime


class EntryItem(EntryOut):
    score: float | None = Field(description="with q: the fused rank score (higher is better)")
    passage: str | None = Field(description="with q: the part of the text that matched best")


class EntryPage(Output):
    items: list[EntryItem]
    next_cursor: str | None = Field(description="listing only: pass as ?cursor= for more")


class EntryListQuery(Query):
    q: Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL)] | None = (
        Field(None, description="a question or keywords: the best matches, best first")
    )
    tags: Annotated[str, StringConstraints(max_length=1000, pattern=NO_NUL)] | None = Field(
        None, description="comma-separated: only entries with every one of these tags"
    )
    limit: Annotated[int, Field(ge=1, le=50)] = 20
    cursor: Annotated[str, Field(max_length=128)] | None = None


class SearchQuery(Query):
    q: Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL)]
    limit: Annotated[int, Field(ge=1, le=50)] = 10


class SearchHit(Output):
    kind: Literal["knowledge", "document"]
    id: uuid.UUID = Field(description="the knowledge entry's or the document's id")
    title: str
    passage: str
    score: float


class SearchHits(Output):
    items: list[SearchHit]


class ReindexOut(Output):
    entries: int = Field(description="knowledge entries written to the new index")
    documents: int = Field(description="documents written to the new index")
    passages: int = Field(description="passages (chunks) in the new index")
