"""Bad input on the room protocol: every command is acked with a coded error, no
handler crashes, and nothing about a room leaks to someone outside it."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from app.keys import SETTINGS
from roomclient import RoomClient
from tests.conftest import AppFactory, ClientFactory
from tests.helpers import Api, User, departures, eventually
from tests.raw_socketio import RawClient

COMMANDS = [
    "join",
    "leave",
    "chat:send",
    "chat:history",
    "chat:edit",
    "chat:delete",
    "presence:update",
    "typing",
    "auth:refresh",
]


async def ack(client: RoomClient, event: str, data: Any) -> dict[str, Any]:
    """The raw ack (a tuple ``data`` is sent as several arguments, as python-socketio does)."""
    reply = await client.sio.call(event, data, timeout=10)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), (event, reply)
    return reply


async def refused(client: RoomClient, event: str, data: Any, code: str) -> dict[str, Any]:
    """Assert the command is answered ``{"ok": false, "error": {code, ...}}``; the error."""
    reply = await ack(client, event, data)
    assert set(reply) == {"ok", "error"} and reply["ok"] is False, (event, data, reply)
    error: dict[str, Any] = reply["error"]
    assert error["code"] == code, (event, data, error)
    assert isinstance(error["message"], str) and error["message"], error
    assert set(error) <= {"code", "message", "details"}, error
    return error


def fields(error: dict[str, Any]) -> set[str]:
    return {detail["field"] for detail in error.get("details") or []}


def errors_of(client: RoomClient) -> list[dict[str, Any]]:
    return [data for event, data in client.events if event == "error"]


async def until(predicate: Callable[[], object], what: Callable[[], object] = str) -> None:
    """Wait (bounded) until ``predicate()`` is true."""

    def check() -> None:
        assert predicate(), what()

    await eventually(check, timeout=10)


async def still_works(client: RoomClient, document_id: str, text: str = "still here") -> None:
    """A good command on the same connection succeeds after the refusals."""
    reply = await ack(
        client,
        "chat:send",
        {"document_id": document_id, "client_msg_id": uuid.uuid4().hex, "text": text},
    )
    assert reply["ok"] is True and reply["data"]["seq"] >= 1, reply


def texts(client: RoomClient, document_id: str) -> list[str]:
    return [message["text"] for message in client.room(document_id).messages]


async def owner_in_room(api: Api, connect: ClientFactory) -> tuple[User, str, RoomClient]:
    ann = await api.user("ann")
    doc = await api.document(ann)
    a = await connect(ann)
    await a.join(doc["id"])
    return ann, doc["id"], a


async def test_unknown_events_get_an_ack_or_an_error_event(
    api: Api, connect: ClientFactory
) -> None:
    _, doc, a = await owner_in_room(api, connect)
    error = await refused(a, "no:such", {"document_id": doc}, "unknown_event")
    assert "details" not in error

    await a.sio.emit("no:such:either", {"x": 1})  # no ack asked: an `error` event instead
    await a.sio.emit("chat:send", {"document_id": doc})
    await until(lambda: len(errors_of(a)) == 2, lambda: errors_of(a))
    # Commands run side by side: their answers need not come in the order they were sent.
    by_event = {error["event"]: error for error in errors_of(a)}
    unknown, invalid = by_event["no:such:either"], by_event["chat:send"]
    assert unknown["code"] == "unknown_event" and unknown["event"] == "no:such:either"
    assert set(unknown) == {"code", "message", "event"}
    assert invalid["code"] == "validation_failed" and invalid["event"] == "chat:send"
    assert fields(invalid) == {"client_msg_id", "text"}
    await still_works(a, doc)


async def test_payloads_that_are_not_exactly_one_object_are_refused(
    api: Api, connect: ClientFactory
) -> None:
    _, doc, a = await owner_in_room(api, connect)
    for event in COMMANDS:
        for payload in ["a string", [{"document_id": doc}], 42, 4.2, True, (None,)]:
            error = await refused(a, event, payload, "validation_failed")
            assert fields(error) == {"(payload)"}, (event, payload, error)
        await refused(a, event, ({"document_id": doc}, {"document_id": doc}), "bad_request")
        await refused(a, event, None, "bad_request")  # no argument at all
    await still_works(a, doc)


async def test_fields_are_validated_strictly_and_named(api: Api, connect: ClientFactory) -> None:
    _, doc, a = await owner_in_room(api, connect)
    send = {"document_id": doc, "client_msg_id": "m-1", "text": "hi"}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("chat:send", {"document_id": doc, "client_msg_id": "m-1"}, "text"),
        ("chat:send", {"document_id": doc, "text": "hi"}, "client_msg_id"),
        ("chat:send", {"client_msg_id": "m-1", "text": "hi"}, "document_id"),
        ("chat:send", {**send, "author_id": str(uuid.uuid4())}, "author_id"),
        ("chat:send", {**send, "seq": 1}, "seq"),
        ("chat:send", {**send, "text": 5}, "text"),
        ("chat:send", {**send, "text": ["hi"]}, "text"),
        ("chat:send", {**send, "text": ""}, "text"),
        # PostgreSQL cannot store U+0000: it answered `internal` there (found by the fuzz).
        ("chat:send", {**send, "text": "a\x00b"}, "text"),
        (
            "chat:edit",
            {"document_id": doc, "message_id": str(uuid.uuid4()), "text": "\x00"},
            "text",
        ),
        ("ai:ask", {"document_id": doc, "question": "why\x00"}, "question"),
        ("chat:send", {**send, "client_msg_id": "x" * 65}, "client_msg_id"),
        ("chat:send", {**send, "client_msg_id": "has spaces"}, "client_msg_id"),
        ("chat:send", {**send, "client_msg_id": 7}, "client_msg_id"),
        ("chat:send", {**send, "document_id": "not-a-uuid"}, "document_id"),
        ("join", {"document_id": doc, "since_seq": "3"}, "since_seq"),
        ("join", {"document_id": doc, "since_seq": -1}, "since_seq"),
        ("join", {"document_id": doc, "since_seq": 1.5}, "since_seq"),
        ("join", {"document_id": 12345}, "document_id"),
        ("join", {"document_id": "not-a-uuid"}, "document_id"),
        ("chat:history", {"document_id": doc, "after_seq": "3"}, "after_seq"),
        ("chat:history", {"document_id": doc, "before_seq": True}, "before_seq"),
        ("chat:history", {"document_id": doc, "limit": 101}, "limit"),
        ("chat:history", {"document_id": doc, "limit": 0}, "limit"),
        ("chat:edit", {"document_id": doc, "message_id": "nope", "text": "x"}, "message_id"),
        ("chat:delete", {"document_id": doc}, "message_id"),
        ("presence:update", {"document_id": doc, "state": "here"}, "state"),
        ("presence:update", {"document_id": doc}, "state"),
        ("typing", {"document_id": doc, "typing": "yes"}, "typing"),
        ("typing", {"document_id": doc, "typing": 1}, "typing"),
        ("leave", {"document_id": doc, "force": True}, "force"),
        ("auth:refresh", {}, "token"),
    ]
    for event, payload, field in cases:
        error = await refused(a, event, payload, "validation_failed")
        assert field in fields(error), (event, payload, error)
        for detail in error["details"]:
            assert set(detail) == {"field", "message", "type"}, detail

    both = {"document_id": doc, "before_seq": 5, "after_seq": 3}
    error = await refused(a, "chat:history", both, "validation_failed")
    assert error["details"], error
    assert await a.history(doc) == ([], False)  # none of the above stored anything
    await still_works(a, doc)


async def test_text_over_the_configured_limit_is_refused(start_app: AppFactory) -> None:
    client = await start_app(chat_message_max_chars=10)
    api = Api(client)
    ann = await api.user("ann")
    doc = (await api.document(ann))["id"]
    async with RoomClient(str(client.make_url("/")).rstrip("/"), ann.access_token) as a:
        await a.join(doc)
        payload = {"document_id": doc, "client_msg_id": "long", "text": "x" * 11}
        error = await refused(a, "chat:send", payload, "validation_failed")
        assert fields(error) == {"text"}, error
        sent = await a.send(doc, "x" * 10, client_msg_id="long")  # the id was not used up
        assert sent["seq"] == 1
        edit = {"document_id": doc, "message_id": sent["id"], "text": "y" * 11}
        error = await refused(a, "chat:edit", edit, "validation_failed")
        assert fields(error) == {"text"}, error
        messages, _ = await a.history(doc)
        assert [(m["seq"], m["text"]) for m in messages] == [(1, "x" * 10)]


async def test_presence_state_over_the_limit_is_too_large(api: Api, connect: ClientFactory) -> None:
    _, doc, a = await owner_in_room(api, connect)
    limit = api.client.app[SETTINGS].presence_state_max_bytes
    big = {"document_id": doc, "state": {"blob": "x" * limit}}
    error = await refused(a, "presence:update", big, "payload_too_large")
    assert str(limit) in error["message"]
    await a.update_presence(doc, {"cursor": 3})  # a small state still goes through
    await still_works(a, doc)


async def test_room_commands_need_a_join_and_say_the_same_for_any_room(
    api: Api, connect: ClientFactory
) -> None:
    ann = await api.user("ann")
    doc = (await api.document(ann))["id"]
    other = (await api.document(ann, "Other"))["id"]
    a = await connect(ann)
    message_id = (await post_once(a, other))["id"]

    def commands_for(document_id: str) -> list[tuple[str, dict[str, Any]]]:
        room = {"document_id": document_id}
        return [
            ("chat:send", {**room, "client_msg_id": "c-1", "text": "hi"}),
            ("chat:history", room),
            ("chat:history", {**room, "after_seq": 0}),
            ("chat:edit", {**room, "message_id": message_id, "text": "x"}),
            ("chat:delete", {**room, "message_id": message_id}),
            ("presence:update", {**room, "state": {"cursor": 1}}),
            ("typing", {**room, "typing": True}),
        ]

    for event, payload in commands_for(doc):
        mine = await refused(a, event, payload, "not_joined")
        unknown = {**payload, "document_id": str(uuid.uuid4())}
        assert await refused(a, event, unknown, "not_joined") == mine

    await a.join(doc)
    await a.leave(doc)  # and after leaving, the same again
    for event, payload in commands_for(doc):
        await refused(a, event, payload, "not_joined")
    await a.sio.emit("chat:send", commands_for(doc)[0][1])
    await until(lambda: errors_of(a), lambda: a.events)
    assert errors_of(a) == [
        {"code": "not_joined", "message": "join the room first", "event": "chat:send"}
    ]
    page = await api.call("GET", f"/api/v1/documents/{doc}/messages", user=ann)
    assert page["items"] == []


async def post_once(client: RoomClient, document_id: str) -> dict[str, Any]:
    """Join ``document_id`` just to post one message, then leave it again."""
    await client.join(document_id)
    sent = await client.send(document_id, "in the other room")
    await client.leave(document_id)
    return sent


async def test_strangers_cannot_join_read_send_or_overhear(
    api: Api, connect: ClientFactory
) -> None:
    ann, ben, carl = await api.user("ann"), await api.user("ben"), await api.user("carl")
    secret = (await api.document(ann, "Secret"))["id"]
    await api.share(ann, secret, ben, "editor")
    public = (await api.document(carl, "Carl's"))["id"]
    await api.share(carl, public, ann, "editor")
    a, b, c = await connect(ann), await connect(ben), await connect(carl)
    await a.join(secret)
    await a.join(public)
    await b.join(secret)
    await c.join(public)

    refusal = await refused(c, "join", {"document_id": secret}, "not_found")
    assert await refused(c, "join", {"document_id": str(uuid.uuid4())}, "not_found") == refusal
    since = {"document_id": secret, "since_seq": 0}
    assert await refused(c, "join", since, "not_found") == refusal
    send = {"document_id": secret, "client_msg_id": "sneak", "text": "let me in"}
    await refused(c, "chat:send", send, "not_joined")
    await refused(c, "chat:history", {"document_id": secret, "after_seq": 0}, "not_joined")
    await refused(c, "typing", {"document_id": secret, "typing": True}, "not_joined")

    await a.send(secret, "the plan is secret")
    await b.send(secret, "agreed")
    await a.update_presence(secret, {"cursor": 42})
    await a.send(public, "hello carl")  # sent after the secret events, on the same sockets
    await until(lambda: texts(c, public) == ["hello carl"], lambda: c.events)
    await until(lambda: texts(b, secret) == ["the plan is secret", "agreed"], lambda: b.events)

    overheard = [(e, d) for e, d in c.events if d.get("document_id") == secret]
    assert overheard == []
    assert "secret" not in repr(c.events) and "agreed" not in repr(c.events)
    page = await api.call("GET", f"/api/v1/documents/{secret}/messages", user=ann)
    assert [m["text"] for m in page["items"]] == ["the plan is secret", "agreed"]
    await api.error(
        "GET", f"/api/v1/documents/{secret}/messages", user=carl, expect=404, code="not_found"
    )
    await still_works(c, public)


async def test_edit_and_delete_cannot_reach_a_message_of_another_document(
    api: Api, connect: ClientFactory
) -> None:
    ann, doc, a = await owner_in_room(api, connect)
    other = (await api.document(ann, "Other"))["id"]
    await a.join(other)
    elsewhere = await a.send(other, "stays as it is")

    for target in (elsewhere["id"], str(uuid.uuid4())):
        edit = {"document_id": doc, "message_id": target, "text": "hijacked"}
        missing = await refused(a, "chat:edit", edit, "not_found")
        delete = {"document_id": doc, "message_id": target}
        assert await refused(a, "chat:delete", delete, "not_found") == missing

    messages, _ = await a.history(other)
    assert [(m["text"], m["deleted"], m["edited_at"]) for m in messages] == [
        ("stays as it is", False, None)
    ]
    await still_works(a, doc)


async def test_reserved_event_names_from_a_client_are_refused(
    api: Api, connect: ClientFactory
) -> None:
    """``connect``/``disconnect`` sent as events must not run the lifecycle handlers."""
    ann, ben = await api.user("ann"), await api.user("ben")
    doc = (await api.document(ann))["id"]
    await api.share(ann, doc, ben, "editor")
    a, b = await connect(ann), await connect(ben)
    await a.join(doc)
    await b.join(doc)
    for event, payload in [("disconnect", "client says so"), ("connect", {"token": "x"})]:
        await refused(b, event, payload, "unknown_event")
    await still_works(b, doc, "ben is still here")
    await until(lambda: texts(a, doc) == ["ben is still here"], lambda: a.events)
    assert departures(a.events) == []


async def test_out_of_range_numbers_and_dates_are_validation_errors(
    api: Api, client: TestClient[web.Request, web.Application]
) -> None:
    """Issue 11, finding 11: each of these answered 500 `internal`."""
    ann, _, doc = await api.room("editor")
    huge = 2**70
    messages = f"/api/v1/documents/{doc['id']}/messages"
    await api.error(
        "GET", f"{messages}?after={huge}", expect=422, code="validation_failed", user=ann
    )
    await api.error(
        "GET", f"{messages}?before={huge}", expect=422, code="validation_failed", user=ann
    )
    year_0_in_utc = "0001-01-01T00:00:00+14:00"
    cursor = base64.urlsafe_b64encode(f"{year_0_in_utc}|{uuid.uuid4()}".encode()).decode()
    await api.error(
        "GET",
        f"/api/v1/documents?cursor={cursor.rstrip('=')}",
        expect=422,
        code="validation_failed",
        user=ann,
    )
    await api.error(
        "GET",
        "/api/v1/usage?since=0001-01-01T00:00%2B14:00",
        expect=422,
        code="validation_failed",
        user=ann,
    )

    # Over the socket: a raw client, since orjson and python-socketio's client refuse
    # to encode such integers at all.
    raw = await RawClient.connect(client.port, ann.access_token)
    try:
        ack, _ = await raw.call("join", {"document_id": doc["id"], "since_seq": huge})
        assert ack["error"]["code"] == "validation_failed", ack
        assert ack["error"]["details"][0]["field"] == "since_seq"
        ack, _ = await raw.call("join", {"document_id": doc["id"]})
        assert ack["ok"] is True
        for field in ("after_seq", "before_seq"):
            ack, _ = await raw.call("chat:history", {"document_id": doc["id"], field: huge})
            assert ack["error"]["code"] == "validation_failed", ack
    finally:
        await raw.close()
