"""``omnistream doctor`` against the session's embedded broker and Redis: a good stack gives
one ``ok`` line per check and exit 0; a broken one (Redis on a dead port, output topics
never created, a rules file with an unknown kind, then the broker on a dead port) gives a
``FAIL`` line for each broken part, naming it, and exit 1, never a traceback.

Real processes (``omnistream doctor --config FILE``); what each line should say is read
independently: the broker's own metadata, Redis' INFO, the rules file's YAML."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml
from confluent_kafka.admin import AdminClient, NewTopic

from base import topics
from base.config import Config, dump_config
from connectors.kafka_clients import ensure_topics
from omnistream.embedded import free_port
from tests.fail_fast_helpers import NOISE, start

pytestmark = pytest.mark.integration

WAIT_S = 1.0


def doctor(config: Config, tmp_path: Path) -> tuple[int | None, list[str], str]:
    run = start(["doctor"], config, tmp_path, "doctor")
    try:
        code, _ = run.wait(120)
    finally:
        run.kill()
    return code, run.lines(), run.output()


def by_name(lines: list[str]) -> dict[str, tuple[str, str]]:
    """check name → (status, detail) of ``status name detail`` lines."""
    out = {}
    for line in lines:
        status, name, detail = line.split(maxsplit=2)
        out[name] = (status, detail)
    return out


def test_a_good_stack_is_all_ok(omni_config: Config, tmp_path: Path) -> None:
    config = omni_config.with_overrides(flow={"startup_wait_seconds": WAIT_S})
    code, lines, output = doctor(config, tmp_path)
    assert code == 0, output
    checks = by_name(lines)
    assert list(checks) == ["config", "pii", "broker", "topics", "redis", "reference", "rules"]
    assert {status for status, _ in checks.values()} == {"ok"}, output
    admin = AdminClient(
        {"bootstrap.servers": config.kafka.bootstrap, "logger": logging.getLogger("test")}
    )
    brokers = admin.list_topics(timeout=10).brokers
    assert checks["broker"][1] == f"{config.kafka.bootstrap} ({len(brokers)} broker)"
    client = redis.Redis.from_url(config.redis.url)
    try:
        version = client.info("server")["redis_version"]
    finally:
        client.close()
    assert checks["redis"][1] == f"{config.redis.url} (Redis {version})"
    rules = yaml.safe_load(Path(config.rules.file).read_text())["rules"]
    assert checks["rules"][1] == f"{config.rules.file} ({len(rules)} rules)"
    assert checks["topics"][1].startswith(f"{len(topics.ALL_TOPICS)} topics")
    assert checks["pii"][1] == f"key set ({len(config.pii.key)} characters)"


def test_a_broken_stack_fails_each_broken_part(omni_config: Config, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: broken\n    kind: nonsense\n")
    dead_redis = free_port()
    config = omni_config.with_overrides(
        kafka={"topic_prefix": f"{omni_config.kafka.topic_prefix}half."},
        redis={"url": f"redis://127.0.0.1:{dead_redis}/0"},
        rules={"file": str(rules)},
        flow={"startup_wait_seconds": WAIT_S},
    )
    ensure_topics(config, list(topics.INPUT_TOPICS))  # the outputs are never created
    code, lines, output = doctor(config, tmp_path)
    assert code == 1, output
    assert not any(mark in output for mark in NOISE), output
    checks = by_name(lines)
    assert len(lines) == len(checks) == 7, output
    assert checks["config"][0] == checks["pii"][0] == checks["broker"][0] == "ok"
    assert checks["reference"][0] == "ok"
    outputs = [t for t in topics.ALL_TOPICS if t not in topics.INPUT_TOPICS]
    assert checks["topics"] == (
        "FAIL",
        f"missing: {', '.join(config.topic(t) for t in outputs)} (omnistream topics create)",
    )
    status, detail = checks["redis"]
    assert status == "FAIL"
    assert detail.startswith(f"cannot reach Redis at redis://127.0.0.1:{dead_redis}/0 ")
    status, detail = checks["rules"]
    assert status == "FAIL"
    assert detail.startswith(f"{rules}: rule `broken` (#1): key `kind`")


def test_a_dead_broker_fails_and_skips_the_topics(omni_config: Config, tmp_path: Path) -> None:
    config = omni_config.with_overrides(
        kafka={"bootstrap": f"127.0.0.1:{free_port()}"},
        pii={"key": ""},
        flow={"startup_wait_seconds": WAIT_S},
    )
    code, lines, output = doctor(config, tmp_path)
    assert code == 1, output
    assert not any(mark in output for mark in NOISE), output
    checks = by_name(lines)
    assert checks["broker"][0] == "FAIL"
    assert checks["broker"][1].startswith(f"cannot reach Kafka at {config.kafka.bootstrap} ")
    assert checks["topics"] == ("skip", "not checked: the broker did not answer")
    assert checks["pii"][0] == "FAIL" and "OMNI_PII_KEY" in checks["pii"][1]
    assert checks["redis"][0] == checks["rules"][0] == "ok"


def test_a_bad_configuration_is_one_fail_line(tmp_path: Path) -> None:
    file = tmp_path / "omni.yaml"
    file.write_text("kafka:\n  partitions: 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    result = subprocess.run(
        [sys.executable, "-m", "omnistream.cli", "doctor", "--config", str(file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"FAIL config    {file}: key `kafka.partitions`: expected a value > 0, got 0"
    ]


def test_the_pii_key_from_a_mounted_secret(omni_config: Config, tmp_path: Path) -> None:
    """``OMNI_PII_KEY_FILE=/run/secrets/pii_key``, as compose mounts it: the key is read from
    the file (its trailing newline dropped) and the doctor finds it set."""
    secret = tmp_path / "pii_key"
    secret.write_text("a-pii-key-from-a-compose-secret\n")
    path = tmp_path / "omni.yaml"
    dump_config(
        omni_config.with_overrides(pii={"key": ""}, flow={"startup_wait_seconds": WAIT_S}), path
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    env["OMNI_PII_KEY_FILE"] = str(secret)
    result = subprocess.run(
        [sys.executable, "-m", "omnistream.cli", "doctor", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checks = by_name(result.stdout.splitlines())
    assert checks["pii"] == ("ok", f"key set ({len('a-pii-key-from-a-compose-secret')} characters)")


def test_a_topic_with_too_few_partitions_fails(omni_config: Config, tmp_path: Path) -> None:
    config = omni_config.with_overrides(
        kafka={"topic_prefix": f"{omni_config.kafka.topic_prefix}short.", "partitions": 4},
        flow={"startup_wait_seconds": WAIT_S},
    )
    short = config.topic(topics.STOCK_CHANGES)
    admin = AdminClient(
        {"bootstrap.servers": config.kafka.bootstrap, "logger": logging.getLogger("test")}
    )
    admin.create_topics([NewTopic(short, num_partitions=1, replication_factor=1)])[short].result(
        timeout=30
    )
    ensure_topics(config, list(topics.ALL_TOPICS))  # the others, with 4
    code, lines, output = doctor(config, tmp_path)
    assert code == 1, output
    assert by_name(lines)["topics"] == (
        "FAIL",
        f"too few partitions: {short} has 1 (kafka.partitions 4)",
    )
