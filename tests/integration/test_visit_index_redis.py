"""The visit index on a real redis-server (the session's, ``tests/conftest.py``): pruning
a store's old visits is one round trip that reads the index, not the task hash, however
many of stock_pool's tasks the hash holds, and an erasure's removal leaves the index too."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from base.config import Config
from domain.reference import ReferenceData
from state.interfaces import TaskWrite
from state.redis_io import connect
from state.stock_store import StockStore

pytestmark = pytest.mark.integration
T0 = 1_793_500_000_000
#: Tasks need no reference data (positions do).
REFERENCE = ReferenceData(locations={}, products={})


def test_a_prune_is_one_round_trip_over_the_index(
    omni_config: Config, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StockStore(connect(omni_config), omni_config.redis.key_prefix, REFERENCE)
    sends: list[bytes] = []
    real_send = redis.connection.AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> Any:
        sends.append(b"".join(command) if isinstance(command, list) else command)
        return real_send(self, command, check_health)

    try:
        pickups = [TaskWrite("ST-N1", f"pickup:o{n}", b'{"status":"open"}') for n in range(2000)]
        visits = [TaskWrite("ST-N1", f"visit-{n}", b"{}", T0 + n) for n in range(1200)]
        store.write([], tasks=[*pickups, *visits])
        store.prune_visits("ST-N1", T0)  # loads the script
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
        assert store.prune_visits("ST-N1", T0 + 1000) == 1000
        monkeypatch.undo()
        assert len(sends) == 1 and b"EVALSHA" in sends[0]
        stored = store.tasks("ST-N1")
        assert len(stored) == 2000 + 200 and "visit-999" not in stored and "visit-1000" in stored
        index = store.keys.visit_index("ST-N1")
        assert redis_client.zcard(index) == 200
        store.write([], tasks=[TaskWrite("ST-N1", "visit-1100", None, 0)])
        assert redis_client.zscore(index, "visit-1100") is None
        assert redis_client.zcard(index) == 199
    finally:
        monkeypatch.undo()
        store.close()
