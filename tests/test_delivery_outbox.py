"""The outbox of one connection: written through, queued, superseded, bounded."""

from __future__ import annotations

import asyncio
import json

import pytest
from engineio import packet as eio_packet
from prometheus_client import CollectorRegistry, Counter
from pycrdt import Awareness, Doc, Text

from app.events import EventClass
from realtime.delivery import Event, Limits, Outbox
from realtime.delivery.encoding import PING, encode_event
from realtime.delivery.merging import merge_awareness
from realtime.delivery.metrics import DeliveryMetrics
from realtime.delivery.outbox import Flusher

NS = "/"


class Wire:
    """A transport stand-in: what was written, and a high-water mark that pauses."""

    def __init__(self, outbox: Outbox, high_water: int | None = None) -> None:
        self.outbox = outbox
        self.high_water = high_water
        self.written: list[bytes] = []
        self.buffered = 0

    def write(self, frames: bytes) -> None:
        self.written.append(frames)
        self.buffered += len(frames)
        if self.high_water is not None and self.buffered > self.high_water:
            self.outbox.pause()  # as asyncio's transport calls pause_writing()

    def drain(self) -> None:
        self.buffered = 0
        self.outbox.resume()


class Recorder:
    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.counters = {
            name: Counter(name, name, ["class"] if name != "slow" else [], registry=registry)
            for name in ("replaced", "merged", "dropped", "slow")
        }
        self.metrics = DeliveryMetrics(*self.counters.values())
        self.flusher = Flusher()
        self.overflows = 0

    def count(self, name: str, kind: EventClass | None = None) -> float:
        counter = self.counters[name]
        return (counter.labels(kind.value) if kind else counter)._value.get()  # type: ignore[no-any-return]

    def outbox(self, max_bytes: int = 10_000, max_events: int = 100) -> Outbox:
        def overflowed() -> None:
            self.overflows += 1

        limits = Limits(max_bytes=max_bytes, max_events=max_events)
        return Outbox(limits, self.metrics, self.flusher, overflowed)


def send(outbox: Outbox, event: Event) -> None:
    outbox.push(event.encoded(NS), event, NS)


def sent(outbox: Outbox, event: Event) -> None:
    """``send``, then the end of the event loop's turn."""
    send(outbox, event)
    outbox._flusher.flush()


def chat(n: int) -> Event:
    return Event("chat:message", {"n": n}, EventClass.CHAT)


def decoded(writes: list[bytes]) -> list[object]:
    """The Socket.IO event payloads of the text frames written (short frames only)."""
    stream, out = b"".join(writes), []
    while stream:
        assert stream[0] == 0x81 and stream[1] < 126, stream[:4]
        length = stream[1]
        text, stream = stream[2 : 2 + length].decode(), stream[2 + length :]
        assert text.startswith("42"), text
        out.append(json.loads(text[2:]))
    return out


async def test_what_one_turn_sends_is_written_at_its_end_in_one_write() -> None:
    outbox = Recorder().outbox()
    wire = Wire(outbox)
    outbox.attach(wire.write)
    assert outbox.direct
    for n in range(3):
        send(outbox, chat(n))
    assert wire.written == []
    await asyncio.sleep(0)
    assert len(wire.written) == 1
    assert decoded(wire.written) == [["chat:message", {"n": n}] for n in range(3)]
    assert outbox.waiting == 0


async def test_queued_while_paused_and_flushed_in_order_on_resume() -> None:
    outbox = Recorder().outbox()
    wire = Wire(outbox, high_water=1)
    outbox.attach(wire.write)
    sent(outbox, chat(0))  # the write passes the high-water mark
    for n in range(1, 5):
        send(outbox, chat(n))
    assert len(wire.written) == 1
    assert not outbox.direct and outbox.waiting == 4
    wire.high_water = None
    wire.drain()
    assert decoded(wire.written) == [["chat:message", {"n": n}] for n in range(5)]
    assert outbox.direct


async def test_presence_waiting_is_replaced_by_the_latest() -> None:
    recorder = Recorder()
    outbox = recorder.outbox()
    wire = Wire(outbox, high_water=0)
    outbox.attach(wire.write)
    sent(outbox, chat(0))  # pauses
    for step in range(50):
        state = {"connection_id": "a", "state": {"x": step}}
        send(outbox, Event("presence:state", state, EventClass.PRESENCE, key=("connection", "a")))
        other = {"connection_id": "b", "state": {"x": -step}}
        send(outbox, Event("presence:state", other, EventClass.PRESENCE, key=("connection", "b")))
    send(outbox, chat(1))
    assert outbox.waiting == 3
    wire.high_water = None
    wire.drain()
    assert decoded(wire.written[1:]) == [
        ["presence:state", {"connection_id": "a", "state": {"x": 49}}],
        ["presence:state", {"connection_id": "b", "state": {"x": -49}}],
        ["chat:message", {"n": 1}],
    ]
    assert recorder.count("replaced", EventClass.PRESENCE) == 98


async def test_the_latest_state_keeps_its_place_among_the_other_events() -> None:
    # A connection's last state, then the presence:changed with its user's departure:
    # delivered in that order, or a late reader would bring the user back. Events
    # without a key (presence:changed) are kept, each in its place.
    outbox = Recorder().outbox()
    wire = Wire(outbox, high_water=0)
    outbox.attach(wire.write)
    sent(outbox, chat(0))  # pauses
    connection = ("connection", "c")
    send(outbox, Event("presence:changed", {"n": 0}, EventClass.PRESENCE))
    send(outbox, Event("presence:state", {"c": 1}, EventClass.PRESENCE, key=connection))
    send(outbox, chat(1))
    send(outbox, Event("presence:state", {"c": 2}, EventClass.PRESENCE, key=connection))
    send(outbox, Event("presence:changed", {"n": 1}, EventClass.PRESENCE))
    assert outbox.waiting == 4
    wire.high_water = None
    wire.drain()
    assert decoded(wire.written[1:]) == [
        ["presence:changed", {"n": 0}],
        ["chat:message", {"n": 1}],
        ["presence:state", {"c": 2}],
        ["presence:changed", {"n": 1}],
    ]
    assert outbox.waiting == 0 and outbox.buffered_bytes == 0


async def test_what_was_written_through_goes_before_what_waits_on_resume() -> None:
    # A: written through (corked for this turn); the transport then pauses (a pong
    # written meanwhile passed its high-water mark); B waits; the transport drains in
    # the same turn, before the Flusher runs: A must still go first.
    outbox = Recorder().outbox()
    wire = Wire(outbox)
    outbox.attach(wire.write)
    send(outbox, chat(0))
    outbox.pause()
    send(outbox, chat(1))
    outbox.resume()
    outbox._flusher.flush()
    assert decoded(wire.written) == [["chat:message", {"n": 0}], ["chat:message", {"n": 1}]]


async def test_a_failed_write_does_not_stall_the_other_connections() -> None:
    recorder = Recorder()
    broken, healthy = recorder.outbox(), recorder.outbox()
    wire = Wire(healthy)

    def fail(frames: bytes) -> None:
        raise OSError("gone")

    broken.attach(fail)
    healthy.attach(wire.write)
    send(broken, chat(0))
    send(healthy, chat(0))
    recorder.flusher.flush()  # logs the failure, writes the rest
    send(healthy, chat(1))
    recorder.flusher.flush()
    assert decoded(wire.written) == [["chat:message", {"n": 0}], ["chat:message", {"n": 1}]]


async def test_one_turn_cannot_cork_past_the_bound() -> None:
    # Large events in one turn (answers to a flood of sync requests): once the turn
    # has corked CORK_BYTES they go to the transport at once, it pauses, and the rest
    # queue under the bound, which closes the connection.
    recorder = Recorder()
    outbox = recorder.outbox(max_bytes=100_000)
    wire = Wire(outbox, high_water=64 * 1024)
    outbox.attach(wire.write)
    big = Event("sync-update", b"\x00" * 50_000, EventClass.CONTROL)
    for _ in range(20):  # no flush in between: one turn
        send(outbox, big)
    assert outbox.closed and recorder.overflows == 1
    assert wire.buffered < 200_000  # not all 20 (a million bytes) were corked


async def test_superseded_entries_do_not_pile_up() -> None:
    outbox = Recorder().outbox(max_events=10)
    wire = Wire(outbox, high_water=0)
    outbox.attach(wire.write)
    sent(outbox, chat(0))  # pauses
    send(outbox, chat(1))
    for step in range(10_000):
        send(outbox, Event("typing", {"on": step}, EventClass.TYPING, key="u"))
    assert outbox.waiting == 2 and not outbox.closed
    assert len(outbox._queue) < 100


async def test_chat_and_control_are_never_superseded() -> None:
    outbox = Recorder().outbox()
    wire = Wire(outbox, high_water=0)
    outbox.attach(wire.write)
    for n in range(4):
        sent(outbox, Event("chat:message", {"n": n}, EventClass.CHAT, key="same"))
    assert outbox.waiting == 3


async def test_chunks_of_one_reply_merge_into_one_with_their_seq_range() -> None:
    recorder = Recorder()
    outbox = recorder.outbox()
    wire = Wire(outbox, high_water=0)
    outbox.attach(wire.write)
    sent(outbox, chat(0))
    for seq, text in enumerate(["Hel", "lo, ", "world"], start=1):
        data = {"reply_id": "r", "seq": seq, "text": text}
        send(outbox, Event("ai:chunk", data, EventClass.AI_CHUNK, key="r"))
    other = {"reply_id": "q", "seq": 1, "text": "other reply"}
    send(outbox, Event("ai:chunk", other, EventClass.AI_CHUNK, key="q"))
    wire.high_water = None
    wire.drain()
    assert decoded(wire.written[1:]) == [
        ["ai:chunk", {"reply_id": "r", "seq": 3, "text": "Hello, world", "first_seq": 1}],
        ["ai:chunk", other],
    ]
    assert recorder.count("merged", EventClass.AI_CHUNK) == 2


async def test_yjs_updates_of_one_document_merge_into_one_that_applies_all() -> None:
    source: Doc = Doc()
    text = source.get("content", type=Text)
    updates = []
    source.observe(lambda event: updates.append(event.update))
    for word in ["one ", "two ", "three"]:
        text += word
    outbox = Recorder().outbox()
    wire = Wire(outbox, high_water=0)
    outbox.attach(wire.write)
    sent(outbox, chat(0))
    for update in updates:
        send(outbox, Event("sync-update", update, EventClass.DOCUMENT, key="doc"))
    assert outbox.waiting == 1
    wire.high_water = None
    wire.drain()
    header, attachment = wire.written[1].split(b"\x82", 1)  # text frame, then binary frame
    assert b'"sync-update"' in header
    copy: Doc = Doc()
    copy.apply_update(attachment[1:])  # a one-byte length: the update is short
    assert str(copy.get("content", type=Text)) == "one two three"


def test_awareness_updates_merge_to_each_clients_latest_state() -> None:
    ours, theirs = Awareness(Doc()), Awareness(Doc())
    ours.set_local_state({"cursor": 1})
    first = ours.encode_awareness_update([ours.client_id])
    ours.set_local_state({"cursor": 2})
    second = ours.encode_awareness_update([ours.client_id])
    theirs.set_local_state({"cursor": 9})
    third = theirs.encode_awareness_update([theirs.client_id])
    merged = merge_awareness(merge_awareness(second, third), first)  # the old one last
    reader = Awareness(Doc())
    reader.apply_awareness_update(merged, "test")
    assert reader.states[ours.client_id] == {"cursor": 2}
    assert reader.states[theirs.client_id] == {"cursor": 9}


async def test_a_backlog_past_its_event_bound_closes_the_connection() -> None:
    recorder = Recorder()
    outbox = recorder.outbox(max_events=10)
    wire = Wire(outbox, high_water=0)
    outbox.attach(wire.write)
    sent(outbox, chat(0))
    for n in range(1, 12):
        send(outbox, chat(n))
    assert recorder.overflows == 1 and outbox.closed and outbox.waiting == 0
    assert recorder.count("dropped", EventClass.CHAT) == 11
    assert recorder.count("slow") == 1
    send(outbox, chat(99))  # a closed outbox takes nothing more
    assert outbox.waiting == 0 and len(wire.written) == 1


async def test_a_backlog_past_its_byte_bound_closes_the_connection() -> None:
    recorder = Recorder()
    outbox = recorder.outbox(max_bytes=4096, max_events=1000)
    outbox.attach(Wire(outbox, high_water=0).write)
    sent(outbox, chat(0))
    big = "x" * 1000
    for n in range(8):
        send(outbox, Event("chat:message", {"n": n, "text": big}, EventClass.CHAT))
    assert recorder.overflows == 1


async def test_the_bound_counts_what_waits_behind_the_next_event() -> None:
    recorder = Recorder()
    outbox = recorder.outbox(max_bytes=4096)
    outbox.attach(Wire(outbox, high_water=0).write)
    sent(outbox, chat(0))
    # A whole document for a joining client is larger than the bound: it goes alone.
    send(outbox, Event("sync-step-1", b"x" * 100_000, EventClass.CONTROL))
    assert recorder.overflows == 0 and outbox.waiting == 1
    big = "x" * 1000
    for n in range(3):
        send(outbox, Event("chat:message", {"n": n, "text": big}, EventClass.CHAT))
    assert recorder.overflows == 0
    send(outbox, Event("chat:message", {"n": 4, "text": big * 2}, EventClass.CHAT))
    assert recorder.overflows == 1


async def test_last_words_pass_the_pause() -> None:
    outbox = Recorder().outbox()
    wire = Wire(outbox, high_water=0)
    outbox.attach(wire.write)
    sent(outbox, chat(0))
    send(outbox, chat(1))
    outbox.last_words([PING])
    assert wire.written[-1] == PING.frames


async def test_long_polling_takes_what_waits_or_what_comes_next() -> None:
    outbox = Recorder().outbox()
    with pytest.raises(TimeoutError):
        await outbox.take(0.05)
    send(outbox, chat(0))
    send(outbox, Event("sync-update", b"\x00\x00", EventClass.DOCUMENT, key="d"))
    packets = await outbox.take(1)
    assert [p.packet_type for p in packets] == [eio_packet.MESSAGE] * 3  # text, text, binary
    assert packets[2].data == b"\x00\x00"
    waiting = asyncio.create_task(outbox.take(5))
    await asyncio.sleep(0)
    send(outbox, chat(1))
    assert [p.data for p in await waiting] == ['2["chat:message",{"n":1}]']

    # Closing answers a GET that waits (the client's own disconnect need not time out).
    waiting = asyncio.create_task(outbox.take(5))
    await asyncio.sleep(0)
    outbox.close()
    assert await waiting == []
    send(outbox, chat(2))
    assert await outbox.take(5) == []


async def test_an_event_is_encoded_once_per_namespace() -> None:
    event = chat(0)
    assert event.encoded("/") is event.encoded("/")
    assert event.encoded("/") is not event.encoded("/other")
    assert event.encoded("/other").frames == encode_event("/other", "chat:message", {"n": 0}).frames
