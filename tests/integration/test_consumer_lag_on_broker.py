"""Consumer lag (``omnistream_consumer_lag_messages``) against the embedded broker: the figure
the source reports is the partition's end offset, as an independent consumer asks the broker
for it, minus the position the flow has read to.

The source partition is driven batch by batch here (the production source and consumer
settings of ``KafkaIO``), so every intermediate figure of a backlog is checked, not only the
end; a two-process ``stock_pool`` cluster shows that every partition is reported once, by the
process that reads it, and that the figures fall to 0 as it catches up. Nothing waits on the
clock: loops end on what the broker and the flows report, with a deadline against a hang.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from bytewax.connectors.kafka import KafkaError
from prometheus_client import REGISTRY

from base.config import Config, dump_config
from base.topics import INPUT_TOPICS, WMS_MOVEMENTS
from connectors.kafka_clients import make_producer, read_topic
from connectors.kafka_source import PartitionEnd, SourceItem, _Partition
from connectors.streams import KafkaIO
from omnistream.embedded import free_port
from omnistream.processes import (
    free_port_block,
    scrape,
    start_cluster,
    stop_process,
    total,
    wait_for_metrics,
)

pytestmark = pytest.mark.integration

LAG = "omnistream_consumer_lag_messages"
CONSUMED = "omnistream_events_consumed_total"
#: Against a hang only; no assertion is about how long anything takes.
DEADLINE_S = 60.0


def produce_to(config: Config, topic_name: str, counts: dict[int, int]) -> None:
    """``counts[p]`` messages to partition ``p`` of the topic, delivered before returning.
    Their content does not matter here: consumed counts messages before validation."""
    producer = make_producer(config)
    for partition, count in counts.items():
        for n in range(count):
            producer.produce(config.topic(topic_name), b'{"lag": %d}' % n, partition=partition)
    assert producer.flush(30) == 0


def end_offsets(config: Config, topic_name: str, partitions: int) -> dict[int, int]:
    """Each partition's end offset as a consumer of its own finds it, reading the topic to
    its end (the offset after its last message, 0 when empty).

    Not ``get_watermark_offsets(cached=False)``: the embedded broker (Tansu) answers that
    ListOffsets request with the base offset of the partition's last record batch + 1 (1
    after 400 messages produced in one batch), while the high watermark of its fetch
    responses, which the source uses, is right (400)."""
    ends = dict.fromkeys(range(partitions), 0)
    for message in read_topic(config, topic_name):
        offset = message.offset()
        assert offset is not None
        ends[message.partition() or 0] = max(ends[message.partition() or 0], offset + 1)
    return ends


def lag_of(flow: str, partition: int, topic_name: str = WMS_MOVEMENTS) -> float | None:
    """This process's lag series of a partition, None when absent."""
    labels = {"flow": flow, "topic": topic_name, "partition": str(partition)}
    return REGISTRY.get_sample_value(LAG, labels)


def batches(part: _Partition) -> Iterator[list[SourceItem]]:
    """The partition's batches until the deadline (a failure, not an end)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        yield part.next_batch()
    pytest.fail("the partition did not reach what the test waits for")


def read_to_end(part: _Partition, flow: str, partition: int, position: int, end: int) -> list[int]:
    """Batches until the partition's end, checking after every one that the reported lag is
    ``end − position`` (``position``: the offset after the last message returned). Returns
    the figures reported."""
    figures = []
    for batch in batches(part):
        for item in batch:
            if isinstance(item, PartitionEnd):
                continue
            offset = item.offset if not isinstance(item, KafkaError) else item.msg.offset
            assert offset == position, "messages come in offset order, none skipped"
            position = offset + 1
        lag = lag_of(flow, partition)
        if lag is None:
            # only before the first fetch answered: a returned message came with a watermark
            assert not batch, f"a batch but no lag: {batch!r}"
        else:
            assert lag == end - position, (lag, end, position)
            figures.append(int(lag))
        if any(isinstance(item, PartitionEnd) for item in batch):
            assert position == end
            return figures
    raise AssertionError("unreachable")


def test_source_reports_end_offset_minus_position_after_every_batch(omni_config: Config) -> None:
    config = omni_config.with_overrides(kafka={"batch_size": 50})
    produce_to(config, WMS_MOVEMENTS, {0: 400, 2: 30})
    ends = end_offsets(config, WMS_MOVEMENTS, 4)
    assert ends == {0: 400, 1: 0, 2: 30, 3: 0}
    # A flow name of the test's own: the registry is this process's, shared by every test.
    flow = f"lag{uuid.uuid4().hex[:8]}"
    topic = config.topic(WMS_MOVEMENTS)
    source = KafkaIO(config, until_idle=False).source([WMS_MOVEMENTS])

    for partition in range(4):
        part = source.build_part(f"{flow}.inputs", f"{partition}-{topic}", None)
        try:
            assert lag_of(flow, partition) is None  # nothing fetched yet: no figure
            figures = read_to_end(part, flow, partition, 0, ends[partition])
            assert figures and figures[-1] == 0  # at its end
            assert all(0 <= lag <= ends[partition] for lag in figures)
            if ends[partition] > config.kafka.batch_size:
                # while a backlog is read, it is there, and it only shrinks
                assert figures[0] > 0
                assert figures == sorted(figures, reverse=True)
        finally:
            part.close()
        assert lag_of(flow, partition) is None  # closed: this process no longer reports it

    # Resumed from a snapshot at offset 100: 300 to read before anything is.
    part = source.build_part(f"{flow}.inputs", f"0-{topic}", 100)
    try:
        figures = read_to_end(part, flow, 0, 100, ends[0])
        assert figures[0] <= 300 and figures[0] > 0 and figures[-1] == 0

        # Tailing: messages produced while it reads are lag until read, then 0 again.
        produce_to(config, WMS_MOVEMENTS, {0: 120})
        end = end_offsets(config, WMS_MOVEMENTS, 4)[0]
        assert end == 520
        position = 400
        for batch in batches(part):
            position += sum(1 for item in batch if not isinstance(item, PartitionEnd))
            lag = lag_of(flow, 0)
            assert lag is not None and 0 <= lag <= end - position
            if position == end:
                assert lag == 0
                break
    finally:
        part.close()


def test_a_cluster_reports_every_partition_once_and_reaches_zero(
    omni_config: Config, tmp_path: Path
) -> None:
    """Two stock_pool processes, one worker each, start on a backlog of every input."""
    produced = {
        topic_name: {p: 60 * (index + 1) + 25 * p for p in range(4)}
        for index, topic_name in enumerate(INPUT_TOPICS)
    }
    for topic_name, counts in produced.items():
        produce_to(omni_config, topic_name, counts)
    ends = {name: end_offsets(omni_config, name, 4) for name in INPUT_TOPICS}
    assert ends == produced
    everything = sum(sum(counts.values()) for counts in produced.values())
    #: What each partition holds, as the test produces more.
    holds = {name: dict(counts) for name, counts in ends.items()}

    port = free_port_block(2)
    addresses = tuple(f"127.0.0.1:{free_port()}" for _ in range(2))
    path = tmp_path / "config.yaml"
    dump_config(omni_config.with_overrides(metrics={"port": port}), path)
    logs: list[IO[bytes]] = [(tmp_path / f"process-{n}.log").open("wb") for n in range(2)]
    processes = start_cluster("stock_pool", path, addresses, logs=logs)
    try:
        for n, process in enumerate(processes):
            wait_for_metrics(port + n, process)

        def reported() -> tuple[list[dict[tuple[str, str], float]], float]:
            """Each process's lag series by (topic, partition), and what both consumed."""
            samples = [scrape(port + n) for n in range(2)]
            series = [
                {
                    (labels["topic"], labels["partition"]): value
                    for labels, value in (found or {}).get(LAG, [])
                    if labels["flow"] == "stock_pool"
                }
                for found in samples
            ]
            consumed = sum(total(found, CONSUMED, flow="stock_pool") for found in samples)
            return series, consumed

        expected = {(name, str(p)) for name in INPUT_TOPICS for p in range(4)}
        target = everything
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert all(process.poll() is None for process in processes)
            series, consumed = reported()
            for per_process in series:
                for (name, partition), lag in per_process.items():
                    # never more than the partition holds, never below 0
                    assert 0 <= lag <= holds[name][int(partition)], (name, lag)
            # a partition is read by one process: no other reports it
            assert not set(series[0]) & set(series[1]), series
            caught_up = consumed == target and set(series[0]) | set(series[1]) == expected
            if caught_up and all(lag == 0 for s in series for lag in s.values()):
                if target == everything:
                    # more arrives while the cluster tails: lag, then read
                    produce_to(omni_config, WMS_MOVEMENTS, {1: 90})
                    target = everything + 90
                    holds[WMS_MOVEMENTS][1] += 90
                    continue
                break
            assert time.monotonic() < deadline, (consumed, target, series)
            time.sleep(0.2)
        assert consumed == target
        assert all(series), f"a process reads no partition: {series}"
        final = end_offsets(omni_config, WMS_MOVEMENTS, 4)
        assert final[1] == produced[WMS_MOVEMENTS][1] + 90
    finally:
        codes = [stop_process(process) for process in processes]
        for log in logs:
            log.close()
    assert codes == [0, 0]
