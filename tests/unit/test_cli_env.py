"""The configuration's environment: unknown ``OMNI_*`` names warned about, ``kafka.client``
from ``OMNI_KAFKA_CLIENT_<NAME>``, ``OMNI_X_FILE`` secrets, and range errors that blame the
variable that set the value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from base.config import ConfigError, known_variables, load_config, unknown_variables


def test_every_key_has_its_variable_and_the_contract_names_are_known() -> None:
    known = known_variables()
    for name in (
        "OMNI_CONFIG",
        "OMNI_PII_KEY",
        "OMNI_KAFKA_BOOTSTRAP",
        "OMNI_TOPIC_PREFIX",
        "OMNI_LOCATIONS",
        "OMNI_PRODUCTS",
        "OMNI_RULES",
        "OMNI_RULES_FILE",
        "OMNI_FLOW_ADDRESSES",
        "OMNI_FLOW_PROCESS_ID",
        "OMNI_FLOW_STARTUP_WAIT_SECONDS",
        "OMNI_PROFILE_INTEREST_WINDOW_DAYS",
    ):
        assert name in known


def test_known_names_and_their_file_variants_are_not_warned_about() -> None:
    env = {
        "OMNI_PII_KEY_FILE": "/run/secrets/pii_key",
        "OMNI_REDIS_URL": "redis://h:6379/0",
        "OMNI_KAFKA_CLIENT_SASL_PASSWORD": "pw",
        "OMNI_KAFKA_CLIENT_SASL_PASSWORD_FILE": "/run/secrets/sasl",
        "OMNI_RULES_FILE": "/etc/rules.yaml",
        "PATH": "/bin",
        "OMNIBUS": "x",
    }
    assert unknown_variables(env) == []


def test_a_mistyped_name_is_warned_about_with_the_closest_one() -> None:
    warnings = unknown_variables(
        {
            "OMNI_KAFKA_BOOTSTRAPP": "h:9092",
            "OMNI_PII_KEY_FIEL": "/run/secrets/pii_key",
            "OMNI_REDSI_URL_FILE": "/x",
            "OMNI_NOTHING_LIKE_IT": "1",
        }
    )
    assert warnings == [
        "unknown environment variable OMNI_KAFKA_BOOTSTRAPP, ignored "
        "(did you mean OMNI_KAFKA_BOOTSTRAP?)",
        "unknown environment variable OMNI_NOTHING_LIKE_IT, ignored",
        "unknown environment variable OMNI_PII_KEY_FIEL, ignored (did you mean OMNI_PII_KEY?)",
        "unknown environment variable OMNI_REDSI_URL_FILE, ignored "
        "(did you mean OMNI_REDIS_URL_FILE?)",
    ]


def test_the_command_warns_once_per_name_on_stderr(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    env["OMNI_KAFKA_BOOTSTRAPP"] = "h:9092"
    result = subprocess.run(
        [sys.executable, "-m", "omnistream.cli", "rules", "check", "/nonexistent/rules.yaml"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.stderr.count("OMNI_KAFKA_BOOTSTRAPP") == 1
    assert "omnistream: warning: unknown environment variable OMNI_KAFKA_BOOTSTRAPP" in (
        result.stderr
    )
    assert "OMNI_KAFKA_BOOTSTRAPP" not in result.stdout


def test_kafka_client_properties_from_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "omni.yaml"
    file.write_text("kafka:\n  client:\n    security.protocol: SASL_SSL\n    sasl.username: shop\n")
    config = load_config(
        file,
        env={
            "OMNI_KAFKA_CLIENT_SASL_PASSWORD": "s3cret",
            "OMNI_KAFKA_CLIENT_SASL_USERNAME": "till",
            "OMNI_KAFKA_CLIENT_SSL_CA_LOCATION": "/etc/ca.pem",
        },
    )
    assert config.kafka.client == {
        "security.protocol": "SASL_SSL",
        "sasl.username": "till",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
    }


def test_a_whole_mapping_in_omni_kafka_client_is_refused_with_the_way_to_do_it() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(env={"OMNI_KAFKA_CLIENT": '{"sasl.password": "x"}'})
    assert "environment OMNI_KAFKA_CLIENT" in str(error.value)
    assert "OMNI_KAFKA_CLIENT_SASL_PASSWORD" in str(error.value)


def test_a_secret_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "pii_key"
    secret.write_text("a-long-pii-secret-of-the-shop\n")
    sasl = tmp_path / "sasl"
    sasl.write_text("kafka-pass")
    config = load_config(
        env={
            "OMNI_PII_KEY_FILE": str(secret),
            "OMNI_KAFKA_CLIENT_SASL_PASSWORD_FILE": str(sasl),
        }
    )
    assert config.pii.key == "a-long-pii-secret-of-the-shop"
    assert config.kafka.client == {"sasl.password": "kafka-pass"}


def test_omni_rules_file_is_the_key_not_a_file_variant(tmp_path: Path) -> None:
    config = load_config(env={"OMNI_RULES_FILE": str(tmp_path / "rules.yaml")})
    assert config.rules.file == str(tmp_path / "rules.yaml")


def test_a_value_and_its_file_both_set_is_an_error_naming_both(tmp_path: Path) -> None:
    secret = tmp_path / "pii_key"
    secret.write_text("x")
    with pytest.raises(ConfigError) as error:
        load_config(env={"OMNI_PII_KEY": "y", "OMNI_PII_KEY_FILE": str(secret)})
    assert str(error.value).startswith("environment OMNI_PII_KEY and OMNI_PII_KEY_FILE: ")


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    with pytest.raises(ConfigError) as error:
        load_config(env={"OMNI_PII_KEY_FILE": str(missing)})
    assert "environment OMNI_PII_KEY_FILE" in str(error.value)
    assert str(missing) in str(error.value)


def test_a_file_value_is_checked_and_blamed_like_the_variable(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.write_text("0\n")
    with pytest.raises(ConfigError) as error:
        load_config(env={"OMNI_FLOW_WORKERS_FILE": str(workers)})
    assert str(error.value).startswith(f"environment OMNI_FLOW_WORKERS_FILE (file {workers})")


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("OMNI_KAFKA_PARTITIONS", "0", "kafka.partitions"),
        ("OMNI_FLOW_STARTUP_WAIT_SECONDS", "-1", "flow.startup_wait_seconds"),
        ("OMNI_SERVICE_PORT", "70000", "service.port"),
        ("OMNI_METRICS_PORT", "0", "metrics.port"),
        ("OMNI_ATTRIBUTION_FIRST_SHARE", "0.9", "attribution.first_share"),
        ("OMNI_PROFILE_LAPSED_DAYS", "10", "profile.lapsed_days"),
        ("OMNI_REDIS_URL", "http://h", "redis.url"),
    ],
)
def test_a_range_error_in_the_environment_blames_the_variable(
    variable: str, value: str, key: str, tmp_path: Path
) -> None:
    file = tmp_path / "omni.yaml"
    file.write_text("kafka:\n  partitions: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(file, env={variable: value})
    message = str(error.value)
    assert message.startswith(f"environment {variable}: key `{key}")
    assert str(file) not in message and "<defaults>" not in message


def test_a_range_error_in_the_file_still_blames_the_file(tmp_path: Path) -> None:
    file = tmp_path / "omni.yaml"
    file.write_text("kafka:\n  partitions: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(file, env={})
    assert str(error.value).startswith(f"{file}: key `kafka.partitions`")
