"""The assistant's replies are grounded in what the asker may read: the best passages
of knowledge entries and of the asker's documents go into the prompt, numbered, and
come back as the reply's ``citations`` (on ``ai:done`` and the stored message);
nothing the asker may not read is put in the prompt or cited."""

from __future__ import annotations

from typing import Any

from app.keys import KNOWLEDGE
from storage.models import GlobalRole
from tests.assistant_support import ask, of, room_of_two
from tests.conftest import ClaudeFactory, ConnectOn
from tests.fake_anthropic import Plan
from tests.helpers import Api, User, eventually, truthy

ENTRIES = {
    "Deploying": "Releases go to production from the main branch after CI is green. "
    "Use the deploy pipeline; never copy files to the servers by hand.",
    "Expenses": "Travel costs are refunded within 30 days. Send receipts to finance.",
    "On-call": "The on-call engineer answers pages within 15 minutes.",
}


async def add(api: Api, user: User, title: str, text: str) -> dict[str, Any]:
    entry: dict[str, Any] = await api.call(
        "POST", "/api/v1/knowledge", user=user, json={"title": title, "text": text}, expect=201
    )
    return entry


PLAN = "Launch plan: the launch is on the 12th of March, after the last release is deployed."


async def test_a_reply_cites_the_right_entry_and_a_document_passage(
    start_claude: ClaudeFactory, connect_on: ConnectOn
) -> None:
    fake, api = await start_claude(
        document_index_debounce_seconds=0.01, document_index_max_delay_seconds=0.05
    )
    admin = await api.user("root", GlobalRole.ADMIN)
    power = await api.user("pat", GlobalRole.POWER)
    entries = {title: await add(api, admin, title, text) for title, text in ENTRIES.items()}
    # Pending (power user's, not approved) and a document of someone else's: both match
    # the question, neither may reach the asker.
    secret = "Deploying secretly: production deploys use the root password hunter2."
    await add(api, power, "Deploy secrets", secret)
    others = await api.document(admin, "Admin's deploy notes")
    await api.call("POST", f"/api/v1/documents/{others['id']}/content", user=admin,
                   json={"text": secret, "mode": "append"})  # fmt: skip

    ann, _, doc_id, a, b = await room_of_two(api, connect_on(api))
    await api.call("POST", f"/api/v1/documents/{doc_id}/content", user=ann,
                   json={"text": PLAN, "mode": "append"})  # fmt: skip
    await api.client.app[KNOWLEDGE].documents.flush()

    fake.plan(Plan(tokens=["Deploy from main [1]", "; launch on the 12th."]))
    reply_id = await ask(a, doc_id, "How do we deploy a release to production?")
    await eventually(lambda: truthy(of(b, "ai:done", reply_id)), timeout=10)
    [done] = of(b, "ai:done", reply_id)
    citations = done["citations"]
    assert citations[0] == {
        "kind": "knowledge",
        "id": entries["Deploying"]["id"],
        "title": "Deploying",
        "passage": ENTRIES["Deploying"],
    }
    documents = [c for c in citations if c["kind"] == "document"]
    assert documents and documents[0]["id"] == doc_id
    assert documents[0]["title"] == "Launch plan" and "12th of March" in documents[0]["passage"]
    assert done["message"]["metadata"]["citations"] == citations
    history = await api.call("GET", f"/api/v1/documents/{doc_id}/messages", user=ann)
    assert history["items"][-1]["metadata"]["citations"] == citations

    # Every citation was in the prompt, numbered in the same order; nothing else was.
    body = fake.requests[-1].body
    prompt = body["messages"][-1]["content"]
    assert "cite it by its number" in body["system"]
    for number, citation in enumerate(citations, 1):
        assert f"[{number}] ({citation['kind']}) {citation['title']}\n" in prompt
        assert citation["passage"] in prompt
    assert "hunter2" not in prompt
    assert all(c["id"] != others["id"] for c in citations)


async def test_without_passages_nothing_is_cited(
    start_claude: ClaudeFactory, connect_on: ConnectOn
) -> None:
    fake, api = await start_claude(ai_passages=0)
    admin = await api.user("root", GlobalRole.ADMIN)
    await add(api, admin, "Deploying", ENTRIES["Deploying"])
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "How do we deploy?")
    await eventually(lambda: truthy(of(a, "ai:done", reply_id)), timeout=10)
    [done] = of(a, "ai:done", reply_id)
    assert done["citations"] == [] and done["message"]["metadata"]["citations"] == []
    assert "<sources>" not in fake.requests[-1].body["messages"][-1]["content"]


async def test_the_offline_responder_gets_the_passages_too(api: Api, connect_on: ConnectOn) -> None:
    admin = await api.user("root", GlobalRole.ADMIN)
    await add(api, admin, "Deploying", ENTRIES["Deploying"])
    _, _, doc_id, a, _ = await room_of_two(api, connect_on(api))
    reply_id = await ask(a, doc_id, "How do we deploy a release?")
    await eventually(lambda: truthy(of(a, "ai:done", reply_id)), timeout=10)
    [done] = of(a, "ai:done", reply_id)
    assert [c["title"] for c in done["citations"]] == ["Deploying"]
