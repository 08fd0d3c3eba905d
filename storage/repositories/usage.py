"""Token usage and cost of assistant replies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import AiUsage


@dataclass(frozen=True, slots=True)
class NewUsage:
    """An ``AiUsage`` row to store: the tokens and cost of one assistant reply (with its
    message, storage/chat_batches.py, or alone: ``record_usage``)."""

    user_id: uuid.UUID | None
    document_id: uuid.UUID | None
    reply_id: uuid.UUID
    model: str
    status: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: Decimal
    created_at: datetime

    def values(self) -> dict[str, Any]:
        """Column by column, in the order the fields are declared."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


async def record_usage(session: AsyncSession, usage: NewUsage) -> AiUsage:
    row = AiUsage(**usage.values())
    session.add(row)
    await session.flush()
    return row


async def tokens_used_since(session: AsyncSession, user_id: uuid.UUID, since: datetime) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(AiUsage.input_tokens + AiUsage.output_tokens), 0)).where(
            AiUsage.user_id == user_id, AiUsage.created_at >= since
        )
    )
    return int(total or 0)


async def all_tokens_used_since(session: AsyncSession, since: datetime) -> int:
    """Everyone's input + output tokens since ``since`` (deleted users' included)."""
    total = await session.scalar(
        select(func.coalesce(func.sum(AiUsage.input_tokens + AiUsage.output_tokens), 0)).where(
            AiUsage.created_at >= since
        )
    )
    return int(total or 0)


@dataclass(frozen=True, slots=True)
class UsageTotals:
    user_id: uuid.UUID | None
    replies: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: Decimal


async def totals_by_user(
    session: AsyncSession, *, since: datetime, user_id: uuid.UUID | None = None
) -> list[UsageTotals]:
    query = (
        select(
            AiUsage.user_id,
            func.count(),
            func.sum(AiUsage.input_tokens),
            func.sum(AiUsage.output_tokens),
            func.sum(AiUsage.cache_creation_input_tokens),
            func.sum(AiUsage.cache_read_input_tokens),
            func.sum(AiUsage.cost_usd),
        )
        .where(AiUsage.created_at >= since)
        .group_by(AiUsage.user_id)
    )
    if user_id is not None:
        query = query.where(AiUsage.user_id == user_id)
    return [
        UsageTotals(
            row[0],
            int(row[1]),
            int(row[2]),
            int(row[3]),
            int(row[4]),
            int(row[5]),
            Decimal(row[6] or 0),
        )
        for row in (await session.execute(query)).all()
    ]
