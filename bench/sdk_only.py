"""``python -m bench.sdk_only BASE_URL STREAMS TOKENS SPREAD_S``: the responder alone.

roomserver's ``AnthropicResponder`` (the official SDK, as the server uses it) consumes
STREAMS replies of TOKENS tokens at once from the stand-in upstream at BASE_URL, their
starts spread over SPREAD_S seconds, and nothing else happens in the process. Prints
one JSON line: ``tokens`` received, ``cpu_s`` and ``wall_s`` spent: what streaming the
replies costs before roomserver does anything with their text.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from app.services.responders import AnthropicResponder, Outcome, Prompt

WARM_UP_TOKENS = 5


async def main(base_url: str, streams: int, tokens: int, spread: float) -> None:
    responder = AnthropicResponder(api_key="bench-key", base_url=base_url, model="claude-bench")

    async def one(count: int, delay: float) -> int:
        await asyncio.sleep(delay)
        prompt = Prompt(
            system="", messages=[{"role": "user", "content": f"tokens={count}"}], max_tokens=count
        )
        received = 0
        async for _ in responder.stream(prompt, Outcome()):
            received += 1
        return received

    try:
        # Not measured: opens the upstream connections, as a running server has them.
        await asyncio.gather(*(one(WARM_UP_TOKENS, 0) for _ in range(streams)))
        cpu, wall = time.process_time(), time.monotonic()
        received = await asyncio.gather(
            *(one(tokens, k * spread / streams) for k in range(streams))
        )
        print(
            json.dumps(
                {
                    "tokens": sum(received),
                    "cpu_s": time.process_time() - cpu,
                    "wall_s": time.monotonic() - wall,
                }
            ),
            flush=True,
        )
    finally:
        await responder.close()


if __name__ == "__main__":
    url, count, length, spread_s = sys.argv[1:5]
    asyncio.run(main(url, int(count), int(length), float(spread_s)))
