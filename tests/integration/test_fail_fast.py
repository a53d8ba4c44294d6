"""Fail fast: every flow and every command that needs the broker or Redis, started while one
of them cannot be reached, exits 1 within 30 s with exactly one line naming what could not be
reached and the setting to check — no traceback, no librdkafka lines, no password.

Real processes (``omnistream ...``); the reachable half of each pair is the session's
embedded broker or Redis, the unreachable one a closed loopback port.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from base.config import Config
from omnistream.embedded import free_port
from tests.fail_fast_helpers import NOISE, start

pytestmark = pytest.mark.integration

#: The bound of the issue; the checks themselves give up after ``flow.startup_wait_seconds``
#: (10 s by default), here ``WAIT_S`` so that a dozen cases do not spend two minutes waiting.
FAIL_WITHIN_S = 30.0
WAIT_S = 2.0
KAFKA = "(kafka.bootstrap / OMNI_KAFKA_BOOTSTRAP)"
REDIS = "(redis.url / OMNI_REDIS_URL)"
PASSWORD = "s3cret-pass"


def without(config: Config, dependency: str) -> Config:
    if dependency == "kafka":
        return config.with_overrides(kafka={"bootstrap": f"127.0.0.1:{free_port()}"})
    return config.with_overrides(
        redis={"url": f"redis://omni:{PASSWORD}@127.0.0.1:{free_port()}/0"}
    )


CASES = [
    # every flow, once without each dependency between them
    (["run", "stock_pool"], "kafka"),
    (["run", "identity_stitch"], "redis"),
    (["run", "rule_triggers"], "kafka"),
    (["run", "attribution"], "redis"),
    (["run", "stock_pool", "--until-idle"], "redis"),
    # every command that needs one
    (["stock", "SKU-0001"], "redis"),
    (["whois", "user", "u-1"], "redis"),
    (["forget", "user", "u-1"], "kafka"),
    (["forget", "user", "u-1"], "redis"),
    (["attribution", "report"], "redis"),
    (["generate", "--count", "10"], "kafka"),
    (["rules", "backtest", "{rules}", "--topic"], "kafka"),
]


@pytest.mark.parametrize(
    ("args", "dependency"), CASES, ids=lambda v: "-".join(v) if isinstance(v, list) else v
)
def test_an_unreachable_dependency_is_one_line_and_exit_1(
    args: list[str], dependency: str, omni_config: Config, tmp_path: Path
) -> None:
    config = without(omni_config, dependency).with_overrides(
        metrics={"port": free_port()}, flow={"startup_wait_seconds": WAIT_S}
    )
    args = [a.replace("{rules}", config.rules.file) for a in args]
    run = start(args, config, tmp_path, "cmd")
    try:
        code, seconds = run.wait(FAIL_WITHIN_S)
    finally:
        run.kill()
    output = run.output()
    print(f"exit {code} after {seconds:.1f} s")  # shown with -rP: the measured bound
    assert code == 1, output[-3000:]
    assert WAIT_S <= seconds < FAIL_WITHIN_S  # it did keep asking for the whole wait
    lines = run.lines()
    assert len(lines) == 1, output[-3000:]
    (line,) = lines
    if dependency == "kafka":
        assert line.startswith(f"omnistream: cannot reach Kafka at {config.kafka.bootstrap} ")
        assert KAFKA in line and "Connection refused" in line
    else:
        assert line.startswith("omnistream: cannot reach Redis at redis://127.0.0.1:")
        assert REDIS in line and "Connection refused" in line
    assert not any(noise in output for noise in NOISE), output
    assert PASSWORD not in output
