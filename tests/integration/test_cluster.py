"""Every flow run as a Bytewax cluster (``omnistream run FLOW --process-id N --addresses …``)
ends like one process: 2 processes × 1 worker and 1 process × 2 workers leave the same Redis
state and publish the same output ids as 1 × 1 on one generated stream; and a cluster with
one process SIGKILLed on the way, started again, resumes from its recovery snapshots without
losing (or inventing) an output. Also the two ends of a process that Bytewax alone leaves
hanging: one stopped by signal while the others run, one whose peer never comes.

One stream for the module: the traffic goes through stock_pool, identity_stitch and
rule_triggers once, so every flow's inputs exist under one topic prefix; each run copies its
flow's inputs (same partitions, same order) to a prefix of its own and gets a Redis prefix of
its own (rule_triggers also gets the stock pool and identities it reads, copied). The
events of ``events.resolved`` end with one late event of a known customer on one partition:
in a replay every key fires what it held for the end against the latest event read by the
whole flow, and a cluster whose processes knew only their own reads dropped the carts of the
customers on the other process (36 of 216 coupons).

What may differ without being a difference (and why) is left out where it is read:
``cause`` of a stock hash (the last of simultaneous events), a customer's version counter and
identity's per-event resolution cache (which event of a merge came first), ``customer_visit``
tasks and their index (their clean-up runs on the wall clock, at most once a minute per
store; the index's name holds the run's prefix), the order of
the lists in a customer state handed over at a merge (sets, in the order of each process's
string hashing) and the scores of the profile segments (expiry times on the wall clock).
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from base.config import Config, dump_config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics, make_producer
from connectors.reference_files import load_reference
from flows import attribution, identity_stitch, rule_triggers, stock_pool
from omnistream.embedded import EmbeddedStack, free_port
from omnistream.processes import (
    free_port_block,
    scrape,
    start_cluster,
    start_flow,
    stop_process,
    total,
    wait_for_metrics,
)
from tests.cluster_helpers import (
    Shape,
    differences,
    output_ids,
    redis_state,
    run_cluster,
)
from tests.crash_helpers import CONSUMED, Kill, copy_inputs
from tests.identity_fold import fold_changes
from tests.kafka_helpers import read_topic, read_topics

pytestmark = pytest.mark.integration

EVENTS = 4000
ONE, TWO_PROCESSES, TWO_WORKERS = Shape(1, 1), Shape(2, 1), Shape(1, 2)
INPUTS = {
    "stock_pool": stock_pool.INPUTS,
    "identity_stitch": identity_stitch.INPUTS,
    "rule_triggers": rule_triggers.INPUTS,
    "attribution": attribution.INPUTS,
}
OUTPUTS = {
    "stock_pool": (
        "stock.changes",
        "orders.sourced",
        "store.tasks",
        "triggers.replenishment",
        "deadletter",
    ),
    "identity_stitch": ("events.resolved", "identity.changes", "deadletter"),
    "rule_triggers": (
        "triggers.coupon",
        "triggers.holdout",
        "triggers.replenishment",
        "triggers.insights",
        "store.tasks",
        "deadletter",
    ),
    "attribution": ("attribution.credits", "deadletter"),
}
FLOWS = tuple(INPUTS)
#: A survivor's one line: the broken connection, or (a peer that closed it) the watch's.
LOST = re.compile(r"lost (its connection to another process|process \d+ .*) of the cluster")


@dataclass(frozen=True)
class Observed:
    state: dict[str, Any]
    outputs: dict[str, set[str]]


@dataclass
class Recording:
    #: every flow's inputs under this configuration's topic prefix
    config: Config
    #: DUMPs of what stock_pool and identity_stitch left in Redis (rule_triggers reads it)
    upstream: dict[bytes, bytes]
    workdir: Path
    one_process: dict[str, Observed] = field(default_factory=dict)


@pytest.fixture(scope="module")
def recording(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    workdir = tmp_path_factory.mktemp("cluster")
    tag = f"cl{random.randrange(16**8):08x}"
    config = stack.config().with_overrides(
        kafka={"topic_prefix": f"{tag}."},
        redis={"key_prefix": f"{tag}:"},
        pii={"key": "cluster-secret"},
    )
    ensure_topics(config, list(ALL_TOPICS))
    traffic = TrafficModel(load_reference(config), seed=5, customers=400)
    produce(config, traffic.events(EVENTS), progress=False)
    for name in ("stock_pool", "identity_stitch"):
        assert run_cluster(name, config, workdir / f"{name}.yaml", ONE).codes == [0]
    add_late_event(config)
    client = redis.Redis.from_url(config.redis.url)
    try:
        keys = list(client.scan_iter(match=f"{config.redis.key_prefix}*", count=1000))
        prefix = config.redis.key_prefix.encode()
        upstream = {key[len(prefix) :]: client.dump(key) for key in keys}
    finally:
        client.close()
    # Coupons sent are touches of attribution.
    assert run_cluster("rule_triggers", config, workdir / "rule_triggers.yaml", ONE).codes == [0]
    return Recording(config, upstream, workdir)


def add_late_event(config: Config) -> None:
    """A page view of the latest customer, three hours after the last event, on that
    customer's partition of ``events.resolved`` (it is keyed by customer): the end of a
    replay is then far from the other partitions' last event (the module docstring)."""
    messages = read_topic(config, "events.resolved")
    latest = max(
        (m for m in messages if orjson.loads(m.value() or b"{}").get("customer_id")),
        key=lambda m: orjson.loads(m.value() or b"{}")["ts"],
    )
    last = orjson.loads(latest.value() or b"{}")
    late = {
        "event_id": "late-page-view",
        "event_type": "page_view",
        "ts": last["ts"] + 3 * 3_600_000,
        "anonymous_id": last.get("anonymous_id") or "late",
        "customer_id": last["customer_id"],
        "channel": "app",
        "source_topic": "clickstream",
    }
    producer = make_producer(config)
    producer.produce(
        config.topic("events.resolved"),
        key=last["customer_id"].encode(),
        value=orjson.dumps(late),
        partition=latest.partition(),
    )
    assert producer.flush(30) == 0


def prepared(recording: Recording, name: str, tag: str, **overrides: Any) -> tuple[Config, int]:
    """A configuration of its own for one run of flow ``name``, its inputs copied there; how
    many input messages it has."""
    base = recording.config
    kafka = {"topic_prefix": f"{base.kafka.topic_prefix}{tag}.", **overrides.pop("kafka", {})}
    config = base.with_overrides(
        kafka=kafka, redis={"key_prefix": f"{base.redis.key_prefix}{tag}:"}, **overrides
    )
    messages = copy_inputs(base, config, INPUTS[name])
    if name == "rule_triggers":
        client = redis.Redis.from_url(config.redis.url)
        try:
            prefix = config.redis.key_prefix.encode()
            for key, dumped in recording.upstream.items():
                client.restore(prefix + key, 0, dumped, replace=True)
        finally:
            client.close()
    return config, messages


def observe(flow: str, config: Config) -> Observed:
    """What a run left: the Redis state under its prefix and the ids it published, without
    what may differ between two equal runs (the module docstring)."""
    state = redis_state(config)
    # A merge's notices on events.resolved and its identity.changes name the event that
    # made it, which depends on which came first: the owners and customers are compared.
    topics = tuple(t for t in OUTPUTS[flow] if (flow, t) != ("identity_stitch", "identity.changes"))
    outputs = output_ids(
        config, topics, keep=lambda topic, record: record.get("source_topic") != "identity"
    )
    normalise: dict[str, Callable[[str, Any], Any]] = {
        "stock_pool": _stock_value,
        "identity_stitch": _identity_value,
        "rule_triggers": _rule_value,
        "attribution": lambda key, value: value,
    }
    kept = {}
    for key, value in state.items():
        key = key.replace(config.kafka.topic_prefix, "<topics>")  # the read marks' hash
        normalised = normalise[flow](key, value)
        if normalised is not None:
            kept[key] = normalised
    if flow == "identity_stitch":
        # ... and what identity.changes says, folded, is who owns each identifier.
        published = read_topics(config, ("identity.changes",))["identity.changes"]
        changes = [orjson.loads(m.value() or b"{}")["data"] for m in published]
        kept["<identity.changes folded>"] = fold_changes(
            (d["kind"], d["customer_id"], d["identifiers"], d["merged_from"]) for d in changes
        )
    return Observed(kept, outputs)


def _stock_value(key: str, value: Any) -> Any:
    return {f: v for f, v in value.items() if f != "cause"} if isinstance(value, dict) else value


def _identity_value(key: str, value: Any) -> Any:
    if key.startswith("idres:"):
        return None
    if key.startswith("cust:") and isinstance(value, dict):
        return {f: v for f, v in value.items() if f != "v"}
    return value


def _rule_value(key: str, value: Any) -> Any:
    if key.startswith("handover:"):
        return _unordered(value)
    if key.startswith("visit_index:"):
        return None
    if key.startswith("tasks:") and isinstance(value, dict):
        return {
            task: v
            for task, v in value.items()
            if not (isinstance(v, dict) and v.get("kind") == "customer_visit")
        }
    return value


def _unordered(value: Any) -> Any:
    """A handed-over customer state with its lists as multisets: the engine keeps some of
    them as sets, serialised in the order of a process's string hashing."""
    if isinstance(value, dict):
        return {k: _unordered(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(sorted((_unordered(v) for v in value), key=repr))
    return value


def one_process(recording: Recording, flow: str) -> Observed:
    """The 1 × 1 run of ``flow``, once per module."""
    if flow not in recording.one_process:
        config, _ = prepared(recording, flow, f"{flow[:4]}-one")
        run = run_cluster(flow, config, recording.workdir / f"{flow}-one.yaml", ONE)
        assert run.codes == [0], run.log(0)[-3000:]
        recording.one_process[flow] = observe(flow, config)
    return recording.one_process[flow]


def assert_same(flow: str, label: str, expected: Observed, got: Observed) -> None:
    lost = {t: len(expected.outputs[t] - got.outputs.get(t, set())) for t in expected.outputs}
    new = {t: len(got.outputs.get(t, set()) - expected.outputs[t]) for t in expected.outputs}
    print(
        f"\n{flow} {label}: {len(got.state)} keys, "
        + ", ".join(f"{t} {len(ids)}" for t, ids in got.outputs.items())
    )
    # Both sides at once, with the ids: a missing id with a new one beside it on the same
    # topic is one output decided differently, not one lost.
    ids = {
        t: (sorted(expected.outputs[t] - got.outputs.get(t, set()))[:5],
            sorted(got.outputs.get(t, set()) - expected.outputs[t])[:5])
        for t in expected.outputs
        if lost[t] or new[t]
    }  # fmt: skip
    assert not any(lost.values()) and not any(new.values()), (
        f"{flow} {label}: output ids missing {lost}, not in 1x1 {new}; (missing, new) ids {ids}"
    )
    assert got.state == expected.state, "\n".join(differences(expected.state, got.state))


@pytest.mark.parametrize("flow", FLOWS)
def test_two_processes_and_two_workers_end_like_one(recording: Recording, flow: str) -> None:
    expected = one_process(recording, flow)
    assert sum(len(ids) for ids in expected.outputs.values()) > 100
    for shape in (TWO_PROCESSES, TWO_WORKERS):
        config, _ = prepared(recording, flow, f"{flow[:4]}-{shape.label}")
        path = recording.workdir / f"{flow}-{shape.label}.yaml"
        run = run_cluster(flow, config, path, shape)
        assert run.codes == [0] * shape.processes, run.log(0)[-3000:]
        assert_same(flow, f"{shape.label} ({run.seconds:.1f} s)", expected, observe(flow, config))


@pytest.mark.parametrize("flow", FLOWS)
def test_a_cluster_with_a_process_killed_resumes_without_losing_output(
    recording: Recording, flow: str
) -> None:
    expected = one_process(recording, flow)
    rng = random.Random()
    victim, fraction = rng.randrange(2), rng.uniform(0.1, 0.6)
    tag = f"{flow[:4]}-crash"
    config, messages = prepared(
        recording,
        flow,
        tag,
        # Small batches, so the kill lands while the input is being read.
        kafka={"batch_size": 50},
        recovery={
            "dir": str(recording.workdir / tag),
            "snapshot_seconds": 0.2,
            "backup_seconds": 0.0001,
        },
    )
    path = recording.workdir / f"{tag}.yaml"
    kill = Kill.at_fraction(fraction, messages)
    # Started again on the same addresses, as an orchestrator restarts its processes.
    addresses = (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    killed = run_cluster(
        flow, config, path, TWO_PROCESSES, kill=kill, victim=victim, addresses=addresses
    )
    survivor = 1 - victim
    assert killed.codes[victim] == -signal.SIGKILL, f"finished before the kill ({kill.label})"
    # The other process ends too, with one line saying why.
    assert killed.codes[survivor] == 1, killed.log(survivor)[-3000:]
    survivor_log = killed.log(survivor)
    assert LOST.search(survivor_log), survivor_log[-3000:]
    assert "Traceback" not in survivor_log, survivor_log[-3000:]
    started = time.monotonic()
    resumed = run_cluster(flow, config, path, TWO_PROCESSES, addresses=addresses)
    assert resumed.codes == [0, 0], resumed.log(0)[-2000:] + resumed.log(1)[-2000:]
    # Each process kept its own share of the recovery partitions.
    shares = {
        n: sorted(p.name for p in (recording.workdir / tag / f"process-{n}").glob("*.sqlite3"))
        for n in (0, 1)
    }
    assert shares == {0: ["part-0.sqlite3"], 1: ["part-1.sqlite3"]}
    assert_same(
        flow,
        f"process {victim} killed {kill.label} ({killed.consumed:.0f} of {messages} read), "
        f"resumed in {time.monotonic() - started:.1f} s",
        expected,
        observe(flow, config),
    )


def live_cluster(
    recording: Recording, tag: str, **overrides: Any
) -> tuple[list[subprocess.Popen[bytes]], list[Path], int]:
    """stock_pool as a live 2-process cluster (tailing its inputs); its processes, their
    logs and the first metrics port."""
    config, _ = prepared(recording, "stock_pool", tag, **overrides)
    port = free_port_block(2)
    path = recording.workdir / f"{tag}.yaml"
    dump_config(config.with_overrides(metrics={"port": port, "host": "127.0.0.1"}), path)
    logs = [path.with_suffix(f".{n}.log") for n in (0, 1)]
    addresses = (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    handles = [log.open("ab") for log in logs]
    try:
        return start_cluster("stock_pool", path, addresses, logs=handles), logs, port
    finally:
        for handle in handles:
            handle.close()


def test_a_process_stopped_by_signal_ends_at_once_though_the_cluster_runs_on(
    recording: Recording,
) -> None:
    """Bytewax keeps a stopped process waiting until every other one has ended; it exits 0
    as soon as its own workers are done instead."""
    processes, logs, port = live_cluster(recording, "stop")
    try:
        for n, process in enumerate(processes):
            wait_for_metrics(port + n, process)
        while total(scrape(port), CONSUMED, flow="stock_pool") == 0:
            assert processes[0].poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.05)
        stop_process(processes[1], timeout_s=30)
        assert processes[1].returncode == 0, logs[1].read_text()[-3000:]
        assert "stopped by signal" in logs[1].read_text()
        assert stop_process(processes[0], timeout_s=30) == 0, logs[0].read_text()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_a_process_whose_peers_do_not_come_ends_with_one_line(recording: Recording) -> None:
    """Process 1 alone: Bytewax would try to connect to process 0 every second, for ever,
    printing a line each time."""
    config, _ = prepared(recording, "stock_pool", "alone", flow={"cluster_wait_seconds": 1.0})
    path = recording.workdir / "alone.yaml"
    dump_config(config.with_overrides(metrics={"port": free_port()}), path)
    addresses = (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    with path.with_suffix(".log").open("wb") as log:
        process = start_flow("stock_pool", path, log=log, process_id=1, addresses=addresses)
        assert process.wait(timeout=60) == 1
    text = path.with_suffix(".log").read_text()
    assert text.count(f"waiting for process 0 of the cluster at {addresses[0]}") == 1
    assert "error connecting" not in text and "Traceback" not in text, text
    assert (
        "stock_pool: the cluster did not form within 1 s (flow.cluster_wait_seconds): "
        f"process 0 at {addresses[0]} refused"
    ) in text
