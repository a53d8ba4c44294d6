"""``connectors.worker_local.WorkerLocal`` keeps a worker thread's values between Bytewax
callbacks, where ``threading.local`` loses them (2 workers: Bytewax's own threads)."""

from __future__ import annotations

import threading
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main

from connectors.worker_local import WorkerLocal

ITEMS = 2_000
BATCH = 10


def made_per_thread(local: Any) -> dict[int, int]:
    """Run 2 workers over ITEMS items in batches of BATCH; how many times each worker
    thread found its value missing and made it."""
    made: dict[int, int] = {}
    lock = threading.Lock()

    def touch(item: int) -> int:
        if not hasattr(local, "cache"):
            local.cache = object()
            with lock:
                made[threading.get_ident()] = made.get(threading.get_ident(), 0) + 1
        return item

    flow = Dataflow("worker_local")
    items = op.input("inp", flow, TestingSource(list(range(ITEMS)), batch_size=BATCH))
    op.inspect("out", op.map("touch", items, touch), lambda *_: None)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    return made


def test_each_worker_thread_makes_its_value_once() -> None:
    made = made_per_thread(WorkerLocal())
    assert made and set(made.values()) == {1}
    assert len(made) <= 2


def test_threading_local_loses_the_value_between_batches() -> None:
    """Why WorkerLocal exists: if this ever holds no more, threading.local would do."""
    made = made_per_thread(threading.local())
    assert sum(made.values()) > ITEMS // BATCH // 2


def test_attributes_are_per_thread_and_can_be_deleted() -> None:
    local = WorkerLocal()
    local.value = "main"
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(hasattr(local, "value")))
    thread.start()
    thread.join()
    assert seen == [False] and local.value == "main"
    del local.value
    assert not hasattr(local, "value")
