"""Coupon codes sent, by code: which customer a code belongs to, so a till that redeems a
coupon without scanning a loyalty card still closes the loop on the trigger.

Keys ``<prefix>coupon:<code>`` (internal) hold the customer id and expire once the coupon
and its conversion window have passed. Written with one pipeline per batch of coupons; read
with one MGET per batch of receipts.
"""

from __future__ import annotations

import redis

from base.config import Config
from base.flow_names import RULE_TRIGGERS
from state.redis_io import connect, with_retries


class CouponStore:
    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix

    @classmethod
    def from_config(cls, config: Config) -> CouponStore:
        return cls(connect(config), config.redis.key_prefix)

    def key(self, code: str) -> str:
        return f"{self.prefix}coupon:{code}"

    def remember(self, codes: list[tuple[str, str, int]]) -> None:
        """(code, customer id, seconds to keep) for each coupon sent."""
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
        values = with_retries(RULE_TRIGGERS, lambda: self.client.mget([self.key(c) for c in codes]))
        return {
            code: v.decode() if isinstance(v, bytes) else str(v)
            for code, v in zip(codes, values, strict=True)
            if v is not None
        }

    def close(self) -> None:
        self.client.close()
