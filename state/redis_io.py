"""Redis connection and the one retry policy used by every store.

Writes are absolute values, so retrying a pipeline that may have half-applied is safe.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from connectors.metrics import REDIS_ERRORS
from omnistream.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Back-off doubles from FIRST to MAX seconds; after GIVE_UP seconds of failures the error is
#: raised, the flow stops, and a restart resumes from its recovery snapshot.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
GIVE_UP_S = 300.0


def connect(config: Config) -> redis.Redis:
    """A client for ``redis.url``: ``redis://user:password@host:port/db`` for an ACL user or
    a password, ``rediss://`` for TLS (with ``ssl_cert_reqs``/``ssl_ca_certs`` query
    parameters as redis-py reads them)."""
    return redis.Redis.from_url(
        config.redis.url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


def with_retries(
    flow: str,
    action: Callable[[], T],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``action``, retrying Redis connection failures with bounded exponential back-off."""
    started = clock()
    backoff = FIRST_BACKOFF_S
    while True:
        try:
            return action()
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError):
            # Wrong credentials or missing ACL permissions do not heal by waiting: stop with
            # the error instead of retrying for minutes.
            raise
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            REDIS_ERRORS.labels(flow).inc()
            if _tls_refused(exc):
                # A certificate the client does not trust (or a TLS/plain mismatch) is a
                # configuration error like wrong credentials: stop now, naming it.
                log.error("%s: Redis TLS handshake refused, not retrying: %s", flow, exc)
                raise
            waited = clock() - started
            if waited >= GIVE_UP_S:
                log.error("%s: Redis unreachable for %.0f s, giving up: %s", flow, waited, exc)
                raise
            log.warning("%s: Redis error (%s); retrying in %.1f s", flow, exc, backoff)
            sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


def _tls_refused(exc: BaseException) -> bool:
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
