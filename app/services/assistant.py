"""The room's assistant: a question in, an answer streamed to the whole room, one chat
message at the end.

A reply runs as a task of its own. Its text is sent to the room in ordered chunks
(``reply_id``, ``seq``), batched by time and size so that a room of a hundred does
not get one event per token; the final text is the same either way. It ends with
one ``ai:done`` (the stored message, usage, stop reason) or one ``ai:error`` (the
partial text stored and marked failed). A client that joins mid-reply gets the text
so far with its ``seq`` and then the live chunks after it.

With several nodes (``ReplyCluster``, realtime/cluster/replies.py) a reply is counted
against the room's and the user's limits over every node, its text so far is kept
where the other nodes' joins read it, and a cancel asked on another node reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.principal import Principal
from app.errors import AiBusy, AiUnavailable, AppError, Forbidden, NotFound
from app.events import Broadcaster, EventClass
from app.services.ai_limits import FREE, AssistantLimits, CircuitBreaker, Hold, Prices, TokenBudgets
from app.services.assistant_context import Citation, ContextBuilder
from app.services.chat import CAN_WRITE, ChatService
from app.services.chat_writer import Stored
from app.services.documents import RoomAccess
from app.services.responders import (
    OFFLINE_MODEL,
    Outcome,
    Prompt,
    Responder,
    UpstreamError,
    Usage,
    estimate_tokens,
)
from app.wire import ServerEvent
from storage.db import read_session
from storage.models import utcnow
from storage.repositories import usage as usage_repo
from storage.repositories.usage import NewUsage, UsageTotals

log = logging.getLogger(__name__)

# The first wait before asking the model's service again, when it named none; doubled
# on each later retry (with jitter, so replies that failed together spread out).
RETRY_BACKOFF_SECONDS = 0.5


@dataclass(eq=False)
class Reply:
    id: uuid.UUID
    document_id: uuid.UUID
    asked_by: Principal
    question: str
    hold: Hold  # its worst case, held against the daily budgets until its usage is recorded
    # What the room has been sent: the text and the seq of its last chunk.
    text: str = ""
    seq: int = 0
    pending: str = ""  # streamed, not yet sent
    outcome: Outcome = field(default_factory=Outcome)
    task: asyncio.Task[None] | None = None
    cancelled_by: uuid.UUID | None = None
    # The retrieved passages that were in its prompt (the [n] its text may cite).
    citations: list[Citation] = field(default_factory=list)

    def so_far(self) -> dict[str, Any]:
        return {"reply_id": str(self.id), "seq": self.seq, "text": self.text}


class ReplyCluster(Protocol):
    """The replies of every node: what one node's assistant tells the others."""

    async def admit(
        self,
        reply_id: uuid.UUID,
        document_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        per_room: int,
        per_user: int,
    ) -> None:
        """Count a reply against the limits over every node, or raise ``AiBusy``."""

    def streamed(self, reply_id: uuid.UUID, chunk: str) -> None:
        """A chunk of an admitted reply, just before it is sent to the room."""

    def ended(self, reply_id: uuid.UUID) -> None:
        """An admitted reply sent its last event (or never started)."""

    async def owner(self, document_id: uuid.UUID, reply_id: uuid.UUID) -> str | None:
        """The other node streaming this reply in this room, if one is."""

    async def cancel(
        self, owner: str, document_id: uuid.UUID, reply_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        """Have ``owner`` cancel the reply; return once it has (``NotFound`` if the
        reply had ended)."""


class Assistant:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broadcaster: Broadcaster,
        chat: ChatService,
        room_access: Callable[[Principal, uuid.UUID], Awaitable[RoomAccess]],
        context: ContextBuilder,
        responder: Responder,
        limits: AssistantLimits,
        cluster: ReplyCluster | None = None,
    ) -> None:
        """``room_access`` is DocumentService's: an asker's role, cached as a sender's."""
        self._sessions = sessions
        self._room_access = room_access
        self._cluster = cluster
        self._broadcaster = broadcaster
        self._chat = chat
        self._context = context
        # A prompt is database reads and a search: 40 asks at once building theirs
        # together kept other rooms' chat acks waiting 5x their p99 (AI_PROMPTS_AT_ONCE).
        self._building = asyncio.Semaphore(limits.prompts_at_once)
        self.responder = responder
        self.limits = limits
        self.breaker = CircuitBreaker(limits.breaker_failures, limits.breaker_reset)
        self.budgets = TokenBudgets(
            per_user=limits.daily_tokens_per_user,
            server=limits.daily_tokens,
            holds_end_within=limits.deadline,
        )
        self._replies: dict[uuid.UUID, Reply] = {}
        self._closed = False

    @property
    def prices(self) -> Prices:
        return FREE if self.responder.model == OFFLINE_MODEL else self.limits.prices

    def active(self, document_id: uuid.UUID) -> list[Reply]:
        return [r for r in self._replies.values() if r.document_id == document_id]

    # --- asking and cancelling ------------------------------------------------------

    async def ask(self, principal: Principal, document_id: uuid.UUID, question: str) -> Reply:
        """Start a reply; returns at once (the answer streams to the room)."""
        if (await self._room_access(principal, document_id)).role not in CAN_WRITE:
            raise Forbidden("viewers cannot ask the assistant")
        # Held before what was spent is read, so that an ask at the same time counts it
        # (TokenBudgets says why); dropped if this ask is refused.
        worst = self.limits.most_tokens(principal.username + question)
        hold = self.budgets.hold(principal.user_id, worst)
        try:
            async with read_session(self._sessions) as session:
                today = _start_of_day()
                by_me = await usage_repo.tokens_used_since(session, principal.user_id, today)
                by_all = await usage_repo.all_tokens_used_since(session, today)
            self.budgets.check(hold, spent_by_user=by_me, spent=by_all)
            return await self._start(principal, document_id, question, hold)
        except BaseException:
            self.budgets.release(hold)
            raise

    async def _start(
        self, principal: Principal, document_id: uuid.UUID, question: str, hold: Hold
    ) -> Reply:
        limits = self.limits
        self._check_counts(principal, document_id)
        reply = Reply(uuid.uuid4(), document_id, principal, question, hold)
        if self._cluster is not None:
            await self._cluster.admit(
                reply.id,
                document_id,
                principal.user_id,
                per_room=limits.replies_per_room,
                per_user=limits.replies_per_user,
            )
        try:
            if self._cluster is not None:
                self._check_counts(principal, document_id)  # asks here while it was admitted
            if self._closed:  # an ask that was still checking when shutdown began
                raise AiUnavailable("the server is shutting down; ask again in a moment")
            self.breaker.check()  # last: it may admit this reply as the one trial
        except BaseException:
            if self._cluster is not None:
                self._cluster.ended(reply.id)
            raise
        self._replies[reply.id] = reply
        reply.task = asyncio.get_running_loop().create_task(self._run(reply))
        return reply

    def _check_counts(self, principal: Principal, document_id: uuid.UUID) -> None:
        """The room's and the user's replies on this node (every node's: ``admit``)."""
        if len(self.active(document_id)) >= self.limits.replies_per_room:
            raise AiBusy()
        mine = Counter(r.asked_by.user_id for r in self._replies.values())
        if mine[principal.user_id] >= self.limits.replies_per_user:
            raise AiBusy("you have as many replies streaming as you may")

    async def cancel(
        self, principal: Principal, document_id: uuid.UUID, reply_id: uuid.UUID
    ) -> None:
        """Cancel a reply streaming in the room, on this node or, with a cluster, on
        another (returns once its node has cancelled it)."""
        reply = self._replies.get(reply_id)
        owner = None
        if reply is None or reply.document_id != document_id:
            if self._cluster is not None:
                owner = await self._cluster.owner(document_id, reply_id)
            if owner is None:
                raise NotFound("no such reply streaming in this room")
        if (await self._room_access(principal, document_id)).role not in CAN_WRITE:
            raise Forbidden("viewers cannot cancel a reply")
        if owner is not None and self._cluster is not None:
            await self._cluster.cancel(owner, document_id, reply_id, principal.user_id)
        else:
            await self.cancel_here(document_id, reply_id, principal.user_id)

    async def cancel_here(
        self, document_id: uuid.UUID, reply_id: uuid.UUID, user_id: uuid.UUID
    ) -> bool:
        """Cancel a reply of this node (its asker's rights checked by the caller);
        False if it is not streaming here."""
        reply = self._replies.get(reply_id)
        if reply is None or reply.document_id != document_id:
            return False
        if reply.task is not None and reply.cancelled_by is None:
            reply.cancelled_by = user_id
            reply.task.cancel()
        return True

    async def close(self) -> None:
        """Shutdown: end the replies streaming (stored as cancelled); refuse new ones."""
        self._closed = True
        tasks = [r.task for r in self._replies.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def usage(
        self, principal: Principal, *, since: datetime | None, user_id: uuid.UUID | None
    ) -> tuple[datetime, list[UsageTotals]]:
        """Token and cost totals per user since ``since`` (default: today, UTC).
        Users see their own; admins everyone's (or ``user_id``'s)."""
        if not principal.is_admin:
            if user_id not in (None, principal.user_id):
                raise Forbidden("only admins see other users' usage")
            user_id = principal.user_id
        since = since or _start_of_day()
        async with read_session(self._sessions) as session:
            return since, await usage_repo.totals_by_user(session, since=since, user_id=user_id)

    # --- one reply ------------------------------------------------------------------

    async def _run(self, reply: Reply) -> None:
        status, error = "completed", None
        interval = self.limits.chunk_interval
        flusher = (
            asyncio.get_running_loop().create_task(self._flush_periodically(reply, interval))
            if interval > 0
            else None  # no batching by time: every delta is sent as it comes
        )
        try:
            self._emit(
                reply,
                ServerEvent.AI_STARTED,
                {
                    "asked_by": {
                        "user_id": str(reply.asked_by.user_id),
                        "username": reply.asked_by.username,
                    },
                    "question": reply.question,
                },
            )
            # The deadline covers building the prompt too (it opens the document and
            # searches).
            async with asyncio.timeout(self.limits.deadline) as deadline:
                async with self._building:
                    context = await self._context.build(
                        reply.document_id, reply.asked_by, reply.question
                    )
                prompt, reply.citations = context.prompt, context.citations
                self.budgets.shrink(reply.hold, self.limits.worst_case(prompt))
                await self._stream(reply, prompt, deadline, batched=flusher is not None)
        except asyncio.CancelledError:
            status = "cancelled"
        except TimeoutError:
            status, error = "failed", AiUnavailable("the reply took too long")
        except UpstreamError as exc:
            log.warning("assistant reply %s failed upstream: %s", reply.id, exc)
            status, error = "failed", AiUnavailable(f"the model's service failed ({exc})")
        except Exception:
            log.exception("assistant reply %s failed", reply.id)
            status, error = "failed", AiUnavailable()
        finally:
            if flusher is not None:
                flusher.cancel()
        if status == "completed":
            self.breaker.succeeded()
        elif status == "failed":
            self.breaker.failed()
        else:
            self.breaker.released()
        try:
            self._flush(reply)
            await self._finish(reply, status, error)
        finally:
            self._replies.pop(reply.id, None)
            if self._cluster is not None:
                self._cluster.ended(reply.id)  # after its last event
            # Its usage is committed (or could not be): what it cost is read from there.
            self.budgets.release(reply.hold)

    async def _stream(
        self, reply: Reply, prompt: Prompt, deadline: asyncio.Timeout, *, batched: bool
    ) -> None:
        """The answer into ``reply.pending``, sent on when ``chunk_chars`` are waiting (or
        at once, not ``batched``); asked for again after a failure ``_retry_wait`` allows."""
        for attempt in itertools.count():
            try:
                # aclosing: a cancel or the deadline closes the upstream stream at once,
                # not when the generator is collected.
                stream = self.responder.stream(prompt, reply.outcome)
                async with contextlib.aclosing(stream) as deltas:
                    async for delta in deltas:
                        # Stored text holds no U+0000 (PostgreSQL refuses it, and with
                        # it the batch the reply is committed in): shown as stored.
                        reply.pending += delta.replace("\x00", "\ufffd")
                        if not batched or len(reply.pending) >= self.limits.chunk_chars:
                            self._flush(reply)
                return
            except UpstreamError as exc:
                wait = self._retry_wait(reply, exc, attempt, deadline.when())
                if wait is None:
                    raise
                log.info("assistant reply %s: retrying in %.2f s after %s", reply.id, wait, exc)
                await asyncio.sleep(wait)

    def _retry_wait(
        self, reply: Reply, error: UpstreamError, attempt: int, deadline: float | None
    ) -> float | None:
        """How long to wait before asking again, or ``None`` not to: a request that
        failed before any text (the room saw nothing) is retried on a rate limit
        (429), an overload (529), another server error or a failed connection,
        ``max_retries`` times, after the retry-after the service asked for or an
        exponential backoff, never more than ``retry_max_wait``; not when the wait
        would outlast the deadline (the reply fails now rather than then)."""
        retryable = error.status is None or error.status in (408, 429) or error.status >= 500
        if not retryable or reply.text or reply.pending or attempt >= self.limits.max_retries:
            return None
        if error.retry_after is not None:
            wait = error.retry_after
        else:
            wait = RETRY_BACKOFF_SECONDS * 2**attempt * random.uniform(0.75, 1.0)
        wait = min(wait, self.limits.retry_max_wait)
        loop = asyncio.get_running_loop()
        if deadline is not None and loop.time() + wait >= deadline:
            return None
        return wait

    async def _flush_periodically(self, reply: Reply, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._flush(reply)

    def _flush(self, reply: Reply) -> None:
        if not reply.pending:
            return
        chunk, reply.pending = reply.pending, ""
        # Text and seq change together with the emit's recipient list: a join sees
        # this chunk either in the reply's text or live, never neither.
        reply.text += chunk
        reply.seq += 1
        if self._cluster is not None:
            self._cluster.streamed(reply.id, chunk)  # the text, ahead of the chunk
        self._emit(reply, ServerEvent.AI_CHUNK, {"seq": reply.seq, "text": chunk})

    async def _finish(self, reply: Reply, status: str, error: AppError | None) -> None:
        if status != "completed":
            # The service reports output tokens in its last event, which a cancelled
            # or failed stream never gets (message_start says 1): what streamed is
            # counted instead, so that stopping a reply early does not make it free.
            usage = reply.outcome.usage
            usage.output_tokens = max(usage.output_tokens, estimate_tokens(reply.text))
        usage = reply.outcome.usage
        meta = {
            "reply_id": str(reply.id),
            "status": status,
            "model": self.responder.model,
            "stop_reason": reply.outcome.stop_reason,
            "usage": _usage_body(usage),
            "asked_by": str(reply.asked_by.user_id),
            "question": reply.question,  # a page reloaded later shows what was asked
            "citations": [citation.body() for citation in reply.citations],
        }
        message: Stored | None = None
        spent = NewUsage(
            user_id=reply.asked_by.user_id,
            document_id=reply.document_id,
            reply_id=reply.id,
            model=self.responder.model,
            status=status,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cost_usd=self.prices.cost(usage),
            created_at=utcnow(),
        )
        try:
            # The message and its usage in one transaction: a stored reply is paid for.
            if reply.text or status == "completed":
                message = await self._chat.post_assistant(
                    reply.document_id, reply.text, meta, usage=spent
                )
            else:
                async with self._sessions.begin() as session:
                    await usage_repo.record_usage(session, spent)
        except Exception:
            # The room still hears how the reply ended, if not what it said.
            log.exception("could not store assistant reply %s", reply.id)
            status, error = "failed", AiUnavailable("the reply could not be stored")
        body: dict[str, Any] = {
            "status": status,
            "message": message.data if message is not None else None,
            "usage": _usage_body(usage),
            "stop_reason": reply.outcome.stop_reason,
            "citations": meta["citations"],
        }
        if error is None:
            self._emit(reply, ServerEvent.AI_DONE, body)
        else:
            self._emit(reply, ServerEvent.AI_ERROR, {**body, "error": error.to_body()})

    def _emit(self, reply: Reply, event: ServerEvent, data: dict[str, Any]) -> None:
        # Chunks of one reply merge for a reader that falls behind; its start and end
        # are kept in order with the room's chat.
        kind = EventClass.AI_CHUNK if event is ServerEvent.AI_CHUNK else EventClass.CHAT
        self._broadcaster.to_room(
            reply.document_id,
            event,
            {"document_id": str(reply.document_id), "reply_id": str(reply.id), **data},
            kind=kind,
            key=reply.id,
        )


def _usage_body(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
    }


def _start_of_day() -> datetime:
    now = datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)
