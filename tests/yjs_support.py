"""What the Yjs document tests share: REST paths and reads, the app's live documents,
metrics, and small assertions for ``eventually``."""

from __future__ import annotations

import re
import uuid
from typing import Any

from app.keys import LIVE_DOCUMENTS
from app.services.live_documents import LiveDocuments
from roomclient import DocumentClient
from tests.helpers import Api, User


def content_url(doc: dict[str, Any], what: str = "content") -> str:
    return f"/api/v1/documents/{doc['id']}/{what}"


async def stored_text(api: Api, user: User, doc: dict[str, Any]) -> str:
    body = await api.call("GET", content_url(doc), user=user)
    return str(body["text"])


async def storage(api: Api, user: User, doc: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = await api.call("GET", content_url(doc, "storage"), user=user)
    return body


def live_documents(api: Api) -> LiveDocuments:
    return api.client.app[LIVE_DOCUMENTS]


async def metric(api: Api, name: str, **labels: str) -> float:
    response = await api.client.get("/metrics")
    text = await response.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def append(client: DocumentClient, text: str) -> None:
    client.edit(lambda shared: shared.insert(len(shared), text))


def codes(client: DocumentClient) -> list[str]:
    return [error["code"] for error in client.errors]


def uuid_of(doc: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(doc["id"])


async def equal_async(actual: Any, expected: object) -> None:
    value = await actual
    assert value == expected, (value, expected)


async def at_least(actual: Any, expected: float) -> None:
    value = await actual
    assert value >= expected, (value, expected)
