"""An unreachable service is one line and exit 1, never a traceback or librdkafka's lines.

Real ``omnistream`` processes against loopback ports where nothing listens (and one where a
server answers something else than Redis); the start-up wait is shortened to 1 s. The
embedded broker and Redis are not needed: every case is about what is not there."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.config import SAMPLE_DATA_DIR
from omnistream.embedded import free_port, tansu_binary
from tests.fail_fast_helpers import NOISE

RULES = SAMPLE_DATA_DIR / "rules.yaml"


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    clean.update(OMNI_FLOW_STARTUP_WAIT_SECONDS="1", OMNI_PII_KEY="unit-test-pii-key", **env)
    return subprocess.run(
        [sys.executable, "-m", "omnistream.cli", *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=120,
    )


REDIS_COMMANDS = [
    ["stock", "SKU-10001"],
    ["stock", "SKU-10001", "--json"],
    ["attribution", "report"],
    ["attribution", "report", "--json"],
    ["whois", "user", "u-1"],
    ["whois", "user", "u-1", "--json"],
]
KAFKA_COMMANDS = [
    ["generate", "--count", "10"],
    ["topics", "list"],
    ["topics", "create"],
]


@pytest.mark.parametrize("args", REDIS_COMMANDS, ids="-".join)
def test_redis_down_is_one_line(args: list[str]) -> None:
    port = free_port()
    result = run_cli(args, OMNI_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [
        f"omnistream: cannot reach Redis at redis://127.0.0.1:{port}/0 (redis.url / "
        f"OMNI_REDIS_URL) within 1 s: Error 111 connecting to 127.0.0.1:{port}. "
        "Connection refused."
    ]


@pytest.mark.parametrize("args", KAFKA_COMMANDS, ids="-".join)
def test_broker_down_is_one_line(args: list[str]) -> None:
    port = free_port()
    result = run_cli(args, OMNI_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith(f"omnistream: cannot reach Kafka at 127.0.0.1:{port} ")
    assert "Connection refused" in lines[0]
    assert not any(mark in output for mark in NOISE)


@pytest.fixture
def not_redis() -> Iterator[int]:
    """A port whose server answers every connection with an HTTP error, then closes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_something_else_than_redis_on_the_port_is_one_line(not_redis: int) -> None:
    result = run_cli(["stock", "SKU-10001"], OMNI_REDIS_URL=f"redis://127.0.0.1:{not_redis}/0")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert f"127.0.0.1:{not_redis}" in lines[0] and "does not speak Redis" in lines[0]
    assert "Traceback" not in output


@pytest.fixture
def broker_advertising_elsewhere(tmp_path: Path) -> Iterator[str]:
    """A real Tansu broker on a loopback port that advertises a name nothing resolves, as a
    broker in a container advertising its service name does to a client on the host."""
    port = free_port()
    process = start_tansu(port, "tcp://kafka.invalid:9092", tmp_path / "tansu.log")
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(30)


def start_tansu(port: int, advertised: str, log_path: Path) -> subprocess.Popen[bytes]:
    """A real Tansu broker (in memory) on a loopback port, advertising ``advertised``."""
    argv = [
        str(tansu_binary()), "broker",
        "--listener-url", f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url", advertised,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def wait_for_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            threading.Event().wait(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def test_a_broker_advertising_an_unreachable_address_is_one_line_naming_it(
    broker_advertising_elsewhere: str,
) -> None:
    result = run_cli(
        ["generate", "--count", "10"], OMNI_KAFKA_BOOTSTRAP=broker_advertising_elsewhere
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith(f"omnistream: cannot reach Kafka at {broker_advertising_elsewhere} ")
    assert "advertises kafka.invalid:9092" in lines[0]
    assert "advertised listeners" in lines[0]


@pytest.fixture
def ping_only_redis() -> Iterator[int]:
    """A RESP server that answers PING (and the connection set-up) and refuses every other
    command, as a Redis whose ACL user may only PING: the start-up check passes, the
    command's first read fails."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def reply(conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                # Each command is an array of bulk strings; answer each complete one.
                while buffer.startswith(b"*"):
                    parts = buffer.split(b"\r\n")
                    count = int(parts[0][1:])
                    if len(parts) < 1 + 2 * count + 1:
                        break
                    name = parts[2].upper()
                    consumed = b"\r\n".join(parts[: 1 + 2 * count]) + b"\r\n"
                    buffer = buffer[len(consumed) :]
                    if name == b"PING":
                        conn.sendall(b"+PONG\r\n")
                    elif name == b"HELLO":  # redis-py's handshake: a RESP3 map
                        conn.sendall(b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n")
                    elif name in {b"CLIENT", b"SELECT"}:  # the rest of it
                        conn.sendall(b"+OK\r\n")
                    else:
                        conn.sendall(b"-NOPERM this user has no permissions to run it\r\n")

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=reply, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.mark.parametrize("args", [["stock", "SKU-10001"], ["attribution", "report"]], ids="-".join)
def test_redis_refusing_the_read_after_the_check_is_one_line(
    args: list[str], ping_only_redis: int
) -> None:
    result = run_cli(args, OMNI_REDIS_URL=f"redis://127.0.0.1:{ping_only_redis}/0")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("omnistream: Redis failed (")
    assert "NoPermissionError" in lines[0] and "no permissions" in lines[0]
    assert "check redis.url / OMNI_REDIS_URL (its user's ACL rules)" in lines[0]
    assert "Traceback" not in output


@pytest.mark.parametrize("unbuffered", [True, False])
def test_a_reader_that_goes_away_is_no_traceback(unbuffered: bool) -> None:
    """``omnistream rules check FILE | head -1``: the pipe closes while the command still
    prints; the command ends quietly (exit 1) instead of a BrokenPipeError traceback, whether
    its output is written at each print (unbuffered) or at the end."""
    command = [sys.executable, "-m", "omnistream.cli", "rules", "check", str(RULES)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMNI_", "PYTHONUNBUFFERED"))}
    if unbuffered:
        clean["PYTHONUNBUFFERED"] = "1"
    # The reader takes nothing and closes at once: every line the command prints hits a
    # closed pipe (a pipe buffers 64 KiB, so closing before the first write is what counts).
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    with process.stderr:
        error = process.stderr.read()
    code = process.wait(60)
    assert "Traceback" not in error and "BrokenPipeError" not in error, error
    assert code == 1


def test_a_broker_lost_mid_run_is_the_summary_line_only(tmp_path: Path) -> None:
    """generate against a real Tansu that is SIGKILLed once messages have arrived: the run
    ends (messages wait ``message.timeout.ms``, here 3 s from OMNI_KAFKA_CLIENT_…, then count
    as not delivered) with exit 1 and its one summary line; librdkafka's reconnect lines
    stay out of it."""
    port = free_port()
    broker = start_tansu(port, f"tcp://127.0.0.1:{port}", tmp_path / "tansu.log")
    try:
        wait_for_port(port)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
        clean.update(
            OMNI_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
            OMNI_KAFKA_CLIENT_MESSAGE_TIMEOUT_MS="3000",
            OMNI_FLOW_STARTUP_WAIT_SECONDS="5",
        )
        generate = subprocess.Popen(
            [sys.executable, "-m", "omnistream.cli", "generate", "--duration", "8",
             "--rate", "500", "--no-progress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=clean,
            text=True,
        )  # fmt: skip
        wait_for_messages(f"127.0.0.1:{port}", "clickstream")
        broker.kill()
        output, _ = generate.communicate(timeout=120)
    finally:
        broker.kill()
        broker.wait(30)
    lines = [line for line in output.splitlines() if line.strip()]
    assert generate.returncode == 1, output
    assert len(lines) == 1, output
    assert lines[0].startswith("generated ") and "NOT DELIVERED" in lines[0]
    assert "librdkafka" not in output and not any(mark in output for mark in NOISE)


def wait_for_messages(bootstrap: str, topic: str) -> None:
    """Until the broker holds a message of ``topic`` (its high watermark above 0)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "probe", "logger": logging.getLogger("t")}
    )
    try:
        for _ in range(600):
            metadata = consumer.list_topics(timeout=5)
            if topic in metadata.topics and metadata.topics[topic].partitions:
                for partition in metadata.topics[topic].partitions:
                    _, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=5
                    )
                    if high > 0:
                        return
            threading.Event().wait(0.05)
    finally:
        consumer.close()
    raise AssertionError(f"no message reached {topic}")
