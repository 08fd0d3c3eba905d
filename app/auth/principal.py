"""Who is calling: resolved once per request or connection."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from storage.models import GlobalRole


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: uuid.UUID
    username: str
    role: GlobalRole
    via: Literal["token", "api_key"]
    # When the presented access token stops being valid (None for API keys).
    expires_at: datetime | None = None
    # The sign-in session (refresh-token family) the access token was issued in:
    # revoking it (logout, refresh-token reuse) ends the connections opened with it.
    # None for API keys, an external provider's tokens and tokens issued before the
    # claim existed.
    session_id: uuid.UUID | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is GlobalRole.ADMIN
