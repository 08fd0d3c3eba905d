"""What the assistant has cost: tokens and dollars per user."""

from __future__ import annotations

from datetime import UTC

from aiohttp import web

from app.api.schemas import UsageList, UsageOut, UsageQuery
from app.api.v1 import api
from app.auth.principal import Principal
from app.errors import ValidationFailed
from app.keys import ASSISTANT


@api.route(
    "GET", "/usage", query=UsageQuery, response=UsageList, errors=(401, 403, 422), tag="assistant"
)
async def get_usage(request: web.Request, principal: Principal, query: UsageQuery) -> UsageList:
    """Assistant tokens and cost per user since a moment (default today, UTC): your own,
    or everyone's for admins."""
    if query.since is not None and query.since.tzinfo is None:
        raise ValidationFailed(
            details=[{"field": "since", "message": "give a time zone", "type": "timezone"}]
        )
    if query.since is not None:
        try:
            query.since.astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01T00:00+14:00 is in year 0 in UTC
            raise ValidationFailed(
                details=[{"field": "since", "message": "out of range", "type": "range"}]
            ) from exc
    since, totals = await request.app[ASSISTANT].usage(
        principal, since=query.since, user_id=query.user_id
    )
    return UsageList(
        since=since,
        items=[
            UsageOut(
                user_id=t.user_id,
                replies=t.replies,
                input_tokens=t.input_tokens,
                output_tokens=t.output_tokens,
                cache_creation_input_tokens=t.cache_creation_input_tokens,
                cache_read_input_tokens=t.cache_read_input_tokens,
                cost_usd=str(t.cost_usd),
            )
            for t in totals
        ],
    )
