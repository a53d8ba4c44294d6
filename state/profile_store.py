"""Customer profiles in Redis (CONTRACT §11) and how many customers each segment holds.

``ProfileStore`` is what rule_triggers needs to publish the profiles its per-customer step
computes (``domain.profile.profile_fields``). Two backends keep the same semantics:

- ``RedisProfileStore`` (production). Keys:

  - ``<prefix>profile:<customer_id>`` (public hash, ``state.service_reads.profile_key``):
    replaced as a whole by a small script on that one key (DEL + HSET + PEXPIREAT), so a
    reader never sees half a profile, and expiring ``profile.ttl_days`` after its last
    write. The script is sent the fields as one JSON array (``cjson`` in Redis's Lua
    decodes it): packed as separate arguments, a profile's 25 strings cost the flow more
    client-side encoding than any other Redis command it sends.
  - ``<prefix>profiles:{segments}:<segment>`` (internal, one sorted set per segment, all in
    one Redis Cluster slot through the ``{segments}`` hash tag): the customers of that
    segment, each scored with the expiry time (epoch ms) of their profile hash.

  ``write`` sends one pipeline per batch: a script per customer on their profile key (one
  slot each), then one script on the five segment sets that moves each customer into the
  set of their segment (ZREM from the four others, ZADD to theirs with the expiry), then
  the read of the counts. Every
  command writes an absolute value, so writing a batch again changes nothing, and a batch
  cut short by a crash is made whole by its replay; there is no count to move, so there is
  nothing to compare first.

  Why sets rather than a hash of counts: a count hash needs "compare the customer's stored
  segment, then move one count" to be idempotent, and that needs the profile hash and the
  counts in one script — two slots, so not in Redis Cluster. Split in two round trips, a
  crash between them loses a count for good (the replay finds the segment already stored).
  Worse, profiles leave by TTL, which no count hears of. The sets know each member and
  when its profile expires, so ``segment_counts`` counts exactly the profiles alive now
  (ZCOUNT from Redis's own clock), and expired members are cleared by later writes.
  The price is one sorted-set entry per customer (~80 bytes) next to a profile hash of
  several hundred.

- ``MemoryProfileStore``: dicts with the same expiry on a clock it is given; for the
  in-process tests. One instance serves every worker of a flow (a lock).

Expiry times are wall-clock (Redis TTLs are), taken from the writer's clock: only the
profile's lifetime depends on it, never what it says.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson
import redis
from redis.client import Pipeline

from base.config import Config
from base.flow_names import RULE_TRIGGERS
from base.units import DAY_MS
from domain.profile import PROFILE_FIELDS, SEGMENTS
from state.redis_io import connect, with_retries
from state.service_reads import profile_key

# KEYS[1] = the profile hash; ARGV[1] = expiry (epoch ms); ARGV[2] = the JSON array
# [field, value, field, value, …] (every value a string).
_REPLACE_PROFILE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[2])))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"""

# KEYS = the segment sets in SEGMENTS order; ARGV = now (epoch ms), then per customer:
# customer id, index of their segment (1-based) or 0 to take them out, expiry (epoch ms).
_PLACE_CUSTOMERS = """
local now = ARGV[1]
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. now)
end
for j = 2, #ARGV, 3 do
  local customer, segment = ARGV[j], tonumber(ARGV[j + 1])
  for i = 1, #KEYS do
    if i == segment then
      redis.call('ZADD', KEYS[i], ARGV[j + 2], customer)
    else
      redis.call('ZREM', KEYS[i], customer)
    end
  end
end
return 1
"""

# KEYS = the segment sets; ARGV[1] = now (epoch ms) or '' for Redis's clock.
_COUNT_SEGMENTS = """
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local counts = {}
for i = 1, #KEYS do
  counts[i] = redis.call('ZCOUNT', KEYS[i], now, '+inf')
end
return counts
"""

#: Customers per script call of ``_PLACE_CUSTOMERS`` (bounds one script's run time).
PLACE_CHUNK = 500


class ProfileStore(Protocol):
    """The public customer profiles and the segment counts."""

    def write(self, profiles: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
        """Replace each customer's profile hash with these fields (exactly
        ``domain.profile.PROFILE_FIELDS``) and count them in their ``segment``; returns
        ``segment_counts()`` as of after the write (read in the same round trip, for the
        ``omnistream_customers`` gauge)."""
        ...

    def erase(self, customer_ids: Iterable[str]) -> None:
        """Delete these customers' profiles and take them out of the counts (idempotent)."""
        ...

    def profile(self, customer_id: str) -> dict[str, str] | None:
        """The stored profile hash, or None."""
        ...

    def segment_counts(self) -> dict[str, int]:
        """Live profiles per segment, every segment named (0 when empty)."""
        ...

    def close(self) -> None: ...


def _checked(customer_id: str, fields: Mapping[str, str]) -> int:
    """The 1-based segment index of a profile whose fields are exactly the contract's."""
    if set(fields) != set(PROFILE_FIELDS):
        missing = sorted(set(PROFILE_FIELDS) - set(fields))
        extra = sorted(set(fields) - set(PROFILE_FIELDS))
        raise ValueError(
            f"profile of {customer_id!r}: expected the CONTRACT §11 fields "
            f"(missing {missing}, unknown {extra})"
        )
    segment = fields["segment"]
    if segment not in SEGMENTS:
        raise ValueError(f"profile of {customer_id!r}: unknown segment {segment!r}")
    return SEGMENTS.index(segment) + 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisProfileStore:
    """``ProfileStore`` in Redis (module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        ttl_days: float,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.ttl_ms = round(ttl_days * DAY_MS)
        self._now_ms = now_ms
        self._count = client.register_script(_COUNT_SEGMENTS)
        self._sha = {
            source: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            for source in (_REPLACE_PROFILE, _PLACE_CUSTOMERS, _COUNT_SEGMENTS)
        }

    @classmethod
    def from_config(cls, config: Config) -> RedisProfileStore:
        return cls(connect(config), config.redis.key_prefix, config.profile.ttl_days)

    def key(self, customer_id: str) -> str:
        return profile_key(self.prefix, customer_id)

    def segment_key(self, segment: str) -> str:
        return f"{self.prefix}profiles:{{segments}}:{segment}"

    def _segment_keys(self) -> list[str]:
        return [self.segment_key(s) for s in SEGMENTS]

    def _execute(self, build: Callable[[Pipeline], None]) -> list[Any]:
        """Run the pipeline ``build`` fills, its scripts called by EVALSHA: one round trip.
        (redis-py's registered scripts would ask SCRIPT EXISTS first, a second round trip
        on every batch.) A Redis that does not know them (restarted, SCRIPT FLUSH) answers
        NOSCRIPT; they are loaded and the batch is sent again, which its absolute writes
        allow. They are loaded one command each, outside a pipeline: a cluster client sends
        ``SCRIPT LOAD`` to every primary but refuses it in a pipeline (rare enough to cost
        nothing)."""
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                for source in self._sha:
                    self.client.script_load(source)
        raise AssertionError("unreachable")

    def _evalsha(self, pipe: Pipeline, source: str, keys: list[str], args: list[Any]) -> None:
        """EVALSHA as a raw command: a cluster pipeline refuses its ``evalsha`` method (it
        cannot know the keys are in one slot) but routes the command by its keys, which
        here are always in one slot (one profile, or the ``{segments}`` sets)."""
        pipe.execute_command("EVALSHA", self._sha[source], len(keys), *keys, *args)

    def write(self, profiles: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
        if not profiles:
            return self.segment_counts()
        placed = [(cid, _checked(cid, fields)) for cid, fields in profiles.items()]

        def attempt() -> dict[str, int]:
            now = self._now_ms()
            expiry = now + self.ttl_ms

            def build(pipe: Pipeline) -> None:
                for customer_id, fields in profiles.items():
                    flat: list[str] = []
                    for name in PROFILE_FIELDS:
                        flat += (name, fields[name])
                    self._evalsha(
                        pipe,
                        _REPLACE_PROFILE,
                        [self.key(customer_id)],
                        [expiry, orjson.dumps(flat)],
                    )
                self._place_customers(pipe, now, [(c, i, expiry) for c, i in placed])
                self._evalsha(pipe, _COUNT_SEGMENTS, self._segment_keys(), [""])

            counts = self._execute(build)[-1]
            return {segment: int(n) for segment, n in zip(SEGMENTS, counts, strict=True)}

        return with_retries(RULE_TRIGGERS, attempt)

    def _place_customers(
        self, pipe: Pipeline, now: int, placements: list[tuple[str, int, int]]
    ) -> None:
        keys = self._segment_keys()
        for start in range(0, len(placements), PLACE_CHUNK):
            args: list[Any] = [now]
            for customer_id, index, expiry in placements[start : start + PLACE_CHUNK]:
                args += [customer_id, index, expiry]
            self._evalsha(pipe, _PLACE_CUSTOMERS, keys, args)

    def erase(self, customer_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(customer_ids))
        if not ids:
            return

        def attempt() -> None:
            def build(pipe: Pipeline) -> None:
                for customer_id in ids:
                    pipe.delete(self.key(customer_id))
                self._place_customers(pipe, self._now_ms(), [(c, 0, 0) for c in ids])

            self._execute(build)

        with_retries(RULE_TRIGGERS, attempt)

    def profile(self, customer_id: str) -> dict[str, str] | None:
        raw = with_retries(RULE_TRIGGERS, lambda: self.client.hgetall(self.key(customer_id)))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    def segment_counts(self) -> dict[str, int]:
        """Counted on Redis's clock (a profile leaves the count when its hash expires)."""
        counts = with_retries(
            RULE_TRIGGERS, lambda: self._count(keys=self._segment_keys(), args=[""])
        )
        return {segment: int(n) for segment, n in zip(SEGMENTS, counts, strict=True)}

    def close(self) -> None:
        self.client.close()


class MemoryProfileStore:
    """``ProfileStore`` in dicts; ``now_ms`` is the clock expiries count on."""

    def __init__(
        self, ttl_days: float = 400.0, now_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    ) -> None:
        self.ttl_ms = round(ttl_days * DAY_MS)
        self._now_ms = now_ms
        #: customer id → (fields, expiry on ``now_ms``'s clock)
        self._profiles: dict[str, tuple[dict[str, str], int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> MemoryProfileStore:
        return cls(config.profile.ttl_days)

    def write(self, profiles: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
        for customer_id, fields in profiles.items():
            _checked(customer_id, fields)
        expiry = self._now_ms() + self.ttl_ms
        with self._lock:
            for customer_id, fields in profiles.items():
                self._profiles[customer_id] = (dict(fields), expiry)
        return self.segment_counts()

    def erase(self, customer_ids: Iterable[str]) -> None:
        with self._lock:
            for customer_id in customer_ids:
                self._profiles.pop(customer_id, None)

    def _alive(self) -> dict[str, dict[str, str]]:
        now = self._now_ms()
        for customer_id in [c for c, (_, exp) in self._profiles.items() if exp < now]:
            # Expired, as Redis drops a key once its clock is past the expiry time.
            del self._profiles[customer_id]
        return {c: fields for c, (fields, _) in self._profiles.items()}

    def profile(self, customer_id: str) -> dict[str, str] | None:
        with self._lock:
            fields = self._alive().get(customer_id)
        return dict(fields) if fields is not None else None

    def segment_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SEGMENTS, 0)
        with self._lock:
            for fields in self._alive().values():
                counts[fields["segment"]] += 1
        return counts

    def close(self) -> None:
        """Nothing to release; profiles stay readable after a flow closed its writer."""
