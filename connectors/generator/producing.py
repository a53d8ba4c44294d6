"""Producing: sending a generated stream to the (prefixed) input topics of a real broker.

With ``cli``'s topic set-up, the only part of the generator that talks to Kafka. Paced to
a rate with a token bucket or as fast as the producer takes messages, for a count or a
wall-clock duration, with a progress line on stderr. A full producer queue is waited out,
never dropped, and what was handed over is flushed on every way out (Ctrl-C included). The
stream comes from ``traffic.TrafficModel`` (or any iterable of ``GeneratedEvent``) and is
sent as it is.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from base import topics
from base.config import Config
from connectors.generator.wire import GeneratedEvent
from connectors.kafka_clients import make_producer


@dataclass(slots=True)
class GenerateStats:
    """What ``produce`` sent: messages per (unprefixed) topic, malformed ones per reason."""

    produced: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    elapsed_s: float = 0.0
    #: Messages the broker finally refused (after librdkafka's own retries).
    delivery_failures: int = 0
    #: True when Ctrl-C stopped production early (what was handed over was still flushed).
    interrupted: bool = False

    @property
    def total(self) -> int:
        return sum(self.produced.values())

    @property
    def rate(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def count(self, event: GeneratedEvent) -> None:
        self.produced[event.topic] = self.produced.get(event.topic, 0) + 1
        if event.bad_reason is not None:
            self.bad[event.bad_reason] = self.bad.get(event.bad_reason, 0) + 1
        if event.duplicate:
            self.duplicates += 1


class _TokenBucket:
    """Paces to ``rate`` per second on average; bursts at most a tenth of a second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 10)
        self.tokens = 1.0
        self.last = time.monotonic()

    def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            time.sleep((1.0 - self.tokens) / self.rate)


class _Progress:
    """A one-line progress display on stderr: count, events/s, elapsed (≤ 5 updates/s).

    On a terminal the line is redrawn in place; otherwise a new line is written every 5 s.
    """

    def __init__(
        self, enabled: bool, total: int | None, duration_s: float | None, stream: TextIO
    ) -> None:
        self.enabled = enabled
        self.total = total
        self.duration_s = duration_s
        self.stream = stream
        self.interactive = enabled and stream.isatty()
        self.interval = 0.2 if self.interactive else 5.0
        self.next_at = self.interval

    def update(self, done: int, elapsed: float, final: bool = False) -> None:
        if not self.enabled or (elapsed < self.next_at and not final):
            return
        self.next_at = elapsed + self.interval
        if self.total:
            count = f"{done:,}/{self.total:,} events ({100 * done / self.total:.0f}%)"
        else:
            count = f"{done:,} events"
        speed = f"{done / elapsed:,.0f} ev/s" if elapsed > 0 else "- ev/s"
        clock = f"{elapsed:.1f}/{self.duration_s:g} s" if self.duration_s else f"{elapsed:.1f} s"
        text = f"generate: {count}  {speed}  {clock} elapsed"
        self.stream.write(f"\r{text}\033[K" if self.interactive else text + "\n")
        self.stream.flush()

    def finish(self, done: int, elapsed: float) -> None:
        if self.enabled:
            self.update(done, elapsed, final=True)
            if self.interactive:
                self.stream.write("\n")
                self.stream.flush()


def produce(
    config: Config,
    events: Iterable[GeneratedEvent],
    *,
    rate: float | None = None,
    duration_s: float | None = None,
    progress: bool = True,
    total: int | None = None,
) -> GenerateStats:
    """Send events to the prefixed input topics; returns what was sent.

    Paced to ``rate`` events/s when given (a token bucket: exact on average), else as fast as
    the producer takes them. Stops when the events run out or after ``duration_s`` seconds,
    whichever comes first, or on Ctrl-C; in every case what was handed to the producer is
    flushed before returning. A full producer queue is waited out, never dropped. ``total``
    (the expected count, if known) only serves the progress display.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration must be > 0 s, got {duration_s}")
    producer = make_producer(config)
    stats = GenerateStats()
    bar = _Progress(progress, total, duration_s, sys.stderr)
    bucket = _TokenBucket(rate) if rate is not None else None
    full_names = {name: config.topic(name) for name in topics.INPUT_TOPICS}

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            stats.delivery_failures += 1

    started = time.monotonic()
    done = 0
    try:
        for event in events:
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            if bucket is not None:
                bucket.take()
            topic = full_names.get(event.topic) or config.topic(event.topic)
            while True:
                try:
                    producer.produce(topic, value=event.value, key=event.key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
            stats.count(event)
            done += 1
            if bucket is not None or done % 256 == 0:
                producer.poll(0)  # serve delivery reports
            bar.update(done, time.monotonic() - started)
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        while producer.flush(1.0) > 0:
            bar.update(done, time.monotonic() - started)
        stats.elapsed_s = time.monotonic() - started
        bar.finish(done, stats.elapsed_s)
    return stats
