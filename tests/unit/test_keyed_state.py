"""``connectors.operators.keyed_state``, ``keyed_map`` and ``stateful_batches`` without
snapshots: the same outputs as Bytewax's own operators, and no snapshot taken (Bytewax asks
for one from every key changed in an epoch even when no recovery keeps it)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.operators import BatchedLogic, keyed_map, keyed_state, stateful_batches

#: a few keys, each seen many times over many epochs (an epoch per batch of 5)
ITEMS = [(f"k{n % 7}", n) for n in range(200)]


class Running(BatchedLogic[int, tuple[int, int], int]):
    """A running sum per key that forgets the key when the sum passes 1,000; counts the
    snapshots asked of it."""

    snapshots = 0

    def __init__(self, resume: int | None) -> None:
        self.total = resume or 0

    def on_item(self, value: int) -> tuple[list[tuple[int, int]], bool]:
        self.total += value
        return [(value, self.total)], self.total > 1_000

    def on_eof(self) -> tuple[list[tuple[int, int]], bool]:
        return [(-1, self.total)], StatefulLogic.RETAIN

    def snapshot(self) -> int:
        Running.snapshots += 1
        return self.total


def running_map(total: int | None, value: int) -> tuple[int | None, tuple[int, int]]:
    total = (total or 0) + value
    return (None if total > 1_000 else total), (value, total)


def outputs(kind: str, snapshots: bool) -> list[Any]:
    flow = Dataflow("keyed")
    keyed = op.key_on(
        "key", op.input("in", flow, TestingSource(ITEMS, batch_size=5)), lambda kv: kv[0]
    )
    values = op.map_value("value", keyed, lambda kv: kv[1])
    if kind == "state":
        out = keyed_state("sum", values, Running, snapshots=snapshots)
    elif kind == "batches":
        out = stateful_batches("sum", values, Running, snapshots=snapshots)
    else:
        out = keyed_map("sum", values, running_map, snapshots=snapshots)
    found: list[Any] = []
    op.output("out", out, TestingSink(found))
    run_main(flow, epoch_interval=timedelta(0))
    return sorted(found)


@pytest.mark.parametrize("kind", ["state", "batches", "map"])
def test_without_snapshots_the_outputs_are_the_same_and_no_snapshot_is_taken(kind: str) -> None:
    Running.snapshots = 0
    expected = outputs(kind, snapshots=True)
    taken_with = Running.snapshots
    Running.snapshots = 0
    assert outputs(kind, snapshots=False) == expected
    assert Running.snapshots == 0
    if kind != "map":
        assert taken_with > len(ITEMS) // 5  # Bytewax asked every epoch, recovery or not
    # the sums restart after passing 1,000: the keys were discarded and built anew
    assert sum(1 for _, (_, total) in expected if total > 1_000) > 3
