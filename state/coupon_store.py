"""Coupon codes sent, by code: which customer a code belongs to, so a till that redeems a
coupon without scanning a loyalty card still closes the loop on the trigger.

``CouponStore`` is what rule_triggers needs (``domain.trigger_replay.CouponBook`` plus
``close``); two backends keep the same semantics, checked by one contract test suite
(``tests/unit/test_coupon_store_contract.py``):

- ``RedisCouponStore`` (production): keys ``<prefix>coupon:<code>`` (internal) hold the
  customer id and expire once the coupon and its conversion window have passed. Written
  with one pipeline per batch of coupons; read with one MGET per batch of receipts (one
  per slot on a Redis Cluster, ``state.redis_io.get_many``; the client splits ``forget``'s
  DEL by slot likewise).
- ``MemoryCouponStore``: a dict with the same expiry on a clock it is given (wall-clock
  seconds, like Redis's TTL); for the in-process tests and ``rules backtest``. One instance
  serves every worker of a flow (a lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

from base.config import Config
from base.flow_names import RULE_TRIGGERS
from state.redis_io import connect, get_many, with_retries


class CouponStore(Protocol):
    """The coupon codes rule_triggers has sent and who they went to."""

    def remember(self, codes: list[tuple[str, str, int]]) -> None:
        """(code, customer id, seconds to keep, at least 1) for each coupon sent; a code
        sent again takes the newer owner and keep."""
        ...

    def owners(self, codes: list[str]) -> dict[str, str]:
        """The customer of each code that is known and not expired."""
        ...

    def forget(self, codes: list[str]) -> None:
        """Drop these codes (their customer was erased): a till redeeming one later finds
        no owner."""
        ...

    def close(self) -> None: ...


class RedisCouponStore:
    """``CouponStore`` in Redis."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix

    @classmethod
    def from_config(cls, config: Config) -> RedisCouponStore:
        return cls(connect(config), config.redis.key_prefix)

    def key(self, code: str) -> str:
        return f"{self.prefix}coupon:{code}"

    def remember(self, codes: list[tuple[str, str, int]]) -> None:
        if not codes:
            return

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for code, customer_id, keep_s in codes:
                pipe.set(self.key(code), customer_id, ex=max(1, keep_s))
            pipe.execute()

        with_retries(RULE_TRIGGERS, write)

    def owners(self, codes: list[str]) -> dict[str, str]:
        if not codes:
            return {}
        values = with_retries(
            RULE_TRIGGERS, lambda: get_many(self.client, [self.key(c) for c in codes])
        )
        return {
            code: v.decode() if isinstance(v, bytes) else str(v)
            for code, v in zip(codes, values, strict=True)
            if v is not None
        }

    def forget(self, codes: list[str]) -> None:
        if codes:
            with_retries(RULE_TRIGGERS, lambda: self.client.delete(*(self.key(c) for c in codes)))

    def close(self) -> None:
        self.client.close()


class MemoryCouponStore:
    """``CouponStore`` in a dict; ``now`` (seconds) is the clock its keeps count on."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        #: code → (customer id, expiry on ``now``'s clock)
        self._codes: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def remember(self, codes: list[tuple[str, str, int]]) -> None:
        if not codes:
            return
        now = self._now()
        with self._lock:
            for code, customer_id, keep_s in codes:
                self._codes[code] = (customer_id, now + max(1, keep_s))

    def owners(self, codes: list[str]) -> dict[str, str]:
        now = self._now()
        found = {}
        with self._lock:
            for code in codes:
                entry = self._codes.get(code)
                if entry is None:
                    continue
                if entry[1] <= now:
                    del self._codes[code]  # expired, as Redis drops a key past its TTL
                    continue
                found[code] = entry[0]
        return found

    def forget(self, codes: list[str]) -> None:
        with self._lock:
            for code in codes:
                self._codes.pop(code, None)

    def close(self) -> None:
        """Nothing to release; the codes stay readable after a flow closed its writer."""
