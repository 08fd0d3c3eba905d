"""The /api/v1 route table; each feature module adds its routes to ``api``."""

from __future__ import annotations

from app.api.routing import Api

api = Api(prefix="/api/v1")
