"""Building a flow in a unit test, without a broker.

stock_pool asks its ``FlowIO`` for its inputs' partition counts when it is built (its
shards wait for every partition), and on Kafka that is a call to the broker. Unit tests
that only look at the built dataflow (its Kafka sources and sinks) give every flow that
takes an ``io`` the production ``KafkaIO`` with the partition counts given here instead.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence

from bytewax.dataflow import Dataflow

from base.config import Config
from connectors.streams import KafkaIO

#: Partitions per topic a flow built offline is told its inputs have.
OFFLINE_PARTITIONS = 4


class OfflineKafkaIO(KafkaIO):
    """Kafka sources and sinks as in production; partition counts without a broker."""

    def partitions(self, topic_names: Sequence[str]) -> dict[str, int]:
        return dict.fromkeys(topic_names, OFFLINE_PARTITIONS)


def build_flow(module: str, config: Config) -> Dataflow:
    """``module.build(config)`` (e.g. ``flows.stock_pool``) with what it needs offline."""
    build = importlib.import_module(module).build
    if "io" in inspect.signature(build).parameters:
        return build(config, io=OfflineKafkaIO(config, until_idle=False))
    return build(config)
