"""Client commands: one registry, one ack shape, errors mapped in one place.

Every command is answered ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": {"code", "message", "details"?}}``. A client that sent
without asking for an ack gets failures as an ``error`` event instead.
"""

from __future__ import annotations

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
Handler = Callable[[Ctx, Any], Awaitable[Any]]


class UnknownEvent(BadRequest):
    code = "unknown_event"
    default_message = "no such event"


@dataclass(frozen=True, slots=True)
class Command(Generic[Ctx]):
    name: str
    model: type[BaseModel]
    rate: str  # the rate limit class it is counted in
    handler: Handler[Ctx]


class Commands(Generic[Ctx]):
    def __init__(self, *, unknown_rate: str) -> None:
        self._commands: dict[str, Command[Ctx]] = {}
        # The rate limit class unknown events are counted in.
        self.unknown_rate = unknown_rate

    def __call__(
        self, name: str, model: type[Payload], *, rate: str
    ) -> Callable[[Callable[[Ctx, Payload], Awaitable[Any]]], Callable[[Ctx, Payload], Any]]:
        def register(
            handler: Callable[[Ctx, Payload], Awaitable[Any]],
        ) -> Callable[[Ctx, Payload], Any]:
            self._commands[name] = Command(name, model, rate, handler)
            return handler

        return register

    @property
    def names(self) -> list[str]:
        return sorted(self._commands)

    async def run(self, ctx: Ctx, event: str, args: tuple[Any, ...]) -> dict[str, Any]:
        """Parse, run and envelope one command; never raises."""
        try:
            command = self._commands.get(event)
            if command is None:
                ctx.admit(self.unknown_rate)
                raise UnknownEvent(f"no such event: {event!r}")
            # Counted before anything is parsed: a flood of bad payloads costs little.
            ctx.admit(command.rate)
            if len(args) != 1:
                raise BadRequest("send exactly one payload object")
            payload = parse(command.model, args[0])
            data = await command.handler(ctx, payload)
            return {"ok": True, "data": data}
        except AppError as exc:
            return {"ok": False, "error": exc.to_body()}
        except Exception:
            log.exception("command %r failed", event)
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
