"""``python -m bench.seed_users COUNT PREFIX``: many users at once, with access tokens.

Registering through REST costs an Argon2id hash per registration and per sign-in (~50 ms
of the server's core each) and is throttled per address, so a thousand users would take
minutes of the server's time before a benchmark could start. This runs beside the server,
with its environment (``DATABASE_URL``, ``DATA_DIR``, ``JWT_SECRET``, ...), and makes them
the way the app does, through its own code: each user is a row written by the storage
layer's ``create_user`` (all sharing one real Argon2id hash of the bench password, so each
could also sign in), and each token is issued by the app's ``TokenCodec`` from the same
settings the server read. The tokens are ordinary access tokens (``sub``, ``iss``, ``aud``,
``iat``, ``exp``, ``jti``, ``typ``), checked by the server as any other; having no ``fam``
they belong to no sign-in session, as tokens issued before that claim existed (protocol.md
§2.2). Memberships are left to the caller, through the REST API.

Prints one JSON object: ``{"users": [{"id": ..., "username": ..., "token": ...}, ...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from app.auth.passwords import Passwords
from app.auth.tokens import token_codec
from app.config import Settings
from bench.targets import BENCH_PASSWORD
from storage.db import create_engine, create_sessionmaker
from storage.models import GlobalRole
from storage.repositories import users as users_repo


async def seed(count: int, prefix: str) -> list[dict[str, str]]:
    settings = Settings()
    codec = token_codec(settings)
    password_hash = await Passwords().hash(BENCH_PASSWORD)
    engine = create_engine(settings.resolved_database_url)
    try:
        sessions = create_sessionmaker(engine)
        async with sessions.begin() as session:
            users = [
                await users_repo.create_user(
                    session,
                    username=f"{prefix}{index}",
                    password_hash=password_hash,
                    role=GlobalRole.USER,
                )
                for index in range(count)
            ]
    finally:
        await engine.dispose()
    return [
        {
            "id": str(user.id),
            "username": user.username,
            "token": codec.issue(user.id, "access").token,
        }
        for user in users
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: python -m bench.seed_users COUNT PREFIX", file=sys.stderr)
        return 2
    users = asyncio.run(seed(int(argv[0]), argv[1]))
    print(json.dumps({"users": users}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
