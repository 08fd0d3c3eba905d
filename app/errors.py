"""Errors a client may see, each with a stable ``code`` and an HTTP status.

They are turned into wire bodies in exactly two places: the aiohttp middleware
(``app/api/middleware.py``) and the Socket.IO command wrapper (``realtime``).
Anything else that escapes reaches the client as ``internal`` with no detail.

    AppError (500 internal)
     ├── BadRequest (400 bad_request)
     │    ├── MalformedJSON (400 malformed_json)
     │    └── InvalidUpdate (400 invalid_update)
     ├── Unauthorized (401 unauthorized)
     │    ├── InvalidToken (401 invalid_token)
     │    ├── TokenExpired (401 token_expired)
     │    ├── TokenReused (401 token_reused)
     │    └── InvalidCredentials (401 invalid_credentials)
     ├── Forbidden (403 forbidden)
     │    ├── UserDisabled (403 user_disabled)
     │    ├── ReadOnly (403 read_only)
     │    └── LimitReached: a cap on what one user or connection may hold
     │         ├── TooManyConnections (403 too_many_connections)
     │         ├── TooManyNamespaces (403 too_many_namespaces)
     │         ├── TooManyRooms (403 too_many_rooms)
     │         └── TooManyDocuments (403 too_many_documents)
     ├── NotFound (404 not_found)
     │    └── UserNotFound (404 user_not_found)
     ├── Conflict (409 conflict)
     │    └── UsernameTaken (409 username_taken)
     ├── PayloadTooLarge (413 payload_too_large)
     │    ├── UpdateTooLarge (413 update_too_large)
     │    └── DocumentTooLarge (413 document_too_large)
     ├── UnsupportedMediaType (415 unsupported_media_type)
     ├── ValidationFailed (422 validation_failed)
     ├── RateLimited (429 rate_limited)
     │    ├── AiBusy (429 ai_busy)
     │    └── AiBudgetExceeded (429 ai_budget_exceeded)
     │         └── AiServerBudgetExceeded (429 ai_server_budget_exceeded)
     ├── ServiceUnavailable (503 unavailable)
     │    └── ServerFull (503 server_full)
     └── AiUnavailable (503 ai_unavailable)
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError


class AppError(Exception):
    """Base of every error that has a meaning for the client."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    default_message: ClassVar[str] = "internal error"

    # Seconds a client should wait before trying again (HTTP: the Retry-After header).
    retry_after: float | None = None

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def to_body(self) -> dict[str, Any]:
        """The ``{"code", "message", "details"?}`` object used on every wire."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class BadRequest(AppError):
    status = 400
    code = "bad_request"
    default_message = "bad request"


class MalformedJSON(BadRequest):
    code = "malformed_json"
    default_message = "the body is not valid JSON"


class InvalidUpdate(BadRequest):
    code = "invalid_update"
    default_message = "not a Yjs update (v1 encoding)"


class UnappliableUpdate(InvalidUpdate):
    """Well-formed, but the CRDT library fails applying it to this document's content
    (a crafted update can make yrs panic): refused, and kept out of the log."""

    default_message = "the update cannot be applied to this document"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    default_message = "authentication required"


class InvalidToken(Unauthorized):
    code = "invalid_token"
    default_message = "the token is invalid"


class TokenExpired(Unauthorized):
    code = "token_expired"
    default_message = "the token has expired"


class TokenReused(Unauthorized):
    code = "token_reused"
    default_message = "this refresh token was already used; its session was revoked"


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    default_message = "wrong username or password"


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    default_message = "not allowed"


class UserDisabled(Forbidden):
    code = "user_disabled"
    default_message = "this account is disabled"


class ReadOnly(Forbidden):
    code = "read_only"
    default_message = "viewers cannot edit this document"


class LimitReached(Forbidden):
    """Holding more than a cap allows; closing or leaving something makes room."""


class TooManyConnections(LimitReached):
    code = "too_many_connections"
    default_message = "you have too many connections open; close one"


class TooManyNamespaces(LimitReached):
    code = "too_many_namespaces"
    default_message = "this connection has too many namespaces open; close one"


class TooManyRooms(LimitReached):
    code = "too_many_rooms"
    default_message = "this connection is in too many rooms; leave one"


class TooManyDocuments(LimitReached):
    code = "too_many_documents"
    default_message = "you own as many documents as you may; delete one"


class NotFound(AppError):
    status = 404
    code = "not_found"
    default_message = "not found"


class UserNotFound(NotFound):
    code = "user_not_found"
    default_message = "no such user"


class Conflict(AppError):
    status = 409
    code = "conflict"
    default_message = "conflict"


class UsernameTaken(Conflict):
    code = "username_taken"
    default_message = "this username is taken"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"
    default_message = "the request body is too large"


class UpdateTooLarge(PayloadTooLarge):
    code = "update_too_large"
    default_message = "the update is larger than the server accepts"


class DocumentTooLarge(PayloadTooLarge):
    code = "document_too_large"
    default_message = "the document would grow past its size limit"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"
    default_message = "send application/json"


class ValidationFailed(AppError):
    status = 422
    code = "validation_failed"
    default_message = "the request does not match the schema"

    @classmethod
    def of(cls, exc: ValidationError, *, whole: str = "(body)") -> ValidationFailed:
        """Which field is wrong and why; never the input (it may be a password)."""
        details = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or whole,
                "message": error["msg"],
                "type": error["type"],
            }
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        return cls(details=details)


class RateLimited(AppError):
    status = 429
    code = "rate_limited"
    default_message = "too many requests"

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message, details={"retry_after": retry_after} if retry_after else None)
        self.retry_after = retry_after


class ServiceUnavailable(AppError):
    status = 503
    code = "unavailable"
    default_message = "the service is unavailable"


class ServerFull(ServiceUnavailable):
    code = "server_full"
    default_message = "the server has as many connections as it takes; try another or later"


class AiBusy(RateLimited):
    code = "ai_busy"
    default_message = "the assistant is already answering here"


class AiBudgetExceeded(RateLimited):
    code = "ai_budget_exceeded"
    default_message = "your daily token budget is spent"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        if details:  # what is spent, held and left, beside the retry_after
            self.details = {**details, **(self.details or {})}


class AiServerBudgetExceeded(AiBudgetExceeded):
    """The deployment's daily budget (``AI_DAILY_TOKENS``), shared by all users."""

    code = "ai_server_budget_exceeded"
    default_message = "the server's daily token budget for the assistant is spent"


class AiUnavailable(AppError):
    status = 503
    code = "ai_unavailable"
    default_message = "the assistant is unavailable"
