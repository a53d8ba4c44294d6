"""Stop on request: SIGTERM and Ctrl-C (SIGINT) stop a flow within 10 s in every state —
waiting for the broker or Redis at start, retrying Redis mid-run, mid-batch, with its broker
gone — and exit 0 with "stopped by signal", no traceback, no Rust panic. A flow stuck in a
call that no signal interrupts is ended by the watchdog with one line and exit 1.

Real ``omnistream run`` processes; each state is reached by watching the process (a
connection to a port that never answers, the flow's own metrics and log), not by sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from base.config import Config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics
from connectors.reference_files import load_reference
from omnistream.embedded import EmbeddedStack, die_with_parent, free_port
from omnistream.processes import scrape, total, wait_for_metrics
from tests.fail_fast_helpers import NOISE, Blackhole, Run, start
from tests.integration.test_redis_outage import start_redis

pytestmark = pytest.mark.integration

#: The bound of the issue.
STOP_WITHIN_S = 10.0
CONSUMED = "omnistream_events_consumed_total"
SIGNALS = [signal.SIGTERM, signal.SIGINT]


def stop(run: Run, signum: int) -> float:
    """Send ``signum``; seconds until the process exited (it is killed after 30 s)."""
    sent = time.monotonic()
    run.process.send_signal(signum)
    try:
        run.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail(f"no exit 30 s after {signal.Signals(signum).name}: {run.output()[-3000:]}")
    seconds = time.monotonic() - sent
    code = run.process.returncode
    print(f"{signal.Signals(signum).name}: exit {code} after {seconds:.2f} s")  # with -rP
    return seconds


def assert_clean_stop(run: Run, seconds: float, name: str) -> None:
    output = run.output()
    assert seconds < STOP_WITHIN_S, (seconds, output[-3000:])
    assert run.process.returncode == 0, output[-3000:]
    assert f"{name} stopped by signal" in output, output[-3000:]
    assert not any(noise in output for noise in NOISE), output[-3000:]


def wait_until(condition: object, run: Run, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert run.process.poll() is None, f"exited while waiting for {what}: {run.output()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s: {run.output()}"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("waiting_for", ["kafka", "redis"])
def test_a_flow_waiting_for_its_broker_or_redis_at_start_stops_at_once(
    waiting_for: str, signum: int, omni_config: Config, tmp_path: Path
) -> None:
    """The broker or Redis accepts the connection and never answers: the start-up check is
    waiting (it would give up after 10 s with exit 1); the signal ends it with exit 0."""
    hole = Blackhole()
    try:
        if waiting_for == "kafka":
            config = omni_config.with_overrides(kafka={"bootstrap": f"127.0.0.1:{hole.port}"})
        else:
            config = omni_config.with_overrides(redis={"url": f"redis://127.0.0.1:{hole.port}/0"})
        run = start(["run", "stock_pool"], config, tmp_path, "flow")
        try:
            assert hole.wait_for_client(), run.output()
            seconds = stop(run, signum)
        finally:
            run.kill()
    finally:
        hole.close()
    assert_clean_stop(run, seconds, "stock_pool")


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_flow_well_into_its_wait_for_the_broker_stops_at_once(
    signum: int, omni_config: Config, tmp_path: Path
) -> None:
    """4 s into the 10 s the start-up check waits for a broker that never answers: by then
    stock_pool's build is waiting too (it lists its input partitions, one librdkafka call of
    up to 10 s, during which the main thread could run no signal handler)."""
    hole = Blackhole()
    try:
        config = omni_config.with_overrides(kafka={"bootstrap": f"127.0.0.1:{hole.port}"})
        run = start(["run", "stock_pool"], config, tmp_path, "flow")
        try:
            assert hole.wait_for_client(), run.output()
            time.sleep(4)
            assert run.process.poll() is None, run.output()
            seconds = stop(run, signum)
        finally:
            run.kill()
    finally:
        hole.close()
    assert_clean_stop(run, seconds, "stock_pool")


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_flow_retrying_redis_stops_at_once(
    signum: int, omni_config: Config, tmp_path: Path
) -> None:
    """Redis goes away mid-run: identity_stitch retries its batch with back-off (up to 5 s
    between attempts, for up to 5 minutes); the signal ends the wait."""
    port = free_port()
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    config = omni_config.with_overrides(
        redis={"url": f"redis://127.0.0.1:{port}/0"}, metrics={"port": free_port()}
    )
    server = start_redis(port, data_dir)
    run = start(["run", "identity_stitch"], config, tmp_path, "flow")
    try:
        wait_for_metrics(config.metrics.port, run.process)
        server.terminate()
        server.wait(timeout=30)
        events = TrafficModel(load_reference(config), seed=31).events(2_000)
        produce(config, events, progress=False)
        wait_until(lambda: run.output().count("retrying in") >= 3, run, 60, "Redis retries")
        errors = total(scrape(config.metrics.port), "omnistream_redis_errors_total")
        seconds = stop(run, signum)
    finally:
        run.kill()
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
    assert errors >= 3  # the failed attempts were counted
    assert_clean_stop(run, seconds, "identity_stitch")


@pytest.mark.parametrize(
    ("name", "signum"),
    [("stock_pool", signal.SIGTERM), ("identity_stitch", signal.SIGINT)],
    ids=["stock_pool-SIGTERM", "identity_stitch-SIGINT"],
)
def test_a_flow_mid_batch_stops_at_once(
    name: str, signum: int, omni_config: Config, tmp_path: Path
) -> None:
    """A backlog being worked through: the signal comes once a tenth of it is read."""
    events = list(TrafficModel(load_reference(omni_config), seed=37).events(60_000))
    produce(omni_config, events, progress=False)
    config = omni_config.with_overrides(metrics={"port": free_port()})
    inputs = {"stock_pool": ("clickstream", "pos.sales", "wms.movements"),
              "identity_stitch": ("clickstream", "pos.sales")}[name]  # fmt: skip
    expected = sum(1 for e in events if e.topic in inputs)
    run = start(["run", name], config, tmp_path, "flow")
    consumed = 0.0
    try:

        def far_enough() -> bool:
            nonlocal consumed
            consumed = total(scrape(config.metrics.port), CONSUMED)
            return consumed >= expected * 0.1

        wait_until(far_enough, run, 120, "a tenth of the backlog read")
        seconds = stop(run, signum)
    finally:
        run.kill()
    assert consumed < expected, "the backlog was read to its end before the signal"
    assert_clean_stop(run, seconds, name)


def test_a_flow_whose_broker_went_away_stops_within_the_bound(tmp_path: Path) -> None:
    """The flow's own broker is killed mid-run (librdkafka reconnecting): SIGTERM still
    stops it within 10 s, and librdkafka's reconnect lines came through logging, a few, not
    a flood.

    Clean (exit 0) also when a sink was flushing a batch when the broker went: the sink
    waits for deliveries in short steps and gives up on a stop request (the batch is
    produced again on resume)."""
    with EmbeddedStack(workdir=tmp_path / "stack", partitions=2, topics=()) as stack:
        config = stack.config().with_overrides(
            pii={"key": "test-secret"}, metrics={"port": free_port()}
        )
        ensure_topics(config, list(ALL_TOPICS))
        produce(config, TrafficModel(load_reference(config), seed=41).events(2_000), progress=False)
        run = start(["run", "stock_pool"], config, tmp_path, "flow")
        try:
            wait_for_metrics(config.metrics.port, run.process)
            wait_until(lambda: total(scrape(config.metrics.port), CONSUMED) > 0, run, 60, "reads")
            os.kill(stack.pids["tansu"], signal.SIGKILL)
            wait_until(lambda: "librdkafka" in run.output(), run, 30, "a reconnect line")
            time.sleep(5)  # librdkafka keeps reconnecting meanwhile
            seconds = stop(run, signal.SIGTERM)
        finally:
            run.kill()
    assert_clean_stop(run, seconds, "stock_pool")
    reconnects = [line for line in run.lines() if " librdkafka: " in line]
    assert 0 < len(reconnects) < 30, reconnects


#: A process blocked in a librdkafka call without a timeout (what Bytewax's own Kafka source
#: does to list partitions): no Python signal handler can run until it returns.
STUCK = textwrap.dedent(
    """
    import logging, sys
    from confluent_kafka.admin import AdminClient
    from omnistream.runner import StopSignals
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    admin = AdminClient({"bootstrap.servers": sys.argv[1], "logger": logging.getLogger("x")})
    with StopSignals("stuck"):
        print("waiting", flush=True)
        admin.list_topics()
    """
)


def test_a_flow_stuck_where_no_signal_reaches_is_ended_by_the_watchdog(tmp_path: Path) -> None:
    from omnistream.runner import STOP_GRACE_S

    hole = Blackhole()
    log = tmp_path / "stuck.log"
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", STUCK, f"127.0.0.1:{hole.port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        run = Run(process, log, time.monotonic())
        try:
            assert hole.wait_for_client()
            wait_until(lambda: "waiting" in run.output(), run, 30, "the stuck call")
            seconds = stop(run, signal.SIGTERM)
        finally:
            run.kill()
    finally:
        hole.close()
    output = run.output()
    assert STOP_GRACE_S <= seconds < STOP_WITHIN_S, (seconds, output)
    assert process.returncode == 1, output
    errors = [line for line in run.lines() if line.startswith("ERROR")]
    assert errors == [
        f"ERROR omnistream.runner: stuck: it did not stop within {STOP_GRACE_S:g} s of the stop "
        "signal; exiting without a clean stop"
    ], output
    assert not any(noise in output for noise in NOISE), output
