"""Room documents in search: indexed after edits (debounced), found by their members
only, gone when deleted or when a member is removed; a reindex writes them again."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from app.keys import KNOWLEDGE
from storage.models import GlobalRole
from tests.conftest import AppFactory
from tests.helpers import Api, User, eventually

PLAN = (
    "The launch is on the 12th of March. Marketing sends the newsletter two days before. "
    "The support team doubles its shifts during launch week."
)
QUESTION = "when do we launch?"


async def hits(api: Api, user: User, q: str = QUESTION) -> list[dict[str, Any]]:
    body = await api.call("GET", "/api/v1/search", user=user, params={"q": q})
    items: list[dict[str, Any]] = body["items"]
    return items


async def start(start_app: AppFactory) -> Api:
    client: TestClient[web.Request, web.Application] = await start_app(
        document_index_debounce_seconds=0.05, document_index_max_delay_seconds=0.2
    )
    return Api(client)


async def test_members_find_a_document_and_lose_it_with_access(start_app: AppFactory) -> None:
    api = await start(start_app)
    ann, ben, doc = await api.room("viewer")
    guest = await api.user("gus", GlobalRole.GUEST)
    carl = await api.user("carl")
    await api.share(ann, doc["id"], guest, "viewer")
    admin = await api.user("root", GlobalRole.ADMIN)
    holidays = {"title": "Holidays", "text": "The office is closed in August."}
    await api.call("POST", "/api/v1/knowledge", user=admin, json=holidays, expect=201)
    path = f"/api/v1/documents/{doc['id']}/content"
    await api.call("POST", path, user=ann, json={"text": PLAN, "mode": "append"})

    async def found_by_ann() -> None:
        assert [(h["kind"], h["id"]) for h in await hits(api, ann)][:1] == [("document", doc["id"])]

    await eventually(found_by_ann)
    [first, *_] = await hits(api, ben)
    assert first["title"] == "Launch plan" and "12th of March" in first["passage"]
    assert all(h["id"] != doc["id"] for h in await hits(api, carl))
    # Guests find their documents, and no knowledge.
    assert {h["kind"] for h in await hits(api, guest, "office closed in August launch")} == {
        "document"
    }
    assert "knowledge" in {h["kind"] for h in await hits(api, ben, "office closed in August")}

    # A rename reaches the index; a member removed stops finding it at once.
    await api.call("PATCH", f"/api/v1/documents/{doc['id']}", user=ann, json={"title": "Go-live"})

    async def renamed() -> None:
        assert (await hits(api, ben))[0]["title"] == "Go-live"

    await eventually(renamed)
    await api.call("DELETE", f"/api/v1/documents/{doc['id']}/members/{ben.id}", user=ann,
                   expect=204)  # fmt: skip
    assert all(h["id"] != doc["id"] for h in await hits(api, ben))
    assert (await hits(api, ann))[0]["id"] == doc["id"]

    # Deleted: gone from results and from the index.
    store = api.client.app[KNOWLEDGE]._indexer.index.store
    with_document = await store.count()
    await api.call("DELETE", f"/api/v1/documents/{doc['id']}", user=ann, expect=204)
    assert all(h["id"] != doc["id"] for h in await hits(api, ann))
    assert await store.count() == with_document - 1  # the plan is one passage


async def test_reindex_writes_documents_again(start_app: AppFactory) -> None:
    api = await start(start_app)
    ann, _, doc = await api.room()
    admin = await api.user("root", GlobalRole.ADMIN)
    path = f"/api/v1/documents/{doc['id']}/content"
    await api.call("POST", path, user=ann, json={"text": PLAN, "mode": "append"})
    await api.client.app[KNOWLEDGE].documents.flush()
    await api.client.app[KNOWLEDGE]._indexer.index.store.drop()
    assert await hits(api, ann) == []
    done = await api.call("POST", "/api/v1/knowledge/reindex", user=admin)
    assert done == {"entries": 0, "documents": 1, "passages": 1}
    assert (await hits(api, ann))[0]["id"] == doc["id"]
    await api.error("GET", "/api/v1/search", user=ann, expect=422, code="validation_failed")
