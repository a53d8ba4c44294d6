"""Configuration: one YAML file plus OMNI_* overrides, validated at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from base.config import ConfigError, dump_config, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "omni.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_contract_environment_names() -> None:
    config = load_config(
        env={
            "OMNI_KAFKA_BOOTSTRAP": "k:9092",
            "OMNI_REDIS_URL": "redis://r:6379/1",
            "OMNI_TOPIC_PREFIX": "acme.",
            "OMNI_METRICS_PORT": "9100",
            "OMNI_RECOVERY_DIR": "/var/lib/omni",
            "OMNI_PII_KEY": "s3cret",
            "OMNI_LOCATIONS": "/data/l.csv",
            "OMNI_PRODUCTS": "/data/p.csv",
            "OMNI_STOCK_DEDUP_HOURS": "12",
        }
    )
    assert config.kafka.bootstrap == "k:9092" and config.redis.url == "redis://r:6379/1"
    assert config.topic("stock.changes") == "acme.stock.changes"
    assert config.metrics.port == 9100 and config.recovery.dir == "/var/lib/omni"
    assert config.pii.key == "s3cret" and config.stock.dedup_hours == 12.0
    assert (config.reference.locations, config.reference.products) == ("/data/l.csv", "/data/p.csv")


def test_file_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  partitions: 8\nreference:\n  locations: ref/l.csv\n")
    config = load_config(path, env={})
    assert config.kafka.partitions == 8
    assert config.reference.locations == str(tmp_path / "ref/l.csv")
    assert load_config(path, env={"OMNI_KAFKA_PARTITIONS": "2"}).kafka.partitions == 2


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            "kafka:\n  partitions: many\n",
            {},
            "omni.yaml: key `kafka.partitions`: expected an integer",
        ),
        (
            "kafka:\n  partitions: 0\n",
            {},
            "omni.yaml: key `kafka.partitions`: expected a value > 0",
        ),
        ("kafak:\n  partitions: 1\n", {}, "omni.yaml: key `kafak`: unknown section"),
        ("kafka:\n  partition: 1\n", {}, "omni.yaml: key `kafka.partition`: unknown key"),
        ("redis:\n  url: localhost\n", {}, "key `redis.url`: expected a redis://"),
        ("kafka: [1, 2]\n", {}, "omni.yaml: key `kafka`: expected a mapping"),
        ("kafka: {\n", {}, "omni.yaml: not valid YAML"),
        ("", {"OMNI_METRICS_PORT": "http"}, "environment OMNI_METRICS_PORT: key `metrics.port`"),
    ],
)
def test_errors_name_the_source_the_key_and_the_expectation(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env=env)
    assert message in str(error.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml", env={})


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    config = load_config(env={"OMNI_KAFKA_PARTITIONS": "3"}).with_overrides(
        kafka={"client": {"security.protocol": "SASL_SSL"}}
    )
    dump_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml", env={})
    assert (again.kafka, again.redis, again.stock) == (config.kafka, config.redis, config.stock)
