"""The start-up checks on closed ports: one line each, naming the address, the setting to
check and librdkafka's or redis-py's reason, within the timeout. (Real processes, with the
command line's exit code and output, are in ``tests/integration/test_fail_fast.py``.)"""

from __future__ import annotations

import time

import pytest

from base.config import Config
from omnistream import preflight
from omnistream.embedded import free_port


def dead(**kafka: object) -> Config:
    return Config().with_overrides(
        kafka={"bootstrap": f"127.0.0.1:{free_port()}", **kafka},
        redis={"url": f"redis://omni:s3cret-pass@127.0.0.1:{free_port()}/3"},
    )


def test_an_unreachable_broker_is_one_line_with_the_setting_and_the_reason() -> None:
    config = dead()
    started = time.monotonic()
    problem = preflight.kafka_problem(config, 1.0)
    assert time.monotonic() - started < 5
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"cannot reach Kafka at {config.kafka.bootstrap} ")
    assert "(kafka.bootstrap / OMNI_KAFKA_BOOTSTRAP)" in problem
    assert problem.endswith("failed: Connection refused"), problem


def test_security_settings_are_named_when_there_are_some() -> None:
    config = dead(client={"security.protocol": "SSL"})
    problem = preflight.kafka_problem(config, 0.5)
    assert problem is not None and "SASL/TLS settings under kafka.client" in problem


def test_an_unreachable_redis_is_one_line_without_the_password() -> None:
    config = dead()
    started = time.monotonic()
    problem = preflight.redis_problem(config, 1.0)
    assert time.monotonic() - started < 5
    assert problem is not None and "\n" not in problem
    port = config.redis.url.rsplit(":", 1)[1].split("/")[0]
    assert problem.startswith(f"cannot reach Redis at redis://127.0.0.1:{port}/3 ")
    assert "(redis.url / OMNI_REDIS_URL)" in problem and "Connection refused" in problem
    assert "s3cret" not in problem and "omni:" not in problem


def test_an_unreachable_redis_cluster_is_one_line_too() -> None:
    """A cluster client asks for its slot map when it is made: that failure is the line."""
    url = dead().redis.url.rsplit("/", 1)[0] + "/0"
    config = dead().with_overrides(redis={"cluster": True, "url": url})
    problem = preflight.redis_problem(config, 1.0)
    assert problem is not None and "\n" not in problem
    assert problem.startswith("cannot reach Redis at ") and "Connection refused" in problem
    assert "s3cret" not in problem


def test_both_checks_run_side_by_side_and_end_in_one_line() -> None:
    started = time.monotonic()
    with pytest.raises(preflight.Unreachable) as raised:
        preflight.check(dead(), kafka=True, redis=True, timeout_s=1.5)
    assert time.monotonic() - started < 5  # not 1.5 + 1.5 one after the other… plus slack
    line = str(raised.value)
    assert "\n" not in line and "cannot reach Kafka" in line and "cannot reach Redis" in line


def test_nothing_wanted_nothing_checked() -> None:
    preflight.check(dead())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 "
            "failed: Connection refused (after 0ms in state CONNECT)",
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        ),
        (
            "[thrd:kafka-1:9092/bootstrap]: kafka-1:9092/bootstrap: Failed to resolve "
            "'kafka-1:9092': Name or service not known (after 3ms in state CONNECT, 2 "
            "identical error(s) suppressed)",
            "Failed to resolve 'kafka-1:9092': Name or service not known",
        ),
        (
            "[thrd:ssl://k:9093/bootstrap]: ssl://k:9093/bootstrap: SSL handshake failed: "
            "certificate verify failed (after 12ms in state SSL_HANDSHAKE)",
            "SSL handshake failed: certificate verify failed",
        ),
    ],
)
def test_librdkafka_reason(text: str, reason: str) -> None:
    assert preflight._reason(text) == reason


def test_a_redis_that_comes_up_within_the_startup_wait_is_waited_for() -> None:
    """`flow.startup_wait_seconds` is how long the checks keep asking: a Redis started a
    second after the command is found, not reported (a compose stack in any order)."""
    import shutil
    import subprocess

    server = shutil.which("redis-server")
    assert server, "redis-server is installed by scripts/setup.sh"
    port = free_port()
    config = Config().with_overrides(
        redis={"url": f"redis://127.0.0.1:{port}/0"}, flow={"startup_wait_seconds": 20.0}
    )
    pending = preflight.start(config, redis=True)
    time.sleep(1.0)
    redis = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        pending.result()  # no Unreachable: it kept asking until Redis answered
    finally:
        redis.terminate()
        redis.wait(10)


def test_the_startup_wait_is_read_from_the_configuration() -> None:
    config = dead().with_overrides(flow={"startup_wait_seconds": 0.3})
    started = time.monotonic()
    with pytest.raises(preflight.Unreachable, match="cannot reach Redis"):
        preflight.check(config, redis=True)
    assert time.monotonic() - started < 5  # not the default 10 s
