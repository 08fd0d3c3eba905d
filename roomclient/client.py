"""``RoomClient``: connect, join, chat with retries, history, presence callbacks.

What it guarantees the application:
- a room's ``messages`` are in ``seq`` order, without duplicates;
- after a reconnect every joined room is joined again with ``since_seq``, and the
  missed messages are fetched (paging when there are many): nothing is lost;
- ``send`` retries with the same ``client_msg_id``, so a retry never duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], Awaitable[None] | None]
TokenProvider = Callable[[], Awaitable[str]]


class CommandError(Exception):
    """The server answered a command with ``{"ok": false, "error": ...}``."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


@dataclass
class ReplyView:
    """An assistant reply as it streams: the text up to ``base_seq`` (from a join)
    plus the chunks received after it, by ``seq``; complete once ``status`` is set."""

    reply_id: str
    base_seq: int = 0
    base_text: str = ""
    chunks: dict[int, tuple[int, str]] = field(default_factory=dict)  # first seq: (last, text)
    status: str = "streaming"  # then completed, cancelled or failed
    message: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        if self.message is not None:
            return str(self.message["text"])
        parts, seq = [self.base_text], self.base_seq + 1
        while seq in self.chunks:  # stops at a gap: only what is known in order
            last, text = self.chunks[seq]
            parts.append(text)
            seq = last + 1
        return "".join(parts)

    def so_far(self, seq: int, text: str) -> None:
        if seq > self.base_seq:
            self.base_seq, self.base_text = seq, text
            self.chunks = {s: c for s, c in self.chunks.items() if s > seq}

    def chunk(self, seq: int, text: str, first_seq: int | None = None) -> None:
        """Chunk ``seq``, or chunks ``first_seq``..``seq`` merged into one (a slow
        connection's, docs/protocol.md §5.10)."""
        first = seq if first_seq is None else first_seq
        if first > self.base_seq:
            self.chunks[first] = (seq, text)  # a repeat of a known seq changes nothing


@dataclass
class RoomView:
    """What this client knows of one joined room."""

    document_id: str
    title: str = ""
    role: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    # user_id -> {"username", "connections": {connection_id: state}}
    presence: dict[str, dict[str, Any]] = field(default_factory=dict)
    typing: set[str] = field(default_factory=set)
    # Assistant replies by reply_id: streaming, or finished (their chat message known).
    replies: dict[str, ReplyView] = field(default_factory=dict)
    _seqs: set[int] = field(default_factory=set)

    def reply(self, reply_id: str) -> ReplyView:
        return self.replies.setdefault(reply_id, ReplyView(reply_id))

    @property
    def last_seq(self) -> int:
        return self.messages[-1]["seq"] if self.messages else 0

    def add(self, message: dict[str, Any]) -> bool:
        """Insert in seq order; False for a duplicate (already seen) seq."""
        reply_id = (message.get("metadata") or {}).get("reply_id")
        if message["author"]["kind"] == "assistant" and reply_id:
            # The stored reply completes it, live or caught up after a reconnect.
            reply = self.reply(reply_id)
            reply.message, reply.status = message, message["metadata"]["status"]
        seq = message["seq"]
        if seq in self._seqs:
            for i, known in enumerate(self.messages):
                if known["seq"] == seq and _newer(message, known):
                    self.messages[i] = message  # an edit or deletion replaces it
            return False
        self._seqs.add(seq)
        if not self.messages or self.messages[-1]["seq"] < seq:
            self.messages.append(message)
        else:
            self.messages.append(message)
            self.messages.sort(key=lambda m: m["seq"])
        return True


def _presence_of(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A room's presence as a join ack or ``room:resync`` lists it."""
    return {
        user["user_id"]: {
            "username": user["username"],
            "connections": {c["connection_id"]: c["state"] for c in user["connections"]},
        }
        for user in entries
    }


def _newer(candidate: dict[str, Any], known: dict[str, Any]) -> bool:
    """Whether ``candidate`` is a later version of the same message (a late page
    must not undo an edit or a deletion that arrived live)."""
    if known.get("deleted"):
        return False
    if candidate.get("deleted"):
        return True
    return (candidate.get("edited_at") or "") >= (known.get("edited_at") or "")


class RoomClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        transports: list[str] | None = None,
        reconnection: bool = True,
        refresh_token: TokenProvider | None = None,
        command_timeout: float = 10.0,
    ) -> None:
        """``refresh_token`` is called when the server asks for a fresh access token."""
        self.url = url
        self.token = token
        self.transports = transports or ["websocket"]
        self.command_timeout = command_timeout
        self.rooms: dict[str, RoomView] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended: dict[str, Any] | None = None
        self.user: dict[str, Any] = {}  # {"user_id", "username"}, known after a join
        self._refresh_token = refresh_token
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self.sio = socketio.AsyncClient(reconnection=reconnection, logger=False)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("*", self._on_event)

    # --- connection -----------------------------------------------------------------

    async def connect(self) -> None:
        # A callable: reconnects present the current token, not the first one. The
        # namespace's answer may take longer than python-socketio's 1 s default on a
        # busy server (a crowd connecting at once): it gets a command's timeout.
        await self.sio.connect(
            self.url,
            auth=lambda: {"token": self.token},
            transports=self.transports,
            wait_timeout=self.command_timeout,
        )
        await self._connected.wait()

    async def close(self) -> None:
        # shutdown, not disconnect: it also stops a reconnection in progress, which
        # would otherwise bring a closed client back.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sio.shutdown()
        # python-engineio's client leaves its HTTP session open when a reconnection's
        # handshake failed (its server gone): closed here, not by the garbage collector.
        http = self.sio.eio.http
        if http is not None and not http.closed:
            await http.close()

    async def __aenter__(self) -> RoomClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    def on(self, listener: Listener) -> None:
        """Call ``listener(event, data)`` for every server event."""
        self._listeners.append(listener)

    # --- commands -------------------------------------------------------------------

    async def command(
        self,
        event: str,
        payload: dict[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 (the ack wait)
        *,
        then: Callable[[Any], None] | None = None,
    ) -> Any:
        """Send a command and return its ack's ``data``; ``then(data)`` runs as the ack
        is handled, before any event the server sent after it."""
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_ack(*args: Any) -> None:
            reply = args[0] if len(args) == 1 else list(args)
            if then is not None and isinstance(reply, dict) and reply.get("ok"):
                then(reply["data"])
            if not answered.done():
                answered.set_result(reply)

        await self.sio.emit(event, payload, callback=on_ack)
        try:
            reply = await asyncio.wait_for(answered, timeout or self.command_timeout)
        except TimeoutError:
            raise socketio.exceptions.TimeoutError() from None
        if not isinstance(reply, dict) or "ok" not in reply:
            raise CommandError("bad_reply", f"unexpected reply {reply!r}")
        if not reply["ok"]:
            error = reply["error"]
            raise CommandError(error["code"], error["message"], error.get("details"))
        return reply["data"]

    async def read(
        self, event: str, payload: dict[str, Any], *, then: Callable[[Any], None] | None = None
    ) -> Any:
        """``command`` for a read (``chat:history``, ``presence:list``): past its rate,
        asked again once ``retry_after`` has passed (a read twice is the same read; a
        room of thousands is more pages than the rate's burst)."""
        while True:
            try:
                return await self.command(event, payload, then=then)
            except CommandError as exc:
                if exc.code != "rate_limited":
                    raise
                await asyncio.sleep(float((exc.details or {}).get("retry_after", 1)))

    async def join(self, document_id: str) -> RoomView:
        """Join a room. The first time, load the newest page of history; when
        re-joining (after a reconnect), fetch everything after the last ``seq``."""
        room = self.rooms.get(document_id)
        rejoining = room is not None
        room = room or RoomView(document_id)
        payload: dict[str, Any] = {"document_id": document_id}
        if rejoining:
            payload["since_seq"] = room.last_seq
        # Known before the ack: events that arrive ahead of it are not lost.
        self.rooms[document_id] = room

        def presence(data: dict[str, Any]) -> None:
            # Taken as the ack arrives: the presence:changed events that follow it
            # apply to it (this coroutine resumes later, maybe after some of them).
            room.presence = _presence_of(data["presence"])

        try:
            data = await self.command("join", payload, then=presence)
        except BaseException:
            if not rejoining:
                self.rooms.pop(document_id, None)
            raise
        await self._rest_of_presence(room, data["presence"], data["presence_more"])
        for streaming in data.get("replies", []):
            room.reply(streaming["reply_id"]).so_far(streaming["seq"], streaming["text"])
        room.title, room.role = data["document"]["title"], data["role"]
        self.user = data["user"]
        if rejoining:
            for message in data["messages"]:
                room.add(message)
            after = data["messages"][-1]["seq"] if data["messages"] else room.last_seq
            if data["has_more"]:
                await self._catch_up(room, after)
        else:
            messages, _ = await self.history(document_id, limit=50)
            for message in messages:
                room.add(message)
        return room

    async def _rest_of_presence(
        self, room: RoomView, page: list[dict[str, Any]], more: bool
    ) -> None:
        """A large room's join ack (or ``room:resync``) lists its first page of users
        (``presence_more``): the next pages, each taken as it arrives, like the first."""
        while more and page:
            data = await self.read(
                "presence:list",
                {"document_id": room.document_id, "after": page[-1]["user_id"]},
                then=lambda data: room.presence.update(_presence_of(data["presence"])),
            )
            page, more = data["presence"], data["more"]

    async def leave(self, document_id: str) -> None:
        await self.command("leave", {"document_id": document_id})
        self.rooms.pop(document_id, None)

    async def send(
        self,
        document_id: str,
        text: str,
        *,
        client_msg_id: str | None = None,
        attempts: int = 3,
        timeout: float | None = None,  # noqa: ASYNC109 (per attempt, not overall)
    ) -> dict[str, Any]:
        """Send a message; on a timeout or a dropped connection try again with the
        same ``client_msg_id`` (the server answers a retry with the original)."""
        client_msg_id = client_msg_id or uuid.uuid4().hex
        payload = {"document_id": document_id, "client_msg_id": client_msg_id, "text": text}
        for attempt in range(1, attempts + 1):
            try:
                await asyncio.wait_for(self._connected.wait(), timeout or self.command_timeout)
                ack: dict[str, Any] = await self.command("chat:send", payload, timeout)
            except (
                TimeoutError,
                socketio.exceptions.TimeoutError,
                socketio.exceptions.BadNamespaceError,
            ):
                if attempt == attempts:
                    raise
                log.info("send %s: attempt %d timed out, retrying", client_msg_id, attempt)
                continue
            room = self.rooms.get(document_id)
            if room is not None:
                room.add(
                    {
                        "id": ack["id"],
                        "document_id": document_id,
                        "seq": ack["seq"],
                        "text": text,
                        "client_msg_id": client_msg_id,
                        "created_at": ack["created_at"],
                        "author": {
                            "kind": "user",
                            "id": self.user.get("user_id"),
                            "username": self.user.get("username"),
                        },
                        "edited_at": None,
                        "deleted": False,
                        "metadata": {},
                    }
                )
            return ack
        raise AssertionError("unreachable")

    async def history(
        self,
        document_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], bool]:
        payload: dict[str, Any] = {"document_id": document_id, "limit": limit}
        if before_seq is not None:
            payload["before_seq"] = before_seq
        if after_seq is not None:
            payload["after_seq"] = after_seq
        data = await self.read("chat:history", payload)
        return data["messages"], data["has_more"]

    async def edit(self, document_id: str, message_id: str, text: str) -> dict[str, Any]:
        data = await self.command(
            "chat:edit", {"document_id": document_id, "message_id": message_id, "text": text}
        )
        return self._apply_own(document_id, data["message"])

    async def delete(self, document_id: str, message_id: str) -> dict[str, Any]:
        data = await self.command(
            "chat:delete", {"document_id": document_id, "message_id": message_id}
        )
        return self._apply_own(document_id, data["message"])

    def _apply_own(self, document_id: str, message: dict[str, Any]) -> dict[str, Any]:
        # The server does not echo a connection's own changes back to it.
        room = self.rooms.get(document_id)
        if room is not None:
            room.add(message)
        return message

    async def update_presence(self, document_id: str, state: dict[str, Any]) -> None:
        await self.command("presence:update", {"document_id": document_id, "state": state})

    async def set_typing(self, document_id: str, typing: bool) -> None:
        await self.command("typing", {"document_id": document_id, "typing": typing})

    # --- internals ------------------------------------------------------------------

    async def _catch_up(self, room: RoomView, after_seq: int) -> None:
        """Page forward from ``after_seq`` until nothing more was missed."""
        while True:
            messages, has_more = await self.history(
                room.document_id, after_seq=after_seq, limit=100
            )
            for message in messages:
                room.add(message)
            if not has_more or not messages:
                return
            after_seq = messages[-1]["seq"]

    async def _refresh(self, room: RoomView, people: list[dict[str, Any]], more: bool) -> None:
        """After a ``room:resync``: the rest of its presence, then the newest messages."""
        try:
            await self._rest_of_presence(room, people, more)
            messages, _ = await self.history(room.document_id, limit=100)
        except (CommandError, socketio.exceptions.SocketIOError) as exc:
            log.warning("could not refresh %s: %s", room.document_id, exc)
            return
        for message in messages:
            room.add(message)

    async def _on_connect(self) -> None:
        self._connected.set()
        rejoin = list(self.rooms)
        if rejoin:
            asyncio.get_running_loop().create_task(self._rejoin(rejoin))

    async def _rejoin(self, document_ids: list[str]) -> None:
        for document_id in document_ids:
            try:
                await self.join(document_id)
            except (CommandError, socketio.exceptions.SocketIOError) as exc:
                log.warning("could not re-join %s: %s", document_id, exc)

    async def _on_disconnect(self, reason: Any = None) -> None:
        self._connected.clear()

    async def _on_event(self, event: str, data: Any = None) -> None:
        payload = data if isinstance(data, dict) else {"value": data}
        self.events.append((event, payload))
        self._apply(event, payload)
        if event == "auth:expiring" and self._refresh_token is not None:
            self.token = await self._refresh_token()
            await self.command("auth:refresh", {"token": self.token})
        if event == "session:ended":
            self.ended = payload
        for listener in self._listeners:
            result = listener(event, payload)
            if asyncio.iscoroutine(result):
                await result

    def _apply(self, event: str, data: dict[str, Any]) -> None:
        room = self.rooms.get(str(data.get("document_id")))
        if room is None:
            return
        if event in ("chat:message", "chat:edited", "chat:deleted"):
            room.add(data["message"])
        elif event == "ai:started":
            room.reply(data["reply_id"])
        elif event == "ai:chunk":
            room.reply(data["reply_id"]).chunk(data["seq"], data["text"], data.get("first_seq"))
        elif event in ("ai:done", "ai:error"):
            reply = room.reply(data["reply_id"])
            reply.status, reply.message = data["status"], data["message"]
        elif event == "presence:changed":
            # Departures first, then arrivals (a user in both left and came back: their
            # earlier tabs are gone). A batch that follows a join may name users its
            # ack listed already, this client's own user too: they stay as they are.
            for user_id in data["left"]:
                room.presence.pop(user_id, None)
                room.typing.discard(user_id)
            for user in data["joined"]:
                entry = room.presence.setdefault(
                    user["user_id"], {"username": user["username"], "connections": {}}
                )
                entry["username"] = user["username"]
        elif event == "presence:state":
            user = room.presence.setdefault(data["user_id"], {"username": None, "connections": {}})
            if data["state"] is None:
                user["connections"].pop(data["connection_id"], None)
            else:
                user["connections"][data["connection_id"]] = data["state"]
        elif event == "typing":
            (room.typing.add if data["typing"] else room.typing.discard)(data["user_id"])
        elif event == "room:role":
            room.role = data["role"]
        elif event == "room:removed":
            self.rooms.pop(room.document_id, None)
        elif event == "room:resync":
            # The server lost touch with its other processes for a while: presence is
            # replaced, typing starts afresh, and the newest page is read again for the
            # edits and deletions missed (missed messages arrive as chat:message).
            room.presence = _presence_of(data["presence"])
            room.typing.clear()
            task = asyncio.get_running_loop().create_task(
                self._refresh(room, data["presence"], data["presence_more"])
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def room(self, document_id: str) -> RoomView:
        return self.rooms[document_id]
