"""The composition root: the only module that wires app services and ``realtime``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.api import auth as _auth_routes  # noqa: F401  (routes register on import)
from app.api import cluster as _cluster_routes  # noqa: F401
from app.api import documents as _document_routes  # noqa: F401
from app.api import knowledge as _knowledge_routes  # noqa: F401
from app.api import system, webui
from app.api import usage as _usage_routes  # noqa: F401
from app.api import users as _user_routes  # noqa: F401
from app.api.middleware import cors, errors, observe
from app.api.v1 import api
from app.auth.passwords import Passwords, password_hasher
from app.auth.throttle import SignInThrottle
from app.auth.tokens import token_codec
from app.buckets import Rate
from app.config import Settings
from app.keys import (
    ASSISTANT,
    AUTH_SERVICE,
    CHAT_SERVICE,
    DOCUMENT_SERVICE,
    DRAINING,
    ENGINE,
    KNOWLEDGE,
    LIVE_DOCUMENTS,
    METRICS,
    REDIS,
    SESSIONS,
    SETTINGS,
    SIGN_IN_THROTTLE,
    USER_SERVICE,
)
from app.metrics import Metrics
from app.services.ai_limits import AssistantLimits, Prices
from app.services.assistant import Assistant
from app.services.assistant_context import ContextBuilder
from app.services.auth import Accounts, AuthService
from app.services.cache import ExpiringCache
from app.services.chat import ChatService
from app.services.documents import DocumentService, Memberships
from app.services.knowledge.document_index import DocumentIndexer
from app.services.knowledge.embeddings import ApiEmbedder, Embedder, MiniLMEmbedder
from app.services.knowledge.entries import KnowledgeService
from app.services.knowledge.entry_index import EntryIndexer
from app.services.knowledge.index import PASSAGE_CHARS, SearchIndex
from app.services.live_documents import Limits, LiveDocuments
from app.services.responders import AnthropicResponder, OfflineResponder, Responder
from app.services.users import UserService
from realtime.cluster.chat import ChatStitch
from realtime.cluster.documents import DocumentLog
from realtime.cluster.resync import Resync
from realtime.server import shutdown
from realtime.wiring import cluster_link, create_realtime, redis_target
from storage.access_reads import access_reads
from storage.db import create_engine, create_sessionmaker
from storage.migrate import current_revision, head_revision
from storage.update_batches import update_writer
from storage.vectors import VectorStore

log = logging.getLogger(__name__)

# Accounts and memberships a process keeps in memory at most (each a few hundred bytes).
ACCESS_CACHE_ENTRIES = 50_000


class NotMigrated(RuntimeError):
    """The database schema is behind the code."""


def create_app(settings: Settings) -> web.Application:
    middlewares: list[Middleware] = [observe, errors]
    if settings.cors_origins:
        middlewares.insert(1, cors(settings.cors_origins))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics = Metrics()
    app[SIGN_IN_THROTTLE] = SignInThrottle(
        per_address=Rate(
            settings.login_attempts_per_address_per_minute / 60,
            settings.login_attempts_per_address_burst,
        ),
        failures_per_username=Rate(
            settings.login_failures_per_username_per_minute / 60,
            settings.login_failures_per_username_burst,
        ),
        registrations=Rate(
            settings.registrations_per_address_per_hour / 3600,
            settings.registrations_per_address_burst,
        ),
    )
    app[DRAINING] = asyncio.Event()
    codec = token_codec(settings)

    async def database(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(
            settings.resolved_database_url, pool_size=settings.database_pool_size
        )
        try:
            current, head = await current_revision(engine), head_revision()
            if current != head:
                raise NotMigrated(
                    f"the database is at revision {current or 'none'}, the code needs {head}: "
                    "run `python -m app migrate`"
                )
            sessions = create_sessionmaker(engine)
            app[ENGINE] = engine
            app[SESSIONS] = sessions
            accounts: Accounts = ExpiringCache(
                ttl=settings.access_cache_seconds, max_entries=ACCESS_CACHE_ENTRIES
            )
            memberships: Memberships = ExpiringCache(
                ttl=settings.access_cache_seconds, max_entries=ACCESS_CACHE_ENTRIES
            )
            reads = access_reads(engine, sessions)  # opens its connection on first use
            app[AUTH_SERVICE] = auth = AuthService(
                sessions,
                codec,
                Passwords(
                    password_hasher(settings),
                    concurrency=settings.password_hash_concurrency,
                    queue=settings.password_hash_queue,
                ),
                accounts,
                broadcaster,
                allow_registration=settings.allow_registration,
                reads=reads,
            )
            app[USER_SERVICE] = UserService(sessions, broadcaster, accounts)
            search_index = make_search_index(settings)
            search_index.warm_up()

            async def document_text(document_id: uuid.UUID) -> str:
                async with live_documents.opened(document_id) as live:
                    return str(live.text)

            document_index = DocumentIndexer(
                sessions,
                search_index,
                document_text,
                debounce=settings.document_index_debounce_seconds,
                max_delay=settings.document_index_max_delay_seconds,
                retry_seconds=settings.knowledge_retry_seconds,
            )
            updates = update_writer(engine)  # opens its connection on first use
            live_documents = LiveDocuments(
                sessions,
                broadcaster,
                Limits(
                    max_update_bytes=settings.yjs_max_update_bytes,
                    max_document_bytes=settings.yjs_max_document_bytes,
                    snapshot_debounce=settings.yjs_snapshot_debounce_seconds,
                    snapshot_max_delay=settings.yjs_snapshot_max_delay_seconds,
                    unload_after=settings.yjs_unload_after_seconds,
                ),
                on_change=document_index.changed,
                peers=document_log,
                updates=updates,
            )
            app[LIVE_DOCUMENTS] = live_documents
            if resync is not None:  # after a Redis outage, the copies read what they lack
                resync.use_documents(live_documents.resync)
            app[DOCUMENT_SERVICE] = documents = DocumentService(
                sessions,
                broadcaster,
                live_documents,
                memberships,
                max_owned=settings.max_documents_per_user,
                index=document_index,
                reads=reads,
            )
            app[CHAT_SERVICE] = chat = ChatService(
                sessions,
                engine,
                broadcaster,
                memberships,
                documents.room_access,
                page_size=settings.history_page_size,
                max_batch=settings.chat_batch_max_messages,
                linger=settings.chat_batch_linger_seconds,
                order=chat_order,
            )
            if chat_order is not None:
                chat_order.use(chat.stored_after, chat.stored_last_seq)
            app[KNOWLEDGE] = knowledge = KnowledgeService(
                sessions,
                EntryIndexer(
                    sessions, search_index, retry_seconds=settings.knowledge_retry_seconds
                ),
                document_index,
            )
            knowledge.start()
            responder = make_responder(settings)
            limits = assistant_limits(settings)
            context = ContextBuilder(
                sessions, live_documents, limits, knowledge, passages=settings.ai_passages
            )
            app[ASSISTANT] = assistant = Assistant(
                sessions,
                broadcaster,
                chat,
                documents.room_access,
                context,
                responder,
                limits,
                realtime.replies,
            )
            if realtime.replies is not None:  # another node's cancel of a reply here
                realtime.replies.use(assistant.cancel_here)
            realtime.use(
                auth=auth,
                documents=documents,
                chat=chat,
                assistant=assistant,
                live_documents=live_documents,
            )
            yield
            # After the connections ended (on_shutdown): replies streaming are
            # ended and stored, what is unsaved is saved.
            await assistant.close()
            await chat.close()  # after the replies it stores
            await responder.close()
            await knowledge.close()  # no document is opened for the index after this
            await live_documents.close_all()
            if updates is not None:
                await updates.close()
            await reads.close()
        finally:
            await engine.dispose()

    async def redis(app: web.Application) -> AsyncIterator[None]:
        target = redis_target(settings)
        assert target is not None
        client = target.client()
        app[REDIS] = client
        try:
            yield
        finally:
            await client.aclose()

    # The realtime layer is what services broadcast through; with Redis, to every node.
    cluster = cluster_link(settings, metrics)
    realtime, broadcaster = create_realtime(app, settings, metrics, cluster)
    # Chat by seq across nodes: every node's messages in order, joins split at one seq.
    chat_order = ChatStitch(cluster, realtime.delivery) if cluster is not None else None
    replies = realtime.replies  # the assistant's replies over every node
    # The live documents' updates between the nodes holding each document.
    redis_at = redis_target(settings)
    document_log = (
        DocumentLog(cluster, redis_at, prefix=settings.cluster_channel_prefix)
        if cluster is not None and redis_at is not None
        else None
    )
    # After a Redis outage: the rooms' members, here and on the other nodes, resynced.
    resync = None
    if cluster is not None and chat_order is not None and realtime.shared is not None:
        resync = Resync(
            cluster,
            realtime.delivery,
            chat_order,
            realtime.shared,
            page_size=settings.presence_page_size,
        )

    async def cluster_lifecycle(app: web.Application) -> AsyncIterator[None]:
        assert cluster is not None and chat_order is not None and resync is not None
        assert replies is not None and document_log is not None
        replies.forward = chat_order.heard  # the assistant's events through its copies
        document_log.forward = replies.heard  # documents' updates to their copies
        await cluster.start(document_log.heard, act=broadcaster.act, on_resumed=resync.resumed)
        await replies.start()
        try:
            yield
        finally:
            await replies.close()  # after the assistant's (database) cleanup released its own
            await resync.close()
            await cluster.close()  # last: what the services store on the way out is sent
            await document_log.close()  # after the last snapshots (database cleanup)

    if cluster is not None:
        app.cleanup_ctx.append(cluster_lifecycle)
        app.cleanup_ctx.append(realtime.shared_presence)  # closed before the link
    app.cleanup_ctx.append(database)
    if settings.redis_url:
        app.cleanup_ctx.append(redis)

    async def drain(app: web.Application) -> None:
        # Phase one of shutdown: refuse readiness, end live connections. The
        # cleanup contexts (phase two) then close the pools. Safe to run twice.
        app[DRAINING].set()
        await shutdown(realtime.sio, timeout=settings.shutdown_timeout_seconds)
        await realtime.close()

    app.on_shutdown.append(drain)
    api.install(app)
    system.install(app)
    webui.install(app)  # the page at /, from the build shipped in app/webui/
    return app


def make_responder(settings: Settings) -> Responder:
    """Claude when a key is configured; otherwise the offline responder."""
    if settings.anthropic_api_key is None:
        return OfflineResponder()
    return AnthropicResponder(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url,
        model=settings.anthropic_model,
    )


def make_search_index(settings: Settings) -> SearchIndex:
    """The vector index: Qdrant local mode in a folder unless ``QDRANT_URL`` is set."""
    embedder = make_embedder(settings)
    # One collection per embedding model: vectors of two models never mix.
    collection = "passages_" + "".join(c if c.isalnum() else "_" for c in embedder.name.lower())
    store = VectorStore(
        url=settings.qdrant_url,
        path=None if settings.qdrant_url else settings.resolved_qdrant_path,
        collection=collection,
        dimension=embedder.dimension,
    )
    return SearchIndex(store, embedder)


def make_embedder(settings: Settings) -> Embedder:
    if settings.embeddings == "local":
        return MiniLMEmbedder()
    if settings.embeddings_api_url is None:
        raise ValueError("EMBEDDINGS=api needs EMBEDDINGS_API_URL")
    key = settings.embeddings_api_key
    return ApiEmbedder(
        url=settings.embeddings_api_url,
        model=settings.embeddings_api_model,
        dimension=settings.embeddings_api_dimension,
        api_key=key.get_secret_value() if key else None,
    )


def assistant_limits(settings: Settings) -> AssistantLimits:
    return AssistantLimits(
        max_tokens=settings.ai_max_tokens,
        system_prompt=settings.ai_system_prompt,
        context_tokens=settings.ai_context_tokens,
        document_chars=settings.ai_document_chars,
        # Each retrieved passage: its text, title and number.
        sources_chars=settings.ai_passages * (PASSAGE_CHARS + 250),
        replies_per_room=settings.ai_replies_per_room,
        replies_per_user=settings.ai_replies_per_user,
        prompts_at_once=settings.ai_prompts_at_once,
        daily_tokens_per_user=settings.ai_daily_tokens_per_user,
        daily_tokens=settings.ai_daily_tokens,
        deadline=settings.ai_deadline_seconds,
        max_retries=settings.ai_max_retries,
        retry_max_wait=settings.ai_retry_max_wait_seconds,
        chunk_interval=settings.ai_chunk_interval_seconds,
        chunk_chars=settings.ai_chunk_chars,
        breaker_failures=settings.ai_breaker_failures,
        breaker_reset=settings.ai_breaker_reset_seconds,
        prices=Prices(
            input=settings.ai_price_input_usd_per_mtok,
            output=settings.ai_price_output_usd_per_mtok,
            cache_write=settings.ai_price_cache_write_usd_per_mtok,
            cache_read=settings.ai_price_cache_read_usd_per_mtok,
        ),
    )
