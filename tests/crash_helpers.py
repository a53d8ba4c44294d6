"""Running a flow to the end of its input, or SIGKILLing it on the way, for the recovery tests.

Where a flow is killed decides what a resume has to get right, and a wall-clock kill time
lands anywhere between start-up and exit depending on the machine's load. So kills follow
the flow's own progress instead: the ``omnistream_events_consumed_total`` it serves on its
metrics port (counted per Kafka batch as it is decoded, replays included):

- ``Kill.first_read()``: as soon as it has consumed anything, long before its first
  recovery snapshot (the test gives it a long snapshot interval): a resume must start over
  from nothing recorded;
- ``Kill.at_fraction(f)``: once it has consumed a fraction of its input. Late points are
  where a resume found partitions with nothing left to read (issue 14: timers left for the
  end of a replay were lost there).
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from base.config import Config, dump_config
from base.topics import ALL_TOPICS
from connectors.kafka_clients import ensure_topics, make_producer
from omnistream.embedded import free_port
from omnistream.processes import scrape, start_flow, total
from tests.kafka_helpers import read_topic, read_topics

CONSUMED = "omnistream_events_consumed_total"


@dataclass(frozen=True)
class Kill:
    """When to SIGKILL a flow: once it has consumed ``messages`` input messages."""

    messages: int
    label: str

    @classmethod
    def first_read(cls) -> Kill:
        return cls(1, "at its first read")

    @classmethod
    def at_fraction(cls, fraction: float, input_messages: int) -> Kill:
        return cls(max(1, int(fraction * input_messages)), f"at {fraction:.0%} of its input")


@dataclass(frozen=True)
class Outcome:
    code: int
    #: input messages it had consumed when killed (None: it was not killed)
    consumed: float | None
    seconds: float

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL


def run_flow(
    name: str,
    config: Config,
    path: Path,
    kill: Kill | None = None,
    timeout_s: float = 600.0,
) -> Outcome:
    """``omnistream run NAME --until-idle`` with ``config`` (written to ``path``; the log goes
    next to it), to the end or until ``kill`` says so."""
    port = free_port()
    dump_config(config.with_overrides(metrics={"port": port, "host": "127.0.0.1"}), path)
    started = time.monotonic()
    with path.with_suffix(".log").open("ab") as log:
        process = start_flow(name, path, until_idle=True, log=log)
        try:
            consumed = None if kill is None else _kill_when(process, port, name, kill, timeout_s)
            code = process.wait(timeout=timeout_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    return Outcome(code, consumed, time.monotonic() - started)


def crash_points(input_messages: int, snapshot_s: float) -> list[tuple[str, Kill, float]]:
    """(tag, kill, snapshot interval): killed at its first read with nothing snapshotted
    yet, and at a random point of its input (a share of what the flow itself reads, or the
    point would never be reached) with frequent snapshots."""
    fraction = random.Random().uniform(0.05, 0.9)
    return [
        ("early", Kill.first_read(), 60.0),
        ("random", Kill.at_fraction(fraction, input_messages), snapshot_s),
    ]


def recovering(config: Config, tag: str, directory: Path, snapshot_s: float) -> Config:
    """``config`` under prefixes of its own, with recovery snapshots in ``directory``."""
    return config.with_overrides(
        kafka={"topic_prefix": f"{config.kafka.topic_prefix}{tag}."},
        redis={"key_prefix": f"{config.redis.key_prefix}{tag}:"},
        recovery={"dir": str(directory), "snapshot_seconds": snapshot_s, "backup_seconds": 0.0001},
    )


def crash_and_resume(
    name: str, config: Config, path: Path, tag: str, kill: Kill
) -> tuple[Outcome, Outcome]:
    """SIGKILL the flow as ``kill`` says, then run it again to the end of its input."""
    killed = run_flow(name, config, path, kill)
    assert killed.killed, f"{tag}: the run finished before the kill ({kill.label})"
    resumed = run_flow(name, config, path)
    assert resumed.code == 0, path.with_suffix(".log").read_text(errors="replace")[-3000:]
    return killed, resumed


def _kill_when(
    process: subprocess.Popen[bytes], port: int, flow: str, kill: Kill, timeout_s: float
) -> float | None:
    """Poll the flow's metrics; SIGKILL it once it has consumed ``kill.messages``."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        consumed = total(scrape(port, timeout_s=1.0), CONSUMED, flow=flow)
        if consumed >= kill.messages:
            process.send_signal(signal.SIGKILL)
            return consumed
        time.sleep(0.005)
    return None


def copy_inputs(source: Config, target: Config, inputs: tuple[str, ...]) -> int:
    """The same messages, keys, partitions and headers under another topic prefix (so a
    steady and a crashed run read exactly the same input); how many."""
    ensure_topics(target, list(ALL_TOPICS))
    producer = make_producer(target)
    count = 0
    for name, messages in read_topics(source, inputs).items():
        for message in messages:
            producer.produce(
                target.topic(name),
                key=message.key(),
                value=message.value(),
                partition=message.partition() or 0,
                headers=message.headers() or [],
            )
            count += 1
    assert producer.flush(60) == 0
    return count


def deadletters(config: Config) -> set[tuple[str, int, int, str, str]]:
    """Distinct refusals on ``deadletter``: (input topic without the prefix, partition,
    offset, reason, flow) — what identifies a dead letter (CONTRACT §3 keys them by topic,
    partition and offset), the same for two copies of one input under two prefixes."""
    prefix = config.kafka.topic_prefix
    found = set()
    for message in read_topic(config, "deadletter", timeout_s=60):
        record = orjson.loads(message.value() or b"{}")
        topic = record["topic"].removeprefix(prefix)
        found.add((topic, record["partition"], record["offset"], record["reason"], record["flow"]))
    return found
