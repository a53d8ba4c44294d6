"""The benchmark's reference: a plain Bytewax pipeline over the same events, in the same run.

Kafka source (the three input topics) → decode the JSON → a keyed running count (by message
key) → Kafka sink, one worker, with the flows' consumer settings but a larger read-ahead.
What a flow costs beyond this is Omnistream's own work; the ratio of the two is what the
benchmark reports, because absolute figures on a shared, noisy machine say little on their own.

Run as ``python -m omnistream.bench_reference --config PATH``; it stops once its inputs are
drained and counts what it consumed in ``omnistream_events_consumed_total{flow="reference"}``
on its metrics port, like the flows.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main
from prometheus_client import start_http_server

from base import topics
from base.config import Config, load_config
from base.metrics import EVENTS_CONSUMED
from connectors.kafka_clients import brokers, consumer_settings, producer_settings
from connectors.streams import CONSUMER_DEFAULTS

REFERENCE_FLOW = "reference"
#: The reference's read-ahead is its fastest measured one, not the flows' 2 MiB cap (which
#: slows a bare pipeline: 3.1 s against 2.5 s for 200,000 events) nor librdkafka's 64 MiB
#: default (55,000 against 85,000-94,000 events/s on a 1,000,000-event backlog).
REFERENCE_CONSUMER = {**CONSUMER_DEFAULTS, "queued.max.messages.kbytes": "8192"}
#: After its inputs are drained the reference keeps serving its metrics this long, so the
#: bench's 50 ms sampler always reads the final count: a small stream (the smoke run's 8,000
#: events take about 60 ms) could otherwise be read and the process gone between two samples,
#: and the run would measure 0 events/s.
REFERENCE_LINGER_S = 1.0


def build(config: Config) -> Dataflow:
    flow = Dataflow(REFERENCE_FLOW)
    source = kop.input(
        "inputs",
        flow,
        brokers=brokers(config),
        topics=[config.topic(name) for name in topics.INPUT_TOPICS],
        tail=False,
        # Bytewax's own source lists partitions with these consumer settings too, so its
        # admin client prints librdkafka's CONFWARN lines: kept, it is the plain reference.
        add_config=consumer_settings(config, REFERENCE_CONSUMER),  # type: ignore[arg-type]
        batch_size=config.kafka.batch_size,
    )
    consumed = EVENTS_CONSUMED.labels(REFERENCE_FLOW, "all")

    def decode(msg: KafkaSourceMessage[Any, Any]) -> tuple[str, Any]:
        consumed.inc()
        try:
            value = orjson.loads(msg.value or b"")
        except orjson.JSONDecodeError:
            value = None
        return (msg.key or b"").decode("utf-8", "replace"), value

    def count(total: int | None, _value: Any) -> tuple[int, int]:
        total = (total or 0) + 1
        return total, total

    counted = op.stateful_map(
        "count",
        op.key_on("key", op.map("decode", source.oks, decode), lambda kv: kv[0]),
        lambda total, kv: count(total, kv[1]),
    )
    kop.output(
        "out",
        op.map(
            "encode",
            counted,
            lambda kv: KafkaSinkMessage(key=kv[0].encode(), value=str(kv[1]).encode()),
        ),
        brokers=brokers(config),
        topic=config.topic("bench.reference"),
        add_config=producer_settings(config),  # type: ignore[arg-type]
    )
    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    start_http_server(config.metrics.port, addr=config.metrics.host)
    cli_main(
        build(config),
        workers_per_process=1,
        epoch_interval=timedelta(seconds=config.flow.epoch_seconds),
    )
    time.sleep(REFERENCE_LINGER_S)


if __name__ == "__main__":
    main()
