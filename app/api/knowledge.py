"""The knowledge base: entries, their approval, and search (docs/protocol.md §3.21)."""

from __future__ import annotations

import re

from aiohttp import web

from app.api.documents import decode_cursor, encode_cursor
from app.api.knowledge_schemas import (
    EntryCreate,
    EntryItem,
    EntryListQuery,
    EntryOut,
    EntryPage,
    EntryUpdate,
    ReindexOut,
    SearchHit,
    SearchHits,
    SearchQuery,
)
from app.api.routing import path_uuid
from app.api.v1 import api
from app.auth.principal import Principal
from app.errors import ValidationFailed
from app.keys import KNOWLEDGE
from storage.models import KnowledgeEntry


def entry_out(entry: KnowledgeEntry) -> EntryOut:
    return EntryOut.model_validate(entry)


def parse_tags(raw: str | None) -> list[str]:
    tags = [tag.strip().lower() for tag in (raw or "").split(",") if tag.strip()]
    for tag in tags:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,49}", tag):
            raise ValidationFailed(
                details=[{"field": "tags", "message": f"not a tag: {tag!r}", "type": "tag"}]
            )
    return tags


@api.route(
    "POST",
    "/knowledge",
    body=EntryCreate,
    response=EntryOut,
    status=201,
    errors=(401, 403, 422),
    tag="knowledge",
)
async def create_entry(request: web.Request, principal: Principal, body: EntryCreate) -> EntryOut:
    """Add a knowledge entry (power users: pending until an admin approves it)."""
    entry = await request.app[KNOWLEDGE].create(
        principal, title=body.title, text=body.text, tags=body.tags, source=body.source
    )
    return entry_out(entry)


@api.route(
    "GET",
    "/knowledge",
    query=EntryListQuery,
    response=EntryPage,
    errors=(401, 403, 422, 503),
    tag="knowledge",
)
async def list_entries(
    request: web.Request, principal: Principal, query: EntryListQuery
) -> EntryPage:
    """Entries you may read: newest first, or with `q` the best matches first (hybrid
    search: meaning and keywords, fused)."""
    tags = parse_tags(query.tags)
    service = request.app[KNOWLEDGE]
    if query.q is not None:
        if query.cursor is not None:
            raise ValidationFailed(
                details=[{"field": "cursor", "message": "q is not paged", "type": "exclusive"}]
            )
        hits = await service.search(principal, query.q, tags=tags, limit=query.limit)
        items = [
            EntryItem(**entry_out(hit.entry).model_dump(), score=hit.score, passage=hit.passage)
            for hit in hits
        ]
        return EntryPage(items=items, next_cursor=None)
    after = decode_cursor(query.cursor) if query.cursor else None
    entries = await service.list_entries(principal, tags=tags, limit=query.limit + 1, after=after)
    page = entries[: query.limit]
    next_cursor = None
    if len(entries) > query.limit:
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id)
    return EntryPage(
        items=[
            EntryItem(**entry_out(entry).model_dump(), score=None, passage=None) for entry in page
        ],
        next_cursor=next_cursor,
    )


@api.route(
    "GET", "/knowledge/{entry_id}", response=EntryOut, errors=(401, 403, 404), tag="knowledge"
)
async def get_entry(request: web.Request, principal: Principal) -> EntryOut:
    """One entry."""
    return entry_out(await request.app[KNOWLEDGE].get(principal, path_uuid(request, "entry_id")))


@api.route(
    "PATCH",
    "/knowledge/{entry_id}",
    body=EntryUpdate,
    response=EntryOut,
    errors=(401, 403, 404, 422),
    tag="knowledge",
)
async def update_entry(request: web.Request, principal: Principal, body: EntryUpdate) -> EntryOut:
    """Change an entry (admins; power users their own, which makes it pending again)."""
    entry = await request.app[KNOWLEDGE].update(
        principal, path_uuid(request, "entry_id"), body.model_dump(exclude_unset=True)
    )
    return entry_out(entry)


@api.route("DELETE", "/knowledge/{entry_id}", status=204, errors=(401, 403, 404), tag="knowledge")
async def delete_entry(request: web.Request, principal: Principal) -> None:
    """Delete an entry and its passages (admins; power users their own)."""
    await request.app[KNOWLEDGE].delete(principal, path_uuid(request, "entry_id"))


@api.route(
    "POST",
    "/knowledge/{entry_id}/approve",
    response=EntryOut,
    errors=(401, 403, 404),
    tag="knowledge",
)
async def approve_entry(request: web.Request, principal: Principal) -> EntryOut:
    """Approve an entry so that users read it (admins)."""
    entry = await request.app[KNOWLEDGE].approve(principal, path_uuid(request, "entry_id"))
    return entry_out(entry)


@api.route(
    "POST", "/knowledge/reindex", response=ReindexOut, errors=(401, 403, 503), tag="knowledge"
)
async def reindex(request: web.Request, principal: Principal) -> ReindexOut:
    """Rebuild the search index from the database (admins)."""
    done = await request.app[KNOWLEDGE].reindex(principal)
    return ReindexOut(entries=done.entries, documents=done.documents, passages=done.passages)


@api.route(
    "GET",
    "/search",
    query=SearchQuery,
    response=SearchHits,
    errors=(401, 422, 503),
    tag="knowledge",
)
async def search(request: web.Request, principal: Principal, query: SearchQuery) -> SearchHits:
    """Passages you may read that match `q` best: knowledge entries (by your role) and
    the documents you are a member of."""
    passages = await request.app[KNOWLEDGE].passages(principal, query.q, limit=query.limit)
    return SearchHits(
        items=[
            SearchHit(kind=p.kind, id=p.id, title=p.title, passage=p.text, score=p.score)
            for p in passages
        ]
    )
