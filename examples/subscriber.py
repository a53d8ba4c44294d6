"""A downstream subscriber of Omnistream's output topics: confluent-kafka and the CloudEvents
SDK's Kafka binding, nothing of Omnistream itself (README, "Consuming the outputs").

    pip install confluent-kafka "cloudevents>=2.2"
    python examples/subscriber.py --bootstrap 127.0.0.1:9092 [--topic-prefix acme.]
        [--until-end] [--state-out state.json] [-X sasl.username=...]

What it does with each message, and why:

- **Structured mode only.** Every output is a structured-mode CloudEvent: the Kafka binding
  says so with the ``content-type: application/cloudevents+json`` header, and the SDK's
  ``from_kafka`` parses it. A message that is a CloudEvent in neither mode is counted as
  rejected and skipped, not guessed at.
- **Duplicates are dropped by ``id``** (with ``source``, which CloudEvents makes unique
  together). Outputs are at least once: after a crash or a replay the same message comes
  again with the same id. Ids are kept ``--dedup-hours`` (a day).
- **identity.changes is folded** as CONTRACT §4 describes: identifier → ``customer_id`` from
  every ``linked`` and ``merged`` change, each id of ``merged_from`` an alias of
  ``customer_id`` (resolved transitively), a customer's identifiers dropped on ``erased``.
  The result equals the ``omni:id:*`` keys whatever order the partitions are read in. A
  merge names customers of other partitions, so one subscriber reads *every* partition of
  identity.changes: this one assigns them all instead of joining a consumer group. For the
  same reason an erased customer stays erased: B merged into C and C erased, the changes
  that linked identifiers to B (B's partition) may be read after the erasure (C's), and
  they lead to C through the alias; so the fold remembers the erased ids and leaves out
  every identifier that resolves to one (identity_stitch never revives an erased id:
  CONTRACT §11, nothing more is sent to it).
- **stock.changes: the latest per key** (``sku:location_id``) wins, duplicate id or not. A
  key's changes are in one partition in the flow's order (the flows' producers are
  idempotent, so a retry cannot swap two of them), and each carries the absolute figures,
  so the last one read is what the flow computed last. The id does not decide the state:
  a flow that restarts without its recovery snapshot recomputes every position in event
  time from all the input there is by then, so where older movements have arrived since,
  it republishes an id with other figures than the first time; a subscriber skipping those
  as duplicates would keep the first figures. (While a replay runs, the position steps back
  through older figures before it ends on the current ones again.)
- **orders.sourced and store.tasks: the latest per order and per task**, duplicate id or
  not, for the reason stock.changes is: a decision's id names the order event, a task's
  its ``task_id`` and status, and a flow that recomputes with input that arrived since
  (older movements, a till sale) republishes an id with other content: the sourcing
  location, a ``pickup_prep`` that is now a ``pickup_exception``. A task changes status
  under the same ``task_id`` with a new id (open → done or cancelled); all of a task's
  messages are in its store's partition (key ``store_id``), in the flow's order, and a
  decision's in its order's (key ``order_id``), so the last one read is the flow's last
  word, as in ``omni:tasks:<store_id>``.
- **Triggers, insights and credits are acted on once per id**: here they are counted, and
  credited revenue is kept per conversion. triggers.replenishment carries rule_triggers' triggers
  and stock_pool's transfers for pickup exceptions (source ``omnistream/stock_pool``,
  ``rule_id`` ``pickup_exception``, with the ``order_id`` they are for): one topic, one
  handling. A stock change, a sourcing decision and a task change are counted once per id
  too (a real subscriber would alert, reroute an order or notify a store once per id),
  although their content is taken from every message.

The fold lives in memory, so the subscriber reads every topic from its beginning at each
start and commits no offsets. A subscriber that must resume instead stores its fold, the ids
it has seen and its offsets together, and starts from those offsets.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

IDENTITY_CHANGES = "identity.changes"
STOCK_CHANGES = "stock.changes"
ORDERS_SOURCED = "orders.sourced"
STORE_TASKS = "store.tasks"
ATTRIBUTION_CREDITS = "attribution.credits"
TRIGGERS = ("triggers.coupon", "triggers.holdout", "triggers.replenishment", "triggers.insights")
TOPICS = (
    IDENTITY_CHANGES,
    STOCK_CHANGES,
    ORDERS_SOURCED,
    STORE_TASKS,
    ATTRIBUTION_CREDITS,
    *TRIGGERS,
)
STRUCTURED_JSON = "application/cloudevents+json"
JSON_FORMAT = JSONFormat()


def is_cloudevent(headers: dict[str, bytes]) -> bool:
    """Structured mode (the binding's ``content-type`` names the CloudEvents JSON format) or
    binary mode (``ce_*`` headers); anything else is not a CloudEvent at all."""
    content_type = headers.get("content-type", b"").decode("utf-8", "replace")
    if content_type.split(";")[0].strip().lower() == STRUCTURED_JSON:
        return True
    return any(name.startswith("ce_") for name in headers)


def header_map(message: Message) -> dict[str, bytes]:
    """A consumed message's headers by lower-case name (the last of a repeated name)."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {
        name.lower(): value.encode("utf-8") if isinstance(value, str) else value or b""
        for name, value in pairs
    }


def parse(message: Message) -> BaseCloudEvent | None:
    """The CloudEvent of a Kafka message, or None when it is not one."""
    headers = header_map(message)
    if not is_cloudevent(headers):
        return None
    value = message.value() or b""
    return from_kafka(KafkaMessage(headers=headers, key=message.key(), value=value), JSON_FORMAT)


class Deduplicator:
    """Ids seen in the last ``retention_s`` seconds (of this process's clock): a replay
    reaches back at most as far as the flows' recovery snapshots, far less than a day."""

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, event_id: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        while self._seen:
            oldest_id, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= self.retention_s:
                break
            del self._seen[oldest_id]
        if event_id in self._seen:
            return False
        self._seen[event_id] = now
        return True


@dataclass
class IdentityFold:
    """identifier → customer, as CONTRACT §4 tells a subscriber to keep it."""

    owner: dict[str, str] = field(default_factory=dict)
    alias: dict[str, str] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)

    def apply(self, data: dict[str, Any]) -> None:
        kind, customer = data["kind"], data["customer_id"]
        if kind in ("linked", "merged"):
            for identifier in data["identifiers"]:
                self.owner[identifier] = customer
            for old in data.get("merged_from") or []:
                if old != customer:
                    self.alias[old] = customer
        elif kind == "erased":
            # Remembered, not only applied: a change read later may still lead to it.
            self.erased.add(customer)
            gone = set(data["identifiers"])
            gone.update(i for i, c in self.owner.items() if self.resolve(c) == customer)
            for identifier in gone:
                self.owner.pop(identifier, None)
        # conflict: a refused link changes no mapping

    def resolve(self, customer: str) -> str:
        """Follow merges to the surviving customer (a chain A → B → C ends at C)."""
        seen = {customer}
        while (target := self.alias.get(customer)) is not None and target not in seen:
            seen.add(target)
            customer = target
        return customer

    def mapping(self) -> dict[str, str]:
        """identifier → customer, leaving out every identifier whose customer was erased."""
        resolved = {identifier: self.resolve(c) for identifier, c in self.owner.items()}
        return {i: c for i, c in resolved.items() if c not in self.erased}


@dataclass
class TopicCounts:
    events: int = 0  # distinct ids handled
    duplicates: int = 0  # dropped: an id seen before
    rejected: int = 0  # not a CloudEvent


@dataclass
class Subscriber:
    dedup: Deduplicator
    identity: IdentityFold = field(default_factory=IdentityFold)
    stock: dict[str, dict[str, Any]] = field(default_factory=dict)
    sourced: dict[str, dict[str, Any]] = field(default_factory=dict)  # order_id → decision
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task_id → task
    credited_revenue: dict[str, float] = field(default_factory=dict)
    counts: dict[str, TopicCounts] = field(default_factory=dict)

    def handle(self, topic: str, message: Message) -> None:
        counts = self.counts.setdefault(topic, TopicCounts())
        event = parse(message)
        if event is None:
            counts.rejected += 1
            print(f"skipped a non-CloudEvent message on {topic}", file=sys.stderr)
            return
        data = event.get_data()
        if not isinstance(data, dict):
            counts.rejected += 1
            print(f"skipped a CloudEvent without a JSON object on {topic}", file=sys.stderr)
            return
        # The latest per key, duplicate or not (see the docstring).
        if topic == STOCK_CHANGES:
            self.stock[(message.key() or b"").decode()] = data  # key: sku:location_id
        elif topic == ORDERS_SOURCED:
            self.sourced[data["order_id"]] = data
        elif topic == STORE_TASKS:
            self.tasks[data["task_id"]] = data
        if not self.dedup.first_time(f"{event.get_source()}\x1f{event.get_id()}"):
            counts.duplicates += 1
            return
        counts.events += 1
        if topic == IDENTITY_CHANGES:
            self.identity.apply(data)
        elif topic == ATTRIBUTION_CREDITS:
            self.credited_revenue[data["conversion_id"]] = data["revenue"]
        # triggers: a real subscriber sends the coupon / opens the transfer here, once per
        # id; orders.sourced: tells the warehouse or the customer; store.tasks: notifies the
        # store (a new id is a new status of the task)

    def state(self) -> dict[str, Any]:
        return {
            "identity": self.identity.mapping(),
            "stock": self.stock,
            "sourced": self.sourced,
            "tasks": self.tasks,
            "credited_revenue": self.credited_revenue,
            "counts": {t: vars(c) for t, c in sorted(self.counts.items())},
        }


def assign_all(consumer: Consumer, topics: list[str], timeout_s: float) -> set[tuple[str, int]]:
    """Every partition of every topic, from the beginning."""
    partitions: list[TopicPartition] = []
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise SystemExit(f"topic {topic!r} cannot be read: {metadata and metadata.error}")
        partitions += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
    consumer.assign(partitions)
    return {(tp.topic, tp.partition) for tp in partitions}


def run(args: argparse.Namespace) -> Subscriber:
    extra = dict(setting.split("=", 1) for setting in args.X)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group_id,  # offsets are never committed (see the docstring)
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            **extra,
        }
    )
    names = {f"{args.topic_prefix}{topic}": topic for topic in TOPICS}
    pending = assign_all(consumer, list(names), args.timeout)
    subscriber = Subscriber(Deduplicator(args.dedup_hours * 3600))
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and not (args.until_end and not pending):
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is None:
                    subscriber.handle(names[message.topic() or ""], message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard((message.topic() or "", message.partition() or 0))
                else:
                    print(f"consumer error: {error}", file=sys.stderr)
    finally:
        consumer.close()
    return subscriber


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka brokers, host:port,…")
    parser.add_argument("--topic-prefix", default="", help="the flows' kafka.topic_prefix")
    parser.add_argument("--group-id", default="omnistream-example-subscriber")
    parser.add_argument("--until-end", action="store_true",
                        help="stop once every partition has been read to its end")  # fmt: skip
    parser.add_argument("--dedup-hours", type=float, default=24.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="metadata timeout, s")
    parser.add_argument("--state-out", type=Path, help="write the folded state here (JSON)")
    parser.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka setting (SASL, TLS), repeatable")  # fmt: skip
    args = parser.parse_args()
    subscriber = run(args)
    state = subscriber.state()
    for topic, counts in state["counts"].items():
        print(f"{topic:<24} {counts['events']:>7} events  {counts['duplicates']:>6} duplicates"
              f"  {counts['rejected']:>4} rejected")  # fmt: skip
    print(f"{len(state['identity'])} identifiers of {len(set(state['identity'].values()))} "
          f"customers; {len(state['stock'])} stock positions")  # fmt: skip
    sourced = sum(d["status"] == "sourced" for d in state["sourced"].values())
    open_tasks = sum(t.get("status") == "open" for t in state["tasks"].values())
    print(f"{len(state['sourced'])} orders sourced by Omnistream ({sourced} sourced, "
          f"{len(state['sourced']) - sourced} unfulfillable); {len(state['tasks'])} store "
          f"tasks, {open_tasks} open")  # fmt: skip
    if args.state_out is not None:
        args.state_out.write_text(json.dumps(state, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
