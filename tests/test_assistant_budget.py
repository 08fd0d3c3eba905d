"""The assistant's daily token budgets (issue 11, finding 7): a reply in flight counts
at the most it may cost, per user (AI_DAILY_TOKENS_PER_USER) and for the whole server
(AI_DAILY_TOKENS); a cancelled reply gives its hold back and pays what it cost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from app.keys import ASSISTANT
from app.main import assistant_limits
from roomclient import CommandError
from tests.assistant_support import ask, of, room_of_two
from tests.conftest import ClaudeFactory, ConnectOn, make_settings
from tests.fake_anthropic import Plan
from tests.helpers import eventually, truthy

# A small prompt (no document, little chat) and a large answer: a reply's worst case is
# mostly its AI_MAX_TOKENS, so holding it before or after its prompt is built differs
# little next to the budgets below.
SMALL_PROMPT: dict[str, Any] = {
    "ai_system_prompt": "Be brief.",
    "ai_document_chars": 0,
    "ai_context_tokens": 256,
    "ai_max_tokens": 4000,
}


@pytest.fixture
def most(database_url: str, tmp_path: Path) -> int:
    """The most a reply to ann's ``question`` may cost when asked (SMALL_PROMPT)."""
    limits = assistant_limits(make_settings(database_url, tmp_path / "limits", **SMALL_PROMPT))
    return limits.most_tokens("ann" + "question")


async def refused(pending: Awaitable[str]) -> CommandError:
    with pytest.raises(CommandError) as refusal:
        await pending
    return refusal.value


async def test_asks_at_once_that_together_pass_the_budget_are_refused_before_they_start(
    start_claude: ClaudeFactory, connect_on: ConnectOn, most: int
) -> None:
    # Nothing is spent yet, so the budget alone admitted all five: the replies
    # streaming were not counted, and five could pass it together.
    fake, api = await start_claude(
        **SMALL_PROMPT,
        ai_daily_tokens_per_user=2 * most + 100,
        ai_replies_per_room=5,
        ai_replies_per_user=5,
    )
    fake.plan(Plan(tokens=["slow "] * 30, delay=0.02))
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    answers = await asyncio.gather(
        *(ask(a, doc_id, "question") for _ in range(5)), return_exceptions=True
    )
    started = [answer for answer in answers if isinstance(answer, str)]
    refusals = [answer for answer in answers if isinstance(answer, CommandError)]
    assert len(started) == 2 and len(refusals) == 3
    for refusal in refusals:
        assert refusal.code == "ai_budget_exceeded"
        details = refusal.details
        assert details["limit"] == 2 * most + 100 and details["spent"] == 0
        assert details["needed"] == most and details["reserved"] > 100
        assert details["left"] == max(0, details["limit"] - details["reserved"]) < most
        # What is in the way ends within the replies' deadline, not tomorrow.
        assert 0 < details["retry_after"] <= 120
    for reply_id in started:
        await eventually(lambda r=reply_id: truthy(of(a, "ai:done", r)), timeout=10)
    assert len(fake.requests) == 2  # the refused ones never reached the model's service
    assert api.client.app[ASSISTANT].budgets.held() == 0
    # Their real usage (25 in, 30 out each) leaves room for another.
    again = await ask(a, doc_id, "question")
    await eventually(lambda: truthy(of(a, "ai:done", again)), timeout=10)


async def test_a_cancelled_reply_gives_its_hold_back_and_pays_what_it_cost(
    start_claude: ClaudeFactory, connect_on: ConnectOn, most: int
) -> None:
    fake, api = await start_claude(
        **SMALL_PROMPT, ai_daily_tokens_per_user=most + 500, ai_replies_per_room=2
    )
    assistant = api.client.app[ASSISTANT]
    fake.plan(Plan(tokens=["tick "] * 400, delay=0.02))
    ann, _, doc_id, a, b = await room_of_two(api, connect_on(api))
    first = await ask(a, doc_id, "question")
    second = await refused(ask(a, doc_id, "question"))  # the first holds its worst case
    assert second.code == "ai_budget_exceeded" and second.details["spent"] == 0
    assert second.details["reserved"] > 500

    await eventually(lambda: truthy(len(of(a, "ai:chunk", first)) >= 2))
    await b.command("ai:cancel", {"document_id": doc_id, "reply_id": first})
    await eventually(lambda: truthy(of(a, "ai:done", first)))
    [done] = of(a, "ai:done", first)
    assert done["status"] == "cancelled"
    cost = done["usage"]["input_tokens"] + done["usage"]["output_tokens"]
    assert cost > 25 + 1  # what streamed, not message_start's one output token
    assert assistant.budgets.held() == 0
    [usage] = (await api.call("GET", "/api/v1/usage", user=ann))["items"]
    assert usage["input_tokens"] + usage["output_tokens"] == cost

    # Released: the next ask fits; with it streaming, one more is refused, and what the
    # cancelled reply cost is what counts as spent.
    fake.plan(Plan(tokens=["tock "] * 400, delay=0.02))
    third = await ask(a, doc_id, "question")
    fourth = await refused(ask(a, doc_id, "question"))
    assert fourth.code == "ai_budget_exceeded" and fourth.details["spent"] == cost
    await a.command("ai:cancel", {"document_id": doc_id, "reply_id": third})
    await eventually(lambda: truthy(of(a, "ai:done", third)))
    assert assistant.budgets.held() == 0


async def test_what_was_spent_today_counts_until_the_utc_day_ends(
    start_claude: ClaudeFactory, connect_on: ConnectOn, most: int
) -> None:
    fake, api = await start_claude(**SMALL_PROMPT, ai_daily_tokens_per_user=most + 100)
    fake.plan(Plan(tokens=["word "] * 30, input_tokens=100))
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    first = await ask(a, doc_id, "question")
    await eventually(lambda: truthy(of(a, "ai:done", first)), timeout=10)
    spent = await refused(ask(a, doc_id, "question"))  # 130 spent + the most > budget
    assert spent.code == "ai_budget_exceeded"
    assert spent.details["spent"] == 130 and spent.details["reserved"] == 0
    assert spent.details["left"] == most - 30
    assert 0 < spent.details["retry_after"] <= 24 * 3600  # to the next UTC day
    assert "you used 130 of your" in spent.message


async def test_the_servers_budget_refuses_a_second_user_once_the_first_spent_it(
    start_claude: ClaudeFactory, connect_on: ConnectOn, most: int
) -> None:
    # Each user's own budget (200,000) is far from spent: only the server's holds.
    fake, api = await start_claude(**SMALL_PROMPT, ai_daily_tokens=most + 1000)
    fake.plan(Plan(tokens=["big "] * 4, input_tokens=10_000))
    _, _, doc_id, a, b = await room_of_two(api, connect_on(api))
    first = await ask(a, doc_id, "question")
    await eventually(lambda: truthy(of(a, "ai:done", first)), timeout=10)
    refusal = await refused(ask(b, doc_id, "question"))
    assert refusal.code == "ai_server_budget_exceeded"
    assert refusal.details["limit"] == most + 1000
    assert refusal.details["spent"] == 10_004 and refusal.details["left"] == 0
    assert 0 < refusal.details["retry_after"] <= 24 * 3600
    assert len(fake.requests) == 1


async def test_a_budget_of_0_refuses_every_ask_for_good(
    start_claude: ClaudeFactory, connect_on: ConnectOn
) -> None:
    fake, api = await start_claude(ai_daily_tokens=0)
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    refusal = await refused(ask(a, doc_id, "question"))
    assert refusal.code == "ai_server_budget_exceeded"
    assert "retry_after" not in refusal.details  # no day is long enough
    assert fake.requests == []
    assert api.client.app[ASSISTANT].budgets.held() == 0
