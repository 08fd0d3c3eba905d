"""Payloads of the commands clients send on the default namespace.

Socket.IO hands us decoded JSON, so scalar fields use strict types (a string is
never taken for a number or a boolean); ids are UUID strings.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from app.wire import MAX_SEQ

ClientMsgId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
Seq = Annotated[StrictInt, Field(ge=0, le=MAX_SEQ)]


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
    text: Annotated[StrictStr, Field(min_length=1)]


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
    text: Annotated[StrictStr, Field(min_length=1)]


class ChatDelete(RoomCommand):
    message_id: uuid.UUID


class PresenceUpdate(RoomCommand):
    state: dict[str, Any] = Field(description="cursor, selection, status...: latest wins")


class Typing(RoomCommand):
    typing: StrictBool


class AuthRefresh(Command):
    token: Annotated[StrictStr, Field(min_length=1, max_length=8192)]


class AiAsk(RoomCommand):
    question: Annotated[StrictStr, Field(min_length=1)]


class AiCancel(RoomCommand):
    reply_id: uuid.UUID
