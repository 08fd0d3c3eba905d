"""Room commands on the default namespace: join, leave, chat, presence, typing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson

from app.errors import Forbidden, NotFound, PayloadTooLarge, TooManyRooms, ValidationFailed
from app.events import EventClass
from app.services.chat_writer import Stored
from app.wire import ServerEvent, dump, message_data
from realtime.commands import Commands, Later
from realtime.connections import Connection
from realtime.delivery import Event
from realtime.presence import Departure
from realtime.protocol import (
    AiAsk,
    AiCancel,
    ChatDelete,
    ChatEdit,
    ChatHistory,
    ChatSend,
    Join,
    Leave,
    PresenceList,
    PresenceUpdate,
    Typing,
)
from realtime.state import Call, Realtime, room_of

commands: Commands[Call] = Commands(unknown_rate="room")


class NotJoined(Forbidden):
    code = "not_joined"
    default_message = "join the room first"


def joined(call: Call, document_id: uuid.UUID) -> None:
    # Rooms a connection has not joined are answered like rooms that do not
    # exist for it: nothing about them leaks.
    if not call.rt.delivery.in_room(room_of(document_id), call.sid):
        raise NotJoined()


def joined_rooms(rt: Realtime, sid: str) -> list[uuid.UUID]:
    """The documents whose rooms a connection is in."""
    endpoint = rt.delivery.endpoint(sid)
    if endpoint is None:
        return []
    return [room[1] for room in endpoint.rooms if isinstance(room, tuple) and room[0] == "doc"]


def state_event(document_id: uuid.UUID, user_id: uuid.UUID, sid: str, state: Any) -> Event:
    """A connection's presence state. It is state: a late reader needs the latest per
    connection, not the history."""
    data = {
        "document_id": str(document_id),
        "user_id": str(user_id),
        "connection_id": sid,
        "state": state,
    }
    return Event(ServerEvent.PRESENCE_STATE, data, EventClass.PRESENCE, key=("connection", sid))


@commands("join", Join, rate="room")
async def join(call: Call, payload: Join) -> dict[str, Any]:
    rt, connection, document_id = call.rt, call.connection, payload.document_id
    principal = connection.principal
    room_cap(rt, call.sid, document_id)  # before any work
    access = await rt.documents.room_access(principal, document_id)
    replies: list[dict[str, Any]] = []
    elsewhere: asyncio.Future[list[dict[str, Any]]] | None = None

    def enter() -> None:
        nonlocal elsewhere
        room_cap(rt, call.sid, document_id)  # again: joins at once passed the first
        rt.delivery.join(room_of(document_id), call.sid)
        # Read right after entering: each later chunk is sent to this connection.
        replies.extend(reply.so_far() for reply in rt.assistant.active(document_id))
        if rt.replies is not None:  # the other nodes' (read from Redis by a first join)
            elsewhere = rt.replies.entered(document_id)

    backlog = await rt.chat.enter_room(document_id, payload.since_seq, enter)
    if elsewhere is not None:
        replies.extend(await elsewhere)
    # A removal or a new role between the check above and entering the room reached
    # the room's members, not this connection: checked again now that it is in (the
    # services forget what they cached on a change, so this reads the change).
    try:
        access = await rt.documents.room_access(principal, document_id)
    except NotFound:
        rt.delivery.leave(room_of(document_id), call.sid)
        raise
    if not rt.delivery.in_room(room_of(document_id), call.sid):
        # It left (leave, a disconnect) while this join awaited: recorded as present
        # now, it would stay present with nothing left to take it out.
        raise NotJoined("the connection left the room before its join completed")
    if await rt.presence.join(document_id, principal.user_id, principal.username, call.sid):
        rt.presence_changes.joined(document_id, principal.user_id, principal.username)
    presence = await rt.presence.page(document_id, None, rt.settings.presence_page_size)
    return {
        "document": {"id": str(access.document_id), "title": access.title},
        "role": access.role.value,
        "connection_id": call.sid,
        "user": {"user_id": str(principal.user_id), "username": principal.username},
        "last_seq": backlog.last_seq,
        "presence": presence.entries,
        "presence_count": presence.count,
        "presence_more": presence.more,
        "messages": backlog.encoded,
        "has_more": backlog.has_more,
        "replies": replies,
    }


def room_cap(rt: Realtime, sid: str, document_id: uuid.UUID) -> None:
    """Refuse a connection one more room past ``MAX_ROOMS_PER_CONNECTION``."""
    cap = rt.settings.max_rooms_per_connection
    if not rt.delivery.in_room(room_of(document_id), sid) and len(joined_rooms(rt, sid)) >= cap:
        raise TooManyRooms(f"at most {cap} rooms per connection; leave one")


@commands("leave", Leave, rate="room")
async def leave(call: Call, payload: Leave) -> dict[str, Any]:
    await leave_room(call.rt, call.connection, payload.document_id)
    return {}


async def leave_room(rt: Realtime, connection: Connection, document_id: uuid.UUID) -> None:
    """Take a connection out of a room and tell the room (leave, removal, disconnect)."""
    room = room_of(document_id)
    if not rt.delivery.leave(room, connection.sid):
        return
    user_id = connection.user_id
    departure = await rt.presence.leave(document_id, user_id, connection.sid)
    if departure is Departure.USER:
        # Out at once, so before the departure, which waits for the room's next
        # presence:changed.
        if rt.typing.clear(document_id, user_id):
            rt.delivery.to_room(
                room,
                Event(
                    ServerEvent.TYPING,
                    {"document_id": str(document_id), "user_id": str(user_id), "typing": False},
                    EventClass.TYPING,
                    key=user_id,
                ),
            )
        rt.presence_changes.left(document_id, user_id)
    elif departure is Departure.STATE:
        # The user is still here in another tab; this connection's state is gone.
        await rt.settle(document_id, user_id)
        rt.delivery.to_room(room, state_event(document_id, user_id, connection.sid, None))


@commands("chat:send", ChatSend, rate="chat", at_once=True)
def chat_send(call: Call, payload: ChatSend) -> Later[tuple[Stored, bool]]:
    # Queued in the turn that read it, so a client's sends keep their order even when
    # it does not wait for each ack; answered once the message is committed.
    joined(call, payload.document_id)
    check_length(call, payload.text)
    stored = call.rt.chat.submit(
        call.connection.principal,
        payload.document_id,
        client_msg_id=payload.client_msg_id,
        text=payload.text,
        connection_id=call.sid,
    )
    return Later(stored, _sent)


def _sent(stored: tuple[Stored, bool]) -> dict[str, Any]:
    message, _ = stored
    return {"id": message.data["id"], "seq": message.seq, "created_at": message.data["created_at"]}


@commands("ai:ask", AiAsk, rate="ai")
async def ai_ask(call: Call, payload: AiAsk) -> dict[str, Any]:
    joined(call, payload.document_id)
    check_length(call, payload.question)
    reply = await call.rt.assistant.ask(
        call.connection.principal, payload.document_id, payload.question
    )
    return {"reply_id": str(reply.id)}


@commands("ai:cancel", AiCancel, rate="ai")
async def ai_cancel(call: Call, payload: AiCancel) -> dict[str, Any]:
    joined(call, payload.document_id)
    await call.rt.assistant.cancel(call.connection.principal, payload.document_id, payload.reply_id)
    return {}


@commands("chat:history", ChatHistory, rate="history")
async def chat_history(call: Call, payload: ChatHistory) -> dict[str, Any]:
    joined(call, payload.document_id)
    messages, has_more = await call.rt.chat.history(
        call.connection.principal,
        payload.document_id,
        before_seq=payload.before_seq,
        after_seq=payload.after_seq,
        limit=payload.limit,
    )
    return {"messages": [message_data(row) for row in messages], "has_more": has_more}


@commands("chat:edit", ChatEdit, rate="chat")
async def chat_edit(call: Call, payload: ChatEdit) -> dict[str, Any]:
    joined(call, payload.document_id)
    check_length(call, payload.text)
    message = await call.rt.chat.edit(
        call.connection.principal,
        payload.document_id,
        payload.message_id,
        payload.text,
        connection_id=call.sid,
    )
    return {"message": dump(message)}


@commands("chat:delete", ChatDelete, rate="chat")
async def chat_delete(call: Call, payload: ChatDelete) -> dict[str, Any]:
    joined(call, payload.document_id)
    message = await call.rt.chat.delete(
        call.connection.principal, payload.document_id, payload.message_id, connection_id=call.sid
    )
    return {"message": dump(message)}


@commands("presence:update", PresenceUpdate, rate="presence")
async def presence_update(call: Call, payload: PresenceUpdate) -> dict[str, Any]:
    joined(call, payload.document_id)
    limit = call.rt.settings.presence_state_max_bytes
    if len(orjson.dumps(payload.state)) > limit:
        raise PayloadTooLarge(f"presence state is larger than {limit} bytes")
    document_id, user_id = payload.document_id, call.connection.user_id
    await call.rt.presence.set_state(document_id, user_id, call.sid, payload.state)
    await call.rt.settle(document_id, user_id)  # the arrival first
    state = state_event(document_id, user_id, call.sid, payload.state)
    call.rt.delivery.to_room(room_of(document_id), state, skip=call.sid)
    return {}


@commands("presence:list", PresenceList, rate="history")
async def presence_list(call: Call, payload: PresenceList) -> dict[str, Any]:
    """The room's presence after the join ack's page (``presence_more``), a page at a time."""
    joined(call, payload.document_id)
    limit = call.rt.settings.presence_page_size
    page = await call.rt.presence.page(payload.document_id, payload.after, limit)
    return {"presence": page.entries, "count": page.count, "more": page.more}


@commands("typing", Typing, rate="typing")
async def typing(call: Call, payload: Typing) -> dict[str, Any]:
    joined(call, payload.document_id)
    document_id, user_id = payload.document_id, call.connection.user_id
    if call.rt.typing.update(document_id, user_id, payload.typing):
        await call.rt.settle(document_id, user_id)  # the arrival first
        event = Event(
            ServerEvent.TYPING,
            {"document_id": str(document_id), "user_id": str(user_id), "typing": payload.typing},
            EventClass.TYPING,
            key=user_id,
        )
        call.rt.delivery.to_room(room_of(document_id), event, skip=call.sid)
    return {}


def check_length(call: Call, text: str) -> None:
    limit = call.rt.settings.chat_message_max_chars
    if len(text) > limit:
        raise ValidationFailed(
            details=[
                {
                    "field": "text",
                    "message": f"at most {limit} characters",
                    "type": "string_too_long",
                }
            ]
        )
