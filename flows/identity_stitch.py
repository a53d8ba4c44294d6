"""identity_stitch: one customer id (OneID) across devices, accounts, cards and orders.

Wiring only; the rules are in ``domain.identity`` and the atomic update of the graph in its
store (``state.identity_store`` on Redis).

    read (clickstream, pos.sales) → decode a Kafka batch, hashing phone/e-mail
      → resolve_identities: the batch's events in one atomic update of the graph
      → dead_letters: what the decoder refused, as ``deadletter`` messages
      → outputs: events.resolved (keyed by customer_id; a merge also writes its two
        notices there, ``connectors.resolved.merge_notices``), identity.changes and the dead
        letters, through one sink

Step ids are part of the recovery snapshots (the source's offsets are kept under
``inputs``): keep them stable.
"""

from __future__ import annotations

import functools
import time

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from base import topics
from base.config import Config, ConfigError, load_config
from base.flow_names import IDENTITY_STITCH
from base.metrics import (
    IDENTITY_CONFLICTS,
    IDENTITY_CUSTOMERS,
    IDENTITY_CUSTOMERS_CREATED,
    IDENTITY_JUNK,
    IDENTITY_LINKS,
    IDENTITY_MERGES,
    IDENTITY_UNRESOLVED,
    PROCESSING_LAG,
)
from connectors.decode import input_decoder
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from connectors.operators import FlowIO, decode, output, per_batch, read
from connectors.reference_files import load_reference
from connectors.resolved import merge_notices, resolved_event
from connectors.streams import KafkaIO, deadletter_message
from connectors.worker_local import WorkerLocal
from domain.events import ClickEvent, InputEvent, PosEvent
from domain.identity import (
    EventIdentifiers,
    IdentityChange,
    Resolution,
    identifiers_of,
    kind_of,
    pii_identifier_value,
)
from domain.reference import ReferenceData
from state.identity_store import CustomerCounting, IdentityStore
from state.interfaces import IdentityGraphStore, StoreFactory

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


def resolve_identities(
    store: IdentityGraphStore, events: list[InputEvent], resolved_topic: str, changes_topic: str
) -> list[OutMessage]:
    """Resolve a Kafka batch's events in one update of the graph (one Redis round trip in
    the common case): each event's ``events.resolved`` message and its changes'
    ``identity.changes`` messages, each naming its (full) topic."""
    items = [e for e in events if isinstance(e, ClickEvent | PosEvent)]
    resolutions = store.resolve_batch(
        [EventIdentifiers(e.event_id, e.ts_ms, tuple(identifiers_of(e))) for e in items]
    )
    # The customer base as the batch's own write answered (no extra round trip): absolute,
    # so it survives restarts and a replay leaves it where it was.
    if isinstance(store, CustomerCounting) and (count := store.customer_count()) is not None:
        IDENTITY_CUSTOMERS.set(count)
    out: list[OutMessage] = []
    now_ms = time.time() * 1000
    lag = PROCESSING_LAG.labels(IDENTITY_STITCH)
    for event, resolution in zip(items, resolutions, strict=True):
        lag.observe(max(0.0, (now_ms - event.ts_ms) / 1000))
        count_resolution(resolution)
        if resolution.created:
            IDENTITY_CUSTOMERS_CREATED.inc()
        for change in resolution.changes:
            if change.kind == "merged":
                # Before the event: it is the survivor's first event after the merge.
                for merged in change.merged_from:
                    out += [
                        OutMessage(key.encode(), record, resolved_topic)
                        for key, record in merge_notices(
                            merged, change.customer_id, event.event_id, event.ts_ms
                        )
                    ]
        out.append(resolved_message(event, resolution.customer_id, resolved_topic))
        for change in resolution.changes:
            out.append(change_message(change, event.event_id, event.ts_ms, changes_topic))
    return out


def build(
    config: Config,
    *,
    until_idle: bool = False,
    reference: ReferenceData | None = None,
    io: FlowIO | None = None,
    identity_store: StoreFactory[IdentityGraphStore] | None = None,
    snapshots: bool = True,
) -> Dataflow:
    """The identity_stitch dataflow; refuses to build without the PII key.

    ``io`` is where it reads and writes: Kafka by default (``until_idle`` stops it once its
    inputs drain), ``tests.inprocess.MemoryIO`` in the tests. ``identity_store`` opens the
    graph's store, once per worker thread on first use inside the running flow: Redis by
    default (``state.identity_store.IdentityStore``). ``snapshots`` is the other flows'
    (``connectors.operators.keyed_state``); this one keeps no state in Bytewax (the graph is
    in its store), so there is nothing to snapshot either way."""
    del snapshots
    pii_key = require_pii_key(config)
    country_code = config.pii.default_country_code
    reference = reference if reference is not None else load_reference(config)
    io = io if io is not None else KafkaIO(config, until_idle=until_idle)
    open_store: StoreFactory[IdentityGraphStore] = (
        identity_store
        if identity_store is not None
        else functools.partial(IdentityStore.from_config, config)
    )
    local = WorkerLocal()

    def store() -> IdentityGraphStore:
        if not hasattr(local, "store"):
            local.store = open_store()
        return local.store  # type: ignore[no-any-return]

    def hasher(kind: str, raw: str) -> str:
        value = pii_identifier_value(kind, raw, pii_key, country_code)
        return value if value is not None else ""

    resolved_topic = config.topic(topics.EVENTS_RESOLVED)
    changes_topic = config.topic(topics.IDENTITY_CHANGES)

    flow = Dataflow(IDENTITY_STITCH)
    batches = decode(
        "decode",
        read("inputs", flow, io, INPUTS),
        config,
        IDENTITY_STITCH,
        INPUTS,
        input_decoder(reference, hasher),
    )
    resolved = per_batch(
        "resolve_identities",
        batches,
        lambda batch: resolve_identities(store(), batch.records, resolved_topic, changes_topic),
    )
    deadletter_topic = config.topic(topics.DEADLETTER)
    refused = per_batch(
        "dead_letters",
        batches,
        lambda batch: [
            deadletter_message(r, IDENTITY_STITCH, deadletter_topic) for r in batch.rejections
        ],
    )
    # One sink for the three topics (each message names its topic): one producer and one
    # flush per batch, where a sink per topic would wait for the broker once per topic; a
    # branch and a map per output message cost more than the producer call itself.
    output("outputs", io, None, op.merge("all_outputs", resolved, refused))
    return flow


def __getattr__(name: str) -> Dataflow:
    """``python -m bytewax.run flows.identity_stitch:flow`` builds from the environment."""
    if name == "flow":
        return build(load_config())
    raise AttributeError(name)
