"""Running a flow as P processes × W workers to the end of its input, or with one process
SIGKILLed on the way, and reading back what it left (for ``tests/integration/test_cluster.py``).

Kills follow the flow's progress as ``tests.crash_helpers`` does: the input messages every
process of the cluster has consumed so far (``omnistream_events_consumed_total`` on each
process's own metrics port, the configured one + its process id), not the wall clock.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from base.config import Config, dump_config
from omnistream.embedded import free_port
from omnistream.processes import free_port_block, scrape, start_cluster, start_flow, total
from tests.crash_helpers import CONSUMED, Kill
from tests.kafka_helpers import read_topics


@dataclass(frozen=True)
class Shape:
    processes: int
    workers: int

    @property
    def label(self) -> str:
        return f"{self.processes}x{self.workers}"


@dataclass(frozen=True)
class ClusterRun:
    #: exit code of each process, by process id
    codes: list[int]
    #: input messages the cluster had consumed when the kill came (None: no kill)
    consumed: float | None
    seconds: float
    logs: list[Path]

    def log(self, process: int) -> str:
        return self.logs[process].read_text(errors="replace")


def run_cluster(
    name: str,
    config: Config,
    path: Path,
    shape: Shape,
    *,
    kill: Kill | None = None,
    victim: int = 0,
    addresses: tuple[str, ...] = (),
    timeout_s: float = 300.0,
) -> ClusterRun:
    """``omnistream run NAME --until-idle`` as ``shape`` with ``config`` (written to
    ``path``; process N logs next to it), to the end, or SIGKILL process ``victim`` once
    the cluster has consumed ``kill.messages`` and wait for the others to end. The
    processes listen on ``addresses`` (default: free loopback ports)."""
    port = free_port_block(shape.processes)
    dump_config(
        config.with_overrides(
            metrics={"port": port, "host": "127.0.0.1"}, flow={"workers": shape.workers}
        ),
        path,
    )
    logs = [path.with_suffix(f".{n}.log") for n in range(shape.processes)]
    handles = [log.open("ab") for log in logs]
    started = time.monotonic()
    try:
        if shape.processes == 1:
            processes = [start_flow(name, path, until_idle=True, log=handles[0])]
        else:
            metrics = set(range(port, port + shape.processes))
            chosen = list(addresses)
            while len(chosen) < shape.processes:
                candidate = free_port()
                if candidate not in metrics and f"127.0.0.1:{candidate}" not in chosen:
                    chosen.append(f"127.0.0.1:{candidate}")
            processes = start_cluster(name, path, tuple(chosen), until_idle=True, logs=handles)
        try:
            consumed = None
            if kill is not None:
                consumed = _kill_when(processes, port, name, kill, victim, timeout_s)
            codes = [p.wait(timeout=timeout_s) for p in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=30)
    finally:
        for handle in handles:
            handle.close()
    return ClusterRun(codes, consumed, time.monotonic() - started, logs)


def _kill_when(
    processes: list[subprocess.Popen[bytes]],
    port: int,
    flow: str,
    kill: Kill,
    victim: int,
    timeout_s: float,
) -> float | None:
    deadline = time.monotonic() + timeout_s
    while processes[victim].poll() is None and time.monotonic() < deadline:
        consumed = sum(
            total(scrape(port + n, timeout_s=1.0), CONSUMED, flow=flow)
            for n in range(len(processes))
        )
        if consumed >= kill.messages:
            processes[victim].send_signal(signal.SIGKILL)
            return consumed
        time.sleep(0.005)
    return None


def redis_state(config: Config) -> dict[str, Any]:
    """Every key under the config's Redis prefix (without it), its value by type: hashes as
    dicts, strings as parsed JSON when they are JSON (field order is no difference), sets
    with the prefix taken out of members that name keys, sorted sets as their members (the
    scores of the profile segments are expiry times on the wall clock)."""
    prefix = config.redis.key_prefix
    client = redis.Redis.from_url(config.redis.url, decode_responses=True)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        kinds = pipe.execute()
        readers = {
            "hash": pipe.hgetall,
            "string": pipe.get,
            "set": pipe.smembers,
            "zset": lambda key: pipe.zrange(key, 0, -1),
            "list": lambda key: pipe.lrange(key, 0, -1),
        }
        for key, kind in zip(keys, kinds, strict=True):
            readers.get(kind, pipe.type)(key)
        state: dict[str, Any] = {}
        for key, kind, raw in zip(keys, kinds, pipe.execute(), strict=True):
            value: Any = raw
            if kind == "hash":
                value = {f: _json_or_text(v) for f, v in raw.items()}
            elif kind == "string":
                value = _json_or_text(raw or "")
            elif kind == "set":
                value = frozenset(m.removeprefix(prefix) for m in raw)
            elif kind == "zset":
                value = frozenset(raw)
            state[key.removeprefix(prefix)] = value
        return state
    finally:
        client.close()


def _json_or_text(text: str) -> Any:
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def output_ids(
    config: Config,
    topics: tuple[str, ...],
    keep: Callable[[str, dict[str, Any]], bool] = lambda topic, record: True,
) -> dict[str, set[str]]:
    """Distinct ids published on each topic (of the records ``keep(topic, record)`` keeps):
    a CloudEvent's ``id``, a plain record's ``event_id``, a dead letter's input position
    and reason (CONTRACT §3)."""
    found: dict[str, set[str]] = {}
    prefix = config.kafka.topic_prefix
    for name, messages in read_topics(config, topics).items():
        ids = set()
        for message in messages:
            record = json.loads(message.value() or b"{}")
            if not keep(name, record):
                continue
            if name == "deadletter":
                topic = str(record.get("topic", "")).removeprefix(prefix)
                ids.add(f"{topic}/{record.get('partition')}/{record.get('offset')}/"
                        f"{record.get('reason')}/{record.get('flow')}")  # fmt: skip
            else:
                ids.add(str(record.get("id") or record.get("event_id")))
        found[name] = ids
    return found


def differences(expected: dict[str, Any], got: dict[str, Any], show: int = 3) -> list[str]:
    """A few lines naming the keys whose values differ (and, for hashes, the fields)."""
    lines = []
    for key in sorted(set(expected) | set(got)):
        a, b = expected.get(key), got.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            fields = sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f))
            detail = "; ".join(f"{f}: {a.get(f)!r:.120} != {b.get(f)!r:.120}" for f in fields[:3])
        else:
            detail = f"{a!r:.160} != {b!r:.160}"
        lines.append(f"{key}: {detail}")
    return lines[:show] + ([f"… {len(lines) - show} more"] if len(lines) > show else [])
