"""Real librdkafka clients built from ``producer_settings``/``consumer_settings``/
``admin_settings`` start without ``CONFWARN``, although ``kafka.client`` holds tuning of
both kinds.

librdkafka, not our property lists, is the judge here: each client logs to a logger of this
test, and a client given the unfiltered settings must warn (the control), so the capture is
known to work. No broker is needed: the warnings come at construction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from base.config import Config
from connectors import kafka_clients

#: Tuning of every kind, as a site may put it under ``kafka.client``; the consumer ones are
#: those the flows' sources use by default.
MIXED_CLIENT = {
    "fetch.wait.max.ms": "500",
    "queued.max.messages.kbytes": "2048",
    "fetch.min.bytes": "1",
    "session.timeout.ms": "6000",
    "auto.offset.reset": "earliest",
    "linger.ms": "20",
    "acks": "all",
    "compression.type": "lz4",
    "statistics.interval.ms": "0",
    "client.id": "omnistream-test",
    "socket.keepalive.enable": "true",
}


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def captured() -> Captured:
    handler = Captured()
    logger = logging.getLogger(f"test-client-kinds-{id(handler)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler.logger = logger  # type: ignore[attr-defined]
    return handler


def config() -> Config:
    # A closed port: the clients only need to be constructed.
    return Config().with_overrides(kafka={"bootstrap": "127.0.0.1:9", "client": MIXED_CLIENT})


def confwarns(captured: Captured, build: Callable[[dict[str, Any]], Any],
              settings: dict[str, Any]) -> list[str]:  # fmt: skip
    client = build({**settings, "logger": captured.logger})  # type: ignore[attr-defined]
    try:
        client.poll(0.2)  # logs reach the Python logger on poll
    finally:
        if isinstance(client, Consumer):
            client.close()
    return [line for line in captured.lines if "CONFWARN" in line]


def consumer(settings: dict[str, Any]) -> Consumer:
    return Consumer({"group.id": "test-client-kinds", **settings})


def test_producer_settings_start_a_producer_without_confwarn(captured: Captured) -> None:
    assert confwarns(captured, Producer, kafka_clients.producer_settings(config())) == []


def test_consumer_settings_start_a_consumer_without_confwarn(captured: Captured) -> None:
    settings = kafka_clients.consumer_settings(config(), {"enable.partition.eof": "true"})
    assert confwarns(captured, consumer, settings) == []


def test_admin_settings_start_an_admin_client_without_confwarn(captured: Captured) -> None:
    assert confwarns(captured, AdminClient, kafka_clients.admin_settings(config())) == []


@pytest.mark.parametrize(
    "build", [Producer, consumer, AdminClient], ids=["producer", "consumer", "admin"]
)
def test_control_the_unfiltered_settings_do_warn(
    captured: Captured, build: Callable[[dict[str, Any]], Any]
) -> None:
    settings = {**kafka_clients.PRODUCER_DEFAULTS, **kafka_clients.client_settings(config())}
    assert confwarns(captured, build, settings)
