"""Registration, login, refresh rotation, and turning credentials into a principal."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.passwords import Passwords
from app.auth.principal import Principal
from app.auth.tokens import TokenCodec
from app.errors import (
    Forbidden,
    InvalidCredentials,
    InvalidToken,
    TokenReused,
    Unauthorized,
    UserDisabled,
    UsernameTaken,
)
from app.events import Broadcaster, RevokedBecause
from app.services.cache import BatchedLoads, ExpiringCache
from storage.access_reads import AccessReads, SessionReads
from storage.db import read_session
from storage.errors import AlreadyExists
from storage.models import GlobalRole, User
from storage.repositories import users as users_repo

log = logging.getLogger(__name__)

API_KEY_PREFIX = "rsk_"
# Local usernames: 3-32 of a-z, 0-9, "_", ".", "-" (stored lower-case).
USERNAME_PATTERN = re.compile(r"[a-z0-9_.-]{3,32}")


# Verified access tokens kept (each is a few hundred bytes).
VERIFIED_TOKENS = 10_000
# The clock leeway TokenCodec.decode allows on `exp`.
EXPIRY_LEEWAY = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Account:
    """What checking a token needs of its user (cached: every connect reads it)."""

    id: uuid.UUID
    username: str
    role: GlobalRole
    disabled: bool
    tokens_valid_after: datetime | None
    # Sign-in sessions revoked recently enough for access tokens of theirs to be
    # unexpired: those tokens are refused.
    revoked_sessions: frozenset[uuid.UUID] = frozenset()

    @classmethod
    def of(cls, user: User, revoked_sessions: frozenset[uuid.UUID] = frozenset()) -> Account:
        return cls(
            user.id,
            user.username,
            user.role,
            user.disabled,
            user.tokens_valid_after,
            revoked_sessions,
        )


Accounts = ExpiringCache[uuid.UUID, Account]


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int  # seconds until the access token expires


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tokens: TokenCodec,
        passwords: Passwords,
        accounts: Accounts,
        broadcaster: Broadcaster,
        *,
        allow_registration: bool,
        reads: AccessReads | None = None,
    ) -> None:
        """``reads``: where connects read accounts (storage/access_reads.py; none:
        through ``sessions``)."""
        self._sessions = sessions
        self._reads = reads or SessionReads(sessions)
        self._tokens = tokens
        self._passwords = passwords
        # Dropped by UserService when it changes a user, and here when one of the
        # user's sessions is revoked.
        self._accounts = accounts
        self._broadcaster = broadcaster
        # First-sight creations of an external provider's users, one at a time.
        self._first_sight = asyncio.Lock()
        # Access tokens whose signature and claims were checked: a client presents the
        # same one on every connect (and every tab); their expiry is checked each time.
        self._verified: ExpiringCache[str, dict[str, Any]] = ExpiringCache(
            ttl=accounts.ttl, max_entries=VERIFIED_TOKENS
        )
        self._account_loads: BatchedLoads[uuid.UUID, Account] = BatchedLoads(self._accounts_of)
        self._allow_registration = allow_registration and tokens.keys.can_issue

    @property
    def local_login_enabled(self) -> bool:
        return self._tokens.keys.can_issue

    async def register(
        self, username: str, password: str, role: GlobalRole = GlobalRole.USER
    ) -> User:
        if not self._allow_registration:
            raise Forbidden("registration is closed")
        return await self.create_user(username, password, role)

    async def create_user(self, username: str, password: str, role: GlobalRole) -> User:
        """Create a local user (registration, and the admin command line)."""
        password_hash = await self._passwords.hash(password)
        async with self._sessions.begin() as session:
            try:
                return await users_repo.create_user(
                    session, username=username, password_hash=password_hash, role=role
                )
            except AlreadyExists as exc:
                raise UsernameTaken() from exc

    async def login(self, username: str, password: str) -> TokenPair:
        self._require_local_login()
        async with read_session(self._sessions) as session:
            user = await users_repo.get_user_by_username(session, username)
        # Verified outside any transaction: the hash takes tens of milliseconds.
        password_hash = user.password_hash if user is not None else None
        if not await self._passwords.verify(password_hash, password) or user is None:
            raise InvalidCredentials()
        if user.disabled:
            raise UserDisabled()
        new_hash = None
        if password_hash and self._passwords.needs_rehash(password_hash):
            new_hash = await self._passwords.hash(password)
        async with self._sessions.begin() as session:
            if new_hash is not None:
                stored_user = await users_repo.get_user(session, user.id)
                if stored_user is not None:
                    stored_user.password_hash = new_hash
            return await self._issue_pair(session, user.id, family_id=uuid.uuid4())

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent; presenting it again revokes its family."""
        self._require_local_login()
        claims = self._tokens.decode(refresh_token, "refresh")
        token_id = _claim_uuid(claims, "jti")
        now = datetime.now(UTC)
        refusal: TokenReused
        async with self._sessions.begin() as session:
            stored = await users_repo.get_refresh_token_for_update(session, token_id)
            if stored is None:
                raise InvalidToken("unknown refresh token")
            if stored.revoked_at is not None:
                raise InvalidToken("this session was revoked")
            if stored.used_at is not None:
                # A spent token presented again: it leaked, or a client replayed it.
                # Revoke the whole family (committed when this block exits).
                await users_repo.revoke_family(session, stored.family_id, now)
                log.warning(
                    "refresh token reused; family revoked",
                    extra={"user_id": str(stored.user_id), "family": str(stored.family_id)},
                )
                refusal = TokenReused()
            else:
                user = await users_repo.get_user(session, stored.user_id)
                if user is None or user.disabled:
                    raise UserDisabled()
                stored.used_at = now
                return await self._issue_pair(session, user.id, family_id=stored.family_id)
        await self._revoked(stored.user_id, stored.family_id, "token_reused")
        raise refusal

    async def logout(self, refresh_token: str) -> None:
        """Revoke the whole session the refresh token belongs to."""
        claims = self._tokens.decode(refresh_token, "refresh")
        async with self._sessions.begin() as session:
            stored = await users_repo.get_refresh_token_for_update(
                session, _claim_uuid(claims, "jti")
            )
            if stored is None:
                return
            await users_repo.revoke_family(session, stored.family_id, datetime.now(UTC))
        await self._revoked(stored.user_id, stored.family_id, "logout")

    async def _revoked(
        self, user_id: uuid.UUID, session_id: uuid.UUID, because: RevokedBecause
    ) -> None:
        """After a session's revocation committed: its access tokens are refused from
        now on in this process (others re-read the account within its cache's ttl),
        and the connections opened with them end."""
        self._accounts.drop(user_id)
        await self._broadcaster.session_revoked(user_id, session_id, because)

    async def authenticate_token(self, token: str) -> Principal:
        claims = self._verified.get(token)
        if claims is None or claims["exp"] <= time.time():
            claims = self._tokens.decode(token, "access")
            self._verified.put(token, claims)
        session_id = None
        if self._tokens.keys.can_issue:
            # Every request and connection comes here: cached, or a read beside any writer.
            user_id = _claim_uuid(claims, "sub")
            account = await self._accounts.get_or_load(user_id, lambda: self._account(user_id))
            # Access tokens name their session (`fam`) so that revoking it refuses
            # them; those issued before the claim existed stay valid until they expire.
            if "fam" in claims:
                session_id = _claim_uuid(claims, "fam")
        else:
            account = await self._external_account(claims)
        _check_usable(account, issued_at=float(claims["iat"]))
        if session_id is not None and session_id in account.revoked_sessions:
            raise Unauthorized("this session was revoked; sign in again")
        return Principal(
            user_id=account.id,
            username=account.username,
            role=account.role,
            via="token",
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
            session_id=session_id,
        )

    async def _account(self, user_id: uuid.UUID) -> Account:
        account = await self._account_loads.load(user_id)
        if account is None:
            raise InvalidToken("the token's user does not exist")
        return account

    async def _accounts_of(self, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, Account]:
        """The accounts of those of ``user_ids`` that exist, read together (a burst of
        connects by many users costs one read, not one each)."""
        # Sessions revoked before this could only have expired access tokens.
        since = datetime.now(UTC) - self._tokens.access_ttl - EXPIRY_LEEWAY
        rows = await self._reads.accounts(user_ids, revoked_since=since)
        columns: dict[uuid.UUID, tuple[str, GlobalRole, bool, datetime | None]] = {}
        revoked: dict[uuid.UUID, set[uuid.UUID]] = {}
        for user_id, username, role, disabled, valid_after, family_id in rows:
            columns[user_id] = (username, role, disabled, valid_after)
            families = revoked.setdefault(user_id, set())
            if family_id is not None:
                families.add(family_id)
        return {
            user_id: Account(user_id, *columns[user_id], frozenset(families))
            for user_id, families in revoked.items()
        }

    async def authenticate_api_key(self, key: str) -> Principal:
        # A read beside any writer: a made-up key must not wait for SQLite's write lock.
        async with read_session(self._sessions) as session:
            stored = await users_repo.get_api_key_by_hash(session, hash_api_key(key))
            user = await users_repo.get_user(session, stored.user_id) if stored else None
        if stored is None or user is None:
            raise InvalidToken("unknown API key")
        _check_usable(user, issued_at=None)
        now = datetime.now(UTC)
        # Coarse on purpose: a write per request would serialise SQLite.
        if stored.last_used_at is None or now - stored.last_used_at > timedelta(minutes=1):
            async with self._sessions.begin() as session:
                await users_repo.touch_api_key(session, stored.id, now)
        return Principal(user_id=user.id, username=user.username, role=user.role, via="api_key")

    @staticmethod
    def new_api_key() -> tuple[str, str]:
        """A fresh key and its display prefix; only the hash is ever stored."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        return key, key[:12]

    async def _issue_pair(
        self, session: AsyncSession, user_id: uuid.UUID, *, family_id: uuid.UUID
    ) -> TokenPair:
        access = self._tokens.issue(user_id, "access", family_id=family_id)
        refresh = self._tokens.issue(user_id, "refresh", family_id=family_id)
        await users_repo.add_refresh_token(
            session,
            token_id=refresh.jti,
            family_id=family_id,
            user_id=user_id,
            expires_at=refresh.expires_at,
        )
        return TokenPair(
            access_token=access.token,
            refresh_token=refresh.token,
            expires_in=int(self._tokens.access_ttl.total_seconds()),
        )

    async def _external_account(self, claims: dict[str, Any]) -> Account:
        """The local user for an external provider's subject, created on first sight.

        Every connect comes here and almost none is a first sight: the user is read
        beside any writer, and only a subject not found takes a write transaction.
        """
        subject = str(claims["sub"])
        async with read_session(self._sessions) as session:
            user = await users_repo.get_user_by_external_subject(session, subject)
        if user is None:
            user = await self._create_external_user(subject, claims)
        return Account.of(user)

    async def _create_external_user(self, subject: str, claims: dict[str, Any]) -> User:
        # One at a time in this process: a burst of new users (a team's first morning)
        # queued that many writers on SQLite's lock, some past its busy timeout
        # ("database is locked"), and the same subject's concurrent first connects
        # raced on its unique key. The one waiting finds the user made meanwhile.
        async with self._first_sight, self._sessions.begin() as session:
            user = await users_repo.get_user_by_external_subject(session, subject)
            if user is not None:
                return user
            # The provider's name, held to local username rules; otherwise (or if it
            # is taken) a neutral one.
            preferred = str(claims.get("preferred_username") or "").strip().lower()
            names = [preferred] if USERNAME_PATTERN.fullmatch(preferred) else []
            names += [f"ext-{uuid.uuid4().hex[:12]}" for _ in range(2)]
            for username in names[:-1]:
                try:
                    return await self._add_external_user(session, subject, username)
                except AlreadyExists:
                    # The name is taken, or another process created this subject
                    # (PostgreSQL: its insert committed while ours waited on the key).
                    user = await users_repo.get_user_by_external_subject(session, subject)
                    if user is not None:
                        return user
            return await self._add_external_user(session, subject, names[-1])

    @staticmethod
    async def _add_external_user(session: AsyncSession, subject: str, username: str) -> User:
        return await users_repo.create_user(
            session,
            username=username,
            password_hash=None,
            role=GlobalRole.USER,
            external_subject=subject,
        )

    def _require_local_login(self) -> None:
        if not self._tokens.keys.can_issue:
            raise Forbidden("sign in with the external identity provider")


def _claim_uuid(claims: dict[str, Any], name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(claims[name]))
    except (KeyError, ValueError) as exc:
        raise InvalidToken(f"the token's {name} is malformed") from exc


def _check_usable(user: User | Account, *, issued_at: float | None) -> None:
    if user.disabled:
        raise UserDisabled()
    if (
        issued_at is not None
        and user.tokens_valid_after is not None
        and issued_at < user.tokens_valid_after.timestamp()
    ):
        raise Unauthorized("this token was revoked; sign in again")
