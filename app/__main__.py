"""``python -m app`` serves; ``python -m app migrate`` migrates; see ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys

from pydantic import ValidationError

from app.config import Settings
from app.logs import configure_logging

log = logging.getLogger("app")


def without_inputs(exc: ValidationError) -> str:
    """pydantic's errors, one a line, without the values that caused them: those can
    be secrets (an API key in the settings, a password)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]).upper()
        lines.append(f"  {where or '(settings)'}: {error['msg']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the server (the default)")
    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.add_argument("revision", nargs="?", default="head")
    create_user = commands.add_parser("create-user", help="create a local user")
    create_user.add_argument("username")
    create_user.add_argument("--role", default="user", choices=["admin", "power", "user", "guest"])
    create_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"configuration error:\n{without_inputs(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.resolved_log_format)

    if args.command == "migrate":
        return asyncio.run(_migrate(settings, args.revision))
    if args.command == "create-user":
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"password for {args.username}: ")
        return asyncio.run(_create_user(settings, args.username, password, args.role))
    return _serve(settings)


def _serve(settings: Settings) -> int:
    from app.main import NotMigrated
    from app.server import event_loop_factory, serve

    try:
        with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    except NotMigrated as exc:
        log.error("%s", exc)
        return 1
    return 0


async def _migrate(settings: Settings, revision: str) -> int:
    from storage.db import create_engine
    from storage.migrate import current_revision, upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    try:
        before = await current_revision(engine)
        await upgrade(engine, revision)
        after = await current_revision(engine)
    finally:
        await engine.dispose()
    log.info("database migrated: %s -> %s", before or "empty", after)
    return 0


async def _create_user(settings: Settings, username: str, password: str, role: str) -> int:
    from pydantic import TypeAdapter

    from app.api.schemas import Credentials
    from app.auth.passwords import Passwords, password_hasher
    from app.auth.tokens import token_codec
    from app.errors import AppError
    from app.events import NullBroadcaster
    from app.services.auth import AuthService
    from app.services.cache import ExpiringCache
    from storage.db import create_engine, create_sessionmaker
    from storage.models import GlobalRole

    try:
        credentials = TypeAdapter(Credentials).validate_python(
            {"username": username, "password": password}
        )
    except ValidationError as exc:
        print(f"invalid user:\n{without_inputs(exc)}", file=sys.stderr)
        return 2
    engine = create_engine(settings.resolved_database_url)
    try:
        service = AuthService(
            create_sessionmaker(engine),
            token_codec(settings),
            Passwords(password_hasher(settings)),
            ExpiringCache(ttl=0, max_entries=1),
            NullBroadcaster(),
            allow_registration=True,
        )
        user = await service.create_user(
            credentials.username, credentials.password, GlobalRole(role)
        )
    except AppError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(f"created {user.role.value} {user.username} ({user.id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
