"""What the assistant is told: the system prompt, the room's document, its recent chat,
the passages retrieved for the question, and the question.

Passages come from the search index, as the asker would find them (``Retriever``):
knowledge entries their role lets them read and the documents they are a member of,
never anything else. They go into the prompt numbered, ``[1]``, ``[2]``..., and the
model is asked to cite them by those numbers; the reply's ``citations`` are the same
passages in the same order, so ``[n]`` in its text is ``citations[n - 1]``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.principal import Principal
from app.errors import AppError
from app.services.ai_limits import AssistantLimits
from app.services.live_documents import LiveDocuments
from app.services.responders import Prompt, estimate_tokens
from storage.db import read_session
from storage.models import AuthorKind
from storage.repositories import messages as messages_repo

log = logging.getLogger(__name__)

# Recent chat read for a prompt, at most (the token budget usually ends it sooner).
RECENT_MESSAGES = 200
CITE = (
    "Sources retrieved for the question are numbered in <sources>. Where the answer uses "
    "one, cite it by its number in brackets, like [1]. Do not cite anything else."
)


@dataclass(frozen=True, slots=True)
class Citation:
    """A passage that was in the prompt."""

    kind: Literal["knowledge", "document"]
    id: uuid.UUID
    title: str
    passage: str

    def body(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": str(self.id), "title": self.title, "passage": self.passage}


class Retrieved(Protocol):
    @property
    def kind(self) -> Literal["knowledge", "document"]: ...
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


class Retriever(Protocol):
    """The passages ``principal`` may read that match ``query`` best, best first
    (``KnowledgeService.passages``)."""

    async def passages(
        self, principal: Principal, query: str, *, limit: int
    ) -> Sequence[Retrieved]: ...


@dataclass(frozen=True, slots=True)
class Context:
    prompt: Prompt
    citations: list[Citation]


class ContextBuilder:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        documents: LiveDocuments,
        limits: AssistantLimits,
        retriever: Retriever | None = None,
        *,
        passages: int = 0,
    ) -> None:
        self._sessions = sessions
        self._documents = documents
        self._limits = limits
        self._retriever = retriever
        self._passages = passages

    async def build(self, document_id: uuid.UUID, asked_by: Principal, question: str) -> Context:
        document = await self.document_text(document_id)
        chat = await self.chat_lines(document_id)
        citations = await self.retrieve(asked_by, question)
        parts = [f"<document>\n{document}\n</document>", "<chat>\n" + "\n".join(chat) + "\n</chat>"]
        if citations:
            parts.append(sources(citations))
        parts.append(f"{asked_by.username} asks the assistant:\n{question}")
        system = self._limits.system_prompt
        if citations:
            system = f"{system}\n\n{CITE}"
        prompt = Prompt(
            system=system,
            messages=[{"role": "user", "content": "\n\n".join(parts)}],
            max_tokens=self._limits.max_tokens,
        )
        return Context(prompt, citations)

    async def document_text(self, document_id: uuid.UUID) -> str:
        """The room's text, cut at ``document_chars`` with a note of what was left out."""
        async with self._documents.opened(document_id) as live:
            document = str(live.text)
        cut = self._limits.document_chars
        if len(document) > cut:
            document = document[:cut] + f"\n[... {len(document) - cut} more characters not shown]"
        return document

    async def chat_lines(self, document_id: uuid.UUID) -> list[str]:
        """The room's recent chat, oldest first, newest kept until ``context_tokens``."""
        async with read_session(self._sessions) as session:
            recent = await messages_repo.messages_before(
                session, document_id, None, limit=RECENT_MESSAGES
            )
        lines: list[str] = []
        budget = self._limits.context_tokens
        for message in reversed(recent):  # newest first, until the budget is spent
            if message.deleted_at is not None:
                continue
            who = "assistant" if message.author_kind is AuthorKind.ASSISTANT else message.username
            line = f"{who}: {message.text}"
            budget -= estimate_tokens(line)
            if budget < 0:
                break
            lines.append(line)
        lines.reverse()
        return lines

    async def retrieve(self, asked_by: Principal, question: str) -> list[Citation]:
        """The best passages the asker may read; none when search is unavailable (the
        reply goes on without them)."""
        if self._retriever is None or self._passages <= 0:
            return []
        try:
            found = await self._retriever.passages(asked_by, question, limit=self._passages)
        except AppError as exc:
            log.warning("no passages for the assistant: %s", exc.message)
            return []
        return [Citation(p.kind, p.id, p.title, p.text) for p in found]


def sources(citations: Sequence[Citation]) -> str:
    lines = ["<sources>"]
    for number, citation in enumerate(citations, 1):
        lines.append(f"[{number}] ({citation.kind}) {citation.title}\n{citation.passage}")
    lines.append("</sources>")
    return "\n".join(lines)
