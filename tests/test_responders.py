"""The Messages stream as the responder reads it: the server-sent events decoded from
bytes however they are cut, what it refuses, and the SDK's request end to end against
tests/fake_anthropic.py."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.services.responders import (
    MAX_EVENT_BYTES,
    AnthropicResponder,
    EventStreamDecoder,
    Outcome,
    Prompt,
    UpstreamError,
)
from tests.fake_anthropic import FakeAnthropic, Plan

DELTA = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}
START = {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}


def frame(event: str, data: object, end: str = "\n") -> bytes:
    return f"event: {event}{end}data: {json.dumps(data)}{end}{end}".encode()


STREAM = [("message_start", START), ("content_block_delta", DELTA), ("message_stop", {})]


def stream_bytes(end: str) -> bytes:
    parts = [frame(kind, data, end) for kind, data in STREAM]
    # What a reader passes over: a ping, a comment, an id, an event without data.
    parts.insert(1, frame("ping", {"type": "ping"}, end))
    parts.insert(2, f": keep-alive{end}id: 7{end}retry: 100{end}{end}".encode())
    parts.insert(3, f"event: empty{end}{end}".encode())
    return b"".join(parts)


def decoded(pieces: list[bytes]) -> list[tuple[str, dict[str, object]]]:
    decoder = EventStreamDecoder()
    return [event for piece in pieces for event in decoder.feed(piece)]


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_events_are_read_whole_or_a_byte_at_a_time(end: str) -> None:
    data = stream_bytes(end)
    assert decoded([data]) == STREAM
    assert decoded([data[i : i + 1] for i in range(len(data))]) == STREAM


@settings(max_examples=200, deadline=None)
@given(end=st.sampled_from(["\n", "\r\n"]), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_events_are_the_same_wherever_the_bytes_are_cut(end: str, cuts: list[int]) -> None:
    data = stream_bytes(end)
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    assert decoded([data[a:b] for a, b in itertools.pairwise(bounds)]) == STREAM


def test_data_over_several_lines_is_one_event_and_the_space_after_the_colon_optional() -> None:
    assert decoded([b'event:x\ndata: {"a":\ndata:1}\n\n']) == [("x", {"a": 1})]
    assert decoded([b'data: {"a": 1}\n\n']) == [("message", {"a": 1})]  # the SSE default


@pytest.mark.parametrize(
    "data",
    [b"event: x\ndata: not json\n\n", b"event: x\ndata: [1, 2]\n\n", b"data: \xff\n\n"],
    ids=["not-json", "not-an-object", "not-utf8"],
)
def test_data_that_is_not_a_json_object_is_refused(data: bytes) -> None:
    with pytest.raises(UpstreamError, match="event that is not"):
        EventStreamDecoder().feed(data)


def test_an_event_that_never_ends_is_refused_once_over_the_bound() -> None:
    decoder = EventStreamDecoder()
    decoder.feed(b"data: " + b"x" * (MAX_EVENT_BYTES - 10))
    with pytest.raises(UpstreamError, match="over"):
        decoder.feed(b"x" * 100)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.binary(max_size=64), max_size=20))
def test_any_bytes_give_events_or_a_refusal(pieces: list[bytes]) -> None:
    decoder = EventStreamDecoder()
    try:
        for piece in pieces:
            for kind, body in decoder.feed(piece):
                assert isinstance(kind, str) and isinstance(body, dict)
    except UpstreamError:
        pass


@pytest.mark.parametrize(
    "plan",
    [Plan(), Plan(line_end="\r\n", piece=7), Plan(piece=1)],
    ids=["whole-events", "crlf-in-pieces-of-7", "byte-by-byte"],
)
async def test_the_sdk_streams_text_usage_and_stop_reason(
    anthropic_server: tuple[FakeAnthropic, str], plan: Plan
) -> None:
    fake, url = anthropic_server
    fake.plan(
        Plan(
            tokens=["Hello", ", ", "room", "!"],
            input_tokens=31,
            line_end=plan.line_end,
            piece=plan.piece,
            stop_reason="max_tokens",
        )
    )
    responder = AnthropicResponder(api_key="test-key", base_url=url, model="claude-test")
    outcome = Outcome()
    prompt = Prompt(system="be brief", messages=[{"role": "user", "content": "hi"}], max_tokens=9)
    try:
        text = [delta async for delta in responder.stream(prompt, outcome)]
    finally:
        await responder.close()
    assert text == ["Hello", ", ", "room", "!"]
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens) == (31, 4)
    assert outcome.stop_reason == "max_tokens"
    [seen] = fake.requests
    assert seen.body["system"] == "be brief" and seen.body["stream"] is True
    assert seen.headers["authorization"] == "Bearer test-key"


async def test_an_error_event_and_an_http_error_carry_their_status(
    anthropic_server: tuple[FakeAnthropic, str],
) -> None:
    fake, url = anthropic_server
    fake.plan(Plan(error_after=1), Plan(status=429, retry_after=3))
    responder = AnthropicResponder(api_key="test-key", base_url=url, model="claude-test")
    prompt = Prompt(system="", messages=[{"role": "user", "content": "hi"}], max_tokens=9)
    try:
        seen: list[str] = []
        with pytest.raises(UpstreamError) as overloaded:
            async for delta in responder.stream(prompt, Outcome()):
                seen.append(delta)
        with pytest.raises(UpstreamError) as limited:
            async for delta in responder.stream(prompt, Outcome()):
                seen.append(delta)
    finally:
        await responder.close()
    assert seen == ["Hello"]
    assert (overloaded.value.status, overloaded.value.retry_after) == (529, None)
    assert "Overloaded" in str(overloaded.value)
    assert (limited.value.status, limited.value.retry_after) == (429, 3.0)


async def test_a_stream_that_ends_before_message_stop_is_an_upstream_error(
    anthropic_server: tuple[FakeAnthropic, str],
) -> None:
    fake, url = anthropic_server
    fake.plan(Plan(tokens=["cut ", "short ", "here"], end_after=2))
    responder = AnthropicResponder(api_key="test-key", base_url=url, model="claude-test")
    prompt = Prompt(system="", messages=[{"role": "user", "content": "hi"}], max_tokens=9)
    seen: list[str] = []
    try:
        with pytest.raises(UpstreamError, match="before its message_stop") as cut:
            async for delta in responder.stream(prompt, Outcome()):
                seen.append(delta)
    finally:
        await responder.close()
    assert seen == ["cut ", "short "]
    assert cut.value.status is None  # no answer of the service's: retried if nothing came
