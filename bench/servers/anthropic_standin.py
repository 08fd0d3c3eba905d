"""A stand-in for the Anthropic Messages API that streams timestamped tokens at a fixed rate.

``python -m bench.servers.anthropic_standin PORT ORIGIN_NS RATE``

``POST /v1/messages`` answers every request with a Messages stream (the SSE events of
the real API, as the official SDK parses them) of as many text deltas as the request's
last message asks for with ``tokens=N`` (the question is its last line; default
``DEFAULT_TOKENS``), token ``i`` due at ``start + i / RATE`` on a fixed schedule.
Each token is one space and the moment it was written upstream: ``CLOCK_MONOTONIC``
minus ``ORIGIN_NS``, in tenths of a millisecond, base 36 (`` 2kf3``: about the length
of a real token). However the server coalesces tokens into chunks, a receiver that
shares the clock (Node's ``process.hrtime``, Python's ``time.monotonic_ns``) reads
each token's own send time from the text. ``GET /health`` answers 200 (readiness).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

from aiohttp import web

DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
DEFAULT_TOKENS = 300
ASKED = re.compile(r"tokens=(\d+)")


def base36(value: int) -> str:
    text = ""
    while True:
        value, digit = divmod(value, 36)
        text = DIGITS[digit] + text
        if not value:
            return text


def sse(event: str, data: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(origin_ns: int, rate: float) -> web.Application:
    interval = 1 / rate

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        content = json.loads(body)["messages"][-1]["content"]
        asked = ASKED.findall(content if isinstance(content, str) else json.dumps(content))
        tokens = int(asked[-1]) if asked else DEFAULT_TOKENS
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        usage = {
            "input_tokens": len(body) // 4,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        message: dict[str, object] = {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": "claude-bench",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        try:
            await response.write(
                sse("message_start", {"type": "message_start", "message": message})
                + sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            loop = asyncio.get_running_loop()
            start = loop.time()
            for index in range(tokens):
                delay = start + index * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Stamped as late as possible: the write below is the upstream send.
                stamp = (time.monotonic_ns() - origin_ns) // 100_000
                delta = {"type": "text_delta", "text": " " + base36(stamp)}
                await response.write(
                    sse(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                    )
                )
            await response.write(
                sse("content_block_stop", {"type": "content_block_stop", "index": 0})
                + sse(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": tokens},
                    },
                )
                + sse("message_stop", {"type": "message_stop"})
            )
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away (a cancel): nothing to finish
        return response

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/health", health)
    return app


if __name__ == "__main__":
    port, origin, per_second = sys.argv[1:4]
    web.run_app(
        create_app(int(origin), float(per_second)),
        host="127.0.0.1",
        port=int(port),
        print=None,
        access_log=None,
    )
