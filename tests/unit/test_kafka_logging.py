"""librdkafka's log lines go through Python logging (logger ``librdkafka``), each kind at
most once per ``REPEAT_S``, never to stderr by librdkafka itself."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from base.config import Config
from connectors import kafka_clients
from connectors.kafka_logging import LibrdkafkaLog
from omnistream.embedded import free_port

FAIL = "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "test-librdkafka"]


def test_repeats_of_a_line_are_left_out_for_a_while_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    sink = LibrdkafkaLog(logging.getLogger("test-librdkafka"), repeat_s=60, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="test-librdkafka"):
        for i in range(1200):  # a minute of one client failing every 50 ms
            clock.now = i * 0.05
            sink.log(40, "%s [%s] %s", "FAIL", f"rdkafka#consumer-{i % 12}",
                     f"{FAIL}Connection refused (after {i % 3}ms in state CONNECT)")  # fmt: skip
        clock.now = 61.0
        sink.log(40, "%s [%s] %s", "FAIL", "rdkafka#consumer-1",
                 f"{FAIL}Connection refused (after 0ms in state CONNECT)")  # fmt: skip
    lines = records(caplog)
    assert len(lines) == 2
    assert lines[0].getMessage().startswith("rdkafka#consumer-0 FAIL: [thrd:")
    assert "1199 more like it in the last 61 s" in lines[1].getMessage()
    # librdkafka retries a connection by itself: a warning, not an error
    assert {r.levelno for r in lines} == {logging.WARNING}


def test_different_lines_are_each_logged(caplog: pytest.LogCaptureFixture) -> None:
    sink = LibrdkafkaLog(logging.getLogger("test-librdkafka"), clock=Clock())
    with caplog.at_level(logging.DEBUG, logger="test-librdkafka"):
        sink.log(40, "%s [%s] %s", "FAIL", "rdkafka#producer-1", f"{FAIL}Connection refused")
        sink.log(40, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
                 FAIL.replace(":1", ":2") + "Connection refused")  # fmt: skip
        sink.log(30, "%s [%s] %s", "CONFWARN", "rdkafka#producer-1", "[thrd:app]: property x")
        sink.log(40, "%s [%s] %s", "ERROR", "rdkafka#producer-1", "[thrd:app]: fatal thing")
    lines = records(caplog)
    assert len(lines) == 4
    assert [r.levelno for r in lines] == [logging.WARNING] * 3 + [logging.ERROR]


def test_every_kind_of_client_gets_the_logger() -> None:
    config = Config()
    logger = kafka_clients.librdkafka_logger()
    for settings in (
        kafka_clients.client_settings(config),
        kafka_clients.producer_settings(config),
        kafka_clients.consumer_settings(config, {"group.id": "x"}),
        kafka_clients.admin_settings(config),
    ):
        assert settings["logger"] is logger


@pytest.mark.parametrize("kind", ["producer", "consumer", "admin"])
def test_a_client_without_its_broker_writes_nothing_to_stderr(
    kind: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A real client against a closed port: librdkafka's FAIL lines (20 a second) reach the
    ``librdkafka`` logger once, and nothing of librdkafka's own format reaches stderr."""
    config = Config().with_overrides(kafka={"bootstrap": f"127.0.0.1:{free_port()}"})
    with caplog.at_level(logging.INFO, logger="librdkafka"):
        if kind == "producer":
            client: Producer | Consumer | AdminClient = kafka_clients.make_producer(config)
        elif kind == "consumer":
            client = kafka_clients.make_consumer(config, "test-kafka-logging")
        else:
            client = kafka_clients.make_admin(config)
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    client.list_topics(timeout=0.2)
                except Exception:  # the broker is not there, on purpose
                    pass
                if isinstance(client, Consumer):
                    client.consume(1, 0.05)
                else:
                    client.poll(0.05)
        finally:
            if isinstance(client, Consumer):
                client.close()
    assert "%3|" not in capfd.readouterr().err
    refused = [r for r in caplog.records if r.name == "librdkafka" and "refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
