"""The command line's global options, ``--version`` and the help texts of ``omnistream``.

``--config`` and ``-v`` are accepted before and after the subcommand (a value given after it
must not be overwritten by the top level's default, nor the other way round); ``--version``
is the installed package's version; ``top`` takes its options with their defaults."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version

import pytest

from omnistream import cli


def parse(argv: list[str]) -> object:
    return cli.build_parser().parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "x.yaml", "stock", "SKU-1"],
        ["stock", "SKU-1", "--config", "x.yaml"],
        ["--config", "x.yaml", "rules", "check", "r.yaml"],
        ["rules", "check", "r.yaml", "--config", "x.yaml"],
        ["--config", "x.yaml", "attribution", "report"],
        ["attribution", "report", "--config", "x.yaml"],
        ["--config", "x.yaml", "topics", "list"],
        ["topics", "list", "--config", "x.yaml"],
        ["doctor", "--config", "x.yaml"],
    ],
)
def test_config_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = parse(argv)
    assert args.config == "x.yaml"  # type: ignore[attr-defined]


def test_config_after_the_subcommand_wins_over_the_one_before() -> None:
    args = parse(["--config", "a.yaml", "stock", "SKU-1", "--config", "b.yaml"])
    assert args.config == "b.yaml"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["stock", "SKU-1"], False),
        (["-v", "stock", "SKU-1"], True),
        (["stock", "SKU-1", "-v"], True),
        (["--verbose", "whois", "user", "u-1"], True),
        (["whois", "user", "u-1", "--verbose"], True),
    ],
)
def test_verbose_before_or_after_the_subcommand(argv: list[str], verbose: bool) -> None:
    args = parse(argv)
    assert args.verbose is verbose  # type: ignore[attr-defined]
    assert args.config is None  # type: ignore[attr-defined]


def test_version_is_the_package_metadata() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "omnistream.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"omnistream {version('omnistream')}"


def test_top_options_and_defaults() -> None:
    args = parse(["top"])
    assert (args.interval, args.once, args.targets) == (2.0, False, None)  # type: ignore[attr-defined]
    args = parse(
        [
            "top",
            "--once",
            "--interval",
            "0.5",
            "--targets",
            "http://h:3030/metrics,http://h:3031/metrics",
        ]
    )
    assert args.once and args.interval == 0.5  # type: ignore[attr-defined]
    assert args.targets == "http://h:3030/metrics,http://h:3031/metrics"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "argv", [["top", "--interval", "0"], ["top", "--interval", "x"], ["top", "--interval", "inf"]]
)
def test_top_refuses_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_json_flags() -> None:
    assert parse(["stock", "SKU-1", "--json"]).json  # type: ignore[attr-defined]
    assert parse(["whois", "user", "u-1", "--json"]).json  # type: ignore[attr-defined]
    assert parse(["attribution", "report", "--json"]).json  # type: ignore[attr-defined]
    assert not parse(["stock", "SKU-1"]).json  # type: ignore[attr-defined]


def _description(*path: str) -> str:
    parser = cli.build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser.description or ""


def test_demo_description_names_its_options() -> None:
    text = _description("demo")
    for option in ("--prometheus", "--keep", "--events", "--rate", "export OMNI_"):
        assert option in text


def test_grafana_push_description_is_neutral() -> None:
    text = _description("grafana", "push")
    assert "grafana-client" not in text
    assert "HTTP API" in text and "$datasource" in text


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["serve", "--port", "99999"],
            "omnistream serve: argument --port: expected a port 1..65535, got '99999' "
            "(omnistream serve --help)",
        ),
        (
            ["stock"],
            "omnistream stock: the following arguments are required: sku (omnistream stock --help)",
        ),
        (
            ["top", "--interval", "-1"],
            "omnistream top: argument --interval: expected a number of seconds > 0, got '-1' "
            "(omnistream top --help)",
        ),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(argv: list[str], line: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "omnistream.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n")
