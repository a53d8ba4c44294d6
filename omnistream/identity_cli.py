"""``omnistream whois`` and ``omnistream forget``: look up and erase a customer."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

from base import topics
from base.config import Config
from connectors.envelopes import CLOUDEVENT_HEADERS, cloud_event, cloud_event_id
from connectors.kafka_clients import make_producer
from connectors.resolved import erased_notice
from domain.identity import PRIORITY, identifier, kind_of, pii_identifier_value
from state.identity_store import IdentityStore
from state.interfaces import IdentityGraphStore

_HASH = re.compile(r"[0-9a-f]{64}")


def identifier_from_cli(config: Config, kind: str, value: str) -> str | None:
    """``type:value`` as stored; a raw phone or e-mail is normalised and hashed first."""
    if kind in {"phone", "email"} and not _HASH.fullmatch(value):
        if not config.pii.key:
            print(
                "omnistream: a raw phone or e-mail needs OMNI_PII_KEY to be hashed", file=sys.stderr
            )
            return None
        hashed = pii_identifier_value(kind, value, config.pii.key, config.pii.default_country_code)
        if hashed is None:
            print(f"omnistream: {value!r} is not a usable {kind}", file=sys.stderr)
            return None
        value = hashed
    return identifier(kind, value)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def whois(config: Config, kind: str, value: str, *, as_json: bool = False) -> int:
    ident = identifier_from_cli(config, kind, value)
    if ident is None:
        return 2
    store: IdentityGraphStore = IdentityStore.from_config(config)
    try:
        owner = store.owner_of(ident)
        customer = store.customer(owner) if owner else None
    finally:
        store.close()
    if owner is None or customer is None:
        if as_json:
            print(json.dumps({"identifier": ident, "customer_id": None}))
        else:
            print(f"{ident}: no customer")
        return 1
    if as_json:
        # The shape of ``whois --json`` (README, JSON output): the identifier asked for, its
        # customer, and every identifier of the customer by type (sorted; phone and e-mail
        # as their keyed hashes, as stored).
        identifiers: dict[str, Any] = {
            kind_name: sorted(
                i.split(":", 1)[1] for i in customer.identifiers if kind_of(i) == kind_name
            )
            for kind_name in PRIORITY
        }
        print(
            json.dumps(
                {
                    "identifier": ident,
                    "customer_id": customer.customer_id,
                    "first_seen_ms": customer.first_seen_ms,
                    "first_seen": _iso(customer.first_seen_ms),
                    "identifiers": identifiers,
                }
            )
        )
        return 0
    print(f"customer {customer.customer_id}  first seen {_iso(customer.first_seen_ms)}")
    for kind_name in PRIORITY:
        values = sorted(i.split(":", 1)[1] for i in customer.identifiers if kind_of(i) == kind_name)
        for item in values:
            print(f"  {kind_name:<7} {item}")
    return 0


def forget(config: Config, kind: str, value: str) -> int:
    ident = identifier_from_cli(config, kind, value)
    if ident is None:
        return 2
    store: IdentityGraphStore = IdentityStore.from_config(config)
    try:
        change = store.forget(ident)
    finally:
        store.close()
    if change is None:
        print(f"{ident}: no customer to forget")
        return 1
    now_ms = int(time.time() * 1000)
    payload = cloud_event(
        event_type="omnistream.identity.erased",
        source="identity_stitch",
        subject=change.customer_id,
        event_id=cloud_event_id("identity.erased", change.customer_id),
        time_ms=now_ms,
        data={
            "kind": "erased",
            "customer_id": change.customer_id,
            "merged_from": [],
            "identifiers": list(change.identifiers),
        },
    )
    producer = make_producer(config)
    producer.produce(
        config.topic(topics.IDENTITY_CHANGES),
        key=change.customer_id.encode(),
        value=payload,
        headers=CLOUDEVENT_HEADERS,  # a structured-mode CloudEvent like the flow's changes
    )
    # And into the customer's own stream, after every event resolved to it: the flows that
    # keep state per customer (rule_triggers: rule state, profile, coupon codes) drop it
    # there (``connectors.resolved.erased_notice``).
    producer.produce(
        config.topic(topics.EVENTS_RESOLVED),
        key=change.customer_id.encode(),
        value=erased_notice(change.customer_id, now_ms),
    )
    if producer.flush(30) != 0:
        print("omnistream forget: the erased event could not be delivered", file=sys.stderr)
        return 1
    print(f"erased customer {change.customer_id} ({len(change.identifiers)} identifiers)")
    return 0
