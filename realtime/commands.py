"""Client commands: one registry, one ack shape, errors mapped in one place.

Every command is answered ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": {"code", "message", "details"?}}``. A client that sent
without asking for an ack gets failures as an ``error`` event instead.

A handler is a coroutine function, run in a task of its own for each command; or, for
a hot command that only waits for a future (a chat send for its commit), a plain
function registered ``at_once`` that returns ``Later``: it runs in the turn that read
the command and is answered from the future's done callback, with no task at all.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from app.errors import AppError, BadRequest, ValidationFailed

log = logging.getLogger(__name__)

# Set by RoomServer in the task of each event packet a client sent: whether it
# asked for an ack. None elsewhere, e.g. for the server's own connect/disconnect.
ack_requested: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "ack_requested", default=None
)


class Admits(Protocol):
    def admit(self, rate: str) -> None:
        """Spend a token of the rate class ``rate`` or raise ``RateLimited``."""


Ctx = TypeVar("Ctx", bound=Admits)
Payload = TypeVar("Payload", bound=BaseModel)
T = TypeVar("T")
Envelope = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Later(Generic[T]):
    """What an ``at_once`` handler returns: the future its answer waits for, and the
    answer's data made from the future's result."""

    future: asyncio.Future[T]
    data: Callable[[T], Any]


Handler = Callable[[Ctx, Any], Awaitable[Any] | Later[Any]]


class UnknownEvent(BadRequest):
    code = "unknown_event"
    default_message = "no such event"


@dataclass(frozen=True, slots=True)
class Command(Generic[Ctx]):
    name: str
    model: type[BaseModel]
    rate: str  # the rate limit class it is counted in
    handler: Handler[Ctx]
    at_once: bool  # a plain function returning Later, not a coroutine function


class Commands(Generic[Ctx]):
    def __init__(self, *, unknown_rate: str) -> None:
        self._commands: dict[str, Command[Ctx]] = {}
        # The rate limit class unknown events are counted in.
        self.unknown_rate = unknown_rate

    def __call__(
        self, name: str, model: type[Payload], *, rate: str, at_once: bool = False
    ) -> Callable[[Callable[[Ctx, Payload], Any]], Callable[[Ctx, Payload], Any]]:
        def register(handler: Callable[[Ctx, Payload], Any]) -> Callable[[Ctx, Payload], Any]:
            self._commands[name] = Command(name, model, rate, handler, at_once)
            return handler

        return register

    @property
    def names(self) -> list[str]:
        return sorted(self._commands)

    def at_once(self, event: Any) -> bool:
        command = self._commands.get(event)
        return command is not None and command.at_once

    async def run(self, ctx: Ctx, event: str, args: tuple[Any, ...]) -> Envelope:
        """Parse, run and envelope one command; never raises."""
        try:
            command = self._commands.get(event)
            if command is None:
                ctx.admit(self.unknown_rate)
                raise UnknownEvent(f"no such event: {event!r}")
            result = command.handler(ctx, _checked(ctx, command, args))
            if isinstance(result, Later):
                return {"ok": True, "data": result.data(await result.future)}
            return {"ok": True, "data": await result}
        except Exception as exc:
            return _failure(event, exc)

    def start(
        self, ctx: Ctx, event: str, args: tuple[Any, ...], answer: Callable[[Envelope], None]
    ) -> None:
        """Run an ``at_once`` command in this turn; ``answer`` gets its envelope, at once
        when it is refused, else once the future of its ``Later`` is done."""
        command = self._commands[event]
        try:
            later = command.handler(ctx, _checked(ctx, command, args))
            if not isinstance(later, Later):
                raise TypeError(f"the at-once command {event!r} returned no Later")
        except Exception as exc:
            answer(_failure(event, exc))
            return

        def settled(future: asyncio.Future[Any]) -> None:
            try:
                answer({"ok": True, "data": later.data(future.result())})
            except (Exception, asyncio.CancelledError) as exc:
                answer(_failure(event, exc))

        # In this command's context: a failure's log line names its connection.
        later.future.add_done_callback(settled, context=contextvars.copy_context())


def _checked(ctx: Admits, command: Command[Any], args: tuple[Any, ...]) -> BaseModel:
    # Counted before anything is parsed: a flood of bad payloads costs little.
    ctx.admit(command.rate)
    if len(args) != 1:
        raise BadRequest("send exactly one payload object")
    return parse(command.model, args[0])


def _failure(event: str, exc: BaseException) -> Envelope:
    if isinstance(exc, AppError):
        return {"ok": False, "error": exc.to_body()}
    log.error("command %r failed", event, exc_info=exc)
    return {"ok": False, "error": {"code": "internal", "message": "internal error"}}


def parse(model: type[Payload], raw: Any) -> Payload:
    if not isinstance(raw, dict):
        raise ValidationFailed(
            "the payload must be an object",
            details=[{"field": "(payload)", "message": "expected an object", "type": "dict_type"}],
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed.of(exc, whole="(payload)") from exc
