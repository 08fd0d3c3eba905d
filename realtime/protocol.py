"""Payloads of the commands clients send on the default namespace.

Socket.IO hands us decoded JSON, so scalar fields use strict types (a string is
never taken for a number or a boolean); ids are UUID strings.
"""

from __future__ import annotations

import reprlib
import uuid
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from app.wire import MAX_SEQ, NO_NUL

ClientMsgId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
Seq = Annotated[StrictInt, Field(ge=0, le=MAX_SEQ)]
# Chat text and questions are stored: no U+0000 (app.wire.NO_NUL).
Text = Annotated[StrictStr, Field(min_length=1, pattern=NO_NUL)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoomCommand(Command):
    document_id: uuid.UUID


class Join(RoomCommand):
    since_seq: Seq | None = Field(
        None, description="the last seq this client has; the ack carries what came after"
    )


class Leave(RoomCommand):
    pass


class ChatSend(RoomCommand):
    client_msg_id: ClientMsgId
    text: Text


class ChatHistory(RoomCommand):
    """Either the page before ``before_seq`` (the newest page when neither is given),
    or the page after ``after_seq`` (catching up)."""

    before_seq: Annotated[StrictInt, Field(ge=1, le=MAX_SEQ)] | None = None
    after_seq: Seq | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=100)] = 50

    @model_validator(mode="after")
    def _one_direction(self) -> ChatHistory:
        if self.before_seq is not None and self.after_seq is not None:
            raise ValueError("give before_seq or after_seq, not both")
        return self


class ChatEdit(RoomCommand):
    message_id: uuid.UUID
    text: Text


class ChatDelete(RoomCommand):
    message_id: uuid.UUID


# Deeper presence states are refused: events and acks carry a state inside their own
# nesting, and the JSON encoder stops at 255 levels.
STATE_MAX_DEPTH = 64


def sendable(state: dict[str, Any]) -> dict[str, Any]:
    """A state the server can pass on as JSON. The decoder takes more than the
    encoder gives back (integers past 64 bits, strings with lone surrogates, any
    depth, binary attachments): such a state failed every event and ack carrying it."""
    pending: list[tuple[Any, int]] = [(state, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > STATE_MAX_DEPTH:
                raise ValueError(f"nested deeper than {STATE_MAX_DEPTH} levels")
            children = value.values() if isinstance(value, dict) else value
            pending.extend((child, depth + 1) for child in children)
    try:
        orjson.dumps(state)
    except orjson.JSONEncodeError as exc:  # its message never quotes the value
        raise ValueError(f"not a state that can be sent on as JSON: {exc}") from exc
    return state


class PresenceUpdate(RoomCommand):
    state: Annotated[dict[str, Any], AfterValidator(sendable)] = Field(
        description="cursor, selection, status...: latest wins"
    )


class PresenceList(RoomCommand):
    after: uuid.UUID | None = Field(
        None, description="the last user id of the page before (none: the first page)"
    )


class Typing(RoomCommand):
    typing: StrictBool


class AuthRefresh(Command):
    token: Annotated[StrictStr, Field(min_length=1, max_length=8192)]


class AiAsk(RoomCommand):
    question: Text


class AiCancel(RoomCommand):
    reply_id: uuid.UUID


def event_name(name: Any) -> str:
    """How an error event names the event a client sent: as text that can be sent
    back whatever the client used as a name (lone surrogates become U+FFFD; anything
    but a string is shown shortened)."""
    text = name if isinstance(name, str) else reprlib.repr(name)
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
