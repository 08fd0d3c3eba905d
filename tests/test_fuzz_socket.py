"""Fuzz: every socket input (issue 11), each command of the default namespace and each
event of a document namespace, with payloads Hypothesis makes.

What is sent. Every command in the registry (``commands.names``: the room commands
and ``auth:refresh``) and names that are not commands, with a valid payload mutated
(fields dropped, unknown fields added, values replaced by wrong types, integers past 64
bits, NaN, strings with lone surrogates, huge strings and lists, values nested up to
900 deep, binary attachments), with a payload that is not an object, or with no, two
or three arguments; with an ack id, and again without one. On a document namespace,
as its editor and as a viewer: ``sync-step-1``, ``sync-update``, ``awareness-update``
and other names, with random binary, real updates and state vectors, awareness
updates with mangled entries, JSON where binary is expected, and extra or missing
arguments, with and without ack ids (what updates do to a document is
tests/test_fuzz_yjs.py's). Last, Socket.IO packets no client library writes: not
Socket.IO, JSON nested past any decoder's depth, numbers of thousands of digits,
attachment placeholders that name no attachment. Frames are written by hand
(tests/socket_fuzz_support.py), so what the libraries would not encode goes out as
it is.

What must hold after each example: every refusal is coded (an ack
``{"ok": false, "error": {...}}``, or an ``error`` event) with a code the server
defines, never ``internal``; nothing is logged at ERROR; the connection is open and a
valid command on it succeeds; what the server relays decodes in the JavaScript
clients. ``rate_limited`` would be a correct answer too, but the limits are lifted
(tests/conftest.py lifts the command rates, these tests the Yjs ones) so that the
payloads reach the handlers. What the fuzz found is kept as explicit examples, tried
first on every run.

How Hypothesis meets the event loop: the app, its database and the raw connections
live on the test's event loop for the whole test. The test runs synchronous ``@given``
functions in a worker thread (``asyncio.to_thread``); each example hands its
coroutine back to the loop with ``run_coroutine_threadsafe`` and waits for it,
bounded. Hypothesis generates, shrinks and reports as usual, the loop is never
blocked, and one server and its connections serve every example. ``derandomize=True``
and no example database: the same examples on every run.
"""

from __future__ import annotations

import gc
import json
import logging
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, note, settings
from hypothesis import strategies as st
from pycrdt import Decoder, Doc, Text

import realtime.namespaces.main  # noqa: F401 (registers auth:refresh in the registry)
from app.errors import AppError
from realtime.namespaces.rooms import commands
from realtime.protocol import event_name
from tests.conftest import AppFactory
from tests.helpers import Api, User, eventually
from tests.socket_fuzz_support import ACK_TIMEOUT, Driver, RawJSON, Shown, Wire, to_json

YJS_RATES_LIFTED = {"yjs_messages_per_second": 1_000_000, "yjs_message_burst": 1_000_000}


@pytest.fixture
def backend() -> str:
    """SQLite only: what is fuzzed is the socket layer, not the database."""
    return "sqlite"


def codes_of(cls: type[AppError]) -> set[str]:
    return {cls.code}.union(*(codes_of(sub) for sub in cls.__subclasses__()))


# Every code the server defines (the namespaces' own are imported above); ``internal``
# is the one a fuzz must never see.
CODES = codes_of(AppError) - {AppError.code}
# Refusals decided by the payload alone: the same whether or not an ack is asked for.
PAYLOAD_CODES = {"unknown_event", "bad_request", "validation_failed"}


def check_error(error: Any, where: object) -> str:
    """Assert a coded error body (an ack's ``error`` or an ``error`` event); its code."""
    assert isinstance(error, dict), (where, error)
    assert error.get("code") in CODES, (where, error)
    assert isinstance(error.get("message"), str) and error["message"], (where, error)
    assert set(error) <= {"code", "message", "details", "event"}, (where, error)
    if error["code"] == "rate_limited":
        assert error["details"]["retry_after"] > 0, (where, error)
    return str(error["code"])


# No health check is suppressed, and none fails: the large values (a 200,000-character
# string, 20,000-item lists) are built from one drawn integer, not drawn piece by piece.
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None)

# --- values ------------------------------------------------------------------------------

SURROGATES = st.characters(categories=["Cs"])
CHARACTERS = st.one_of(st.characters(), SURROGATES)
texts = st.one_of(
    st.text(CHARACTERS, max_size=12),
    st.sampled_from(["", " ", "\x00", "\ud800", "a\udfff", "\ufeff", "\u202e", "null", "1"]),
    st.integers(1, 200_000).map(lambda n: "x" * n),
)


def deep_json(depth: int, opener: str) -> RawJSON:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return RawJSON(opener * depth + "0" + closer * depth)


# What has broken servers: each is also a leaf of ``values``, more often on its own.
hostile = st.one_of(
    st.text(SURROGATES, min_size=1, max_size=3),
    st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, 2**70, -(2**100)]),
    st.sampled_from(["NaN", "-Infinity", "1e999", "-0", "1" * 4000]).map(RawJSON),
    # Up to 900 levels: within what the server decodes, attachments included.
    st.builds(deep_json, st.integers(1, 900), st.sampled_from(["[", '{"a":'])),
    st.builds(lambda n, leaf: [leaf] * n, st.integers(100, 20_000), st.sampled_from([0, "x"])),
    st.binary(max_size=16),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    hostile,
)
values = st.one_of(
    hostile,
    st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(CHARACTERS, max_size=8), children, max_size=4),
        ),
        max_leaves=8,
    ),
)


# --- the default namespace ---------------------------------------------------------------


@dataclass(repr=False)
class Command(Shown):
    name: Any
    args: list[Any]
    ack: bool


def echoed_safely(name: Any) -> bool:
    """Whether the default namespace can name this event in an ``error`` event (see
    test_an_unsendable_event_name_is_still_refused_without_an_ack)."""
    try:
        orjson.dumps(name)
    except orjson.JSONEncodeError:
        return False
    return True


def command_calls(name: Any, base: dict[str, Any]) -> st.SearchStrategy[Command]:
    """``name`` with ``base`` (a valid payload) mutated, or with other arguments."""

    @st.composite
    def calls(draw: st.DrawFn) -> Command:
        payload = {key: dict(v) if isinstance(v, dict) else v for key, v in base.items()}
        shape = draw(st.sampled_from(["mutated", "mutated", "mutated", "other", "arity"]))
        if shape == "mutated":
            for _ in range(draw(st.integers(1, 3))):
                # A field of the payload, or of an object in it (a presence state).
                inner = [value for value in payload.values() if isinstance(value, dict)]
                target = draw(st.sampled_from([payload, *inner]))
                key = draw(st.one_of(st.sampled_from(sorted(target) or ["x"]), texts))
                if draw(st.booleans()) and key in target:
                    del target[key]
                else:
                    target[key] = draw(values)
            args: list[Any] = [payload]
        elif shape == "other":
            args = [draw(values.filter(lambda value: not isinstance(value, dict)))]
        else:
            args = draw(st.lists(st.one_of(st.just(payload), values), max_size=3))
            if len(args) == 1:
                args.append(payload)
        return Command(name, args, draw(st.booleans()) or not echoed_safely(name))

    return calls()


UNKNOWN_NAMES = st.one_of(
    st.sampled_from(["connect", "disconnect", "error", "", "JOIN", "join\n", "x\ud800"]),
    st.text(CHARACTERS, max_size=10),
    st.integers(),
    st.floats(),
)


def regressions(document_id: str) -> dict[str, list[Command]]:
    """What this fuzz found, tried first on every run."""

    def presence(state: Any) -> Command:
        return Command("presence:update", [{"document_id": document_id, "state": state}], True)

    return {
        # Decoded, but not encoded again: the command failed as internal, or the next
        # join, whose ack carries the state nested deeper, got no answer.
        "presence:update": [
            presence({"cursor": "\ud800"}),
            presence({"\udc00": 1}),
            presence({"line": 2**64}),
            presence({"blob": b"\x00"}),
            presence({"a": deep_json(300, "[")}),
            presence({"a": deep_json(250, "[")}),
        ]
    }


async def room_setup(api: Api) -> tuple[User, dict[str, dict[str, Any]]]:
    """ann owns a document; a valid payload for every command."""
    ann = await api.user("ann")
    doc = (await api.document(ann))["id"]
    return ann, {
        "join": {"document_id": doc},
        "leave": {"document_id": doc},
        "chat:send": {"document_id": doc, "client_msg_id": "fuzz-1", "text": "hello"},
        "chat:history": {"document_id": doc, "limit": 10},
        "chat:edit": {"document_id": doc, "message_id": "(set below)", "text": "edited"},
        "chat:delete": {"document_id": doc, "message_id": "(set below)"},
        "presence:update": {"document_id": doc, "state": {"cursor": {"line": 3}}},
        "presence:list": {"document_id": doc, "after": str(uuid.uuid4())},
        "typing": {"document_id": doc, "typing": True},
        "ai:ask": {"document_id": doc, "question": "what is the plan?"},
        "ai:cancel": {"document_id": doc, "reply_id": str(uuid.uuid4())},
        "auth:refresh": {"token": ann.access_token},
    }


async def test_every_command_answers_fuzzed_payloads_with_a_code(
    start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start_app()
    ann, bases = await room_setup(Api(client))
    assert sorted(bases) == commands.names  # a new command needs a valid payload here
    wire = await Wire.open(client.port, ann.access_token)
    drive = Driver(caplog)
    join = bases["join"]
    (joined,) = await wire.call("/", "join", join)
    assert joined["ok"], joined
    (sent,) = await wire.call("/", "chat:send", bases["chat:send"])
    for name in ("chat:edit", "chat:delete"):
        bases[name]["message_id"] = sent["data"]["id"]

    async def one(command: Command) -> None:
        logged, seen = drive.mark(), len(wire.events["/"])
        if not command.ack:
            await wire.send("/", command.name, command.args, ack=False)
        # The same again with an ack id: what the answer is.
        reply = await wire.ack("/", await wire.send("/", command.name, command.args, ack=True))
        assert len(reply) == 1 and isinstance(reply[0], dict), reply
        envelope = reply[0]
        assert isinstance(envelope.get("ok"), bool), envelope
        if envelope["ok"]:
            assert set(envelope) == {"ok", "data"}, envelope
        else:
            assert set(envelope) == {"ok", "error"}, envelope
            code = check_error(envelope["error"], command)
            if not command.ack and code in PAYLOAD_CODES:

                def told() -> None:
                    errors = wire.errors("/", seen)
                    # A name may be a number, and NaN comes back as null.
                    number = not isinstance(command.name, str)
                    assert [e for e in errors if number or e["event"] == command.name], errors

                await eventually(told, timeout=2)
        for error in wire.errors("/", seen):
            check_error(error, command)
        # The connection still works (and is back in the room if the fuzz left it).
        (again,) = await wire.call("/", "join", join)
        assert again["ok"], again
        wire.assert_open()
        assert drive.errors_logged(logged) == []

    def fuzz(calls: st.SearchStrategy[Command], found: list[Command]) -> Callable[[], None]:
        @FUZZ
        @given(calls)
        def examples(command: Command) -> None:
            note(repr(command))  # in the report: Hypothesis' own line for it came out empty
            drive(one(command))

        for command in found:
            examples = example(command)(examples)
        return examples

    found = regressions(join["document_id"])
    try:
        await drive.run(
            *(fuzz(command_calls(name, base), found.get(name, [])) for name, base in bases.items()),
            fuzz(UNKNOWN_NAMES.flatmap(lambda name: command_calls(name, bases["leave"])), []),
        )
    finally:
        await wire.close()


# --- document namespaces -----------------------------------------------------------------

SYNC_STEP_1, SYNC_UPDATE, AWARENESS = "sync-step-1", "sync-update", "awareness-update"
YJS_EVENTS = [SYNC_STEP_1, SYNC_UPDATE, AWARENESS]
EMPTY_UPDATE = b"\x00\x00"
POISON = bytes.fromhex(
    json.loads((Path(__file__).parent / "data" / "yjs_poison.json").read_text())["poison"]
)
# The largest integer lib0 (Yjs' encoding in JavaScript) decodes.
MAX_SAFE_INTEGER = 2**53 - 1


def var_uint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def awareness_update(entries: list[tuple[int, int, bytes]]) -> bytes:
    """An awareness update of (client id, clock, state as raw bytes) entries."""
    parts = [var_uint(len(entries))]
    for client_id, clock, state in entries:
        parts += [var_uint(client_id), var_uint(clock), var_uint(len(state)), state]
    return b"".join(parts)


def an_update(text: str) -> bytes:
    """A well-formed update from a new client: ``text`` inserted."""
    doc: Doc[Any] = Doc()
    doc.get("content", type=Text).insert(0, text)
    return doc.get_update()


numbers = st.one_of(st.integers(0, 10), st.integers(0, 2**32), st.integers(2**53 - 2, 2**70))
states = st.one_of(
    values.map(lambda value: to_json(value, []).encode()),
    st.builds(deep_json, st.integers(1, 3_000), st.sampled_from(["[", '{"a":'])).map(
        lambda raw: raw.text.encode()
    ),
    st.sampled_from([b"", b"null", b"{", b"NaN", b'{"a":Infinity}', b"\xff\xfe", b"1" * 5000]),
    st.binary(max_size=32),
)
binaries = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=100, max_size=4_000),
    st.text(string.printable, max_size=20).map(an_update),
    st.lists(st.tuples(numbers, numbers, states), max_size=4).map(awareness_update),
    st.sampled_from([EMPTY_UPDATE, b"\x00", POISON, b"\x00" * (20 * 1024)]),
    st.sampled_from([b"\x00" * (600 * 1024)]),  # over the update limit, under maxPayload
)


@dataclass(repr=False)
class YjsCall(Shown):
    viewer: bool
    name: Any
    args: list[Any]
    ack: bool


@st.composite
def yjs_calls(draw: st.DrawFn) -> YjsCall:
    name = draw(
        st.one_of(
            st.sampled_from(YJS_EVENTS),
            st.sampled_from(YJS_EVENTS),
            st.sampled_from(YJS_EVENTS),
            st.sampled_from(["connect", "disconnect", "error", "sync-step-2", "Sync-Update"]),
            st.text(CHARACTERS, max_size=10),
            st.integers(),
        )
    )
    payloads = st.one_of(binaries, binaries, values)
    if draw(st.integers(0, 4)):
        args = [draw(payloads)]
    else:
        args = draw(st.lists(payloads, max_size=3).filter(lambda args: len(args) != 1))
    return YjsCall(draw(st.booleans()), name, args, draw(st.booleans()))


def clocks(state_vector: bytes) -> dict[int, int]:
    decoder = Decoder(state_vector)
    return dict(
        (decoder.read_var_uint(), decoder.read_var_uint()) for _ in range(decoder.read_var_uint())
    )


def check_relayed_awareness(update: bytes) -> None:
    """What the server relays decodes in y-protocols (JavaScript): ids and clocks
    within lib0's range, states that JSON.parse takes."""
    decoder = Decoder(update)
    for _ in range(decoder.read_var_uint()):
        client_id, clock = decoder.read_var_uint(), decoder.read_var_uint()
        assert max(client_id, clock) <= MAX_SAFE_INTEGER, update
        state = decoder.read_var_string()

        def refuse(constant: str) -> Any:
            raise AssertionError(f"{constant} in a relayed awareness state: {update!r}")

        json.loads(state, parse_constant=refuse)


async def test_document_events_answer_fuzzed_payloads_with_a_code(
    start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start_app(**YJS_RATES_LIFTED)
    ann, ben, doc = await Api(client).room("viewer")
    namespace = f"/yjs|{doc['id']}"
    editor = await Wire.open(client.port, ann.access_token, namespace)
    viewer = await Wire.open(client.port, ben.access_token, namespace)
    wires = {False: editor, True: viewer}
    read = {False: 0, True: 0}
    drive = Driver(caplog)
    mine: Doc[Any] = Doc()  # the editor's own edits, one more after each example

    async def one(call: YjsCall) -> None:
        wire = wires[call.viewer]
        logged, seen = drive.mark(), len(wire.events[namespace])
        ack_id = await wire.send(namespace, call.name, call.args, ack=call.ack)
        first = call.args[0] if call.args else None
        if call.ack:
            reply = await wire.ack(namespace, ack_id)
            if call.name == SYNC_STEP_1:
                assert len(reply) == 1 and isinstance(reply[0], bytes), reply
                if not isinstance(first, bytes):
                    assert reply == [EMPTY_UPDATE], reply
            else:
                assert reply == [], reply
        expected = None
        if call.name not in YJS_EVENTS:
            expected = "bad_request"
        elif not isinstance(first, bytes) and not (call.viewer and call.name == SYNC_UPDATE):
            expected = "invalid_update"  # (a viewer's sync-update refusals: once per connection)
        if expected is not None:

            def told() -> None:
                errors = wire.errors(namespace, seen)
                # A name may be a number, and a large one comes back as a float.
                number = not isinstance(call.name, str)
                named = [e["event"] for e in errors if e["code"] == expected]
                hits = [name for name in named if number or name == event_name(call.name)]
                assert hits, errors

            await eventually(told, timeout=2)
        if call.viewer:
            (answer,) = await wire.call(namespace, SYNC_STEP_1, b"\x00")
            assert isinstance(answer, bytes), answer
        else:
            # Still editing: an edit of its own reaches the document (accepted, it also
            # lets the next refusal of each kind be told again).
            before = mine.get_state()
            mine.get("content", type=Text).insert(0, "x")
            await wire.send(namespace, SYNC_UPDATE, [mine.get_update(before)], ack=False)
            goal = clocks(mine.get_state())[mine.client_id]

            async def stored() -> None:
                (whole,) = await wire.call(namespace, SYNC_STEP_1, b"\x00")
                copy: Doc[Any] = Doc()
                copy.apply_update(whole)
                assert clocks(copy.get_state()).get(mine.client_id, 0) >= goal

            await eventually(stored, timeout=ACK_TIMEOUT)
        for each in (False, True):
            events = wires[each].events[namespace]
            for name, args in events[read[each] :]:
                if name == "error":
                    check_error(args[0], call)
                elif name == AWARENESS:
                    check_relayed_awareness(args[0])
            read[each] = len(events)
            wires[each].assert_open()
        assert drive.errors_logged(logged) == []

    @settings(FUZZ, max_examples=300)
    @given(yjs_calls())
    # What this fuzz found: an event name with a lone surrogate failed the error event
    # naming it; awareness entries JavaScript clients cannot decode were relayed.
    @example(YjsCall(False, "x\ud800", [b"\x00"], False))
    @example(YjsCall(False, AWARENESS, [awareness_update([(2**60, 1, b"{}")])], False))
    @example(YjsCall(False, AWARENESS, [awareness_update([(7, 2**60, b"{}")])], False))
    @example(YjsCall(True, AWARENESS, [awareness_update([(8, 1, b'{"x":NaN}')])], False))
    @example(YjsCall(True, AWARENESS, [awareness_update([(9, 1, b"[" * 990 + b"]" * 990)])], True))
    def examples(call: YjsCall) -> None:
        note(repr(call))  # in the report: Hypothesis' own line for it came out empty
        drive(one(call))

    try:
        await drive.run(examples)
    finally:
        await editor.close()
        await viewer.close()


# --- packets no client library writes ----------------------------------------------------


@dataclass(repr=False)
class RawPacket(Shown):
    text: str
    attachments: list[bytes]


def placeholder(number: Any) -> str:
    return json.dumps({"_placeholder": True, "num": number})


@st.composite
def raw_packets(draw: st.DrawFn, document_namespace: str) -> RawPacket:
    """Engine.IO messages: Socket.IO packets that cannot be decoded, or that are not
    what the protocol allows, on the connection's namespaces and others. Not among
    them: CONNECT and DISCONNECT (they end a namespace, as they should), and a binary
    packet with fewer attachments than it announces (the next messages would be its
    attachments, as they should)."""
    namespace = draw(st.sampled_from(["", f"{document_namespace},", "/nope,"]))
    ack_id = draw(st.one_of(st.just(""), st.integers(0, 3).map(str), st.just("999999")))
    name = json.dumps(draw(st.sampled_from(["join", "typing", "nope", *YJS_EVENTS])))
    data = draw(
        st.one_of(
            st.integers(1_000, 3_000).map(lambda d: f"[{name},{'[' * d}{']' * d}]"),
            st.integers(4_301, 20_000).map(lambda n: f"[{name},{'1' * n}]"),
            st.sampled_from(["{}", '"x"', "5", "null", "[]", "[[1],{}]", "[true]", "[{}]"]),
            st.sampled_from(["[null]", '{"a":', "", "]", f"[{name},NaN", f"[{name},"]),
            st.text(max_size=20),
        )
    )
    kind = draw(st.sampled_from(["2", "3", "4", "7", "9", "x", ""]))
    if draw(st.integers(0, 2)):
        return RawPacket(f"4{kind}{namespace}{ack_id}{data}", [])
    # A binary packet: its placeholders, nested or not, and at least its attachments.
    number = draw(st.sampled_from([0, 0, 1, 5, -1, "a", None, 1.5, True]))
    depth = draw(st.sampled_from([0, 0, 10, 950, 990, 1_020]))
    body = "[" * depth + placeholder(number) + "]" * depth
    count = draw(st.integers(1, 2))
    binary = draw(st.sampled_from(["5", "6"]))
    text = f"4{binary}{count}-{namespace}{ack_id}[{name},{body}]"
    return RawPacket(text, draw(st.lists(st.binary(max_size=8), min_size=count, max_size=3)))


async def test_packets_that_cannot_be_decoded_are_dropped_and_the_connection_goes_on(
    start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """They are not answered (no event name or payload could be read), but neither
    logged as the server's failure nor left to spoil the connection: a binary packet
    whose attachment placeholder named no attachment made python-socketio take every
    later message for one more attachment (nothing was answered again)."""
    client = await start_app(**YJS_RATES_LIFTED)
    ann, bases = await room_setup(Api(client))
    join = bases["join"]
    namespace = f"/yjs|{join['document_id']}"
    wire = await Wire.open(client.port, ann.access_token, namespace)
    drive = Driver(caplog)

    async def one(packet: RawPacket) -> None:
        logged = drive.mark()
        await wire.send_packet(packet.text, packet.attachments)
        (joined,) = await wire.call("/", "join", join)
        assert joined["ok"], joined
        (answer,) = await wire.call(namespace, SYNC_STEP_1, b"\x00")
        assert isinstance(answer, bytes), answer
        wire.assert_open()
        assert drive.errors_logged(logged) == []

    @settings(FUZZ, max_examples=150)
    @given(raw_packets(namespace))
    @example(RawPacket('42["typing",' + "[" * 2000 + "]" * 2000 + "]", []))
    @example(RawPacket('42["typing",' + "1" * 5000 + "]", []))
    @example(RawPacket("42[[1],{}]", []))
    @example(RawPacket('451-["typing",' + placeholder(5) + "]", [b"x"]))
    @example(RawPacket('451-["typing",' + placeholder("a") + "]", [b"x"]))
    @example(RawPacket('451-["typing",' + "[" * 990 + placeholder(0) + "]" * 990 + "]", [b"x"]))
    def examples(packet: RawPacket) -> None:
        note(repr(packet))  # in the report: Hypothesis' own line for it came out empty
        drive(one(packet))

    try:
        await drive.run(examples)
    finally:
        await wire.close()


async def test_an_unsendable_event_name_is_still_refused_without_an_ack(
    start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzz: an unknown command whose name the encoder cannot send back
    (a lone surrogate, an integer past 64 bits), sent without an ack, got no ``error``
    event; the handler's task failed and was logged at ERROR."""
    client = await start_app()
    ann, _ = await room_setup(Api(client))
    wire = await Wire.open(client.port, ann.access_token)
    try:
        for name in ("x\ud800", 2**70):
            await wire.send("/", name, [{}], ack=False)

        def told() -> None:
            codes = [error["code"] for error in wire.errors("/")]
            assert codes == ["unknown_event", "unknown_event"], wire.events["/"]

        await eventually(told, timeout=2)
    finally:
        await wire.close()
        gc.collect()  # the failed task is logged here, within this test
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
