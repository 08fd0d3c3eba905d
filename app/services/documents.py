"""Documents and membership: who may read, edit, rename, delete and share."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.principal import Principal
from app.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ReadOnly,
    TooManyDocuments,
    UserNotFound,
)
from app.events import Broadcaster
from app.services.cache import BatchedLoads, ExpiringCache
from app.services.live_documents import LiveDocuments
from app.services.text_edits import TextEdit
from storage.access_reads import AccessReads, SessionReads
from storage.db import read_session
from storage.models import Document, DocumentRole, GlobalRole, User
from storage.repositories import documents as documents_repo
from storage.repositories import users as users_repo
from storage.repositories.crdt import StorageInfo

CAN_RENAME = frozenset({DocumentRole.OWNER, DocumentRole.EDITOR})
CAN_EDIT = CAN_RENAME


@dataclass(frozen=True, slots=True)
class DocumentView:
    document: Document
    role: DocumentRole


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """A member's way into a document's room (cached: every join reads it)."""

    document_id: uuid.UUID
    title: str
    role: DocumentRole


# (document, user) -> access; DocumentService drops what its changes make stale.
Memberships = ExpiringCache[tuple[uuid.UUID, uuid.UUID], RoomAccess]


@dataclass(frozen=True, slots=True)
class StorageView:
    info: StorageInfo
    loaded: bool


@dataclass(frozen=True, slots=True)
class MemberView:
    user_id: uuid.UUID
    username: str
    role: DocumentRole
    added_at: datetime


class DocumentIndex(Protocol):
    """The search index's side of documents (app/services/knowledge/document_index.py)."""

    def changed(self, document_id: uuid.UUID) -> None: ...

    async def removed(self, document_id: uuid.UUID) -> None: ...


class DocumentService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broadcaster: Broadcaster,
        live_documents: LiveDocuments,
        memberships: Memberships,
        *,
        max_owned: int,
        index: DocumentIndex | None = None,
        reads: AccessReads | None = None,
    ) -> None:
        """``reads``: where joins read members' roles (storage/access_reads.py; none:
        through ``sessions``)."""
        self._sessions = sessions
        self._reads = reads or SessionReads(sessions)
        self._index = index
        self._max_owned = max_owned
        self._broadcaster = broadcaster
        self._live_documents = live_documents
        self._memberships = memberships
        self._access_loads: BatchedLoads[tuple[uuid.UUID, uuid.UUID], RoomAccess] = BatchedLoads(
            self._accesses_of
        )

    async def create(self, principal: Principal, title: str) -> DocumentView:
        if principal.role is GlobalRole.GUEST:
            raise Forbidden("guests cannot create documents")
        async with self._sessions.begin() as session:
            # A quota, not a hard bound: two creations at once may pass it by one.
            if await documents_repo.count_owned(session, principal.user_id) >= self._max_owned:
                raise TooManyDocuments(f"you may own at most {self._max_owned} documents")
            document = await documents_repo.create_document(
                session, title=title, owner_id=principal.user_id
            )
            return DocumentView(document, DocumentRole.OWNER)

    async def list_for(
        self,
        principal: Principal,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> Sequence[DocumentView]:
        async with read_session(self._sessions) as session:
            rows = await documents_repo.list_documents_for_user(
                session, principal.user_id, limit=limit, after=after
            )
        return [DocumentView(document, role) for document, role in rows]

    async def get(self, principal: Principal, document_id: uuid.UUID) -> DocumentView:
        async with read_session(self._sessions) as session:
            return await membership(session, principal, document_id)

    async def room_access(self, principal: Principal, document_id: uuid.UUID) -> RoomAccess:
        """The caller's way into the document's room (``NotFound`` for non-members):
        cached, dropped by the changes here that make it stale, and read with the
        others missed at the same moment (a crowd joining a room costs one read)."""
        key = (document_id, principal.user_id)

        async def load() -> RoomAccess:
            access = await self._access_loads.load(key)
            if access is None:
                raise NotFound("document not found")
            return access

        return await self._memberships.get_or_load(key, load)

    async def _accesses_of(
        self, keys: list[tuple[uuid.UUID, uuid.UUID]]
    ) -> dict[tuple[uuid.UUID, uuid.UUID], RoomAccess]:
        users_of: dict[uuid.UUID, list[uuid.UUID]] = {}
        for document_id, user_id in keys:
            users_of.setdefault(document_id, []).append(user_id)
        found = {}
        for document_id, user_ids in users_of.items():
            for user_id, title, role in await self._reads.member_roles(document_id, user_ids):
                found[document_id, user_id] = RoomAccess(document_id, title, role)
        return found

    async def rename(
        self, principal: Principal, document_id: uuid.UUID, title: str
    ) -> DocumentView:
        async with self._sessions.begin() as session:
            view = await membership(session, principal, document_id)
            if view.role not in CAN_RENAME:
                raise Forbidden("viewers cannot rename a document")
            view.document.title = title
            await session.flush()
        self._forget_document(document_id)
        if self._index is not None:  # the title goes with each passage
            self._index.changed(document_id)
        return view

    async def delete(self, principal: Principal, document_id: uuid.UUID) -> None:
        async with self._sessions.begin() as session:
            view = await membership(session, principal, document_id)
            if view.role is not DocumentRole.OWNER:
                raise Forbidden("only the owner can delete a document")
            await documents_repo.delete_document(session, view.document)
        self._forget_document(document_id)
        self._live_documents.forget(document_id)
        await self._broadcaster.document_deleted(document_id)
        if self._index is not None:
            await self._index.removed(document_id)

    # --- content (the Yjs document) ----------------------------------------------------

    async def content(self, principal: Principal, document_id: uuid.UUID) -> tuple[str, bytes]:
        """The document's text and the whole document as one Yjs update."""
        await self.get(principal, document_id)
        async with self._live_documents.opened(document_id) as live:
            return str(live.text), live.doc.get_update()

    async def edit_content(
        self, principal: Principal, document_id: uuid.UUID, text: str, *, replace: bool
    ) -> str:
        """Append ``text`` or replace the text with it; returns the text after."""
        view = await self.get(principal, document_id)
        if view.role not in CAN_EDIT:
            raise ReadOnly()
        make = TextEdit.replace_all if replace else TextEdit.append
        return await self._live_documents.edit_text(
            document_id, lambda current: make(current, text)
        )

    async def storage(self, principal: Principal, document_id: uuid.UUID) -> StorageView:
        await self.get(principal, document_id)
        info = await self._live_documents.storage_info(document_id)
        return StorageView(info, self._live_documents.loaded(document_id) is not None)

    async def members(self, principal: Principal, document_id: uuid.UUID) -> list[MemberView]:
        async with read_session(self._sessions) as session:
            await membership(session, principal, document_id)
            rows = await documents_repo.list_members(session, document_id)
        return [_member_view(member.role, member.created_at, user) for member, user in rows]

    async def put_member(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        user_id: uuid.UUID,
        role: DocumentRole,
    ) -> tuple[MemberView, bool]:
        """Add a member or change a role; ``role=owner`` hands the document over
        (the previous owner stays as an editor). Returns the member and whether it
        was added."""
        return await self._set_member(
            principal, document_id, role, user_id, None, NotFound("no such user")
        )

    async def add_member(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        role: DocumentRole,
        *,
        username: str | None = None,
        user_id: uuid.UUID | None = None,
    ) -> tuple[MemberView, bool]:
        """``put_member`` by username (what people know of each other) or by id, with
        ``UserNotFound`` for no such user. The owner check comes first: nobody else
        learns from it whether a username exists."""
        missing = UserNotFound(f"no user is named {username}" if username else None)
        return await self._set_member(principal, document_id, role, user_id, username, missing)

    async def _set_member(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        role: DocumentRole,
        user_id: uuid.UUID | None,
        username: str | None,
        missing: NotFound,
    ) -> tuple[MemberView, bool]:
        async with self._sessions.begin() as session:
            view = await membership(session, principal, document_id)
            if view.role is not DocumentRole.OWNER:
                raise Forbidden("only the owner can change members")
            if username is not None:
                user = await users_repo.get_user_by_username(session, username)
            elif user_id is not None:
                user = await users_repo.get_user(session, user_id)
            else:
                raise ValueError("a member is found by user_id or username")
            if user is None:
                raise missing
            user_id = user.id
            if user.id == view.document.owner_id:
                if role is DocumentRole.OWNER:
                    member = await documents_repo.get_member(session, document_id, user_id)
                    assert member is not None
                    return _member_view(member.role, member.created_at, user), False
                raise Conflict("the owner keeps the owner role; hand the document over first")
            previous_owner = None
            if role is DocumentRole.OWNER:
                previous_owner = view.document.owner_id
                await documents_repo.put_member(
                    session, document_id, previous_owner, DocumentRole.EDITOR
                )
                view.document.owner_id = user.id
            member, created = await documents_repo.put_member(session, document_id, user_id, role)
            result = _member_view(member.role, member.created_at, user), created
        self._memberships.drop((document_id, user_id))
        if previous_owner is not None:
            self._memberships.drop((document_id, previous_owner))
            await self._broadcaster.membership_changed(
                document_id, previous_owner, DocumentRole.EDITOR
            )
        await self._broadcaster.membership_changed(document_id, user_id, role)
        return result

    async def remove_member(
        self, principal: Principal, document_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        """The owner removes anyone but themself; any other member may leave."""
        async with self._sessions.begin() as session:
            view = await membership(session, principal, document_id)
            leaving = user_id == principal.user_id
            if view.role is not DocumentRole.OWNER and not leaving:
                raise Forbidden("only the owner can remove members")
            if user_id == view.document.owner_id:
                raise Conflict("the owner cannot be removed; hand the document over first")
            if not await documents_repo.remove_member(session, document_id, user_id):
                raise NotFound("no such member")
        self._memberships.drop((document_id, user_id))
        await self._broadcaster.membership_changed(document_id, user_id, None)

    def _forget_document(self, document_id: uuid.UUID) -> None:
        self._memberships.drop_where(lambda key: key[0] == document_id)


async def membership(
    session: AsyncSession, principal: Principal, document_id: uuid.UUID
) -> DocumentView:
    """The document and the caller's role, or ``NotFound`` for non-members."""
    # Not a member and no such document look the same: ids are not disclosed.
    found = await documents_repo.get_document_for_member(session, document_id, principal.user_id)
    if found is None:
        raise NotFound("document not found")
    return DocumentView(*found)


def _member_view(role: DocumentRole, added_at: datetime, user: User) -> MemberView:
    return MemberView(user_id=user.id, username=user.username, role=role, added_at=added_at)
