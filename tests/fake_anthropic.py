"""A local HTTP server that speaks the Anthropic Messages streaming protocol.

The real ``anthropic`` SDK is pointed at it (``ANTHROPIC_BASE_URL``), so the SDK's own
code paths run: SSE parsing, usage, ``error`` events, retries of 429/529, closing
the connection on cancel. Each request takes the next ``Plan`` from the queue (the
last one repeats); the server records every request and whether its client went
away before the end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Plan:
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " room", "!"])
    delay: float = 0.0  # between tokens
    status: int = 200  # 429, 529, 500...: answered as an HTTP error, no stream
    retry_after: float | None = None
    error_after: int | None = None  # send an `error` event after this many tokens
    drop_after: int | None = None  # close the connection after this many tokens
    end_after: int | None = None  # end the response, well formed, after this many tokens
    input_tokens: int = 25
    cache_read_input_tokens: int = 0
    stop_reason: str = "end_turn"
    line_end: str = "\n"  # "\r\n" as well in the SSE format
    piece: int | None = None  # write each event in pieces of this many bytes


@dataclass
class Seen:
    body: dict[str, Any]
    headers: dict[str, str]
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False


class FakeAnthropic:
    def __init__(self) -> None:
        self.plans: list[Plan] = [Plan()]
        self.requests: list[Seen] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/messages", self._messages)

    def plan(self, *plans: Plan) -> None:
        self.plans = list(plans)

    def _next(self) -> Plan:
        return self.plans.pop(0) if len(self.plans) > 1 else self.plans[0]

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(await request.json(), {k.lower(): v for k, v in request.headers.items()})
        self.requests.append(seen)
        plan = self._next()
        if plan.status != 200:
            headers = {}
            if plan.retry_after is not None:
                headers["retry-after"] = str(plan.retry_after)
            kinds = {400: "invalid_request_error", 429: "rate_limit_error", 529: "overloaded_error"}
            kind = kinds.get(plan.status, "api_error")
            return web.json_response(
                {"type": "error", "error": {"type": kind, "message": f"plan says {plan.status}"}},
                status=plan.status,
                headers=headers,
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            async for event, data in self._events(plan):
                if event == "drop":
                    assert request.transport is not None
                    request.transport.close()
                    return response
                end = plan.line_end
                frame = f"event: {event}{end}data: {json.dumps(data)}{end}{end}".encode()
                step = plan.piece or len(frame)
                for start in range(0, len(frame), step):
                    await response.write(frame[start : start + step])
            seen.finished = True
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            seen.disconnected.set()  # the client closed the stream early
        return response

    async def _events(self, plan: Plan) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        usage = {
            "input_tokens": plan.input_tokens,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": plan.cache_read_input_tokens,
        }
        yield (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-fake",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                },
            },
        )
        yield "ping", {"type": "ping"}  # as the service sends, now and then
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        for index, token in enumerate(plan.tokens):
            if plan.error_after == index:
                yield (
                    "error",
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                )
                return
            if plan.drop_after == index:
                yield "drop", {}
                return
            if plan.end_after == index:
                return
            if plan.delay:
                await asyncio.sleep(plan.delay)
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": token},
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": len(plan.tokens)},
            },
        )
        yield "message_stop", {"type": "message_stop"}
