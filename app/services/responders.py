"""Where the assistant's words come from: Claude through the official SDK, or, when no
API key is configured, an offline responder that streams a clearly labelled reply
through the same path (a fresh install works end to end)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol, cast

import anthropic
import httpx2
import orjson
from anthropic.types import MessageParam


@dataclass(frozen=True, slots=True)
class Prompt:
    system: str
    # [{"role": "user" | "assistant", "content": str}], alternating, user first and last.
    messages: list[dict[str, str]]
    max_tokens: int


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class Outcome:
    """Filled in while a reply streams; complete once the stream ended."""

    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None


class UpstreamError(Exception):
    """The model's service failed: an HTTP error, an ``error`` event, a dropped stream.

    ``status`` is the HTTP status when the service answered one (``None``: no answer,
    the connection failed); ``retry_after`` the seconds it asked to wait, if it did.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Responder(Protocol):
    model: str

    def stream(self, prompt: Prompt, outcome: Outcome) -> AsyncGenerator[str, None]:
        """Yield text deltas; fill ``outcome`` as usage and the stop reason arrive.

        Closing the iterator early (a cancel) closes the upstream request at once.
        """
        ...

    async def close(self) -> None: ...


class AnthropicResponder:
    def __init__(self, *, api_key: str, base_url: str | None, model: str) -> None:
        self.model = model
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            # The assistant retries (app/services/assistant.py): the SDK's own retries
            # wait out any retry-after, however long, and know no deadline.
            max_retries=0,
            timeout=anthropic.Timeout(60.0, connect=10.0),
            # The SDK's aiohttp transport (its `aiohttp` extra; aiohttp is ours already):
            # aiohttp's C parser reads each streamed event for about two thirds of the
            # CPU of the default httpx2/h11 transport (bench/sdk_only.py measures it).
            http_client=anthropic.DefaultAioHttpClient(),
        )

    async def stream(self, prompt: Prompt, outcome: Outcome) -> AsyncGenerator[str, None]:
        try:
            # The SDK sends the request and answers its HTTP errors; the event stream is
            # read here. Its own stream builds a validated model object of every event
            # (and messages.stream() the whole message as well): about half the CPU of
            # a streamed token, for fields that nothing here reads (bench/sdk_only.py).
            request = self._client.messages.with_streaming_response.create(
                model=self.model,
                max_tokens=prompt.max_tokens,
                system=prompt.system,
                messages=cast(list[MessageParam], prompt.messages),
                stream=True,
            )
            # Closes the upstream response on the way out, also when closed early.
            async with request as response:
                events = EventStreamDecoder()
                stopped = False
                async for data in response.http_response.aiter_bytes():
                    for kind, body in events.feed(data):
                        if kind == "content_block_delta":
                            delta = body.get("delta")
                            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                                text = delta.get("text")
                                if isinstance(text, str):
                                    yield text
                        elif kind == "message_stop":
                            stopped = True
                        elif kind == "message_start":
                            message = body.get("message")
                            if isinstance(message, dict):
                                _take_usage(outcome.usage, message.get("usage"))
                        elif kind == "message_delta":
                            delta = body.get("delta")
                            if isinstance(delta, dict):
                                outcome.stop_reason = delta.get("stop_reason")
                            _take_usage(outcome.usage, body.get("usage"))
                        elif kind == "error":
                            detail = body.get("error")
                            detail = detail if isinstance(detail, dict) else {}
                            status = ERROR_STATUS.get(str(detail.get("type")), 500)
                            message_text = detail.get("message", "an error event")
                            raise UpstreamError(f"{status}: {message_text}", status=status)
                if not stopped:
                    # A reply cut short is not a whole reply, however the stream ended.
                    raise UpstreamError("the stream ended before its message_stop")
        except anthropic.APIStatusError as exc:
            status = _status_of(exc)
            raise UpstreamError(
                f"{status}: {exc.message}",
                status=status,
                retry_after=_retry_after(exc.response.headers),
            ) from exc
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            # Timeouts and dropped connections mid-stream surface as the HTTP
            # library's errors (httpx2, the SDK's client), not anthropic.APIError.
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._client.close()


# The HTTP status each error type of the Messages API stands for: an ``error`` event in
# a stream comes on a 200 response, and says only its type.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def _status_of(error: anthropic.APIStatusError) -> int:
    if error.status_code == 200 and isinstance(error.body, dict):
        detail = error.body.get("error")
        kind = detail.get("type") if isinstance(detail, dict) else None
        return ERROR_STATUS.get(str(kind), 500)
    return error.status_code


# An event of the Messages stream larger than this is refused (a text delta is a few
# bytes; message_start, the largest, well under a kilobyte).
MAX_EVENT_BYTES = 1 << 20


class EventStreamDecoder:
    """A Messages stream's server-sent events, from its bytes as they arrive.

    ``feed`` takes the next bytes and returns the events they complete, each as its
    ``event`` field and its ``data`` parsed as a JSON object. Lines end in LF or CRLF;
    comments, ``ping`` events, events without data and fields other than ``event`` and
    ``data`` are passed over (the SSE format, as the Messages API uses it). Data that is
    not a JSON object, or an event over ``MAX_EVENT_BYTES``, is refused with
    ``UpstreamError``.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, dict[str, object]]]:
        buffer = self._buffer + data
        if b"\r" in buffer:
            # A CR held back at the end may be the first half of a CRLF.
            buffer = buffer.replace(b"\r\n", b"\n")
        events: list[tuple[str, dict[str, object]]] = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            event = self._event(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise UpstreamError(f"the model's service sent an event over {MAX_EVENT_BYTES} bytes")
        return events

    @staticmethod
    def _event(block: bytes) -> tuple[str, dict[str, object]] | None:
        kind = "message"
        data: list[bytes] = []
        for line in block.split(b"\n"):
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                kind = value.decode(errors="replace")
        if not data or kind == "ping":
            return None
        try:
            body = orjson.loads(b"\n".join(data))
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"the model's service sent an event that is not JSON: {exc}"
            ) from exc
        if not isinstance(body, dict):
            raise UpstreamError("the model's service sent an event that is not an object")
        return kind, body


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait the service asked for: ``retry-after-ms``, or ``retry-after`` in seconds
    or as an HTTP date."""
    with contextlib.suppress(KeyError, ValueError):
        return max(float(headers["retry-after-ms"]) / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(float(value), 0.0)
    with contextlib.suppress(TypeError, ValueError):
        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    return None


def _take_usage(usage: Usage, reported: object) -> None:
    # message_start carries the input side, message_delta the running totals.
    if not isinstance(reported, dict):
        return
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ):
        value = reported.get(name)
        if isinstance(value, int):
            setattr(usage, name, value)


OFFLINE_MODEL = "offline"


class OfflineResponder:
    """No API key: a labelled, canned reply streamed word by word."""

    model = OFFLINE_MODEL

    def __init__(self, *, delay: float = 0.02) -> None:
        self._delay = delay

    async def stream(self, prompt: Prompt, outcome: Outcome) -> AsyncGenerator[str, None]:
        question = prompt.messages[-1]["content"].rsplit("\n", 1)[-1].strip()
        text = (
            "[offline assistant: no ANTHROPIC_API_KEY is configured, so this reply is "
            f"generated locally] You asked: “{question[:200]}”. Set ANTHROPIC_API_KEY "
            "to get answers from Claude."
        )
        outcome.usage.input_tokens = estimate_tokens(
            prompt.system + "".join(m["content"] for m in prompt.messages)
        )
        words = text.split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(self._delay)
            outcome.usage.output_tokens = index + 1
            yield word if index == 0 else " " + word
        outcome.stop_reason = "end_turn"

    async def close(self) -> None:
        return None


def estimate_tokens(text: str) -> int:
    """About four characters per token: close enough to budget context by."""
    return (len(text) + 3) // 4
