"""identity_stitch: one customer id (OneID) across devices, accounts, cards and orders.

Wiring only; the rules are in ``domain.identity`` and the atomic Redis update in
``state.identity_store``.

    inputs (clickstream, pos.sales) → decode, hashing phone/e-mail (rejections → deadletter)
      → resolve (one optimistic, atomic Redis update per batch)
      → events.resolved (keyed by customer_id), identity.changes

Step ids are part of the recovery snapshots: keep them stable.
"""

from __future__ import annotations

import threading
import time

from bytewax.dataflow import Dataflow

from base import topics
from base.config import Config, ConfigError, load_config
from base.flow_names import IDENTITY_STITCH
from base.metrics import (
    IDENTITY_CONFLICTS,
    IDENTITY_CUSTOMERS_CREATED,
    IDENTITY_JUNK,
    IDENTITY_LINKS,
    IDENTITY_MERGES,
    IDENTITY_UNRESOLVED,
    PROCESSING_LAG,
)
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from connectors.reference_files import load_reference
from connectors.resolved import resolved_event
from connectors.streams import kafka_events, kafka_output
from domain.events import ClickEvent, InputEvent, PosEvent
from domain.identity import (
    IdentityChange,
    Resolution,
    identifiers_of,
    kind_of,
    pii_identifier_value,
)
from domain.progress import PartitionReport
from state.identity_store import EventIdentifiers, IdentityStore

INPUTS = (topics.CLICKSTREAM, topics.POS_SALES)


def require_pii_key(config: Config) -> str:
    if not config.pii.key:
        raise ConfigError(
            f"{config.source}: key `pii.key`: expected the secret for hashing phone numbers and "
            "e-mails (set OMNI_PII_KEY); identity_stitch refuses to start without it"
        )
    return config.pii.key


def count_resolution(resolution: Resolution) -> None:
    if resolution.customer_id is None:
        IDENTITY_UNRESOLVED.inc()
    for ident in resolution.junk:
        IDENTITY_JUNK.labels(kind_of(ident)).inc()
    for change in resolution.changes:
        if change.kind == "linked":
            IDENTITY_LINKS.inc(len(change.identifiers))
        elif change.kind == "merged":
            IDENTITY_MERGES.inc()
        elif change.kind == "conflict":
            IDENTITY_CONFLICTS.labels(change.reason or "unknown").inc()


def change_message(
    change: IdentityChange, cause: str, time_ms: int, topic: str | None = None
) -> OutMessage:
    """The id is derived from the cause, the kind and the identifiers, not the position in
    the event's list of changes, so a replay republishes the same id."""
    data = {
        "kind": change.kind,
        "customer_id": change.customer_id,
        "merged_from": list(change.merged_from),
        "identifiers": list(change.identifiers),
        "reason": change.reason,
        "cause": cause,
    }
    value = cloud_event(
        event_type=f"omnistream.identity.{change.kind}",
        source=IDENTITY_STITCH,
        subject=change.customer_id,
        event_id=cloud_event_id("identity", cause, change.kind, *change.identifiers),
        time_ms=time_ms,
        data=data,
    )
    return OutMessage(change.customer_id.encode(), value, topic)


def resolved_message(
    event: ClickEvent | PosEvent, customer_id: str | None, topic: str | None = None
) -> OutMessage:
    key = customer_id.encode() if customer_id else event.origin.key
    return OutMessage(key, resolved_event(event, customer_id), topic)


def build(config: Config, *, until_idle: bool = False) -> Dataflow:
    """The identity_stitch dataflow; refuses to build without the PII key."""
    pii_key = require_pii_key(config)
    country_code = config.pii.default_country_code
    reference = load_reference(config)
    local = threading.local()

    def store() -> IdentityStore:
        # One client per worker thread, created on first use inside the running flow.
        if not hasattr(local, "store"):
            local.store = IdentityStore.from_config(config)
        return local.store  # type: ignore[no-any-return]

    def hasher(kind: str, raw: str) -> str:
        value = pii_identifier_value(kind, raw, pii_key, country_code)
        return value if value is not None else ""

    flow = Dataflow(IDENTITY_STITCH)

    resolved_topic = config.topic(topics.EVENTS_RESOLVED)
    changes_topic = config.topic(topics.IDENTITY_CHANGES)

    def resolve(batch: list[InputEvent], reports: list[PartitionReport]) -> list[OutMessage]:
        """Resolve a Kafka batch's events in one Redis round trip (run inside the decoding
        step, so no step is paid per event before this)."""
        items = [e for e in batch if isinstance(e, ClickEvent | PosEvent)]
        resolutions = store().resolve_batch(
            [EventIdentifiers(e.event_id, e.ts_ms, tuple(identifiers_of(e))) for e in items]
        )
        out: list[OutMessage] = []
        now_ms = time.time() * 1000
        lag = PROCESSING_LAG.labels(IDENTITY_STITCH)
        for event, resolution in zip(items, resolutions, strict=True):
            lag.observe(max(0.0, (now_ms - event.ts_ms) / 1000))
            count_resolution(resolution)
            if resolution.created:
                IDENTITY_CUSTOMERS_CREATED.inc()
            out.append(resolved_message(event, resolution.customer_id, resolved_topic))
            for change in resolution.changes:
                out.append(change_message(change, event.event_id, event.ts_ms, changes_topic))
        return out

    events = kafka_events(
        "inputs",
        flow,
        config,
        IDENTITY_STITCH,
        INPUTS,
        reference,
        until_idle=until_idle,
        hasher=hasher,
        per_batch=resolve,
        dead_letters_inline=True,
    )
    # One sink for both topics and the batch's dead letters (each message names its topic):
    # a branch and a map per output message cost more than the producer call itself.
    kafka_output("outputs", config, None, events.oks)
    return flow


def __getattr__(name: str) -> Dataflow:
    """``python -m bytewax.run flows.identity_stitch:flow`` builds from the environment."""
    if name == "flow":
        return build(load_config())
    raise AttributeError(name)
