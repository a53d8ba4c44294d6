"""``omnistream bench``: throughput, trigger latency and memory, next to references measured
in the same run (machines are shared and noisy: a ratio means more than a figure alone).

1. Generate a stream (``--events``, ``--customers``) and preload it into the input topics of
   an embedded broker.
2. ``raw_ceiling_eps``: this process consumes the three input topics with confluent-kafka and
   parses every message's JSON, nothing else — the ceiling for any Python consumer here.
3. ``reference_eps``: a plain Bytewax pipeline (``omnistream.bench_reference``) over the same
   topics, run before each measured flow and after the last (the median of those runs;
   ``reference_runs`` lists them). Each flow's ``ratio`` is to the mean of the two runs
   around it (its own ``reference_eps``): the machine's speed drifts within minutes.
4. Each flow on its own, with its inputs preloaded (stock_pool and identity_stitch read the
   generated topics; rule_triggers and attribution what those wrote): events/s from the
   first to the last event consumed (sampled from the flow's own counter every 50 ms), and
   the process's peak resident memory (VmHWM). By default each flow runs as in production
   (tailing its topics) and is stopped once it has consumed every message on its inputs;
   ``--replay`` runs them with ``--until-idle`` instead, where rule_triggers and attribution
   hold what they need until the end of input to be exact in event time, so their memory
   grows with the replayed stream.
5. Latency, on fresh topics with all four flows running live and the generator offering a
   steady ``--rate`` for ``--latency-seconds``: trigger latency from producing an input event
   to the trigger (caused by it) arriving on its topic; stock freshness from producing a
   warehouse movement to its effect being readable in Redis (a sample of movements); and in
   the same run the fulfilment latencies: from producing an order for delivery without a
   location to stock_pool's decision arriving on ``orders.sourced``, and from producing a
   pickup order to its open task arriving on ``store.tasks``; and profile freshness, from
   producing a clickstream or till event to the customer's profile
   (``omni:profile:<customer_id>``, CONTRACT §11) showing it (``ProfileProbe``; target p99
   ≤ 1 s), which goes through identity_stitch and rule_triggers.
6. The availability service (``omnistream.bench_service``): ``omnistream serve`` on the
   Redis the stock_pool run left, offered requests at fixed rates, open loop. It runs
   after the flows and before the latency run, with nothing else of the bench running.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from base import topics
from base.config import Config, dump_config
from base.topics import ALL_TOPICS
from connectors.generator import GeneratedEvent, TrafficModel, produce
from connectors.kafka_clients import ensure_topics, make_consumer
from connectors.reference_files import load_reference
from domain.timeparse import TimestampError, parse_event_time
from flows import attribution, identity_stitch, rule_triggers, stock_pool
from omnistream.bench_service import SERVICE_RATES, print_service, service_run
from omnistream.cli_args import FLOW_ORDER
from omnistream.embedded import EmbeddedStack, die_with_parent, free_port
from omnistream.processes import scrape, start_flow, stop_process, total, wait_for_metrics
from omnistream.trigger_watch import TopicFollower, TriggerWatch, percentile


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class FlowRun:
    eps: float
    peak_rss_mb: float
    consumed: float
    seconds: float


#: The counter of what a flow consumed (``base.metrics``), as the samplers read it.
CONSUMED = "omnistream_events_consumed_total"


@dataclass
class Sampler:
    """What a flow consumed (its own counter) and its memory, sampled every 50 ms: events/s
    is the count over the time from the first to the last sample that saw it grow. Only
    that counter is asked for: a whole /metrics 20 times a second cost rule_triggers (the
    flow with the most series) a tenth of its interpreter, and the reference nothing."""

    port: int
    flow: str
    pid: int
    first: float | None = None
    last: float | None = None
    count: float = 0.0
    peak: float = 0.0
    #: the last sample that saw nothing consumed yet
    idle_at: float | None = None
    #: when sampling began: the lower bound of the window when no sample saw an idle flow
    started: float = field(default_factory=time.monotonic)

    def sample(self) -> bool:
        """Take one sample; True when the count grew."""
        samples = scrape(self.port, timeout_s=0.5, names=(CONSUMED,))
        now = time.monotonic()
        grew = False
        if samples is not None:
            seen = total(samples, CONSUMED, flow=self.flow)
            if seen == 0:
                self.idle_at = now
            if seen > 0 and self.first is None:
                self.first = now
            if seen > self.count:
                self.count, self.last, grew = seen, now, True
        self.peak = max(self.peak, peak_rss_mb(self.pid))
        time.sleep(0.05)
        return grew

    def result(self) -> FlowRun:
        first, last = self.first, self.last
        seconds = (last - first) if first is not None and last is not None else 0.0
        if seconds <= 0 and last is not None:
            # All of it read between two samples (a small stream): the time since the last
            # sample that saw nothing (or since sampling began) bounds it, so the figure is a
            # lower bound, not 0.
            seconds = last - (self.idle_at if self.idle_at is not None else self.started)
        eps = self.count / seconds if seconds > 0 else 0.0
        return FlowRun(eps, self.peak, self.count, seconds)


def run_until_idle(
    name: str, config: Config, workdir: Path, command: list[str] | None = None
) -> FlowRun:
    """Run one flow until its inputs are drained, sampling its consumed counter and memory."""
    port = free_port()
    path = workdir / f"{name}.yaml"
    dump_config(config.with_overrides(metrics={"port": port}), path)
    with (workdir / f"{name}.log").open("wb") as log:
        if command is None:
            process = start_flow(name, path, until_idle=True, log=log)
        else:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [*command, "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
    sampler = Sampler(port, "reference" if command is not None else name, process.pid)
    while process.poll() is None:
        sampler.sample()
    if process.returncode != 0:
        raise RuntimeError(f"{name} exited with {process.returncode}; see {workdir / name}.log")
    return sampler.result()


#: Topics each flow reads (the bench counts them to know when a tailing flow is done).
FLOW_INPUTS: dict[str, tuple[str, ...]] = {
    "stock_pool": stock_pool.INPUTS,
    "identity_stitch": identity_stitch.INPUTS,
    "rule_triggers": rule_triggers.INPUTS,
    "attribution": attribution.INPUTS,
}
#: A tailing flow that consumed nothing new for this long has stalled: the bench stops.
STALL_S = 120.0
#: Once a tailing flow has consumed what the topics' offsets say they hold, it is done when
#: nothing new arrives for this long (the embedded broker's offsets can lag a last batch).
QUIET_S = 2.0


def messages_on(config: Config, names: tuple[str, ...]) -> int:
    """Messages currently held by the (prefixed) topics: the sum of their partitions' spans."""
    consumer = make_consumer(config, group_id=f"bench-count-{uuid.uuid4().hex}")
    try:
        held = 0
        for name in names:
            topic = config.topic(name)
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                held += high - low
        return held
    finally:
        consumer.close()


def run_tailing(name: str, config: Config, workdir: Path, expected: int) -> FlowRun:
    """Run one flow as in production (tailing its topics) until it has consumed at least
    ``expected`` messages and then nothing more for ``QUIET_S``; sampled like
    ``run_until_idle``."""
    port = free_port()
    path = workdir / f"{name}.yaml"
    dump_config(config.with_overrides(metrics={"port": port}), path)
    with (workdir / f"{name}.log").open("wb") as log:
        process = start_flow(name, path, log=log)
    sampler = Sampler(port, name, process.pid)
    progressed = time.monotonic()
    try:
        while sampler.count < expected or time.monotonic() - progressed < QUIET_S:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; see {workdir / name}.log"
                )
            if sampler.sample():
                progressed = time.monotonic()
            if time.monotonic() - progressed > STALL_S:
                raise RuntimeError(
                    f"{name} consumed {sampler.count:,.0f} of {expected:,} messages and then "
                    f"nothing for {STALL_S:.0f} s; see {workdir / name}.log"
                )
    finally:
        stop_process(process)
    return sampler.result()


def raw_ceiling(config: Config) -> float:
    """Consume the input topics in this process and parse each message's JSON (as the
    reference pipeline does; no validation): events/s."""
    consumer = make_consumer(
        config, group_id=f"bench-raw-{uuid.uuid4().hex}", **{"enable.partition.eof": "true"}
    )
    assignments = []
    for name in topics.INPUT_TOPICS:
        topic = config.topic(name)
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assignments += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    consumer.assign(assignments)
    pending = {(a.topic, a.partition) for a in assignments}
    count = 0
    first: float | None = None
    last = 0.0
    while pending:
        for message in consumer.consume(1000, 1.0):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard((message.topic(), message.partition()))
                continue
            if first is None:
                first = time.monotonic()
            try:
                orjson.loads(message.value() or b"")
            except orjson.JSONDecodeError:
                pass  # a deliberately malformed event: parsed as far as it goes
            count += 1
            last = time.monotonic()
    consumer.close()
    return count / (last - first) if first is not None and last > first else 0.0


@dataclass
class FreshnessProbe:
    """Samples movements and waits for each to be readable in Redis (its ``cause``)."""

    config: Config
    every: int = 10
    produced_at: dict[str, tuple[float, str]] = field(default_factory=dict)
    freshness_ms: list[float] = field(default_factory=list)
    _seen: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def stamp(self, events: Any) -> Any:
        for event in events:
            if event.topic == topics.WMS_MOVEMENTS and event.bad_reason is None:
                self._seen += 1
                if self._seen % self.every == 0 and event.event_id and not event.duplicate:
                    body = orjson.loads(event.value)
                    key = f"{self.config.redis.key_prefix}stock:{body['sku']}:{body['location_id']}"
                    self.produced_at[event.event_id] = (time.time() * 1000, key)
            yield event

    def follow(self) -> None:
        """Poll Redis for the sampled movements until stopped (then two seconds more)."""
        client = redis.Redis.from_url(self.config.redis.url)
        stopped_at: float | None = None
        while stopped_at is None or time.monotonic() - stopped_at < 2.0:
            if stopped_at is None and self._stop.is_set():
                stopped_at = time.monotonic()
            pending = list(self.produced_at.items())
            if pending:
                pipe = client.pipeline(transaction=False)
                for _, (_, key) in pending:
                    pipe.hget(key, "cause")
                now = time.time() * 1000
                for (event_id, (sent, _)), cause in zip(pending, pipe.execute(), strict=True):
                    if cause is not None and cause.decode() == event_id:
                        self.freshness_ms.append(now - sent)
                        del self.produced_at[event_id]
                    elif now - sent > 30_000:
                        del self.produced_at[event_id]  # overwritten by a later movement
            time.sleep(0.005)
        client.close()

    def stop(self) -> None:
        self._stop.set()


#: Target of profile freshness: a profile shows an event within a second (CONTRACT §11).
PROFILE_TARGET_P99_MS = 1_000.0
#: A sampled event whose profile has not caught up after this long is given up on (its
#: customer has no profile: nothing writes them yet, or the event was junk).
PROFILE_GIVE_UP_MS = 30_000.0


def profile_identifiers(topic: str, body: dict[str, Any]) -> tuple[str, ...]:
    """The identifiers of a generated clickstream or till event that lead to its customer's
    owner key (``id:<type>:<value>``, CONTRACT §5), strongest first. Phone and e-mail are
    left out: their keys hold a keyed hash the bench would have to recompute; every
    clickstream event has its device and a member's till event its card anyway."""
    fields = (
        (("user", "user_id"), ("order", "order_id"), ("anon", "anonymous_id"))
        if topic == topics.CLICKSTREAM
        else (("member", "member_code"), ("order", "order_id"))
    )
    return tuple(
        f"{kind}:{value}"
        for kind, name in fields
        if isinstance(value := body.get(name), str) and value
    )


def profile_time_ms(raw: bytes | str | None) -> int | None:
    """A profile's ``last_seen`` (RFC 3339, or epoch ms) as epoch ms; None when absent or not
    a time."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        return parse_event_time(int(text) if text.isdigit() else text)
    except TimestampError:
        return None


@dataclass
class ProfileSample:
    """One sampled event: when it was handed to the producer (wall clock, ms), its event
    time, and the identifiers its customer is found by."""

    produced_ms: float
    ts_ms: int
    identifiers: tuple[str, ...]
    polls: int = 0


@dataclass
class ProfileBook:
    """The bookkeeping of the profile probe, without Redis: which sampled events are still
    awaited, and what each poll says of them.

    An event counts once its customer's profile shows a ``last_seen`` at or past the
    event's time; produce → that poll is its freshness. A profile that already shows it at
    the very first poll was brought there by another event (one later in event time, the
    generator's backdated history) before this one could have travelled two flows: the
    sample proves nothing and is skipped (``skipped``), which errs on the slow side. A
    sample whose profile never shows it is given up after ``PROFILE_GIVE_UP_MS``
    (``given_up``), or still awaited when the run ends (``unanswered``)."""

    pending: dict[str, ProfileSample] = field(default_factory=dict)
    freshness_ms: list[float] = field(default_factory=list)
    skipped: int = 0
    given_up: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event_id: str, sample: ProfileSample) -> None:
        with self._lock:
            self.pending.setdefault(event_id, sample)

    def awaited(self) -> list[tuple[str, ProfileSample]]:
        with self._lock:
            return list(self.pending.items())

    def observe(self, event_id: str, last_seen_ms: int | None, now_ms: float) -> None:
        """What one poll read for a sample: its customer's ``last_seen`` (None: no customer
        or no profile yet)."""
        with self._lock:
            sample = self.pending.get(event_id)
            if sample is None:
                return
            sample.polls += 1
            if last_seen_ms is not None and last_seen_ms >= sample.ts_ms:
                del self.pending[event_id]
                if sample.polls == 1:
                    self.skipped += 1
                else:
                    self.freshness_ms.append(now_ms - sample.produced_ms)
            elif now_ms - sample.produced_ms > PROFILE_GIVE_UP_MS:
                del self.pending[event_id]
                self.given_up += 1

    def figures(self) -> dict[str, float | int]:
        return {
            "profile_freshness_p50_ms": round(percentile(self.freshness_ms, 0.5), 1),
            "profile_freshness_p99_ms": round(percentile(self.freshness_ms, 0.99), 1),
            "profiles_measured": len(self.freshness_ms),
            "profiles_skipped": self.skipped,
            "profiles_given_up": self.given_up,
            "profiles_unanswered": len(self.pending),
        }


@dataclass
class ProfileProbe:
    """Samples clickstream and till events of the generator's customers and polls Redis
    until each one's profile shows it.

    Each poll is two pipelined round trips for every awaited sample at once: the owners of
    their identifiers (one ``MGET``; read again each poll, since a merge may move the event
    to another customer), then those customers' ``last_seen`` (one pipeline of ``HGET``).
    Until something writes ``omni:profile:`` (rule_triggers), nothing is measured: the
    figures say 0 profiles and NaN percentiles."""

    config: Config
    every: int = 10
    interval_s: float = 0.025
    book: ProfileBook = field(default_factory=ProfileBook)
    _seen: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def stamp(self, events: Iterable[GeneratedEvent]) -> Iterator[GeneratedEvent]:
        """Pass events through, sampling every ``every``-th good one of a known customer."""
        for event in events:
            if (
                event.topic in (topics.CLICKSTREAM, topics.POS_SALES)
                and event.bad_reason is None
                and not event.duplicate
                and event.event_id
            ):
                self._seen += 1
                if self._seen % self.every == 0:
                    self._sample(event)
            yield event

    def _sample(self, event: GeneratedEvent) -> None:
        body = orjson.loads(event.value)
        identifiers = profile_identifiers(event.topic, body)
        try:
            ts_ms = parse_event_time(body.get("ts"))
        except TimestampError:
            return
        if identifiers and event.event_id:
            self.book.add(event.event_id, ProfileSample(time.time() * 1000, ts_ms, identifiers))

    def poll(self, client: redis.Redis) -> None:
        """One look at every awaited sample."""
        awaited = self.book.awaited()
        if not awaited:
            return
        prefix = self.config.redis.key_prefix
        idents = sorted({i for _, sample in awaited for i in sample.identifiers})
        replies: list[bytes | None] = client.mget([f"{prefix}id:{i}" for i in idents])  # type: ignore[assignment]
        owner = {i: r.decode() for i, r in zip(idents, replies, strict=True) if r}
        customer_of = {
            event_id: next((owner[i] for i in sample.identifiers if i in owner), None)
            for event_id, sample in awaited
        }
        customers = sorted({c for c in customer_of.values() if c is not None})
        pipe = client.pipeline(transaction=False)
        for customer_id in customers:
            pipe.hget(f"{prefix}profile:{customer_id}", "last_seen")
        last_seen = {
            c: profile_time_ms(raw) for c, raw in zip(customers, pipe.execute(), strict=True)
        }
        now_ms = time.time() * 1000
        for event_id, found in customer_of.items():
            self.book.observe(event_id, last_seen.get(found) if found else None, now_ms)

    def follow(self) -> None:
        """Poll until stopped, then two seconds more (the last events' profiles)."""
        client = redis.Redis.from_url(self.config.redis.url)
        stopped_at: float | None = None
        try:
            while stopped_at is None or time.monotonic() - stopped_at < 2.0:
                if stopped_at is None and self._stop.is_set():
                    stopped_at = time.monotonic()
                started = time.monotonic()
                self.poll(client)
                time.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()


#: Target of both fulfilment latencies (order → decision, pickup order → open task).
FULFILMENT_TARGET_P99_S = 1.0


@dataclass
class FulfilmentWatch(TopicFollower):
    """When each order was produced, and when stock_pool's answer to it reached its topic:
    the first decision on ``orders.sourced``, the first ``open`` task on ``store.tasks``.

    The latency runs from producing the order to the answer's timestamp on its topic, as the
    trigger latency does. Not ``fired_at − event_time``, the figure the flow's own
    ``omnistream_sourcing_lag_seconds`` histogram observes in production: the generated
    stream's event time runs hours ahead of the wall clock within the run (the simulation
    packs about 2.5 events into a second of event time, the bench offers 1,000 a second).
    An order the pool has not applied when the run ends (it waits until every input
    partition is read past it) has no answer and is not counted."""

    placed_at: dict[str, float] = field(default_factory=dict)
    decided_at: dict[str, int] = field(default_factory=dict)
    task_opened_at: dict[str, int] = field(default_factory=dict)
    follows: tuple[str, ...] = (topics.ORDERS_SOURCED, topics.STORE_TASKS)
    name = "bench-fulfilment"

    def stamp(self, events: Iterable[GeneratedEvent]) -> Iterator[GeneratedEvent]:
        """Pass events through, remembering when each order was handed to the producer."""
        for event in events:
            if (
                event.topic == topics.CLICKSTREAM
                and event.bad_reason is None
                and b'"order_placed"' in event.value
            ):
                order_id = orjson.loads(event.value).get("order_id")
                if isinstance(order_id, str):
                    self.placed_at.setdefault(order_id, time.time() * 1000)
            yield event

    def received(self, topic: str, arrived_ms: int, document: dict[str, Any]) -> None:
        data = document["data"]
        if topic == topics.ORDERS_SOURCED:
            self.decided_at.setdefault(data["order_id"], arrived_ms)
        elif data.get("status") == "open" and data.get("order_id"):
            self.task_opened_at.setdefault(data["order_id"], arrived_ms)

    def latencies_s(self, answered_at: dict[str, int]) -> list[float]:
        """Seconds from producing each order to its answer, for orders produced in this run."""
        return [
            (arrived - self.placed_at[order_id]) / 1000
            for order_id, arrived in answered_at.items()
            if order_id in self.placed_at
        ]

    def figures(self) -> dict[str, float | int]:
        decisions = self.latencies_s(self.decided_at)
        tasks = self.latencies_s(self.task_opened_at)
        return {
            "orders_sourced_p50_s": round(percentile(decisions, 0.5), 3),
            "orders_sourced_p99_s": round(percentile(decisions, 0.99), 3),
            "orders_sourced_measured": len(decisions),
            "store_tasks_p50_s": round(percentile(tasks, 0.5), 3),
            "store_tasks_p99_s": round(percentile(tasks, 0.99), 3),
            "store_tasks_measured": len(tasks),
        }


def latency_run(
    config: Config, workdir: Path, events: list[GeneratedEvent], rate: float, seconds: float
) -> dict[str, float | int]:
    live = config.with_overrides(kafka={"topic_prefix": "live."})
    ensure_topics(live, list(ALL_TOPICS))
    processes = []
    for name in FLOW_ORDER:
        port = free_port()
        path = workdir / f"live-{name}.yaml"
        dump_config(live.with_overrides(metrics={"port": port}), path)
        with (workdir / f"live-{name}.log").open("wb") as log:
            processes.append((start_flow(name, path, log=log), port))
    try:
        for process, port in processes:
            wait_for_metrics(port, process)
        watch = TriggerWatch(live)
        watch.start()
        fulfilment = FulfilmentWatch(live)
        fulfilment.start()
        probe = FreshnessProbe(live)
        follower = threading.Thread(target=probe.follow, daemon=True)
        follower.start()
        profiles = ProfileProbe(live)
        profile_follower = threading.Thread(target=profiles.follow, daemon=True)
        profile_follower.start()
        count = int(rate * seconds)
        stamped = profiles.stamp(probe.stamp(watch.stamp(fulfilment.stamp(events[:count]))))
        produce(live, stamped, rate=rate, progress=False)
        time.sleep(3)  # the last triggers, decisions and Redis writes
        watch.stop()
        fulfilment.stop()
        probe.stop()
        profiles.stop()
        follower.join(timeout=10)
        profile_follower.join(timeout=10)
    finally:
        for process, _ in processes:
            stop_process(process)
    latencies = watch.latencies_ms()
    return {
        "offered_eps": rate,
        "trigger_p50_ms": round(percentile(latencies, 0.5), 1),
        "trigger_p99_ms": round(percentile(latencies, 0.99), 1),
        "triggers_measured": len(latencies),
        "stock_freshness_p50_ms": round(percentile(probe.freshness_ms, 0.5), 1),
        "stock_freshness_p99_ms": round(percentile(probe.freshness_ms, 0.99), 1),
        "movements_measured": len(probe.freshness_ms),
        **profiles.book.figures(),
        **fulfilment.figures(),
    }


def has_stock_pool(config: Config) -> bool:
    """Whether Redis holds any stock position (a flow run wrote the pool)."""
    client = redis.Redis.from_url(config.redis.url)
    try:
        pattern = f"{config.redis.key_prefix}stock:*"
        return next(iter(client.scan_iter(match=pattern, count=1000)), None) is not None
    finally:
        client.close()


def run_bench(config: Config, args: argparse.Namespace) -> int:
    if not config.pii.key:
        config = config.with_overrides(pii={"key": uuid.uuid4().hex})
    reference = load_reference(config)
    results: dict[str, Any] = {"events": args.events}
    status = 0
    with (
        tempfile.TemporaryDirectory(prefix="omnistream-bench-") as tmp,
        EmbeddedStack(Path(tmp) / "stack", partitions=args.partitions) as stack,
    ):
        workdir = Path(tmp)
        bench = stack.config(config).with_overrides(kafka={"topic_prefix": "bench."})
        ensure_topics(bench, [*ALL_TOPICS, "bench.reference"])
        model = TrafficModel(reference, seed=args.seed, customers=args.customers)
        events = list(model.events(args.events))
        say(f"preloading {len(events):,} events …")
        produce(bench, events, progress=False)
        say("raw consumer …")
        results["raw_ceiling_eps"] = round(raw_ceiling(bench), 1)

        def reference_eps() -> float:
            say("reference pipeline …")
            command = [sys.executable, "-m", "omnistream.bench_reference"]
            return run_until_idle("reference", bench, workdir, command).eps

        # The reference runs before each measured flow and after the last one; each flow is
        # compared with the mean of the two runs around it: this machine's speed drifts by
        # a factor of two within minutes, and a neighbour's reference is the fairest one.
        references = [reference_eps()]
        flows: dict[str, Any] = {}
        results["mode"] = "replay" if args.replay else "tailing"
        wanted = set(args.flows)
        for name in FLOW_ORDER:
            if name not in wanted:
                if any(FLOW_ORDER.index(later) > FLOW_ORDER.index(name) for later in wanted):
                    say(f"{name} (not measured: it writes what a later flow reads) …")
                    run_until_idle(name, bench, workdir)
                continue
            say(f"{name} …")
            if args.replay:
                run = run_until_idle(name, bench, workdir)
            else:
                run = run_tailing(name, bench, workdir, messages_on(bench, FLOW_INPUTS[name]))
            references.append(reference_eps())
            around = statistics.fmean(references[-2:])
            flows[name] = {
                "eps": round(run.eps, 1),
                "ratio": round(run.eps / around, 3) if around else 0.0,
                "reference_eps": round(around, 1),
                "peak_rss_mb": round(run.peak_rss_mb, 1),
                "consumed": int(run.consumed),
            }
        results["flows"] = flows
        results["reference_eps"] = round(statistics.median(references), 1)
        results["reference_runs"] = [round(eps, 1) for eps in references]
        if not args.no_service:
            if not has_stock_pool(bench):
                say("stock_pool (not measured: the availability service reads its pool) …")
                run_until_idle("stock_pool", bench, workdir)
            say(f"availability service: {', '.join(f'{r:g}' for r in SERVICE_RATES)} requests/s …")
            try:
                results["service"] = service_run(
                    bench, workdir, reference, args.service_seconds, args.seed
                )
            except RuntimeError as exc:  # serve did not come up: the other figures still count
                say(f"availability service not measured: {exc}")
                first = str(exc).splitlines()[0].rstrip(":")
                results["service"] = {"error": f"{first} (its log's end is on stderr)"}
                status = 1
        if not args.no_latency:
            say(f"latency: {args.rate:g} events/s for {args.latency_seconds:g} s …")
            live_events = list(
                TrafficModel(
                    reference,
                    seed=args.seed + 1,
                    customers=args.customers,
                    start_ms=int(time.time() * 1000),
                ).events(int(args.rate * args.latency_seconds))
            )
            results["latency"] = latency_run(
                bench, workdir, live_events, args.rate, args.latency_seconds
            )
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written to {args.json}")
    return status


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def print_table(results: dict[str, Any]) -> None:
    print(f"\n== omnistream bench: {results['events']:,} events ==")
    print(f"raw consumer ceiling   {results['raw_ceiling_eps']:>12,.0f} events/s")
    runs = ", ".join(f"{eps:,.0f}" for eps in results["reference_runs"])
    print(f"reference pipeline     {results['reference_eps']:>12,.0f} events/s (median of {runs})")
    print(
        f"\n{'flow':<18} {'events/s':>10} {'reference':>10} {'ratio':>7} {'peak RSS MB':>12} "
        f"{'consumed':>10}"
    )
    for name, row in results["flows"].items():
        print(
            f"{name:<18} {row['eps']:>10,.0f} {row['reference_eps']:>10,.0f} {row['ratio']:>7.2f} "
            f"{row['peak_rss_mb']:>12,.0f} {row['consumed']:>10,}"
        )
    lat = results.get("latency")
    if lat is not None:
        print_latency(lat)
    if "service" in results:
        print_service(results["service"])


def print_latency(lat: dict[str, Any]) -> None:
    print(
        f"\nlatency at {lat['offered_eps']:,.0f} events/s offered: trigger p50 "
        f"{lat['trigger_p50_ms']:,.0f} ms, p99 {lat['trigger_p99_ms']:,.0f} ms "
        f"({lat['triggers_measured']:,} triggers); stock freshness p50 "
        f"{lat['stock_freshness_p50_ms']:,.0f} ms, p99 {lat['stock_freshness_p99_ms']:,.0f} ms "
        f"({lat['movements_measured']:,} movements)"
    )
    print(profile_line(lat))
    target = f"target p99 ≤ {FULFILMENT_TARGET_P99_S:g} s"
    for label, key, unit in (
        ("order → orders.sourced", "orders_sourced", "decisions"),
        ("pickup order → store.tasks", "store_tasks", "open tasks"),
    ):
        p99 = lat[f"{key}_p99_s"]
        met = "met" if p99 <= FULFILMENT_TARGET_P99_S else "MISSED"
        print(
            f"{label:<27} p50 {lat[f'{key}_p50_s']:.3f} s, p99 {p99:.3f} s "
            f"({lat[f'{key}_measured']:,} {unit}); {target}: {met}"
        )


def profile_line(lat: dict[str, Any]) -> str:
    """The table's profile freshness line; says so when nothing was measured (no flow
    wrote profiles) rather than printing NaN."""
    measured = int(lat.get("profiles_measured", 0))
    label = f"{'event → profile readable':<27}"
    extra = (
        f"{lat.get('profiles_skipped', 0):,} skipped, "
        f"{lat.get('profiles_given_up', 0) + lat.get('profiles_unanswered', 0):,} unanswered"
    )
    if measured == 0:
        return (
            f"{label}not measured (0 profiles; {extra}): is rule_triggers writing "
            "omni:profile:<customer_id>?"
        )
    p99 = float(lat["profile_freshness_p99_ms"])
    met = "met" if p99 <= PROFILE_TARGET_P99_MS else "MISSED"
    return (
        f"{label}p50 {lat['profile_freshness_p50_ms']:,.0f} ms, p99 {p99:,.0f} ms "
        f"({measured:,} profiles; {extra}); target p99 ≤ {PROFILE_TARGET_P99_MS:,.0f} ms: {met}"
    )
