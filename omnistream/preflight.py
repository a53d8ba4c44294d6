"""Is the broker there, is Redis there: checked before a flow or command starts.

Without these checks a flow started against an unreachable broker waited forever (Bytewax's
Kafka source lists partitions without a timeout) while librdkafka printed a line every 50 ms,
and one started without Redis waited inside its first write. Instead every flow and every
command that needs them asks the broker for metadata and Redis for ``PING`` first, both at
once, and gives up after ``flow.startup_wait_seconds`` (10 s) with one line naming what could
not be reached, why, and the setting to check (``Unreachable``; the command line prints it
and exits 1).

A dependency that is merely slow to come up (a compose stack starting in any order) gets the
whole wait: the checks keep asking until then. Wrong Redis credentials or a refused
TLS handshake do not heal by waiting and fail at once.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from base.config import Config

# The clients (confluent-kafka, redis-py) are imported by the checks themselves: the command
# line imports this module for ``Unreachable`` on every command, most of which need neither.

#: Where an operator sets the broker and Redis addresses (named in every message about them).
KAFKA_SETTING = "kafka.bootstrap / OMNI_KAFKA_BOOTSTRAP"
REDIS_SETTING = "redis.url / OMNI_REDIS_URL"
#: Named too when ``kafka.client`` carries security settings, which can be the cause.
KAFKA_SECURITY_SETTING = "the SASL/TLS settings under kafka.client / OMNI_KAFKA_CLIENT_<NAME>"
#: Interval between two attempts of a check.
_RETRY_S = 0.25


class Unreachable(RuntimeError):
    """A dependency did not answer; ``str()`` is the one line to show."""


def check(
    config: Config, *, kafka: bool = False, redis: bool = False, timeout_s: float | None = None
) -> None:
    """Raise ``Unreachable`` unless the wanted dependencies answer within ``timeout_s``
    (default ``flow.startup_wait_seconds``)."""
    start(config, kafka=kafka, redis=redis, timeout_s=timeout_s).result()


class Pending:
    """Checks running side by side in daemon threads; ``result()`` waits for them."""

    def __init__(self, config: Config, probes: list[Callable[[Config, float], str | None]],
                 timeout_s: float) -> None:  # fmt: skip
        self._problems: list[str | None] = [None] * len(probes)
        self._threads = [
            threading.Thread(target=self._run, args=(i, probe, config, timeout_s),
                             name=f"preflight-{probe.__name__}", daemon=True)
            for i, probe in enumerate(probes)
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def _run(self, index: int, probe: Callable[[Config, float], str | None], config: Config,
             timeout_s: float) -> None:  # fmt: skip
        try:
            self._problems[index] = probe(config, timeout_s)
        except Exception as exc:  # a bug in a probe must still end in one line
            self._problems[index] = f"{probe.__name__} failed: {exc!r}"

    def result(self) -> None:
        """Wait (in short steps, so Ctrl-C and SIGTERM stop a waiting command at once) and
        raise ``Unreachable`` naming every dependency that did not answer."""
        for thread in self._threads:
            while thread.is_alive():
                thread.join(0.1)
        found = [p for p in self._problems if p]
        if found:
            raise Unreachable("; ".join(found))


def start(
    config: Config, *, kafka: bool = False, redis: bool = False, timeout_s: float | None = None
) -> Pending:
    """Start the wanted checks in the background (each for ``timeout_s``, default
    ``flow.startup_wait_seconds``): a flow builds its dataflow meanwhile, so a configuration
    error is still reported first, and at once."""
    probes: list[Callable[[Config, float], str | None]] = []
    if kafka:
        probes.append(kafka_problem)
    if redis:
        probes.append(redis_problem)
    wait_s = config.flow.startup_wait_seconds if timeout_s is None else timeout_s
    return Pending(config, probes, wait_s)


class _LastProblem:
    """A confluent-kafka ``logger`` that keeps librdkafka's latest warning or error, the
    useful half of a failed metadata request ("Connection refused", "SSL handshake failed",
    "Failed to resolve ...") without printing any of them."""

    def __init__(self) -> None:
        self.text = ""

    def log(self, level: int, msg: str, *args: object) -> None:
        if level >= logging.WARNING and len(args) == 3:
            self.text = str(args[2])


#: "[thrd:host:port/bootstrap]: host:port/bootstrap: " in front of a librdkafka line, and
#: "(after 0ms in state CONNECT)" or ", 3 identical error(s) suppressed" behind it.
_THREAD_PREFIX = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_BROKER_PREFIX = re.compile(r"^\S+/(?:bootstrap|\d+):\s*")
_SUFFIX = re.compile(r"\s*\((?:after \d+ms|\d+ identical error).*\)$")


def _reason(text: str) -> str:
    text = _BROKER_PREFIX.sub("", _THREAD_PREFIX.sub("", text.strip()))
    return _SUFFIX.sub("", text)


def kafka_problem(config: Config, timeout_s: float) -> str | None:
    """None when a broker of ``kafka.bootstrap`` answers a metadata request within
    ``timeout_s`` (with ``kafka.client``'s security settings); else the line saying why not.

    Asked in requests of at most a second, with the client polled in between so that
    librdkafka's reason for the failure reaches ``_LastProblem``.
    """
    from confluent_kafka import KafkaException

    from connectors.kafka_clients import make_admin

    last = _LastProblem()
    admin = make_admin(config, logger=last)
    deadline = time.monotonic() + timeout_s
    failure = "no broker answered"
    #: Set once the metadata answered but named no broker this host can connect to.
    unreachable_advertised = ""
    while True:
        remaining = deadline - time.monotonic()
        try:
            metadata = admin.list_topics(timeout=max(0.1, min(1.0, remaining)))
            if metadata.brokers:
                advertised = _advertised_problem(
                    [(str(b.host), int(b.port)) for b in metadata.brokers.values()], config
                )
                if advertised is None:
                    return None
                unreachable_advertised = advertised
        except KafkaException as exc:
            failure = exc.args[0].str() if exc.args else str(exc)
        admin.poll(0)
        if time.monotonic() >= deadline:
            break
        time.sleep(min(_RETRY_S, max(0.0, deadline - time.monotonic())))
    setting = KAFKA_SETTING
    if any(k.startswith(("security.", "sasl.", "ssl.")) for k in config.kafka.client):
        setting += f"; {KAFKA_SECURITY_SETTING}"
    reason = unreachable_advertised or (_reason(last.text) if last.text else failure)
    return (
        f"cannot reach Kafka at {config.kafka.bootstrap} ({setting}) within {timeout_s:g} s: "
        f"{reason}"
    )


_ADVERTISED = "the broker answered but advertises"


def _advertised_problem(brokers: list[tuple[str, int]], config: Config) -> str | None:
    """None when one of the brokers the bootstrap address advertised accepts a connection;
    else why not.

    A client talks to the bootstrap address once, for metadata, and then to the addresses
    the brokers advertise. A broker in a container or behind a load balancer often
    advertises a name only its own network resolves (``kafka:9092``): the metadata answers,
    and then every request times out while librdkafka logs its failures, so a command
    waited 30 s and said nothing useful. Asked here, it is one line naming that address."""
    reasons = []
    for host, port in brokers:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return None
        except OSError as exc:
            reasons.append(f"{host}:{port} ({exc.strerror or exc})")
    return (
        f"{_ADVERTISED} {', '.join(reasons)}, which cannot be reached from here (check the "
        "broker's advertised listeners)"
    )


def redis_problem(config: Config, timeout_s: float) -> str | None:
    """None when Redis at ``redis.url`` answers ``PING`` within ``timeout_s``; else the line
    saying why not (never the password of the URL)."""
    import redis

    from state.redis_io import connect, describe, tls_refused

    where = describe(config.redis.url)
    step = max(0.5, min(2.0, timeout_s / 4))
    deadline = time.monotonic() + timeout_s
    failure: Exception | None = None
    # A cluster client asks for the slot map when it is made: made inside the loop, a
    # cluster that does not answer yet is waited for and reported like a server.
    client: Any = None
    try:
        while True:
            try:
                if client is None:
                    client = connect(config, socket_timeout_s=step, connect_timeout_s=step)
                client.ping()
                return None
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
                return f"Redis at {where} refused the credentials of {REDIS_SETTING}: {exc}"
            except (
                redis.ConnectionError,
                redis.TimeoutError,
                redis.BusyLoadingError,
                redis.exceptions.RedisClusterException,
            ) as exc:
                if tls_refused(exc):
                    return (
                        f"cannot connect to Redis at {where} over TLS ({REDIS_SETTING}: "
                        f"ssl_ca_certs, rediss://): {exc}"
                    )
                failure = exc
            except redis.ResponseError as exc:  # NOAUTH, NOPERM: credentials or ACL rules
                return f"Redis at {where} refused PING ({REDIS_SETTING}): {exc}"
            except redis.RedisError as exc:  # something else than Redis on that port
                return (
                    f"what answers at {where} ({REDIS_SETTING}) does not speak Redis: "
                    f"{type(exc).__name__} {exc}"
                )
            # Asked until the wait is over (the last time at its end), never given up early.
            if time.monotonic() >= deadline:
                break
            time.sleep(min(_RETRY_S, max(0.0, deadline - time.monotonic())))
    finally:
        if client is not None:
            client.close()
    return f"cannot reach Redis at {where} ({REDIS_SETTING}) within {timeout_s:g} s: {failure}"
