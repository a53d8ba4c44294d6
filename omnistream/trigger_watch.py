"""Watching the trigger topics while traffic flows: what fired, and how long it took.

Used by the demo (and the benchmark): a background consumer follows ``triggers.coupon``,
``triggers.holdout`` and ``triggers.replenishment`` from their beginning; the producer side
records when each input event was handed to the broker. The latency of a trigger is the time
from producing its causing event (the newest input event named in its evidence) to the
trigger's timestamp on its topic. Triggers that fire on a timer — a cart left for T minutes,
a lapse or a repurchase reminder, a coupon held through quiet hours, a stock rule due at an
event time later than its causes' — are caused by the passing of time, not by an event, and
are left out of that figure.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from base import topics
from base.config import Config
from connectors.generator import GeneratedEvent
from connectors.kafka_clients import make_consumer
from domain.timeparse import parse_event_time

TRIGGER_TOPICS = (topics.TRIGGERS_COUPON, topics.TRIGGERS_HOLDOUT, topics.TRIGGERS_REPLENISHMENT)
#: Rule kinds whose triggers come from a timer rather than from an input event: their
#: evidence is the event that armed the timer (an add to cart, the purchase a lapse or a
#: repurchase counts from), produced long before the timer was due.
TIMER_KINDS = frozenset({"cart_abandonment", "lapsed", "repurchase"})


@dataclass
class SeenTrigger:
    topic: str
    arrived_ms: int
    data: dict[str, Any]


@dataclass
class TopicFollower(ABC):
    """A background consumer reading some output topics from their beginning while traffic
    flows, handing each message's CONTRACT topic name, broker timestamp and document to
    ``received``. The demo's and the benchmark's watchers are one of these each."""

    config: Config
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    #: CONTRACT names of the topics followed (set by each watcher).
    follows: tuple[str, ...] = ()
    name = "topic-follower"

    @abstractmethod
    def received(self, topic: str, arrived_ms: int, document: dict[str, Any]) -> None:
        """One message of a followed topic (each watcher keeps what it needs)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        consumer = make_consumer(
            self.config, group_id=f"{self.name}-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": "10"}
        )
        try:
            assignments = []
            for name in self.follows:
                topic = self.config.topic(name)
                partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                assignments += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
            consumer.assign(assignments)
            names = {self.config.topic(n): n for n in self.follows}
            while not self._stop.is_set():
                for message in consumer.consume(500, 0.2):
                    value = message.value()
                    if message.error() is not None or value is None:
                        continue
                    _, timestamp = message.timestamp()
                    self.received(
                        names.get(message.topic() or "", ""), timestamp, orjson.loads(value)
                    )
        finally:
            consumer.close()


@dataclass
class TriggerWatch(TopicFollower):
    produced_at: dict[str, float] = field(default_factory=dict)
    #: event id → its event time (epoch ms; None when it has none)
    event_ms: dict[str, int | None] = field(default_factory=dict)
    seen: list[SeenTrigger] = field(default_factory=list)
    follows: tuple[str, ...] = TRIGGER_TOPICS
    name = "trigger-watch"

    def stamp(self, events: Iterable[GeneratedEvent]) -> Iterator[GeneratedEvent]:
        """Pass events through, remembering when each was handed to the producer and its
        event time."""
        for event in events:
            if event.event_id is not None:
                self.produced_at.setdefault(event.event_id, time.time() * 1000)
                if event.event_id not in self.event_ms:
                    self.event_ms[event.event_id] = _event_time_ms(event.value)
            yield event

    def received(self, topic: str, arrived_ms: int, document: dict[str, Any]) -> None:
        self.seen.append(SeenTrigger(topic, arrived_ms, document["data"]))

    def latencies_ms(self) -> list[float]:
        """Produce-to-topic latency of every event-driven trigger whose cause was produced
        in this run."""
        out = []
        for trigger in self.seen:
            data = trigger.data
            if data.get("rule_kind") in TIMER_KINDS or data.get("held_until"):
                continue
            causes = [e.split("#", 1)[0] for e in data.get("evidence", ())]
            produced = [self.produced_at[e] for e in causes if e in self.produced_at]
            if not produced or self._fired_later(data, causes):
                continue
            out.append(trigger.arrived_ms - max(produced))
        return out

    def _fired_later(self, data: dict[str, Any], causes: list[str]) -> bool:
        """Whether the trigger is due at an event time later than its latest cause's: a
        stock rule's idle days or a batch's expiry counted from the position's last
        change, fired when event time reached it (the stream's own clock), not by an
        event of its own."""
        times = [t for e in causes if (t := self.event_ms.get(e)) is not None]
        try:
            due = parse_event_time(data.get("event_time"))
        except ValueError:
            return False
        return bool(times) and due > max(times)


def _event_time_ms(value: bytes) -> int | None:
    """The ``ts`` of a generated message, None when it has none that parses (the
    deliberately malformed ones)."""
    try:
        return parse_event_time(orjson.loads(value).get("ts"))
    except (orjson.JSONDecodeError, ValueError, AttributeError):
        return None


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(share * len(ordered) + 0.999999) - 1))
    return ordered[rank]
