"""Documents and their members."""

from __future__ import annotations

import base64
import binascii
import io
import uuid
from datetime import UTC, datetime

from aiohttp import web

from app.api.routing import path_uuid
from app.api.schemas import (
    ContentEdit,
    ContentOut,
    ContentQuery,
    DocumentCreate,
    DocumentListQuery,
    DocumentOut,
    DocumentPage,
    DocumentUpdate,
    MemberAdd,
    MemberList,
    MemberOut,
    MemberPut,
    MessageListQuery,
    StorageOut,
)
from app.api.v1 import api
from app.auth.principal import Principal
from app.errors import ValidationFailed
from app.keys import CHAT_SERVICE, DOCUMENT_SERVICE
from app.services.documents import DocumentView, MemberView
from app.wire import MessageOut, MessagePage

# Bodies past this go out as a stream (aiohttp's own threshold for its warning).
LARGE_BODY_BYTES = 1024 * 1024


def document_out(view: DocumentView) -> DocumentOut:
    document = view.document
    return DocumentOut(
        id=document.id,
        title=document.title,
        owner_id=document.owner_id,
        role=view.role,
        created_at=document.created_at,
        updated_at=document.updated_at,
    )


def member_out(member: MemberView) -> MemberOut:
    return MemberOut.model_validate(member)


def encode_cursor(created_at: datetime, document_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{document_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, _, document_id = raw.partition("|")
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("cursor time without a zone")
        moment.astimezone(UTC)  # in range in UTC too (OverflowError otherwise)
        return moment, uuid.UUID(document_id)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise ValidationFailed(
            details=[{"field": "cursor", "message": "not a cursor from this API", "type": "cursor"}]
        ) from exc


@api.route(
    "POST",
    "/documents",
    body=DocumentCreate,
    response=DocumentOut,
    status=201,
    errors=(401, 403, 422),
    tag="documents",
)
async def create_document(
    request: web.Request, principal: Principal, body: DocumentCreate
) -> DocumentOut:
    """Create a document; you become its owner."""
    view = await request.app[DOCUMENT_SERVICE].create(principal, body.title)
    return document_out(view)


@api.route(
    "GET",
    "/documents",
    query=DocumentListQuery,
    response=DocumentPage,
    errors=(401, 422),
    tag="documents",
)
async def list_documents(
    request: web.Request, principal: Principal, query: DocumentListQuery
) -> DocumentPage:
    """Documents you are a member of, newest first."""
    after = decode_cursor(query.cursor) if query.cursor else None
    # One extra row tells whether another page exists.
    views = await request.app[DOCUMENT_SERVICE].list_for(
        principal, limit=query.limit + 1, after=after
    )
    page = views[: query.limit]
    next_cursor = None
    if len(views) > query.limit:
        last = page[-1].document
        next_cursor = encode_cursor(last.created_at, last.id)
    return DocumentPage(items=[document_out(view) for view in page], next_cursor=next_cursor)


@api.route(
    "GET", "/documents/{document_id}", response=DocumentOut, errors=(401, 404), tag="documents"
)
async def get_document(request: web.Request, principal: Principal) -> DocumentOut:
    """One document and your role in it."""
    view = await request.app[DOCUMENT_SERVICE].get(principal, path_uuid(request, "document_id"))
    return document_out(view)


@api.route(
    "PATCH",
    "/documents/{document_id}",
    body=DocumentUpdate,
    response=DocumentOut,
    errors=(401, 403, 404, 422),
    tag="documents",
)
async def rename_document(
    request: web.Request, principal: Principal, body: DocumentUpdate
) -> DocumentOut:
    """Rename a document (owner or editor)."""
    view = await request.app[DOCUMENT_SERVICE].rename(
        principal, path_uuid(request, "document_id"), body.title
    )
    return document_out(view)


@api.route(
    "DELETE", "/documents/{document_id}", status=204, errors=(401, 403, 404), tag="documents"
)
async def delete_document(request: web.Request, principal: Principal) -> None:
    """Delete a document with its chat and history (owner only)."""
    await request.app[DOCUMENT_SERVICE].delete(principal, path_uuid(request, "document_id"))


@api.route(
    "GET",
    "/documents/{document_id}/content",
    query=ContentQuery,
    response=ContentOut,
    errors=(401, 404, 422),
    tag="content",
    media={
        "text/plain": {"schema": {"type": "string"}},  # format=text
        "application/octet-stream": {},  # format=yjs
    },
)
async def get_content(
    request: web.Request, principal: Principal, query: ContentQuery
) -> web.StreamResponse | ContentOut:
    """The document's text as `{text}` (default) or `text/plain`, or the whole Yjs
    document as one binary update (`format=yjs`)."""
    text, update = await request.app[DOCUMENT_SERVICE].content(
        principal, path_uuid(request, "document_id")
    )
    if query.format == "text":
        return web.Response(body=_body(text.encode()), content_type="text/plain", charset="utf-8")
    if query.format == "yjs":
        return web.Response(body=_body(update), content_type="application/octet-stream")
    return web.Response(
        body=_body(ContentOut(text=text).model_dump_json().encode()),
        content_type="application/json",
    )


def _body(data: bytes) -> bytes | io.BytesIO:
    """A response body; a large one as a stream, which aiohttp writes in chunks (it
    warns that one large write can hold up the event loop)."""
    return io.BytesIO(data) if len(data) > LARGE_BODY_BYTES else data


@api.route(
    "POST",
    "/documents/{document_id}/content",
    body=ContentEdit,
    response=ContentOut,
    errors=(401, 403, 404, 413, 422),
    tag="content",
)
async def edit_content(request: web.Request, principal: Principal, body: ContentEdit) -> ContentOut:
    """Append to or replace the text (editors and owners); open clients see it live."""
    text = await request.app[DOCUMENT_SERVICE].edit_content(
        principal, path_uuid(request, "document_id"), body.text, replace=body.mode == "replace"
    )
    return ContentOut(text=text)


@api.route(
    "GET",
    "/documents/{document_id}/storage",
    response=StorageOut,
    errors=(401, 404),
    tag="content",
)
async def get_storage(request: web.Request, principal: Principal) -> StorageOut:
    """How the Yjs document is stored: updates since the snapshot and sizes."""
    view = await request.app[DOCUMENT_SERVICE].storage(principal, path_uuid(request, "document_id"))
    info = view.info
    return StorageOut(
        update_count=info.update_count,
        update_bytes=info.update_bytes,
        snapshot_bytes=info.snapshot_bytes,
        loaded=view.loaded,
    )


@api.route(
    "GET",
    "/documents/{document_id}/members",
    response=MemberList,
    errors=(401, 404),
    tag="members",
)
async def list_members(request: web.Request, principal: Principal) -> MemberList:
    """Everyone with access to the document and their roles."""
    members = await request.app[DOCUMENT_SERVICE].members(
        principal, path_uuid(request, "document_id")
    )
    return MemberList(items=[member_out(member) for member in members])


@api.route(
    "POST",
    "/documents/{document_id}/members",
    body=MemberAdd,
    response=MemberOut,
    status=201,
    errors=(401, 403, 404, 409, 422),
    tag="members",
    also=(200,),
)
async def add_member(request: web.Request, principal: Principal, body: MemberAdd) -> web.Response:
    """Add a member by `username` or `user_id`, or change their role (owner only)."""
    member, created = await request.app[DOCUMENT_SERVICE].add_member(
        principal,
        path_uuid(request, "document_id"),
        body.role,
        username=body.username,
        user_id=body.user_id,
    )
    return _member_response(member, created)


@api.route(
    "PUT",
    "/documents/{document_id}/members/{user_id}",
    body=MemberPut,
    response=MemberOut,
    errors=(401, 403, 404, 409, 422),
    tag="members",
    also=(201,),
)
async def put_member(request: web.Request, principal: Principal, body: MemberPut) -> web.Response:
    """Add a member or change their role (owner only); `owner` hands the document over."""
    member, created = await request.app[DOCUMENT_SERVICE].put_member(
        principal, path_uuid(request, "document_id"), path_uuid(request, "user_id"), body.role
    )
    return _member_response(member, created)


def _member_response(member: MemberView, created: bool) -> web.Response:
    return web.Response(
        body=member_out(member).model_dump_json(),
        status=201 if created else 200,
        content_type="application/json",
    )


@api.route(
    "DELETE",
    "/documents/{document_id}/members/{user_id}",
    status=204,
    errors=(401, 403, 404, 409),
    tag="members",
)
async def remove_member(request: web.Request, principal: Principal) -> None:
    """Remove a member (owner), or leave a document yourself."""
    await request.app[DOCUMENT_SERVICE].remove_member(
        principal, path_uuid(request, "document_id"), path_uuid(request, "user_id")
    )


@api.route(
    "GET",
    "/documents/{document_id}/messages",
    query=MessageListQuery,
    response=MessagePage,
    errors=(401, 404, 422),
    tag="chat",
)
async def list_messages(
    request: web.Request, principal: Principal, query: MessageListQuery
) -> MessagePage:
    """Chat history, oldest first: the page before `before` (newest when absent) or
    after `after`; `has_more` tells whether another page lies in that direction."""
    if query.before is not None and query.after is not None:
        raise ValidationFailed(
            details=[{"field": "after", "message": "give before or after", "type": "exclusive"}]
        )
    messages, has_more = await request.app[CHAT_SERVICE].history(
        principal,
        path_uuid(request, "document_id"),
        before_seq=query.before,
        after_seq=query.after,
        limit=query.limit,
    )
    return MessagePage(items=[MessageOut.of_row(row) for row in messages], has_more=has_more)
