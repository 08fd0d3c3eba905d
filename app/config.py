"""Settings: the only place that reads the environment.

Every knob is an environment variable of the same name in upper case (``PORT``,
``DATABASE_URL``, ...). Defaults give a single process with embedded parts (SQLite
in ``DATA_DIR``, no Redis, Qdrant in a folder, an offline AI responder), so
``python -m app`` works on a fresh machine.
"""

from __future__ import annotations

from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Values people paste from examples; in production they are as good as no secret.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "jwt-secret", "your-secret", "dev", "development"}
)
MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- serving -------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 behind a proxy.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (Procfile passes $PORT).")
    env: Literal["development", "production"] = Field(
        "development",
        description="production refuses placeholder secrets and logs JSON by default.",
    )
    data_dir: Path = Field(
        Path("./data"),
        description="Where the embedded defaults keep their files (SQLite, dev JWT secret).",
    )
    shutdown_grace_seconds: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, /ready answers 503 this long before the listener "
        "closes, so a load balancer stops routing here first.",
    )
    shutdown_timeout_seconds: float = Field(
        10.0, gt=0, description="How long open requests may take to finish on shutdown."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated browser origins allowed to call the API and "
        "Socket.IO; '*' allows any (development only).",
    )

    # --- data ----------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL (postgresql+asyncpg://... in production); "
        "unset means a SQLite file in DATA_DIR.",
    )
    database_pool_size: int = Field(10, ge=1, description="PostgreSQL pool size per process.")
    redis_url: str | None = Field(
        None,
        description="redis://...; checked by /ready. Set, room events reach the room's "
        "members on every node sharing this Redis (realtime/cluster/).",
    )
    redis_sentinels: Annotated[list[tuple[str, int]], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host:port of Redis Sentinels: the master is found "
        "through them (and again after a failover), REDIS_URL's host naming it "
        "(redis://:password@mymaster/0).",
    )
    cluster_channel_prefix: str = Field(
        "roomserver",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of the Redis pub/sub channels (one per room) the nodes "
        "share: nodes with the same REDIS_URL and prefix form one cluster.",
    )

    # --- auth ----------------------------------------------------------------------
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 signing secret (>= 32 characters in production)."
    )
    jwt_private_key: SecretStr | None = Field(
        None, description="RS256 private key, PEM text or a file path (we issue tokens)."
    )
    jwt_public_key: str | None = Field(
        None,
        description="RS256 public key, PEM text or a file path. Alone, it accepts tokens "
        "from an external identity provider and disables local login.",
    )
    jwt_issuer: str = Field("roomserver", description="`iss` issued and required.")
    jwt_audience: str = Field("roomserver", description="`aud` issued and required.")
    access_token_ttl_seconds: int = Field(900, ge=2, description="Access token lifetime.")
    refresh_token_ttl_seconds: int = Field(
        30 * 24 * 3600, ge=60, description="Refresh token lifetime."
    )
    allow_registration: bool = Field(True, description="Open self-registration.")
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses or networks of the reverse proxies in "
        "front of this server: from them X-Forwarded-For names the client's address; "
        "from any other peer it is ignored.",
    )
    login_attempts_per_address_per_minute: float = Field(
        20, gt=0, description="Sign-ins from one client address per minute..."
    )
    login_attempts_per_address_burst: int = Field(40, ge=1, description="...and at once.")
    login_failures_per_username_per_minute: float = Field(
        1, gt=0, description="Wrong passwords for one username per minute..."
    )
    login_failures_per_username_burst: int = Field(
        5, ge=1, description="...and in a row: then 429 until the bucket refills."
    )
    registrations_per_address_per_hour: float = Field(
        10, gt=0, description="Registrations from one client address per hour..."
    )
    registrations_per_address_burst: int = Field(10, ge=1, description="...and at once.")
    password_hash_concurrency: int = Field(
        2,
        ge=1,
        description="Password hashes computed at once (each Argon2id costs ~50 ms of a "
        "core and 64 MiB)...",
    )
    password_hash_queue: int = Field(
        32,
        ge=0,
        description="...and waiting for a turn; past both, sign-ins and registrations are "
        "answered 503 unavailable with Retry-After.",
    )
    password_hash_time_cost: int = Field(
        3,
        ge=1,
        description="Argon2id passes over the memory (RFC 9106's second recommendation: 3)...",
    )
    password_hash_memory_kib: int = Field(
        65536,
        ge=32,  # 8 KiB for each of the 4 lanes
        description="...and the memory each hash fills, in KiB (64 MiB). A stored hash made "
        "with other parameters is made again at its user's next sign-in. Below OWASP's "
        "minimum (19 MiB with 2 passes) the server warns at start: for tests only.",
    )

    # --- AI and knowledge (used by later features) ---------------------------------
    anthropic_api_key: SecretStr | None = Field(
        None, description="Unset: the offline responder answers instead of Claude."
    )
    anthropic_base_url: str | None = Field(None, description="Override the Anthropic API URL.")
    anthropic_model: str = Field("claude-sonnet-4-6", description="Model for replies.")
    ai_max_tokens: int = Field(1024, ge=1, description="Most output tokens of one reply.")
    ai_system_prompt: str = Field(
        "You are the assistant of a shared document and its chat. Answer the latest "
        "question from the room concisely; use the document when it helps.",
        description="The system prompt of every reply.",
    )
    ai_context_tokens: int = Field(
        8000,
        ge=256,
        description="Budget (estimated tokens) for the recent chat sent with a question.",
    )
    ai_document_chars: int = Field(
        20000, ge=0, description="At most this much of the document's text goes with a question."
    )
    ai_passages: int = Field(
        5,
        ge=0,
        le=20,
        description="Passages found for a question (knowledge and documents the asker may "
        "read) that go with it, each cited in the reply; 0: none.",
    )
    ai_replies_per_room: int = Field(
        1, ge=1, description="Replies that may stream in one room at the same time."
    )
    ai_replies_per_user: int = Field(
        2, ge=1, description="Replies one user may have streaming at the same time."
    )
    ai_prompts_at_once: int = Field(
        4,
        ge=1,
        description="Replies that may build their prompts at the same time (the document, "
        "the chat, the search); the others wait their turn, so that a burst of asks does "
        "not hold up every other event of the server.",
    )
    ai_daily_tokens_per_user: int = Field(
        200_000, ge=0, description="Input + output tokens a user may spend per UTC day."
    )
    ai_daily_tokens: int = Field(
        5_000_000,
        ge=0,
        description="Input + output tokens all users together may spend per UTC day on "
        "this deployment (a ceiling on the day's bill; 0 refuses every ask, there is no "
        "unlimited value).",
    )
    ai_max_retries: int = Field(
        2,
        ge=0,
        description="Retries of a reply whose request failed before any text: 429, 529, "
        "other 5xx answers and connection errors...",
    )
    ai_retry_max_wait_seconds: float = Field(
        10,
        gt=0,
        description="...each after the service's retry-after or a backoff, but never longer "
        "than this (the SDK would wait out any retry-after).",
    )
    ai_deadline_seconds: float = Field(
        120, gt=0, description="A reply that has not finished after this is ended as failed."
    )
    ai_breaker_failures: int = Field(
        5,
        ge=1,
        description="After this many failed replies in a row, asking fails fast with "
        "ai_unavailable...",
    )
    ai_breaker_reset_seconds: float = Field(
        30, gt=0, description="...until this long has passed; then one reply tries again."
    )
    ai_price_input_usd_per_mtok: Decimal = Field(
        Decimal("3"), ge=0, description="Price of a million input tokens, for usage costs."
    )
    ai_price_output_usd_per_mtok: Decimal = Field(
        Decimal("15"), ge=0, description="Price of a million output tokens."
    )
    ai_price_cache_write_usd_per_mtok: Decimal = Field(
        Decimal("3.75"), ge=0, description="Price of a million tokens written to the cache."
    )
    ai_price_cache_read_usd_per_mtok: Decimal = Field(
        Decimal("0.30"), ge=0, description="Price of a million tokens read from the cache."
    )
    ai_chunk_interval_seconds: float = Field(
        0.05, ge=0, description="Streamed text is sent to the room at most this often..."
    )
    ai_chunk_chars: int = Field(
        400, ge=1, description="...or as soon as this many characters are waiting."
    )
    qdrant_url: str | None = Field(None, description="Qdrant server; unset: local mode.")
    qdrant_path: Path | None = Field(
        None, description="Folder for Qdrant local mode (default DATA_DIR/qdrant)."
    )
    embeddings: Literal["local", "api"] = Field(
        "local",
        description="local: all-MiniLM-L6-v2 computed in this process (offline); api: a "
        "hosted embedding API (EMBEDDINGS_API_URL). Changing it needs a reindex.",
    )
    embeddings_api_url: str | None = Field(
        None, description="The API's embeddings endpoint (the /v1/embeddings request shape)."
    )
    embeddings_api_key: SecretStr | None = Field(None, description="Its Bearer key.")
    embeddings_api_model: str = Field("text-embedding-3-small", description="Its model.")
    embeddings_api_dimension: int = Field(
        1536, ge=1, description="The length of that model's vectors."
    )
    document_index_debounce_seconds: float = Field(
        5,
        ge=0,
        description="A document's passages are indexed for search once its edits have "
        "been quiet this long...",
    )
    document_index_max_delay_seconds: float = Field(
        30, ge=0, description="...and no later than this after the first edit not indexed."
    )
    knowledge_retry_seconds: float = Field(
        5,
        gt=0,
        description="A failed write to the vector index is retried after this, doubling "
        "up to 5 minutes.",
    )

    # --- limits --------------------------------------------------------------------
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest accepted REST request body."
    )

    max_documents_per_user: int = Field(
        10_000,
        ge=1,
        description="Documents one user may own; more are refused (too_many_documents).",
    )

    # --- connections and socket rate limits (docs/protocol.md §5.11) -------------------
    max_connections: int = Field(
        10_000,
        ge=1,
        description="Engine.IO connections (transports) per process; past it a handshake "
        "is answered 503 server_full.",
    )
    max_connections_per_user: int = Field(
        5,
        ge=1,
        description="Connections (transports) one user may hold, over every node sharing "
        "REDIS_URL; past it a namespace connect is refused too_many_connections.",
    )
    max_namespaces_per_connection: int = Field(
        20, ge=2, description="Namespaces (/ and /yjs|<id>) one connection may open."
    )
    max_rooms_per_connection: int = Field(
        50, ge=1, description="Rooms one connection may have joined at once."
    )
    socket_connect_timeout_seconds: float = Field(
        20,
        gt=0,
        description="A connection with no namespace connected this long after its "
        "handshake (or after leaving its last namespace) is closed.",
    )
    rate_room_per_second: float = Field(
        5, gt=0, description="join and leave per connection per second..."
    )
    rate_room_burst: int = Field(20, ge=1, description="...and at once.")
    rate_chat_per_second: float = Field(
        5, gt=0, description="chat:send, chat:edit and chat:delete per connection per second..."
    )
    rate_chat_burst: int = Field(20, ge=1, description="...and at once.")
    rate_history_per_second: float = Field(
        5, gt=0, description="chat:history per connection per second..."
    )
    rate_history_burst: int = Field(20, ge=1, description="...and at once.")
    rate_presence_per_second: float = Field(
        20, gt=0, description="presence:update per connection per second..."
    )
    rate_presence_burst: int = Field(40, ge=1, description="...and at once.")
    rate_typing_per_second: float = Field(
        4, gt=0, description="typing per connection per second (either value)..."
    )
    rate_typing_burst: int = Field(8, ge=1, description="...and at once.")
    rate_ai_per_second: float = Field(
        1, gt=0, description="ai:ask and ai:cancel per connection per second..."
    )
    rate_ai_burst: int = Field(5, ge=1, description="...and at once.")
    rate_session_per_second: float = Field(
        1, gt=0, description="auth:refresh per connection per second..."
    )
    rate_session_burst: int = Field(5, ge=1, description="...and at once.")
    rate_user_factor: float = Field(
        2,
        ge=1,
        description="Each user also has one bucket per class, this many times a "
        "connection's, shared by all their connections (more tabs, no more rate).",
    )

    # --- realtime ------------------------------------------------------------------
    socket_ping_interval_seconds: float = Field(
        25,
        gt=0,
        description="Engine.IO ping interval; with the timeout, bounds how long "
        "a connection that died without goodbye stays present.",
    )
    socket_ping_timeout_seconds: float = Field(
        20, gt=0, description="Engine.IO ping timeout (see the interval)."
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="The event loop `python -m app` runs on: uvloop (libuv, in C), the "
        "standard library's, or auto: uvloop where it is installed (not on Windows).",
    )
    gc_freeze: bool = Field(
        True,
        description="After start-up, move every object then alive out of the cyclic "
        "GC's sight (gc.freeze), so full collections walk only what connections and "
        "requests allocate (docs/benchmarks.md measures both ways).",
    )
    gc_young_threshold: int = Field(
        10_000,
        ge=1,
        description="The cyclic GC's first threshold (gc.set_threshold): a young "
        "collection starts once this many more objects it tracks are alive than at the "
        "last one. Connections are long-lived objects: at CPython's 700, 1,000 users "
        "joining at once cost about 10% of their CPU in collections (most of it in the "
        "older generations' that the young ones' count sets off), at 10,000 a third of "
        "that; a young collection then pauses for about 3 ms (docs/benchmarks.md, "
        '"Joins", measures both).',
    )
    websocket_compression: bool = Field(
        False,
        description="Negotiate permessage-deflate with websocket clients that offer it "
        "(no context takeover; messages of 1 KiB and more are compressed, once per "
        "broadcast). Saves bandwidth on large messages (Yjs updates, long chat) for CPU.",
    )
    access_cache_seconds: float = Field(
        30,
        ge=0,
        description="How long a process keeps what it read of an account or a membership "
        "(changes made through this process apply at once; others after this long).",
    )
    delivery_max_buffered_bytes: int = Field(
        1024 * 1024,
        ge=4096,
        description="Bytes of events one connection may have waiting (beyond its socket "
        "buffer and the next event) before it is closed as a slow consumer.",
    )
    delivery_max_buffered_events: int = Field(
        10_000,
        ge=16,
        description="Events one connection may have waiting before it is closed as a "
        "slow consumer (replaced and merged events count once).",
    )
    chat_message_max_chars: int = Field(4000, ge=1, description="Longest chat message.")
    history_page_size: int = Field(
        100,
        ge=1,
        le=1000,
        description="Messages in a join's catch-up page (history pages use their own limit).",
    )
    chat_batch_max_messages: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Most chat messages stored in one transaction (group commit).",
    )
    chat_batch_linger_seconds: float = Field(
        0.003,
        ge=0,
        le=0.05,
        description="After a transaction of several chat messages, the next waits this "
        "long at most for as many (their senders answering their acks); a lone message "
        "never waits. 0: never wait.",
    )
    typing_timeout_seconds: float = Field(
        5, gt=0, description="A typing indicator clears itself after this long."
    )
    typing_throttle_seconds: float = Field(
        1, ge=0, description="At most one typing broadcast per user and room this often."
    )
    presence_state_max_bytes: int = Field(
        2048, ge=64, description="Largest per-connection presence state (cursor, status)."
    )
    presence_page_size: int = Field(
        100,
        ge=1,
        le=1000,
        description="Users in a join's presence and in a presence:list page; a room with "
        "more lists the rest page by page (a crowd joining costs each ack a page, not the "
        "room).",
    )
    presence_batch_seconds: float = Field(
        0.05,
        ge=0,
        le=5,
        description="A room's arrivals and departures go out together at most this often "
        "(presence:changed), so a burst of N joins costs each member a few events, not N; "
        "0: those of each event-loop turn at its end. A room of more than "
        "PRESENCE_PAGE_SIZE users waits that many times longer (up to "
        "PRESENCE_BATCH_MAX_SECONDS).",
    )
    presence_batch_max_seconds: float = Field(
        1.0,
        ge=0,
        le=10,
        description="The longest a large room's arrivals and departures wait "
        "(PRESENCE_BATCH_SECONDS grows with the room's size up to this).",
    )
    token_renew_lead_seconds: float = Field(
        60,
        gt=0,
        description="Ask a connection for a fresh token this long before its "
        "access token expires (at most half its lifetime).",
    )
    token_renew_grace_seconds: float = Field(
        30, ge=0, description="A connection whose token expired is disconnected after this."
    )

    # --- collaborative documents (Yjs) -------------------------------------------------
    yjs_max_update_bytes: int = Field(
        512 * 1024,
        ge=1024,
        description="Largest Yjs update a client or a REST edit may send; larger ones are "
        "refused with update_too_large.",
    )
    yjs_max_document_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest encoded document; updates that would grow it further are "
        "refused with document_too_large.",
    )
    yjs_max_awareness_bytes: int = Field(
        16 * 1024, ge=64, description="Largest awareness update (cursors, user names)."
    )
    yjs_messages_per_second: float = Field(
        50,
        gt=0,
        description="Sustained sync-update + awareness-update messages per connection; "
        "beyond it messages are refused (rate_limited) and the client is re-synced later.",
    )
    yjs_message_burst: int = Field(
        200, ge=1, description="Messages a connection may send at once before the rate applies."
    )
    yjs_snapshot_debounce_seconds: float = Field(
        2,
        ge=0,
        description="Compact a document's update log into a snapshot once it has been "
        "quiet this long (like Hocuspocus' debounce).",
    )
    yjs_snapshot_max_delay_seconds: float = Field(
        10,
        ge=0,
        description="...but no later than this after the first update not in a snapshot "
        "(like Hocuspocus' maxDebounce).",
    )
    yjs_unload_after_seconds: float = Field(
        30,
        ge=0,
        description="A document nobody has open is saved and dropped from memory after this.",
    )

    # --- logging -------------------------------------------------------------------
    log_level: str = Field("INFO", description="Python logging level name.")
    log_format: Literal["json", "text"] | None = Field(
        None, description="json or text; default json in production, text in development."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        """``host:port,host:port`` (``[v6]:port`` too) as pairs."""
        if not isinstance(value, str):
            return value
        sentinels = []
        for part in (p.strip() for p in value.split(",")):
            host, colon, port = part.rpartition(":")
            if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"not a host:port: {part!r}")
            sentinels.append((host.strip("[]"), int(port)))
        return sentinels

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [
                ip_network(part, strict=False) if isinstance(part, str) else part for part in value
            ]
        return value

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.env != "production":
            return self
        problems = []
        if self.jwt_public_key is None and self.jwt_private_key is None:
            secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
            if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < MIN_SECRET_LENGTH:
                problems.append(
                    "set JWT_SECRET to a random value of at least "
                    f"{MIN_SECRET_LENGTH} characters (for example: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))'), "
                    "or JWT_PRIVATE_KEY/JWT_PUBLIC_KEY for RS256"
                )
        if "*" in self.cors_origins:
            problems.append("CORS_ORIGINS='*' is refused in production; list the origins")
        if problems:
            raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'roomserver.sqlite3').resolve()}"

    @property
    def resolved_qdrant_path(self) -> Path:
        return self.qdrant_path or self.data_dir / "qdrant"

    @property
    def resolved_log_format(self) -> Literal["json", "text"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.is_production else "text"
