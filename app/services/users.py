"""Administration of users and service API keys (admins only)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.principal import Principal
from app.errors import Conflict, Forbidden, NotFound
from app.events import Broadcaster
from app.services.auth import Accounts, AuthService, hash_api_key
from storage.db import read_session
from storage.models import ApiKey, GlobalRole, User
from storage.repositories import users as users_repo


class UserService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broadcaster: Broadcaster,
        accounts: Accounts,
    ) -> None:
        self._sessions = sessions
        self._broadcaster = broadcaster
        self._accounts = accounts  # what token checks cache of each user

    async def me(self, principal: Principal) -> User:
        async with read_session(self._sessions) as session:
            user = await users_repo.get_user(session, principal.user_id)
        if user is None:
            raise NotFound("no such user")
        return user

    async def list_users(
        self, principal: Principal, *, limit: int, after_username: str | None
    ) -> Sequence[User]:
        _require_admin(principal)
        async with read_session(self._sessions) as session:
            return await users_repo.list_users(session, limit=limit, after_username=after_username)

    async def update_user(
        self,
        principal: Principal,
        user_id: uuid.UUID,
        *,
        role: GlobalRole | None = None,
        disabled: bool | None = None,
    ) -> User:
        """Change a user's global role or disable them. Disabling revokes every
        token and refresh session they hold."""
        _require_admin(principal)
        async with self._sessions.begin() as session:
            user = await users_repo.get_user(session, user_id)
            if user is None:
                raise NotFound("no such user")
            loses_admin = user.role is GlobalRole.ADMIN and (
                (role is not None and role is not GlobalRole.ADMIN) or disabled is True
            )
            if (
                loses_admin
                and not user.disabled
                and await users_repo.lock_active_admins(session) <= 1
            ):
                raise Conflict("this is the last active admin")
            if role is not None:
                user.role = role
            newly_disabled = disabled is True and not user.disabled
            if disabled is not None:
                user.disabled = disabled
            if newly_disabled:
                now = datetime.now(UTC)
                user.tokens_valid_after = now
                await users_repo.revoke_user_tokens(session, user.id, now)
            await session.flush()
        self._accounts.drop(user.id)
        if newly_disabled:
            await self._broadcaster.user_disabled(user.id)
        return user

    async def create_api_key(
        self, principal: Principal, *, name: str, user_id: uuid.UUID | None
    ) -> tuple[ApiKey, str]:
        """A new key acting as ``user_id`` (default: the caller). The key itself is
        returned only here; the database keeps its hash."""
        _require_admin(principal)
        key, prefix = AuthService.new_api_key()
        async with self._sessions.begin() as session:
            owner_id = user_id or principal.user_id
            if await users_repo.get_user(session, owner_id) is None:
                raise NotFound("no such user")
            stored = await users_repo.add_api_key(
                session, user_id=owner_id, name=name, prefix=prefix, key_hash=hash_api_key(key)
            )
            return stored, key

    async def list_api_keys(self, principal: Principal) -> Sequence[ApiKey]:
        _require_admin(principal)
        async with read_session(self._sessions) as session:
            return await users_repo.list_api_keys(session)

    async def revoke_api_key(self, principal: Principal, key_id: uuid.UUID) -> None:
        _require_admin(principal)
        async with self._sessions.begin() as session:
            stored = await users_repo.get_api_key(session, key_id)
            if stored is None or stored.revoked_at is not None:
                raise NotFound("no such API key")
            stored.revoked_at = datetime.now(UTC)


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("admins only")
