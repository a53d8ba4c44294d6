"""Deliberately malformed events, mixed into the traffic for the dead-letter path and the demo.

Each one is built to get exactly one dead-letter reason code from the decoder (CONTRACT §2),
and carries that code as ``GeneratedEvent.bad_reason``, so a test can check the decoder's
verdict event by event. Most start as a well-formed event of a realistic shape and are then
spoiled in one way; about half of the customer-facing ones carry a raw phone number or
e-mail, to exercise masking in the dead-letter topic.

Pure and seeded like the simulation. Malformations read the simulation (customers,
locations, prices, clock) but never change it, and draw from their own random stream: the
good events of a seed are the same whatever share of malformed ones is mixed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson

from base import topics
from connectors.generator.simulation import Line, Simulation, priced_lines
from connectors.generator.wire import (
    CHANNELS,
    KEY_FIELD,
    GeneratedEvent,
    event_ts,
    format_email,
    format_phone,
    money,
    rfc3339_local,
)

#: Dead-letter reason codes the malformations produce, one per kind of malformation.
BAD_REASONS: tuple[str, ...] = (
    "malformed_json",
    "missing_field",
    "bad_type",
    "bad_value",
    "bad_timestamp",
    "unknown_event_type",
    "unknown_sku",
    "unknown_location",
)


class Malformations:
    """Malformed events at the simulation's current time, each built to get exactly one
    dead-letter reason from the decoder (see the module docstring)."""

    def __init__(self, simulation: Simulation) -> None:
        self.sim = simulation
        self.seed = simulation.seed
        self.rng = random.Random(f"omnistream-malformed-{self.seed}")
        self._made = 0
        self._variants: dict[str, list[Callable[[], tuple[str, dict[str, Any] | bytes]]]] = {
            "malformed_json": [
                self._truncated,
                self._not_utf8,
                self._not_an_object,
                self._python_repr,
                self._csv_line,
                self._empty,
            ],
            "missing_field": [self._missing_field],
            "bad_type": [self._bad_type],
            "bad_value": [self._bad_value],
            "bad_timestamp": [self._bad_timestamp],
            "unknown_event_type": [self._unknown_event_type],
            "unknown_sku": [self._unknown_sku],
            "unknown_location": [self._unknown_location],
        }

    def make(self) -> GeneratedEvent:
        """One malformed event; its reason is drawn evenly from ``BAD_REASONS``."""
        reason = self.rng.choice(BAD_REASONS)
        topic, payload = self.rng.choice(self._variants[reason])()
        if isinstance(payload, bytes):
            return GeneratedEvent(topic, self._key_of(topic, None), payload, None, reason)
        event_id = payload.get("event_id")
        return GeneratedEvent(
            topic,
            self._key_of(topic, payload),
            orjson.dumps(payload),
            event_id if isinstance(event_id, str) and event_id.strip() else None,
            reason,
        )

    def _key_of(self, topic: str, payload: dict[str, Any] | None) -> bytes:
        value = payload.get(KEY_FIELD[topic]) if payload is not None else None
        if isinstance(value, str):
            return value.encode()
        return self.rng.choice(self.sim.stores).location_id.encode()

    # --- well-formed bases, spoiled by the variants below ------------------------------------

    def _head(self, event_type: str) -> dict[str, Any]:
        self._made += 1
        return {
            "event_id": f"evt-{self.seed}-bad-{self._made}",
            "event_type": event_type,
            "ts": event_ts(self.rng, self.sim.now),
        }

    def _pii(self, payload: dict[str, Any], email_too: bool) -> dict[str, Any]:
        """About half of the customer-facing bad events carry raw PII."""
        customer = self.rng.choice(self.sim.customers)
        if customer.phone is not None and self.rng.random() < 0.5:
            payload["phone"] = format_phone(self.rng, customer.phone)
        if email_too and customer.email is not None and self.rng.random() < 0.5:
            payload["email"] = format_email(self.rng, customer.email)
        return payload

    def _lines(self) -> list[Line]:
        """One to three lines at today's prices (unchecked against stock: nothing is sold)."""
        lines = []
        for _ in range(self.rng.randint(1, 3)):
            sku = self.rng.choice(self.sim.skus)
            lines.append(Line(sku, self.rng.randint(1, 3), self.sim.unit_cents[sku]))
        return lines

    def _cart_event(self) -> dict[str, Any]:
        customer = self.rng.choice(self.sim.customers)
        sku = self.rng.choice(self.sim.skus)
        payload = self._head(self.rng.choice(("add_to_cart", "product_view", "remove_from_cart")))
        payload.update(
            {
                "anonymous_id": customer.devices[0],
                "channel": self.rng.choice(CHANNELS),
                "region": customer.region,
                "sku": sku,
                "qty": 1,
                "price": money(self.sim.unit_cents[sku]),
            }
        )
        return self._pii(payload, email_too=True)

    def _order_event(self) -> dict[str, Any]:
        customer = self.rng.choice(self.sim.customers)
        lines = self._lines()
        payload = self._head("order_placed")
        payload.update(
            {
                "anonymous_id": customer.devices[0],
                "channel": self.rng.choice(CHANNELS),
                "order_id": f"ORD-{self.seed}-bad-{self._made}",
                **priced_lines(lines),
                "fulfillment": {"type": "delivery", "location_id": self._central_warehouse_id()},
            }
        )
        return self._pii(payload, email_too=True)

    def _member_app_event(self, event_type: str) -> dict[str, Any]:
        """A signed-in member's app event (a check-in or a consent setting, CONTRACT §8)."""
        members = [c for c in self.sim.customers if c.user_id is not None]
        customer = self.rng.choice(members or self.sim.customers)
        payload = self._head(event_type)
        payload.update({"anonymous_id": customer.devices[0], "channel": "app"})
        if customer.user_id is not None:
            payload["user_id"] = customer.user_id
        payload["region"] = customer.region
        return payload

    def _checkin_event(self) -> dict[str, Any]:
        """A well-formed check-in at a store of the member's region."""
        payload = self._member_app_event("store_checkin")
        region_stores = [s for s in self.sim.stores if s.region == payload["region"]]
        payload["store_id"] = self.rng.choice(region_stores or self.sim.stores).location_id
        return payload

    def _consent_event(self) -> dict[str, Any]:
        payload = self._member_app_event("consent")
        payload["marketing"] = self.rng.random() < 0.3
        return payload

    def _sourced_order_event(self) -> dict[str, Any]:
        """A delivery without a location: its address goes with it (CONTRACT §8)."""
        payload = self._order_event()
        store = self.rng.choice(self.sim.stores)
        fulfillment: dict[str, Any] = {"type": "delivery", "region": store.region}
        if store.lat is not None and store.lon is not None:
            fulfillment["lat"] = round(store.lat + self.rng.uniform(-0.03, 0.03), 5)
            fulfillment["lon"] = round(store.lon + self.rng.uniform(-0.03, 0.03), 5)
        else:  # a reference without coordinates: People's Square, Shanghai
            fulfillment["lat"], fulfillment["lon"] = 31.2304, 121.4737
        payload["fulfillment"] = fulfillment
        return payload

    def _transfer_out_event(self) -> dict[str, Any]:
        """A well-formed transfer between two known locations."""
        payload = self._movement_event("transfer_out")
        others = [
            loc.location_id
            for loc in self.sim.locations
            if loc.location_id != payload["location_id"]
        ]
        payload["transfer_id"] = f"TR-{self.seed}-bad-{self._made}"
        payload["to_location_id"] = self.rng.choice(others)
        return payload

    def _sale_event(self) -> dict[str, Any]:
        store = self.rng.choice(self.sim.stores)
        lines = self._lines()
        payload = self._head("sale")
        payload.update(
            {
                "store_id": store.location_id,
                "receipt_id": f"{store.location_id}-bad-{self._made}",
                **priced_lines(lines),
            }
        )
        return self._pii(payload, email_too=False)

    def _movement_event(self, event_type: str | None = None) -> dict[str, Any]:
        location = self.rng.choice(self.sim.stores + self.sim.warehouses)
        payload = self._head(event_type or self.rng.choice(("receipt", "shipment", "adjustment")))
        payload.update(
            {
                "location_id": location.location_id,
                "sku": self.rng.choice(self.sim.skus),
                "qty": self.rng.randint(1, 20),
            }
        )
        return payload

    def _any_base(self) -> tuple[str, dict[str, Any]]:
        roll = self.rng.random()
        if roll < 0.3:
            return topics.CLICKSTREAM, self._cart_event()
        if roll < 0.45:
            return topics.CLICKSTREAM, self._order_event()
        if roll < 0.7:
            return topics.POS_SALES, self._sale_event()
        return topics.WMS_MOVEMENTS, self._movement_event()

    # --- malformed_json ----------------------------------------------------------------------

    def _truncated(self) -> tuple[str, bytes]:
        """Cut off mid-message (the PII, if any, stays inside the part that was sent)."""
        topic, payload = self._any_base()
        raw = orjson.dumps(payload)
        keep_from = len(raw) // 2
        for name in ("phone", "email"):
            if name in payload:
                end = raw.find(orjson.dumps(payload[name])) + len(orjson.dumps(payload[name]))
                keep_from = max(keep_from, end + 1)
        return topic, raw[: self.rng.randint(min(keep_from, len(raw) - 1), len(raw) - 1)]

    def _not_utf8(self) -> tuple[str, bytes]:
        """Latin-1 or garbage bytes inside a string: not valid UTF-8, so not JSON."""
        topic, payload = self._any_base()
        raw = orjson.dumps(payload)
        at = raw.find(b'"event_id":"') + len(b'"event_id":"')
        return topic, raw[:at] + b"\xff\xfe" + raw[at:]

    def _not_an_object(self) -> tuple[str, bytes]:
        topic, payload = self._any_base()
        shape = self.rng.choice(("list", "string", "null", "number"))
        value: Any = {
            "list": [payload],
            "string": orjson.dumps(payload).decode(),
            "null": None,
            "number": 42,
        }[shape]
        return topic, orjson.dumps(value)

    def _python_repr(self) -> tuple[str, bytes]:
        topic, payload = self._any_base()
        return topic, repr(payload).encode()

    def _csv_line(self) -> tuple[str, bytes]:
        payload = self._sale_event()
        line = payload["lines"][0]
        text = f"{payload['store_id']},{payload['receipt_id']},{line['sku']},{line['qty']}"
        if "phone" in payload:
            text += f",{payload['phone']}"
        return topics.POS_SALES, text.encode()

    def _empty(self) -> tuple[str, bytes]:
        return self.rng.choice(topics.INPUT_TOPICS), b""

    # --- field-level faults ------------------------------------------------------------------

    def _missing_field(self) -> tuple[str, dict[str, Any]]:
        choice = self.rng.randrange(10)
        if choice == 8:
            payload = self._checkin_event()
            del payload["store_id"]  # the app lost the store it checked in at
            return topics.CLICKSTREAM, payload
        if choice == 9:
            payload = self._consent_event()
            del payload["marketing"]  # a settings change that says nothing
            return topics.CLICKSTREAM, payload
        if choice == 0:
            payload = self._movement_event()
            del payload["sku"]
            return topics.WMS_MOVEMENTS, payload
        if choice == 1:
            payload = self._movement_event("transfer_out")
            return topics.WMS_MOVEMENTS, payload  # a transfer without its transfer_id
        if choice == 2:
            payload = self._sale_event()
            del payload["receipt_id"]
            return topics.POS_SALES, payload
        if choice == 3:
            payload = self._sale_event()
            del payload["lines"][0]["unit_price"]
            return topics.POS_SALES, payload
        if choice == 4:
            payload = self._cart_event()
            del payload["anonymous_id"]
            return topics.CLICKSTREAM, payload
        if choice == 5:
            payload = self._order_event()
            del payload["fulfillment"]
            return topics.CLICKSTREAM, payload
        topic, payload = self._any_base()
        del payload["ts" if choice == 6 else "event_type"]
        return topic, payload

    def _bad_type(self) -> tuple[str, dict[str, Any]]:
        choice = self.rng.randrange(11)
        if choice == 9:
            payload = self._consent_event()
            payload["marketing"] = self.rng.choice(("false", "true", 0, 1, "no", "opt_out"))
            return topics.CLICKSTREAM, payload
        if choice == 10:
            payload = self._checkin_event()
            payload["store_id"] = self.rng.choice((17, [payload["store_id"]]))
            return topics.CLICKSTREAM, payload
        if choice == 7:
            payload = self._sourced_order_event()
            field = self.rng.choice(("lat", "lon"))
            payload["fulfillment"][field] = str(payload["fulfillment"][field])  # "31.22"
            return topics.CLICKSTREAM, payload
        if choice == 8:
            payload = self._transfer_out_event()
            to = payload["to_location_id"]
            payload["to_location_id"] = self.rng.choice(([to], {"location_id": to}, 7, True))
            return topics.WMS_MOVEMENTS, payload
        if choice == 0:
            payload = self._movement_event()
            payload["qty"] = str(payload["qty"])
            return topics.WMS_MOVEMENTS, payload
        if choice == 1:
            payload = self._sale_event()
            payload["lines"] = payload["lines"][0]  # an object, not a list
            return topics.POS_SALES, payload
        if choice == 2:
            payload = self._sale_event()
            payload["total"] = f"{payload['total']:.2f}"
            return topics.POS_SALES, payload
        if choice == 3:
            payload = self._sale_event()
            payload["coupon_codes"] = "C-WELCOME-SAVE10"
            return topics.POS_SALES, payload
        if choice == 4:
            payload = self._cart_event()
            payload["event_type"] = "add_to_cart"
            payload["qty"] = "2"
            return topics.CLICKSTREAM, payload
        if choice == 5:
            payload = self._cart_event()
            payload["campaign"] = "wechat"
            return topics.CLICKSTREAM, payload
        topic, payload = self._any_base()
        payload["event_id"] = self.rng.randint(1, 10**9)
        return topic, payload

    def _bad_value(self) -> tuple[str, dict[str, Any]]:
        choice = self.rng.randrange(13)
        if choice == 12:
            payload = self._checkin_event()
            payload["store_id"] = self._central_warehouse_id()  # nobody checks in at a DC
            return topics.CLICKSTREAM, payload
        if choice == 9:
            payload = self._sourced_order_event()
            field, value = self.rng.choice(
                (("lat", 91.5), ("lat", -90.01), ("lon", 181.0), ("lon", -200.0), ("lat", 3122.0))
            )
            payload["fulfillment"][field] = value
            return topics.CLICKSTREAM, payload
        if choice == 10:
            payload = self._sourced_order_event()
            del payload["fulfillment"][self.rng.choice(("lat", "lon"))]  # one without the other
            return topics.CLICKSTREAM, payload
        if choice == 11:
            payload = self._transfer_out_event()
            payload["to_location_id"] = payload["location_id"]  # a transfer to itself
            return topics.WMS_MOVEMENTS, payload
        if choice == 0:
            payload = self._movement_event("receipt")
            payload["qty"] = self.rng.choice((0, -3))
            return topics.WMS_MOVEMENTS, payload
        if choice == 1:
            payload = self._movement_event("adjustment")
            payload["qty"] = 0
            return topics.WMS_MOVEMENTS, payload
        if choice == 2:
            payload = self._movement_event("stock_count")
            payload["qty"] = -1
            return topics.WMS_MOVEMENTS, payload
        if choice == 3:
            payload = self._movement_event("receipt")
            payload["expiry_date"] = "2026-02-30"
            return topics.WMS_MOVEMENTS, payload
        if choice == 4:
            payload = self._sale_event()
            payload["lines"] = []
            return topics.POS_SALES, payload
        if choice == 5:
            payload = self._sale_event()
            payload["store_id"] = self._central_warehouse_id()  # a till is never in a warehouse
            return topics.POS_SALES, payload
        if choice == 6:
            payload = self._order_event()
            payload["fulfillment"] = {
                "type": "store_pickup",
                "location_id": self._central_warehouse_id(),
            }
            return topics.CLICKSTREAM, payload
        if choice == 7:
            payload = self._cart_event()
            payload["event_type"] = "add_to_cart"
            payload["qty"] = 0
            return topics.CLICKSTREAM, payload
        topic, payload = self._any_base()
        payload["event_id"] = self.rng.choice(("", "   ", "x" * 200))
        return topic, payload

    def _central_warehouse_id(self) -> str:
        return self.sim.central_warehouse(None).location_id

    def _bad_timestamp(self) -> tuple[str, dict[str, Any]]:
        topic, payload = self._any_base()
        local = rfc3339_local(self.sim.now)
        payload["ts"] = self.rng.choice(
            (
                local[:19],  # no offset: local time of which zone?
                local[:10] + " " + local[11:19],
                local[:19] + "+0800",
                self.sim.now // 1000,  # epoch seconds instead of milliseconds
                str(self.sim.now),
                self.sim.now / 1000,
                "2026-11-31T10:00:00.000+08:00",
                "yesterday 10:15",
                "",
            )
        )
        return topic, payload

    def _unknown_event_type(self) -> tuple[str, dict[str, Any]]:
        topic, payload = self._any_base()
        payload["event_type"] = self.rng.choice(
            {
                topics.CLICKSTREAM: ("purchase", "pageview", "Page_View", "wishlist_add", "sale"),
                topics.POS_SALES: ("refund", "void", "Sale", "order_placed"),
                topics.WMS_MOVEMENTS: ("cycle_count", "putaway", "RECEIPT", "sale"),
            }[topic]
        )
        return topic, payload

    def _unknown_sku(self) -> tuple[str, dict[str, Any]]:
        known = self.sim.reference.products
        sku = self.rng.choice(self.sim.skus)
        unknown = sku.lower() if sku.lower() not in known else f"{sku}-X"
        if self.rng.random() < 0.5:
            unknown = f"SKU-{self.rng.randint(90000, 99999)}"
            while unknown in known:
                unknown += "9"
        topic, payload = self._any_base()
        if "lines" in payload:
            payload["lines"][-1]["sku"] = unknown
        else:
            payload["sku"] = unknown
        return topic, payload

    def _unknown_location(self) -> tuple[str, dict[str, Any]]:
        known = self.sim.reference.locations
        unknown = self.rng.choice(("WH-BJ-01", "ST-XX-09", "FW-GZ-02", "st-sh-01", "STORE 7"))
        while unknown in known:
            unknown += "X"
        choice = self.rng.randrange(5)
        if choice == 4:
            payload = self._checkin_event()
            payload["store_id"] = unknown  # a store the reference data does not know (yet)
            return topics.CLICKSTREAM, payload
        if choice == 0:
            payload = self._movement_event()
            payload["location_id"] = unknown
            return topics.WMS_MOVEMENTS, payload
        if choice == 3:
            payload = self._transfer_out_event()
            payload["to_location_id"] = unknown
            return topics.WMS_MOVEMENTS, payload
        if choice == 1:
            payload = self._sale_event()
            payload["store_id"] = unknown
            return topics.POS_SALES, payload
        payload = self._order_event()
        payload["fulfillment"]["location_id"] = unknown
        return topics.CLICKSTREAM, payload
