"""Run a flow in this process on ``bytewax.testing`` sources and sinks: no broker.

``MemoryIO`` is the tests' ``connectors.operators.FlowIO``: the input is a list of messages per
(topic, partition), read in the order given, each partition followed by its end (as the
Kafka source marks the end of a drained partition); outputs are collected per topic.
``run(flow, workers)`` runs a built flow on 1 worker (``run_main``) or on several worker
threads of one process (``cluster_main``), the way ``omnistream run --workers`` does.

The input is one source partition read by one worker, unless ``partitioned``: then, as the
Kafka source does, every (topic, partition) is a source partition of its own, followed by
its end, and with several workers each worker reads some of them, in an interleaving
Bytewax chooses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, TestingSource, _IterSourcePartition, cluster_main, run_main

from base.config import Config
from connectors.envelopes import OutMessage
from connectors.kafka_source import PartitionEnd


@dataclass
class MemoryIO:
    """Inputs and outputs of one in-process run."""

    config: Config
    #: CONTRACT topic name → partition → message values (or (key, value) pairs), in order
    inputs: dict[str, dict[int, list[Any]]] = field(default_factory=dict)
    #: partitions of topics that have no input here (a flow may wait for every partition)
    partition_counts: dict[str, int] = field(default_factory=dict)
    batch_size: int = 50
    #: a source partition per (topic, partition), as on Kafka (see the module doc)
    partitioned: bool = False
    #: full topic name → what was produced to it, in order
    outputs: dict[str, list[OutMessage]] = field(default_factory=lambda: defaultdict(list))
    _sinks: list[tuple[str | None, list[OutMessage]]] = field(default_factory=list)

    def add(self, topic_name: str, values: Iterable[Any], partition: int = 0) -> None:
        self.inputs.setdefault(topic_name, {}).setdefault(partition, []).extend(values)

    def source(self, topic_names: Sequence[str]) -> FixedPartitionedSource[Any, int]:
        if self.partitioned:
            return PartitionedSource(
                {
                    f"{partition}-{self.config.topic(name)}": [
                        *self._messages(name, partition),
                        PartitionEnd(self.config.topic(name), partition),
                    ]
                    for name in topic_names
                    for partition in range(self.partitions([name])[name])
                },
                self.batch_size,
            )
        items: list[Any] = [
            message
            for name in topic_names
            for partition in range(self.partitions([name])[name])
            for message in self._messages(name, partition)
        ]
        ends = [
            PartitionEnd(self.config.topic(name), partition)
            for name in topic_names
            for partition in range(self.partitions([name])[name])
        ]
        return TestingSource([*items, *ends], batch_size=self.batch_size)

    def _messages(self, name: str, partition: int) -> list[KafkaSourceMessage[Any, Any]]:
        topic = self.config.topic(name)
        messages = []
        for offset, item in enumerate(self.inputs.get(name, {}).get(partition, [])):
            key, value = item if isinstance(item, tuple) else (None, item)
            if isinstance(value, dict):
                value = orjson.dumps(value)
            messages.append(
                KafkaSourceMessage(key, value, topic=topic, offset=offset, partition=partition)
            )
        return messages

    def sink(self, topic_name: str | None) -> TestingSink[OutMessage]:
        collected: list[OutMessage] = []
        self._sinks.append(
            (None if topic_name is None else self.config.topic(topic_name), collected)
        )
        return TestingSink(collected)

    def partitions(self, topic_names: Sequence[str]) -> dict[str, int]:
        return {
            name: max(
                self.partition_counts.get(name, 1),
                max(self.inputs.get(name, {}), default=-1) + 1,
            )
            for name in topic_names
        }

    def collect(self) -> dict[str, list[OutMessage]]:
        """What the run produced, per full topic name (each message's own topic first)."""
        self.outputs = defaultdict(list)
        for topic, collected in self._sinks:
            for message in collected:
                self.outputs[message.topic or topic or "?"].append(message)
        return self.outputs

    def values(self, topic_name: str) -> list[dict[str, Any]]:
        """Decoded JSON values produced to a topic (a CONTRACT name)."""
        return [
            orjson.loads(m.value) for m in self.collect().get(self.config.topic(topic_name), [])
        ]


class PartitionedSource(FixedPartitionedSource[Any, int]):
    """``TestingSource`` with a partition per named list of items (each read in order, by
    the worker Bytewax assigns it to), resumable by position as ``TestingSource`` is."""

    def __init__(self, parts: dict[str, list[Any]], batch_size: int) -> None:
        self._parts = parts
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[Any, int]:
        return _IterSourcePartition(self._parts[for_part], self._batch_size, resume_state)


def run(flow: Dataflow, workers: int = 1) -> None:
    """Run to the end of the inputs, on one worker or on several threads of this process."""
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)


@dataclass
class CustomerStores:
    """The in-memory stores rule_triggers keeps customers in (one instance each, shared by
    every worker like Redis): pass ``**stores.build_args()`` to ``rule_triggers.build``."""

    reference: Any
    handovers: Any = None
    profiles: Any = None
    tasks: Any = None
    experiments: Any = None
    read_marks: Any = None

    def __post_init__(self) -> None:
        from state.experiment_store import MemoryExperimentStore
        from state.handover_store import MemoryHandoverStore
        from state.memory_stock import MemoryStockStore
        from state.profile_store import MemoryProfileStore
        from state.read_marks import MemoryReadMarkStore

        self.handovers = MemoryHandoverStore()
        self.profiles = MemoryProfileStore()
        self.tasks = MemoryStockStore(self.reference)
        self.experiments = MemoryExperimentStore()
        self.read_marks = MemoryReadMarkStore()

    def build_args(self) -> dict[str, Any]:
        return {
            "handover_store": lambda: self.handovers,
            "profile_store": lambda: self.profiles,
            "task_store": lambda: self.tasks,
            "experiment_store": lambda: self.experiments,
            "read_mark_store": lambda: self.read_marks,
        }
