"""Redis connection and the one retry policy used by every store.

Writes are absolute values, so retrying a pipeline that may have half-applied is safe.

One policy, here: redis-py's own retry is turned off (``Retry(NoBackoff(), 0)``; newer
redis-py versions retry three times by default when a client is built directly, and a URL may
ask for ``retry_on_timeout``), so every failed attempt reaches ``with_retries``, is counted in
``omnistream_redis_errors_total`` and logged, instead of two policies stacked with the inner
one's failures invisible.

Redis Cluster (``redis.cluster: true``): ``connect`` answers a ``redis.cluster.RedisCluster``
on the same URL, options and (absent) retry. It serves the commands the stores use, and
each store keeps every script and every atomic multi-key command to one hash slot (hash
tags on internal keys; docs/redis-cluster.md and ``tests/unit/test_redis_slots.py``). What
a cluster client cannot send as one command — an MGET of keys in several slots — goes
through ``get_many``, which splits it by slot there. Identity's compare-and-set spans slots
and refuses a cluster (``state.identity_store``).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from base import stopping
from base.config import Config
from base.metrics import REDIS_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The back-off ceiling doubles from FIRST to MAX seconds and each wait is drawn between half
#: of it and all of it (jitter: flows and workers that lost Redis together do not come back in
#: lockstep); after GIVE_UP seconds of failures ``RedisGaveUp`` is raised, the flow stops with
#: one line, and a restart resumes from its recovery snapshot.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
GIVE_UP_S = 300.0


class RedisGaveUp(RuntimeError):
    """Redis failed for ``GIVE_UP_S`` seconds in a row (the runner adds the address and the
    setting to check when it reports it)."""


def connect(
    config: Config, *, socket_timeout_s: float = 10.0, connect_timeout_s: float = 5.0
) -> redis.Redis:
    """A client for ``redis.url``: ``redis://user:password@host:port/db`` for an ACL user or
    a password, ``rediss://`` for TLS (with ``ssl_cert_reqs``/``ssl_ca_certs`` query
    parameters as redis-py reads them). Without a retry of its own (see the module doc).

    With ``redis.cluster`` the client is a ``RedisCluster``, typed as ``redis.Redis``: it is
    not a subclass, but it has every command the stores call with the same signature, and
    the stores are written to the intersection (``tests/integration/test_redis_cluster.py``
    runs each of them on both)."""
    if config.redis.cluster:
        # Unlike a single-server client, a cluster client reads the slot map when it is
        # built, so an unreachable cluster fails here and not at the first command; said as
        # the ConnectionError a caller already handles, with the address and no password.
        try:
            cluster = redis.cluster.RedisCluster.from_url(
                config.redis.url,
                **_client_options(socket_timeout_s, connect_timeout_s),
                retry=Retry(NoBackoff(), 0),
            )
        except redis.exceptions.RedisClusterException as exc:
            where = describe(config.redis.url)
            raise redis.ConnectionError(f"Redis Cluster at {where}: {exc}") from exc
        return cast("redis.Redis", cluster)
    return redis.Redis.from_url(
        config.redis.url,
        **_client_options(socket_timeout_s, connect_timeout_s),
        retry=Retry(NoBackoff(), 0),
    )


def connect_async(
    config: Config, *, socket_timeout_s: float = 10.0, connect_timeout_s: float = 5.0
) -> redis.asyncio.Redis:
    """The ``redis.asyncio`` twin of ``connect`` (``omnistream serve``): the same URL, so the
    same user, password and TLS settings, the same timeouts and no retry of its own (the
    service answers 503 at once instead of retrying behind the caller's back). With
    ``redis.cluster`` a ``redis.asyncio.RedisCluster``, typed as ``connect``'s is."""
    if config.redis.cluster:
        cluster = redis.asyncio.cluster.RedisCluster.from_url(
            config.redis.url,
            **_client_options(socket_timeout_s, connect_timeout_s),
            retry=AsyncRetry(NoBackoff(), 0),
        )
        return cast("redis.asyncio.Redis", cluster)
    return redis.asyncio.Redis.from_url(
        config.redis.url,
        **_client_options(socket_timeout_s, connect_timeout_s),
        retry=AsyncRetry(NoBackoff(), 0),
    )


def _client_options(socket_timeout_s: float, connect_timeout_s: float) -> dict[str, Any]:
    """What ``connect`` and ``connect_async`` pass besides the URL and their retry (redis-py
    has one ``Retry`` class per flavour)."""
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "health_check_interval": 30,
    }


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client (sync or asyncio): the few reads that
    differ on a cluster (``get_many``, ``ServiceReads.customer``) ask this."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def get_many(client: redis.Redis, keys: list[str]) -> list[bytes | None]:
    """The values of ``keys``, in order: one MGET on a single Redis; on a cluster, where an
    MGET must keep to one slot, ``mget_nonatomic`` (one MGET per slot, replies put back in
    order). Neither reader needs the keys read at one instant: coupon owners are written
    once, before any receipt can name them."""
    if is_cluster(client):
        cluster = cast("redis.cluster.RedisCluster", client)
        return cluster.mget_nonatomic(keys)  # type: ignore[no-any-return]
    return client.mget(keys)  # type: ignore[return-value]


def describe(url: str) -> str:
    """``redis.url`` without its user, password and query: safe to print."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{parts.scheme or 'redis'}://{host}:{port}{parts.path or '/0'}"


def with_retries(
    flow: str,
    action: Callable[[], T],
    sleep: Callable[[float], bool | None] = stopping.wait,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Run ``action``, retrying Redis connection failures with bounded, jittered exponential
    back-off: every failed attempt is counted and every retry logged once at WARNING.

    ``sleep(seconds)`` returns True when a stop was requested meanwhile (the default sleeps on
    the process's stop flag): the wait then ends at once with ``StopRequested``, so a flow
    waiting out an outage still stops within seconds of SIGTERM.
    """
    started = clock()
    ceiling = FIRST_BACKOFF_S
    while True:
        try:
            return action()
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError):
            # Wrong credentials or missing ACL permissions do not heal by waiting: stop with
            # the error instead of retrying for minutes.
            REDIS_ERRORS.labels(flow).inc()
            raise
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            REDIS_ERRORS.labels(flow).inc()
            if tls_refused(exc):
                # A certificate the client does not trust (or a TLS/plain mismatch) is a
                # configuration error like wrong credentials: stop now, naming it.
                log.error("%s: Redis TLS handshake refused, not retrying: %s", flow, exc)
                raise
            waited = clock() - started
            if waited >= GIVE_UP_S:
                raise RedisGaveUp(f"{flow}: Redis failed for {waited:.0f} s: {exc}") from exc
            delay = ceiling * (0.5 + 0.5 * jitter())
            log.warning("%s: Redis error (%s); retrying in %.2f s", flow, exc, delay)
            if sleep(delay):
                stop = f"{flow}: stop requested while waiting for Redis"
                raise stopping.StopRequested(stop) from exc
            ceiling = min(ceiling * 2, MAX_BACKOFF_S)


def tls_refused(exc: BaseException) -> bool:
    """redis-py wraps the ``ssl`` error of a failed handshake in a ``ConnectionError``; the
    original stays in the exception's context."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError | ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
