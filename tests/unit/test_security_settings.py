"""Security settings pass through the configuration to every client: Kafka SASL/TLS settings
under ``kafka.client`` reach every Kafka source and sink of every flow and the command-line
clients; Redis credentials and TLS come with ``redis.url``."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import redis

from base.config import Config
from connectors import streams
from connectors.kafka_clients import client_settings
from omnistream.runner import FLOWS
from state.redis_io import connect, with_retries
from tests.flow_builds import build_flow

SECURE = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "omnistream",
    "sasl.password": "not-a-real-secret",
    "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
}


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    class SpySource(streams.AlignedKafkaSource):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(("source", kwargs))
            super().__init__(*args, **kwargs)

    class SpySink(streams.PairSink):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(("sink", kwargs))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(streams, "AlignedKafkaSource", SpySource)
    monkeypatch.setattr(streams, "PairSink", SpySink)
    return seen


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_kafka_security_settings_reach_every_source_and_sink(
    name: str, captured: list[tuple[str, dict[str, Any]]]
) -> None:

    config = Config().with_overrides(kafka={"client": SECURE}, pii={"key": "unit-secret"})
    build_flow(FLOWS[name], config)
    kinds = {kind for kind, _ in captured}
    assert kinds == {"source", "sink"}, name
    for kind, kwargs in captured:
        settings = kwargs["add_config"]
        assert {k: settings[k] for k in SECURE} == SECURE, (name, kind)


def test_kafka_security_settings_reach_command_line_clients() -> None:
    config = Config().with_overrides(kafka={"client": SECURE, "bootstrap": "k1:9093,k2:9093"})
    settings = client_settings(config)
    assert settings["bootstrap.servers"] == "k1:9093,k2:9093"
    assert {k: settings[k] for k in SECURE} == SECURE


def test_redis_acl_user_password_and_tls_come_with_the_url() -> None:
    config = Config().with_overrides(
        redis={"url": "rediss://omni:pa55@redis.internal:6380/2?ssl_cert_reqs=required"}
    )
    client = connect(config)
    try:
        pool = client.connection_pool
        assert pool.connection_class.__name__ == "SSLConnection"
        kwargs = pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("omni", "pa55")
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.internal", 6380, 2)
    finally:
        client.close()


def test_an_untrusted_redis_certificate_stops_at_once_instead_of_retrying() -> None:
    """A wrong CA does not heal by waiting: the first failure is raised (no back-off), while
    a plain connection failure is retried."""
    sleeps: list[float] = []

    def handshake_refused() -> None:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except OSError as exc:
            raise redis.ConnectionError("Error 1 connecting to 127.0.0.1:6380.") from exc

    with pytest.raises(redis.ConnectionError):
        with_retries("test", handshake_refused, sleep=sleeps.append)
    assert sleeps == []

    attempts = iter([redis.ConnectionError("refused"), None])

    def refused_once() -> str:
        error = next(attempts)
        if error is not None:
            raise error
        return "ok"

    assert with_retries("test", refused_once, sleep=sleeps.append, jitter=lambda: 1.0) == "ok"
    assert sleeps == [0.1]
