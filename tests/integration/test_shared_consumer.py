"""One consumer for every partition a worker reads (``connectors.kafka_source``), on the
embedded broker: each partition gets its own messages, each once and in offset order,
whatever order the partitions ask in and however long one of them does not ask; a
partition that does not ask holds a bounded buffer (it is paused); a partition resumed
from a snapshot reads from there; the consumer is closed with the last partition.

The reference is what an independent consumer reads from each partition
(``end_offsets``)."""

from __future__ import annotations

import random
import time
import uuid

import pytest
from bytewax.connectors.kafka import KafkaError

from base.config import Config
from base.topics import WMS_MOVEMENTS
from connectors import kafka_source
from connectors.kafka_source import PartitionEnd, _Partition
from connectors.streams import KafkaIO
from tests.integration.test_consumer_lag_on_broker import DEADLINE_S, end_offsets, produce_to

pytestmark = pytest.mark.integration

BATCH = 50


def offsets(batch: list[object]) -> list[int]:
    found = []
    for item in batch:
        if isinstance(item, PartitionEnd):
            continue
        offset = item.msg.offset if isinstance(item, KafkaError) else item.offset  # type: ignore[attr-defined]
        assert isinstance(offset, int)
        found.append(offset)
    return found


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_partitions_sharing_one_consumer_each_read_their_own_once(
    omni_config: Config, seed: int
) -> None:
    config = omni_config.with_overrides(kafka={"batch_size": BATCH})
    produce_to(config, WMS_MOVEMENTS, {0: 900, 1: 40, 2: 600, 3: 0})
    ends = end_offsets(config, WMS_MOVEMENTS, 4)
    topic = config.topic(WMS_MOVEMENTS)
    step = f"shared{uuid.uuid4().hex[:8]}.inputs"
    source = KafkaIO(config, until_idle=True).source([WMS_MOVEMENTS])
    parts: dict[int, _Partition] = {
        p: source.build_part(step, f"{p}-{topic}", None) for p in range(4)
    }
    shared = {id(part._shared) for part in parts.values()}
    assert len(shared) == 1, "one consumer for the worker's partitions of the step"

    rng = random.Random(seed)
    read: dict[int, list[int]] = {p: [] for p in parts}
    ended: set[int] = set()
    held_back = 0  # asks for nothing until the others have ended
    deadline = time.monotonic() + DEADLINE_S
    while len(ended) < 4 and time.monotonic() < deadline:
        asking = [p for p in parts if p not in ended and (p != held_back or len(ended) == 3)]
        p = rng.choice(asking)
        try:
            batch = parts[p].next_batch()
        except StopIteration:
            ended.add(p)
            continue
        assert len(offsets(batch)) <= BATCH
        read[p] += offsets(batch)
        buffered = len(parts[held_back]._shared._buffers[(topic, held_back)])
        # paused at 4 batches; what one fetch brought beyond that is the most it holds
        assert buffered <= 4 * BATCH + BATCH, buffered
    assert ended == {0, 1, 2, 3}
    for p in parts:
        assert read[p] == list(range(ends[p])), f"partition {p}"

    for p in (1, 2, 3):
        parts[p].close()
    assert kafka_source._WORKER_CONSUMERS.by_step, "open while a partition reads"
    parts[0].close()
    assert not any(key[0] == step for key in kafka_source._WORKER_CONSUMERS.by_step)

    # Resumed from snapshots: partition 0 from 700, partition 2 from 100.
    resumed = {
        0: source.build_part(step, f"0-{topic}", 700),
        2: source.build_part(step, f"2-{topic}", 100),
    }
    got: dict[int, list[int]] = {0: [], 2: []}
    done: set[int] = set()
    while len(done) < 2 and time.monotonic() < deadline:
        for p, part in resumed.items():
            if p in done:
                continue
            try:
                got[p] += offsets(part.next_batch())
            except StopIteration:
                done.add(p)
    assert got == {0: list(range(700, ends[0])), 2: list(range(100, ends[2]))}
    for part in resumed.values():
        part.close()
