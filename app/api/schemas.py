"""Pydantic models for every REST body, query and response."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from app.wire import MAX_SEQ, NO_NUL
from storage.models import DocumentRole, GlobalRole

Username = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        min_length=3,
        max_length=32,
        pattern=r"^[A-Za-z0-9_.-]+$",
    ),
    Field(description="3-32 of a-z, 0-9, '_', '.', '-'; stored lower-case"),
]
Password = Annotated[str, Field(min_length=8, max_length=256)]
Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=NO_NUL)
]
Limit = Annotated[int, Field(ge=1, le=100, description="page size")]


class Input(BaseModel):
    """Bodies clients send: unknown fields and wrong types are errors, not guesses."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    # Query strings are text: numbers are parsed from it, but unknown keys refused.
    model_config = ConfigDict(extra="forbid")


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- errors -----------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. validation_failed")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# --- auth -------------------------------------------------------------------------------


class Credentials(Input):
    username: Username
    password: Password


class RefreshRequest(Input):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class TokenResponse(Output):
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int = Field(description="seconds until the access token expires")


class UserOut(Output):
    id: uuid.UUID
    username: str
    role: GlobalRole
    disabled: bool
    created_at: datetime


class UserPage(Output):
    items: list[UserOut]
    next_cursor: str | None


class UserListQuery(Query):
    limit: Limit = 50
    cursor: Annotated[str, Field(max_length=64, pattern=NO_NUL)] | None = None


class UserUpdate(Input):
    role: GlobalRole | None = None
    disabled: bool | None = None


class ApiKeyCreate(Input):
    name: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NO_NUL),
    ]
    user_id: uuid.UUID | None = Field(None, description="the user the key acts as; default: you")


class ApiKeyOut(Output):
    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="shown once; send it as X-API-Key")


class ApiKeyList(Output):
    items: list[ApiKeyOut]


# --- documents --------------------------------------------------------------------------


class DocumentCreate(Input):
    title: Title


class DocumentUpdate(Input):
    title: Title


class DocumentOut(Output):
    id: uuid.UUID
    title: str
    owner_id: uuid.UUID
    role: DocumentRole = Field(description="your role in this document")
    created_at: datetime
    updated_at: datetime


class DocumentPage(Output):
    items: list[DocumentOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class DocumentListQuery(Query):
    limit: Limit = 20
    cursor: Annotated[str, Field(max_length=128)] | None = None


class MemberOut(Output):
    user_id: uuid.UUID
    username: str
    role: DocumentRole
    added_at: datetime


class MemberList(Output):
    items: list[MemberOut]


class MemberPut(Input):
    role: DocumentRole


class MemberAdd(Input):
    """Who to add, by ``username`` (what people know of each other) or ``user_id``."""

    username: Username | None = None
    user_id: uuid.UUID | None = None
    role: DocumentRole

    @model_validator(mode="after")
    def one_of_username_or_user_id(self) -> MemberAdd:
        if (self.username is None) == (self.user_id is None):
            raise ValueError("give one of username and user_id")
        return self


class MessageListQuery(Query):
    before: (
        Annotated[int, Field(ge=1, le=MAX_SEQ, description="only messages with seq below this")]
        | None
    ) = None
    after: (
        Annotated[int, Field(ge=0, le=MAX_SEQ, description="only messages with seq above this")]
        | None
    ) = None
    limit: Limit = 50


# --- document content (Yjs) ------------------------------------------------------------


class ContentQuery(Query):
    format: Literal["json", "text", "yjs"] = Field(
        "json",
        description="json: {text}; text: text/plain; yjs: the whole document as one "
        "binary Yjs v1 update (application/octet-stream)",
    )


class ContentOut(Output):
    text: str = Field(description="the document's text (its Y.Text named 'content')")


class ContentEdit(Input):
    text: str = Field(description="the text to add, or the document's new text")
    mode: Literal["append", "replace"] = Field(
        description="append: add at the end; replace: the document's text becomes `text`"
    )


class StorageOut(Output):
    update_count: int = Field(description="updates stored after the snapshot")
    update_bytes: int = Field(description="their total size")
    snapshot_bytes: int = Field(description="size of the snapshot (0: none yet)")
    loaded: bool = Field(description="whether the document is in this process's memory")


# --- assistant usage ----------------------------------------------------------------------


def _iso_8601(value: object) -> object:
    """pydantic reads a number as a Unix time (in seconds or milliseconds, as it
    guesses); this API takes ISO 8601 only."""
    if isinstance(value, str) and not re.match(r"\d{4}-", value):
        raise ValueError("not an ISO 8601 date-time")
    return value


class UsageQuery(Query):
    since: Annotated[datetime, BeforeValidator(_iso_8601)] | None = Field(
        None, description="ISO 8601 with a zone; default: the start of today (UTC)"
    )
    user_id: uuid.UUID | None = Field(None, description="admins: one user only")


class UsageOut(Output):
    user_id: uuid.UUID | None = Field(description="null: users deleted since")
    replies: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: str = Field(description="US dollars, as a decimal string")


class UsageList(Output):
    since: datetime
    items: list[UsageOut]


# --- operations -------------------------------------------------------------------------


class Health(Output):
    status: str


class Readiness(Output):
    status: str = Field(description="ready, not_ready or draining")
    checks: dict[str, str]
