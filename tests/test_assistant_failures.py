"""When the model's service fails, and when the server shuts down: partial replies
stored as failed or cancelled, retries and the deadline, the circuit breaker (the real
SDK against tests/fake_anthropic.py)."""

from __future__ import annotations

import pytest

from app.keys import ASSISTANT
from roomclient import CommandError
from tests.assistant_support import ask, ask_while_open, of, room_of_two
from tests.conftest import AppFactory, ClaudeFactory, ConnectOn
from tests.fake_anthropic import FakeAnthropic, Plan
from tests.helpers import Api, eventually, truthy


async def test_an_error_mid_stream_stores_the_partial_reply_as_failed(
    claude: tuple[FakeAnthropic, Api], connect_on: ConnectOn
) -> None:
    fake, api = claude
    fake.plan(Plan(tokens=["part ", "of ", "it ", "never"], error_after=3))
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Fail please")
    await eventually(lambda: truthy(of(a, "ai:error", reply_id)), timeout=10)
    [error] = of(a, "ai:error", reply_id)
    assert error["error"]["code"] == "ai_unavailable" and error["status"] == "failed"
    assert error["message"]["text"] == "part of it "
    assert error["message"]["metadata"]["status"] == "failed"
    assert not of(a, "ai:done", reply_id)
    assert len(fake.requests) == 1  # the room saw text: asking again would repeat it


async def test_429_is_retried(claude: tuple[FakeAnthropic, Api], connect_on: ConnectOn) -> None:
    fake, api = claude
    fake.plan(Plan(status=429, retry_after=0), Plan(status=529, retry_after=0), Plan())
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Retry me")
    await eventually(lambda: truthy(of(a, "ai:done", reply_id)), timeout=10)
    assert len(fake.requests) == 3
    assert of(a, "ai:done", reply_id)[0]["message"]["text"] == "Hello, room!"


async def test_a_dropped_stream_stores_the_partial_reply_as_failed(
    claude: tuple[FakeAnthropic, Api], connect_on: ConnectOn
) -> None:
    fake, api = claude
    fake.plan(Plan(tokens=["half ", "way ", "there"], drop_after=2))
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Drop please")
    await eventually(lambda: truthy(of(a, "ai:error", reply_id)), timeout=10)
    [error] = of(a, "ai:error", reply_id)
    assert error["error"]["code"] == "ai_unavailable"
    assert error["message"]["text"] == "half way "
    assert error["message"]["metadata"]["status"] == "failed"


async def test_retries_wait_as_asked_but_never_longer_than_the_cap(
    start_claude: ClaudeFactory, connect_on: ConnectOn
) -> None:
    fake, api = await start_claude(ai_retry_max_wait_seconds=0.1)
    # The SDK alone would sleep the 30 s it is told to.
    fake.plan(Plan(status=429, retry_after=30), Plan(status=529), Plan())
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Busy?")
    await eventually(lambda: truthy(of(a, "ai:done", reply_id)), timeout=10)
    assert len(fake.requests) == 3
    assert of(a, "ai:done", reply_id)[0]["message"]["text"] == "Hello, room!"


async def test_a_retry_that_would_outlast_the_deadline_fails_the_reply_at_once(
    start_claude: ClaudeFactory, connect_on: ConnectOn
) -> None:
    fake, api = await start_claude(ai_deadline_seconds=5, ai_retry_max_wait_seconds=10)
    fake.plan(Plan(status=529, retry_after=30))
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Are you there?")
    await eventually(lambda: truthy(of(a, "ai:error", reply_id)), timeout=10)
    [error] = of(a, "ai:error", reply_id)
    # The service's own refusal, not "took too long": nobody waited for the deadline.
    assert error["error"]["code"] == "ai_unavailable" and error["message"] is None
    assert "529" in error["error"]["message"]
    assert len(fake.requests) == 1


async def test_one_deadline_bounds_the_reply_and_all_its_retries(
    start_claude: ClaudeFactory, connect_on: ConnectOn
) -> None:
    fake, api = await start_claude(
        ai_deadline_seconds=1, ai_max_retries=1000, ai_retry_max_wait_seconds=0.05
    )
    fake.plan(Plan(status=429, retry_after=0.05))
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Now?")
    await eventually(lambda: truthy(of(a, "ai:error", reply_id)), timeout=10)
    [error] = of(a, "ai:error", reply_id)
    assert error["error"]["code"] == "ai_unavailable"
    # Retried for a second, not for the 1000 x 0.05 s the retry count alone allows.
    assert 1 < len(fake.requests) < 1000


async def test_an_overloaded_stream_is_retried_only_before_its_first_text(
    claude: tuple[FakeAnthropic, Api], connect_on: ConnectOn
) -> None:
    fake, api = claude
    fake.plan(Plan(error_after=0), Plan())  # an `overloaded_error` event, then a good stream
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Again?")
    await eventually(lambda: truthy(of(a, "ai:done", reply_id)), timeout=10)
    assert of(a, "ai:done", reply_id)[0]["message"]["text"] == "Hello, room!"
    assert len(fake.requests) == 2


async def test_a_refused_request_is_not_retried(
    claude: tuple[FakeAnthropic, Api], connect_on: ConnectOn
) -> None:
    fake, api = claude
    fake.plan(Plan(status=400))  # invalid_request_error: asking again changes nothing
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Bad?")
    await eventually(lambda: truthy(of(a, "ai:error", reply_id)), timeout=10)
    assert len(fake.requests) == 1


async def test_the_circuit_breaker_fails_fast_then_recovers_by_itself(
    start_claude: ClaudeFactory, connect_on: ConnectOn
) -> None:
    fake, api = await start_claude(
        ai_max_retries=0, ai_breaker_failures=2, ai_breaker_reset_seconds=0.5
    )
    fake.plan(Plan(status=500))
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    for question in ("one", "two"):
        reply_id = await ask(a, doc_id, question)
        await eventually(lambda r=reply_id: truthy(of(a, "ai:error", r)), timeout=10)
    with pytest.raises(CommandError) as open_circuit:
        await ask(a, doc_id, "three")
    assert open_circuit.value.code == "ai_unavailable"
    assert len(fake.requests) == 2  # failed fast: the model's service was not asked

    fake.plan(Plan())  # the service is back; after the reset time one reply tries
    reply_id = await eventually(lambda: ask_while_open(a, doc_id, "four"), timeout=5)
    await eventually(lambda: truthy(of(a, "ai:done", reply_id)), timeout=10)
    closed = await ask(a, doc_id, "five")  # closed again: no waiting
    await eventually(lambda: truthy(of(a, "ai:done", closed)), timeout=10)


async def test_a_reply_streaming_at_shutdown_is_stored(
    anthropic_server: tuple[FakeAnthropic, str], start_app: AppFactory, connect_on: ConnectOn
) -> None:
    fake, url = anthropic_server
    settings = {"anthropic_api_key": "k", "anthropic_base_url": url}
    client = await start_app(**settings)
    api = Api(client)
    fake.plan(Plan(tokens=["on "] * 400, delay=0.02))
    ann, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "Keep going")
    await eventually(lambda: truthy(of(a, "ai:chunk", reply_id)))
    await client.close()  # the app shuts down mid-reply
    assert fake.requests[-1].disconnected.is_set()

    after = Api(await start_app(**settings))  # the same database
    history = await after.call("GET", f"/api/v1/documents/{doc_id}/messages", user=ann)
    last = history["items"][-1]
    assert last["author"]["kind"] == "assistant"
    assert last["metadata"]["reply_id"] == reply_id
    # The text streamed so far: at least the first token (the shutdown may come right
    # after the first chunk reached the client).
    assert last["metadata"]["status"] == "cancelled"
    assert last["text"].startswith("on ") and set(last["text"].split()) == {"on"}


async def test_asking_once_shutdown_has_begun_is_refused(
    claude: tuple[FakeAnthropic, Api], connect_on: ConnectOn
) -> None:
    fake, api = claude
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    await api.client.app[ASSISTANT].close()  # what shutdown does once connections end
    with pytest.raises(CommandError) as refused:
        await ask(a, doc_id, "Still there?")
    assert refused.value.code == "ai_unavailable"
    assert fake.requests == []  # no reply was left behind to outlive the app
