"""What each arm of each experiment has seen, for ``omnistream experiments report``
(CONTRACT §12): the triggers sent or held out, who they went to, and which converted.

``ExperimentStore`` is what rule_triggers writes once per batch of its outcomes; two
backends keep the same semantics:

- ``RedisExperimentStore`` (production). One hash per rule × variant,
  ``<prefix>experiments:{experiments}:<rule_id>:<variant>`` (internal; every key in one
  Redis Cluster slot through the ``{experiments}`` hash tag, so the erasure script may touch
  them all), plus the set ``<prefix>experiments:{experiments}`` of those keys. Fields:

  - ``s:<code>`` → customer id: a trigger sent (or held out) under that code;
  - ``c:<code>`` → revenue in cents: that trigger converted (CONTRACT §12: at most once).

  Every write is an HSET of a field named by the trigger, so a batch replayed after a crash
  writes the same fields again and changes nothing; there is no counter to double. Each
  hash expires ``RETENTION_DAYS`` after its latest write: an experiment that stopped
  writing leaves Redis by itself.

  Erasure (``forget``) runs one script over the arms that drops every ``s:`` field whose
  value is the customer and its ``c:`` twin: afterwards the report counts the customer
  nowhere, and the id is nowhere in Redis. It reads whole hashes, which is fine for the
  rare erasure; a hash holds one field pair per trigger of its arm.

  Stock experiments (``domain.stock_arms``) have their own set,
  ``<prefix>experiments:{experiments}:stock``, of hashes
  ``<prefix>experiments:{experiments}:stock:<rule_id>:<variant>`` with fields
  ``f:<sku>:<location>`` → ``stockout_ms|open_since_ms|sold|as_of_ms`` (a shelf's latest
  absolute figures; ``open_since_ms`` empty when in stock) and ``m:<trigger id>`` →
  ``kind|qty`` (a replenishment trigger of the arm). No customer is named there, so erasure
  has nothing to do in them.

- ``MemoryExperimentStore``: dicts, for the in-process tests.

The tallies count customers, not triggers (``domain.experiments``): a customer sent two
coupons of one rule is one assigned customer, and converted if either converted. After an
identity merge the old id's triggers still name the old id, so a person may count once
under each id; the rule state itself (who converts what) follows the merge.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

import redis

from base.config import Config
from base.flow_names import RULE_TRIGGERS
from base.units import DAY_MS
from domain.experiments import ArmTally
from domain.stock_arms import ShelfFigures, StockArmTally
from state.redis_io import connect, with_retries

#: How long an arm's record outlives its latest trigger or conversion.
RETENTION_DAYS = 180

# KEYS[1] = the set of arm keys; ARGV[1] = the customer id. Drops the customer's triggers
# (and their conversions) from every arm.
_FORGET = """
local removed = 0
for _, arm in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', arm)
  for i = 1, #fields, 2 do
    if fields[i + 1] == ARGV[1] and string.sub(fields[i], 1, 2) == 's:' then
      local code = string.sub(fields[i], 3)
      redis.call('HDEL', arm, fields[i], 'c:' .. code)
      removed = removed + 1
    end
  end
end
return removed
"""

#: (rule id, variant, code, customer id) of a trigger sent or held out
Sent = tuple[str, str, str, str]
#: (rule id, variant, code, revenue in cents) of a converted trigger
Converted = tuple[str, str, str, int]
#: (rule id, variant, trigger id, kind, suggested quantity) of a replenishment trigger
Move = tuple[str, str, str, str, int]


def shelf_fields(shelves: Iterable[ShelfFigures]) -> dict[tuple[str, str], dict[str, str]]:
    """(rule, variant) → the fields a batch's shelf figures set (the latest per shelf)."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for shelf in shelves:
        since = "" if shelf.out_since_ms is None else str(shelf.out_since_ms)
        value = f"{shelf.stockout_ms}|{since}|{shelf.sold}|{shelf.as_of_ms}"
        for arm in shelf.arms:
            out.setdefault(arm, {})[f"f:{shelf.sku}:{shelf.location_id}"] = value
    return out


def move_fields(moves: Iterable[Move]) -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for rule_id, variant, trigger_id, kind, qty in moves:
        out.setdefault((rule_id, variant), {})[f"m:{trigger_id}"] = f"{kind}|{qty}"
    return out


def stock_tally(rule_id: str, variant: str, fields: dict[str, str]) -> StockArmTally:
    shelves = []
    moves = []
    for name, value in fields.items():
        if name.startswith("f:"):
            closed, since, sold, as_of = value.split("|")
            shelves.append((int(closed), int(since) if since else None, int(sold), int(as_of)))
        elif name.startswith("m:"):
            kind, qty = value.split("|")
            moves.append((kind, int(qty)))
    return StockArmTally(rule_id, variant, tuple(shelves), tuple(moves))


class ExperimentStore(Protocol):
    def record(self, sent: list[Sent], converted: list[Converted]) -> None:
        """Remember a batch's triggers and conversions (idempotent)."""
        ...

    def forget(self, customer_ids: Iterable[str]) -> None:
        """Drop everything the arms hold of these (erased) customers."""
        ...

    def tallies(self) -> list[ArmTally]:
        """Every arm's tally, for the report."""
        ...

    def record_stock(self, shelves: list[ShelfFigures], moves: list[Move]) -> None:
        """Remember a batch's shelf figures and replenishment triggers (idempotent)."""
        ...

    def stock_tallies(self) -> list[StockArmTally]:
        """Every stock experiment arm's tally, for the report."""
        ...

    def close(self) -> None: ...


def _tally(rule_id: str, variant: str, fields: dict[str, str]) -> ArmTally:
    """One arm's figures from its fields (``s:`` and ``c:``, module doc)."""
    owner = {f[2:]: v for f, v in fields.items() if f.startswith("s:")}
    cents = {f[2:]: int(v) for f, v in fields.items() if f.startswith("c:") and f[2:] in owner}
    return ArmTally(
        rule_id,
        variant,
        assigned=len(set(owner.values())),
        sent=len(owner),
        converted=len({owner[code] for code in cents}),
        conversions=len(cents),
        revenue=sum(cents.values()) / 100,
    )


class RedisExperimentStore:
    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.index = f"{key_prefix}experiments:{{experiments}}"
        self.stock_index = f"{self.index}:stock"
        self._forget = client.register_script(_FORGET)

    @classmethod
    def from_config(cls, config: Config) -> RedisExperimentStore:
        return cls(connect(config), config.redis.key_prefix)

    def key(self, rule_id: str, variant: str) -> str:
        return f"{self.index}:{rule_id}:{variant}"

    def record(self, sent: list[Sent], converted: list[Converted]) -> None:
        if not sent and not converted:
            return
        fields: dict[str, dict[str, str]] = {}
        for rule_id, variant, code, customer_id in sent:
            fields.setdefault(self.key(rule_id, variant), {})[f"s:{code}"] = customer_id
        for rule_id, variant, code, cents in converted:
            fields.setdefault(self.key(rule_id, variant), {})[f"c:{code}"] = str(cents)

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.sadd(self.index, *fields)
            pipe.pexpire(self.index, RETENTION_DAYS * DAY_MS)
            for key, mapping in fields.items():
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.pexpire(key, RETENTION_DAYS * DAY_MS)
            pipe.execute()

        with_retries(RULE_TRIGGERS, write)

    def record_stock(self, shelves: list[ShelfFigures], moves: list[Move]) -> None:
        fields = shelf_fields(shelves)
        for arm, mapping in move_fields(moves).items():
            fields.setdefault(arm, {}).update(mapping)
        if not fields:
            return
        keys = {arm: f"{self.stock_index}:{arm[0]}:{arm[1]}" for arm in fields}

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.sadd(self.stock_index, *keys.values())
            pipe.pexpire(self.stock_index, RETENTION_DAYS * DAY_MS)
            for arm, mapping in fields.items():
                pipe.hset(keys[arm], mapping=mapping)  # type: ignore[arg-type]
                pipe.pexpire(keys[arm], RETENTION_DAYS * DAY_MS)
            pipe.execute()

        with_retries(RULE_TRIGGERS, write)

    def stock_tallies(self) -> list[StockArmTally]:
        out = []
        for key, fields in self._hashes(self.stock_index):
            rule_id, _, variant = key[len(self.stock_index) + 1 :].rpartition(":")
            out.append(stock_tally(rule_id, variant, fields))
        return out

    def _hashes(self, index: str) -> list[tuple[str, dict[str, str]]]:
        """(key, fields) of every non-empty hash of an index set, in key order."""
        out = []
        for raw_key in sorted(self.client.smembers(index)):  # type: ignore[union-attr]
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            raw = self.client.hgetall(key)
            fields = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in raw.items()  # type: ignore[union-attr]
            }
            if fields:
                out.append((key, fields))
        return out

    def forget(self, customer_ids: Iterable[str]) -> None:
        for customer_id in customer_ids:
            with_retries(
                RULE_TRIGGERS,
                lambda c=customer_id: self._forget(keys=[self.index], args=[c]),  # type: ignore[misc]
            )

    def tallies(self) -> list[ArmTally]:
        out = []
        for key, fields in self._hashes(self.index):
            rule_id, _, variant = key[len(self.index) + 1 :].rpartition(":")
            out.append(_tally(rule_id, variant, fields))
        return out

    def close(self) -> None:
        self.client.close()


class MemoryExperimentStore:
    """``ExperimentStore`` in dicts; one instance serves every worker of a flow (a lock)."""

    def __init__(self) -> None:
        self.arms: dict[tuple[str, str], dict[str, str]] = {}
        self.stock_arms: dict[tuple[str, str], dict[str, str]] = {}
        self._lock = threading.Lock()

    def record(self, sent: list[Sent], converted: list[Converted]) -> None:
        with self._lock:
            for rule_id, variant, code, customer_id in sent:
                self.arms.setdefault((rule_id, variant), {})[f"s:{code}"] = customer_id
            for rule_id, variant, code, cents in converted:
                self.arms.setdefault((rule_id, variant), {})[f"c:{code}"] = str(cents)

    def forget(self, customer_ids: Iterable[str]) -> None:
        gone = set(customer_ids)
        with self._lock:
            for fields in self.arms.values():
                for field in [f for f, v in fields.items() if f.startswith("s:") and v in gone]:
                    del fields[field]
                    fields.pop(f"c:{field[2:]}", None)

    def tallies(self) -> list[ArmTally]:
        with self._lock:
            return [_tally(r, v, dict(f)) for (r, v), f in sorted(self.arms.items()) if f]

    def record_stock(self, shelves: list[ShelfFigures], moves: list[Move]) -> None:
        with self._lock:
            for fields in (shelf_fields(shelves), move_fields(moves)):
                for arm, mapping in fields.items():
                    self.stock_arms.setdefault(arm, {}).update(mapping)

    def stock_tallies(self) -> list[StockArmTally]:
        with self._lock:
            return [stock_tally(r, v, dict(f)) for (r, v), f in sorted(self.stock_arms.items())]

    def close(self) -> None:
        pass
