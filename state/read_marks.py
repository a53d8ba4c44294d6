"""How far each input of a replay was read by the whole flow, for the end of the replay
(rule_triggers ``--until-idle``).

At the end of a replay every key fires what it held for the end against the latest event
time read of its input, on whichever worker read it (``connectors.event_clock``). The
workers of one process share that in memory; the processes of a Bytewax cluster share
nothing, so a key on a process that did not read the latest events would see an earlier
end and drop the timers due in between (a 2-process cluster lost 36 of 216 coupons so on a
generated stream whose last event sat on one partition). So the flow's ``read_marks`` step
folds every batch's marks into one key per input and, at the end of the input, puts them
here; the keys' own end-of-input steps are downstream of it, so they read them only after
every process's marks are in.

One hash per topic prefix (a replay of other topics into the same Redis keeps its own),
each field an input group's latest event time (epoch ms). It is written only at the end of
a replay, whose ``read_marks`` state (in the recovery snapshots with the keys that need it)
holds what the whole run read, resumes included; it expires after ``ttl_s``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Protocol

import redis

from base.config import Config
from state.redis_io import connect, with_retries

#: Kept this long after a replay's end (seconds); only the end of that replay reads it.
READ_MARKS_TTL_S = 7 * 24 * 3600


class ReadMarkStore(Protocol):
    def put(self, marks: Mapping[str, int]) -> None:
        """The latest event time read of each input group named (each replaces its own)."""
        ...

    def get(self) -> dict[str, int]:
        """What ``put`` last stored (empty before)."""
        ...

    def close(self) -> None: ...


def read_marks_key(prefix: str, topic_prefix: str) -> str:
    return f"{prefix}replay_read:{topic_prefix}"


class RedisReadMarkStore:
    def __init__(
        self, client: redis.Redis, key: str, flow: str, ttl_s: int = READ_MARKS_TTL_S
    ) -> None:
        self.client = client
        self.key = key
        self.flow = flow
        self.ttl_s = ttl_s

    @classmethod
    def from_config(cls, config: Config, flow: str) -> RedisReadMarkStore:
        key = read_marks_key(config.redis.key_prefix, config.kafka.topic_prefix)
        return cls(connect(config), key, flow)

    def put(self, marks: Mapping[str, int]) -> None:
        if not marks:
            return
        pipe = self.client.pipeline(transaction=False)  # one key: nothing to interleave
        pipe.hset(self.key, mapping={group: str(ms) for group, ms in marks.items()})
        pipe.expire(self.key, self.ttl_s)
        with_retries(self.flow, pipe.execute)

    def get(self) -> dict[str, int]:
        raw = with_retries(self.flow, lambda: self.client.hgetall(self.key))
        return {k.decode() if isinstance(k, bytes) else str(k): int(v) for k, v in raw.items()}

    def close(self) -> None:
        self.client.close()


class MemoryReadMarkStore:
    """One dictionary shared by every worker thread of a test's flow."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, marks: Mapping[str, int]) -> None:
        with self._lock:
            self.marks.update(marks)

    def get(self) -> dict[str, int]:
        with self._lock:
            return dict(self.marks)

    def close(self) -> None:
        pass
