"""Typed keys for everything the application shares through ``web.Application``."""

from __future__ import annotations

import asyncio

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.throttle import SignInThrottle
from app.cluster import ClusterView
from app.config import Settings
from app.metrics import Metrics
from app.services.assistant import Assistant
from app.services.auth import AuthService
from app.services.chat import ChatService
from app.services.documents import DocumentService
from app.services.knowledge.entries import KnowledgeService
from app.services.live_documents import LiveDocuments
from app.services.users import UserService

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey("sessions", async_sessionmaker[AsyncSession])
REDIS = web.AppKey("redis", Redis)  # present only when REDIS_URL is set
AUTH_SERVICE = web.AppKey("auth_service", AuthService)
SIGN_IN_THROTTLE = web.AppKey("sign_in_throttle", SignInThrottle)
USER_SERVICE = web.AppKey("user_service", UserService)
DOCUMENT_SERVICE = web.AppKey("document_service", DocumentService)
CHAT_SERVICE = web.AppKey("chat_service", ChatService)
LIVE_DOCUMENTS = web.AppKey("live_documents", LiveDocuments)
ASSISTANT = web.AppKey("assistant", Assistant)
KNOWLEDGE = web.AppKey("knowledge", KnowledgeService)
CLUSTER = web.AppKey("cluster", ClusterView)  # the nodes alive (GET /api/v1/cluster)
# Set when shutdown begins: /ready answers 503 from then on.
DRAINING = web.AppKey("draining", asyncio.Event)
