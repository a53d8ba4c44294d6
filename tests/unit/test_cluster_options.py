"""``run FLOW --process-id N --addresses HOST:PORT,…`` and ``OMNI_FLOW_PROCESS_ID`` /
``OMNI_FLOW_ADDRESSES`` (CONTRACT §13): parsed and checked at start, every mistake one
message naming where the value came from, the key and what was expected."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from base.config import ConfigError, load_config, parse_addresses
from omnistream import cli

PII = {"OMNI_PII_KEY": "unit-secret"}


def test_the_environment_makes_a_process_of_a_cluster() -> None:
    config = load_config(
        env={"OMNI_FLOW_ADDRESSES": "10.0.0.1:7001, 10.0.0.2:7001", "OMNI_FLOW_PROCESS_ID": "1"}
    )
    assert config.flow.cluster() == ("10.0.0.1:7001", "10.0.0.2:7001")
    assert config.flow.process_id == 1


def test_without_addresses_a_flow_is_one_process() -> None:
    config = load_config(env={})
    assert config.flow.cluster() == () and config.flow.process_id == 0


def test_a_yaml_list_of_addresses_reads_like_the_string(tmp_path: Path) -> None:
    path = tmp_path / "omni.yaml"
    path.write_text("flow:\n  addresses: [a:7001, b:7001]\n  process_id: 1\n", encoding="utf-8")
    assert load_config(path, env={}).flow.cluster() == ("a:7001", "b:7001")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("h:1", ("h:1",)),
        ("[::1]:7001,[::1]:7002", ("[::1]:7001", "[::1]:7002")),
        ("kafka-0.svc:2101 , kafka-1.svc:2101", ("kafka-0.svc:2101", "kafka-1.svc:2101")),
        ("", ()),
    ],
)
def test_addresses_parse(text: str, expected: tuple[str, ...]) -> None:
    assert parse_addresses(text) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OMNI_FLOW_ADDRESSES": "a:7001,b"},
            "environment OMNI_FLOW_ADDRESSES: key `flow.addresses` (OMNI_FLOW_ADDRESSES, "
            "--addresses): expected HOST:PORT with a port 1..65535, got 'b'",
        ),
        ({"OMNI_FLOW_ADDRESSES": "a:0"}, "got 'a:0'"),
        ({"OMNI_FLOW_ADDRESSES": "a:70000"}, "got 'a:70000'"),
        ({"OMNI_FLOW_ADDRESSES": "::1:7001"}, "got '::1:7001'"),  # IPv6 needs brackets
        ({"OMNI_FLOW_ADDRESSES": "a:1,,b:1"}, "got ''"),
        ({"OMNI_FLOW_ADDRESSES": "a:7001,a:7001"}, "one address per process, got 'a:7001' twice"),
        (
            {"OMNI_FLOW_ADDRESSES": "a:7001,b:7001", "OMNI_FLOW_PROCESS_ID": "2"},
            "environment OMNI_FLOW_PROCESS_ID: key `flow.process_id` (OMNI_FLOW_PROCESS_ID, "
            "--process-id): expected 0..1, this process's position in `flow.addresses` "
            "(2 given, from environment OMNI_FLOW_ADDRESSES), got 2",
        ),
        (
            {"OMNI_FLOW_ADDRESSES": "a:7001,b:7001", "OMNI_FLOW_PROCESS_ID": "-1"},
            "expected 0..1",
        ),
        (
            {"OMNI_FLOW_PROCESS_ID": "1"},
            "environment OMNI_FLOW_PROCESS_ID: key `flow.process_id` (OMNI_FLOW_PROCESS_ID, "
            "--process-id): expected 0 for a flow run as one process, got 1",
        ),
        (
            {"OMNI_FLOW_PROCESS_ID": "first"},
            "environment OMNI_FLOW_PROCESS_ID: key `flow.process_id`: expected an integer",
        ),
        (
            {"OMNI_FLOW_ADDRESSES": "h:1,h:2", "OMNI_METRICS_PORT": "65535"},
            "key `metrics.port`: expected a port that leaves room for one per process on a host",
        ),
        ({"OMNI_FLOW_CLUSTER_WAIT_SECONDS": "0"}, "key `flow.cluster_wait_seconds`"),
    ],
)
def test_a_wrong_cluster_setting_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(env=env)
    assert message in str(error.value)


def test_a_wrong_process_id_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "omni.yaml"
    path.write_text("flow:\n  addresses: a:1,b:1\n  process_id: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"omni\.yaml: key `flow\.process_id`"):
        load_config(path, env={})


def test_processes_on_hosts_of_their_own_share_the_metrics_port() -> None:
    """Containers and pods keep one scrape port; two processes on one host do not collide."""
    from base.config import metrics_port_offsets

    assert metrics_port_offsets(("pod-0:2101", "pod-1:2101")) == [0, 0]
    assert metrics_port_offsets(("127.0.0.1:7001", "127.0.0.1:7002")) == [0, 1]
    assert metrics_port_offsets(("a:1", "b:1", "a:2", "b:2", "a:3")) == [0, 0, 1, 1, 2]


def run_options(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["run", "stock_pool", *argv])


def test_the_options_override_the_configuration() -> None:
    config = load_config(env={"OMNI_FLOW_ADDRESSES": "a:1,b:1"})
    args = run_options("--process-id", "1", "--addresses", "x:7001,y:7001,z:7001")
    merged = cli._with_cluster_options(config, args)
    assert merged.flow.cluster() == ("x:7001", "y:7001", "z:7001")
    assert merged.flow.process_id == 1
    assert cli._with_cluster_options(config, run_options()) is config


def test_an_option_out_of_range_names_the_option() -> None:
    args = run_options("--process-id", "2", "--addresses", "a:7001,b:7001")
    with pytest.raises(ConfigError) as error:
        cli._with_cluster_options(load_config(env={}), args)
    text = str(error.value)
    assert text.startswith("option --process-id: key `flow.process_id`")
    assert "(2 given, from option --addresses), got 2" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--addresses", "a:7001,b"), "argument --addresses: expected HOST:PORT"),
        (("--process-id", "-1"), "argument --process-id: expected a process id 0, 1, 2"),
        (("--process-id", "one"), "argument --process-id: expected a process id"),
    ],
)
def test_malformed_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        run_options(*argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_command_line_reports_a_cluster_mistake_as_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in PII.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OMNI_CONFIG", raising=False)
    code = cli.main(["run", "stock_pool", "--addresses", "a:7001,b:7001", "--process-id", "5"])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("omnistream: configuration error: option --process-id")


def test_help_states_the_metrics_and_recovery_rules(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--process-id N" in text and "--addresses HOST:PORT,…" in text
    assert "metrics.port plus the number of processes before it in --addresses with the" in text
    assert "<recovery.dir>/process-N" in text
