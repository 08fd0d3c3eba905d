"""Where the nodes' Redis is: ``REDIS_URL``, directly or through Redis Sentinel.

Every part that talks to Redis (the link, shared presence, ``/ready``) takes its
connections from a ``RedisTarget``, so TLS and Sentinel are configured once:

- **Directly**: ``redis://host:port/db``, or ``rediss://`` for TLS, with redis-py's
  options in the query string (``?ssl_ca_certs=/etc/ca.pem``, ``ssl_certfile``,
  ``ssl_keyfile`` for client certificates, ``ssl_cert_reqs=none`` to skip checks).
- **Through Sentinel** (``REDIS_SENTINELS=host:port,host:port``): the URL's host is the
  name of the master the Sentinels watch (``redis://:password@mymaster/0``); each new
  connection asks a Sentinel where the master is now, so after a failover the link's
  reconnection (and every later command) reaches the new master. Its credentials,
  database and TLS options apply to the master's connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import ConnectionPool, Redis, SSLConnection
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool


@dataclass(frozen=True, slots=True)
class RedisTarget:
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()

    def pool(self, **options: Any) -> ConnectionPool:
        """A pool of connections to the Redis (the master), with ``options``
        (timeouts) added to the URL's."""
        if not self.sentinels:
            return ConnectionPool.from_url(self.url, **options)
        settings: dict[str, Any] = dict(parse_url(self.url))
        service = settings.pop("host", None)
        if not service:
            raise ValueError("with REDIS_SENTINELS, REDIS_URL's host names the master")
        settings.pop("port", None)
        if settings.pop("connection_class", None) is SSLConnection:
            settings["ssl"] = True  # SentinelConnectionPool picks its TLS connection
        timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
        manager = Sentinel(list(self.sentinels), sentinel_kwargs=timeouts)
        pool: ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            service, manager, **settings, **options
        )
        return pool

    def client(self, **options: Any) -> Redis:
        """A client that owns its pool (``aclose`` closes both)."""
        return Redis.from_pool(self.pool(**options))
