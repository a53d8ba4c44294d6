"""The demo's shoppers answering their triggers: the loop that gives an experiment a result.

The generated traffic is open loop: it knows nothing of the coupons rule_triggers sends. So
the demo follows ``triggers.coupon`` and ``triggers.holdout`` as a customer's phone would,
lets ``connectors.generator.response`` decide who buys (the base rate, plus the true
uplift of the variant they were sent) and when, and produces each purchase as the input
event a real one would be:

- a customer with a loyalty card pays at a till (``pos.sales``, ``member_code``), scanning
  the coupon's code when the response says they redeem it;
- one known online only (a device, perhaps an account) orders for delivery
  (``clickstream`` ``order_placed``); one who redeems without a card hands the code over at
  a till, and rule_triggers finds the code's owner.

Who the customer is comes from identity_stitch's record of the id (``<prefix>cust:<id>``,
the identifiers it linked), read when the purchase is due: the shopper is whoever the id
stands for by then. Purchases keep their event time (the trigger's + the response's delay),
so they may arrive a little after later events of the stream, as late events do.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from base import topics
from connectors.generator.response import Purchase, ResponseModel, TriggerSeen, respond
from connectors.kafka_clients import make_producer
from domain.reference import ReferenceData
from domain.timeparse import TimestampError, parse_event_time
from omnistream.trigger_watch import TopicFollower
from state.redis_io import connect


def trigger_seen(document: dict[str, Any]) -> TriggerSeen | None:
    """A coupon or holdout CloudEvent as the response model reads it (None: not one)."""
    data = document.get("data")
    if not isinstance(data, dict) or document.get("source") != "omnistream/rule_triggers":
        return None
    try:
        sent_ms = parse_event_time(document["time"])
    except (KeyError, TimestampError, TypeError):
        return None
    raw_coupon = data.get("coupon")
    coupon: dict[str, Any] = raw_coupon if isinstance(raw_coupon, dict) else {}
    holdout = str(document.get("type", "")).endswith(".holdout")
    return TriggerSeen(
        str(document.get("id")),
        str(data.get("rule_id")),
        str(data.get("variant")),
        str(data.get("customer_id")),
        sent_ms,
        None if holdout else coupon.get("code"),
        coupon.get("sku"),
        coupon.get("store_id"),
    )


@dataclass
class Shoppers(TopicFollower):
    """Follows the trigger topics; ``produce_due`` turns the purchases decided so far into
    input events."""

    reference: ReferenceData = field(default_factory=lambda: ReferenceData({}, {}))
    model: ResponseModel = field(default_factory=ResponseModel)
    follows: tuple[str, ...] = (topics.TRIGGERS_COUPON, topics.TRIGGERS_HOLDOUT)
    name = "demo-shoppers"
    #: triggers answered (by id: a trigger read twice is answered once)
    answered: set[str] = field(default_factory=set)
    due: list[Purchase] = field(default_factory=list)
    #: what became of the purchases: by topic produced to, or why not
    outcome: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: opened by the first ``produce_due``, kept for the next ones, closed by ``stop``
    _client: Any = None
    _producer: Any = None

    def stop(self) -> None:
        super().stop()
        if self._client is not None:
            self._client.close()
            self._client = None

    def received(self, topic: str, arrived_ms: int, document: dict[str, Any]) -> None:
        seen = trigger_seen(document)
        if seen is None:
            return
        with self._lock:
            if seen.trigger_id in self.answered:
                return
            self.answered.add(seen.trigger_id)
            purchase = respond(seen, self.model)
            if purchase is not None:
                self.due.append(purchase)

    def produce_due(self) -> Counter[str]:
        """Produce the purchases decided so far; the messages produced per input topic."""
        with self._lock:
            due, self.due = self.due, []
        if not due:
            return Counter()
        if self._client is None:
            self._client = connect(self.config)
            self._producer = make_producer(self.config)
        client, producer = self._client, self._producer
        assert producer is not None
        pipe = client.pipeline(transaction=False)
        for purchase in due:
            pipe.hget(f"{self.config.redis.key_prefix}cust:{purchase.customer_id}", "ids")
        found = pipe.execute()
        produced: Counter[str] = Counter()
        for purchase, raw in zip(due, found, strict=True):
            message = self.purchase_event(purchase, _identifiers(raw))
            if message is None:
                self.outcome["no_identifier"] += 1
                continue
            topic, key, value = message
            producer.produce(self.config.topic(topic), key=key, value=orjson.dumps(value))
            produced[topic] += 1
            self.outcome[topic] += 1
        producer.flush(30)
        return produced

    def purchase_event(
        self, purchase: Purchase, identifiers: dict[str, str]
    ) -> tuple[str, bytes, dict[str, Any]] | None:
        """(topic, key, value) of the purchase, or None when nothing names the shopper."""
        sku = purchase.sku
        if sku is None or sku not in self.reference.products:
            sku = self._any_sku(purchase)
        price = self.reference.products[sku].price
        lines = [{"sku": sku, "qty": 1, "unit_price": price}]
        base = {"event_id": f"resp-{purchase.trigger_id}", "ts": purchase.ts_ms}
        member = identifiers.get("member")
        device = identifiers.get("anon")
        if member is not None or (purchase.redeemed_code is not None and device is None):
            store = self._store(purchase)
            sale: dict[str, Any] = {**base, "event_type": "sale", "store_id": store}
            sale |= {"receipt_id": f"R-{purchase.trigger_id[:16]}", "lines": lines}
            sale["total"] = price
            if member is not None:
                sale["member_code"] = member
            if purchase.redeemed_code is not None:
                sale["coupon_codes"] = [purchase.redeemed_code]
            return topics.POS_SALES, store.encode(), sale
        if device is None:
            return None
        order: dict[str, Any] = {**base, "event_type": "order_placed", "anonymous_id": device}
        if "user" in identifiers:
            order["user_id"] = identifiers["user"]
        order |= {"channel": "app", "order_id": f"ORD-R-{purchase.trigger_id[:16]}"}
        order |= {"lines": lines, "total": price}
        region = self.reference.locations[self._store(purchase)].region
        order["fulfillment"] = {"type": "delivery", "region": region}
        return topics.CLICKSTREAM, device.encode(), order

    def _store(self, purchase: Purchase) -> str:
        if purchase.store_id is not None and purchase.store_id in self.reference.locations:
            return purchase.store_id
        stores = sorted(i for i, loc in self.reference.locations.items() if loc.type == "store")
        return stores[_index(purchase.customer_id, len(stores))]

    def _any_sku(self, purchase: Purchase) -> str:
        skus = sorted(self.reference.products)
        return skus[_index(purchase.trigger_id, len(skus))]


def _index(text: str, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") % size


def _identifiers(raw: bytes | str | None) -> dict[str, str]:
    """type → value of a customer record's ``ids`` (the first of each type)."""
    if raw is None:
        return {}
    out: dict[str, str] = {}
    try:
        ids = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    for ident in ids if isinstance(ids, list) else []:
        kind, _, value = str(ident).partition(":")
        out.setdefault(kind, value)
    return out
