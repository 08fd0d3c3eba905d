"""Users, API keys and refresh-token families."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import AlreadyExists
from storage.models import ApiKey, GlobalRole, RefreshToken, User


async def create_user(
    session: AsyncSession,
    *,
    username: str,
    password_hash: str | None,
    role: GlobalRole,
    external_subject: str | None = None,
) -> User:
    user = User(
        username=username,
        password_hash=password_hash,
        role=role,
        external_subject=external_subject,
        disabled=False,
    )
    try:
        # Added inside the savepoint: begin_nested() flushes what is pending first,
        # so a conflict there would fail the caller's whole transaction.
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError as exc:
        raise AlreadyExists(f"user {username!r} exists") from exc
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


# What checking a token needs of a user, as a plain row (every connect's account load
# reads these, many users at once in a burst): id, username, role, disabled,
# tokens_valid_after, and one of the user's sessions revoked recently (None: none; a
# user with several has a row for each).
AccountRow = tuple[uuid.UUID, str, GlobalRole, bool, datetime | None, uuid.UUID | None]


async def account_rows(
    session: AsyncSession, user_ids: Sequence[uuid.UUID], *, revoked_since: datetime
) -> list[AccountRow]:
    """Those of ``user_ids`` that exist, with their sessions (refresh-token families)
    revoked after ``revoked_since``, in one statement."""
    revoked = and_(RefreshToken.user_id == User.id, RefreshToken.revoked_at > revoked_since)
    query = (
        select(
            User.id,
            User.username,
            User.role,
            User.disabled,
            User.tokens_valid_after,
            RefreshToken.family_id,
        )
        .outerjoin(RefreshToken, revoked)
        .where(User.id.in_(user_ids))
        .distinct()  # a family's rotations are revoked together
    )
    return [
        (user_id, username, role, disabled, valid_after, family_id)
        for user_id, username, role, disabled, valid_after, family_id in await session.execute(
            query
        )
    ]


async def get_user_by_username(session: AsyncSession, username: str) -> User | None:
    return await session.scalar(select(User).where(User.username == username))


async def get_user_by_external_subject(session: AsyncSession, subject: str) -> User | None:
    return await session.scalar(select(User).where(User.external_subject == subject))


async def list_users(
    session: AsyncSession, *, limit: int, after_username: str | None = None
) -> Sequence[User]:
    query = select(User).order_by(User.username).limit(limit)
    if after_username is not None:
        query = query.where(User.username > after_username)
    return (await session.scalars(query)).all()


async def lock_active_admins(session: AsyncSession) -> int:
    """Count active admins, locking their rows until the transaction ends.

    Two admins demoting each other at once must not both succeed: on PostgreSQL
    the second waits here and then sees the first one's change.
    """
    query = (
        select(User.id)
        .where(User.role == GlobalRole.ADMIN, User.disabled.is_(False))
        .with_for_update()
    )
    return len((await session.scalars(query)).all())


# --- refresh tokens -------------------------------------------------------------------


async def add_refresh_token(
    session: AsyncSession,
    *,
    token_id: uuid.UUID,
    family_id: uuid.UUID,
    user_id: uuid.UUID,
    expires_at: datetime,
) -> RefreshToken:
    token = RefreshToken(id=token_id, family_id=family_id, user_id=user_id, expires_at=expires_at)
    session.add(token)
    await session.flush()
    return token


async def get_refresh_token_for_update(
    session: AsyncSession, token_id: uuid.UUID
) -> RefreshToken | None:
    # FOR UPDATE on PostgreSQL: two concurrent refreshes with one token must not
    # both succeed. SQLite ignores it; its single writer serialises them anyway.
    query = select(RefreshToken).where(RefreshToken.id == token_id).with_for_update()
    return await session.scalar(query)


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, at: datetime) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=at)
    )


async def revoke_user_tokens(session: AsyncSession, user_id: uuid.UUID, at: datetime) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=at)
    )


# --- API keys ---------------------------------------------------------------------------


async def add_api_key(
    session: AsyncSession, *, user_id: uuid.UUID, name: str, prefix: str, key_hash: str
) -> ApiKey:
    key = ApiKey(user_id=user_id, name=name, prefix=prefix, key_hash=key_hash)
    session.add(key)
    await session.flush()
    return key


async def get_api_key_by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    return await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )


async def touch_api_key(session: AsyncSession, key_id: uuid.UUID, at: datetime) -> None:
    await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=at))


async def get_api_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def list_api_keys(session: AsyncSession) -> Sequence[ApiKey]:
    return (await session.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()
