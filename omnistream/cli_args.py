"""The flows' names and the options of ``omnistream demo`` and ``omnistream bench``, apart
from the commands themselves: the command line builds its whole parser on every invocation,
and importing the demo and the benchmark (the flows, the embedded broker, the report
statistics) for their options alone cost every command about two seconds before it did
anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from connectors.generator.response import (
    DEFAULT_BASE_RATE,
    DEMO_UPLIFT,
    ResponseModel,
    parse_uplift,
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events", type=int, default=20_000, help="number of generated events (default 20000)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=2_000.0,
        help="events/s offered to the broker; 0 = as fast as possible (default 2000)",
    )
    parser.add_argument("--seed", type=int, default=7, help="traffic seed (default 7)")
    parser.add_argument(
        "--bad-ratio",
        type=float,
        default=0.01,
        help="share of deliberately malformed events (default 0.01)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="partitions per topic on the embedded broker (default 4)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="also run the HTTP service (omnistream serve) and, after the summary, keep "
        "everything running until Ctrl-C or SIGTERM, printing the `export OMNI_…` lines with "
        "which stock, whois, serve and top work against it from another shell",
    )
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also run the OS's Prometheus (Debian package prometheus) on a free port, "
        "scraping the flows (and the service with --keep) and evaluating the alert rules of "
        "monitoring/rules; its URL is printed, it stops with the demo",
    )
    parser.add_argument(
        "--uplift",
        type=_uplift,
        default=dict(DEMO_UPLIFT),
        metavar="VARIANT=UPLIFT,…",
        help="true uplift of each experiment variant over its control: the generated shoppers "
        f"sent a coupon buy with {DEFAULT_BASE_RATE:g} + this probability, held-out ones with "
        f"{DEFAULT_BASE_RATE:g} (default "
        + ",".join(f"{k}={v:g}" for k, v in DEMO_UPLIFT.items())
        + ")",
    )


def _uplift(text: str) -> dict[str, float]:
    try:
        uplift = parse_uplift(text)
        ResponseModel(base_rate=DEFAULT_BASE_RATE, uplift=uplift)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return uplift


FLOW_ORDER = ("stock_pool", "identity_stitch", "rule_triggers", "attribution")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="stream size (200000)")
    parser.add_argument("--customers", type=int, default=20_000, help="customers (20000)")
    parser.add_argument("--seed", type=int, default=11, help="traffic seed (11)")
    parser.add_argument(
        "--rate", type=float, default=1_000.0, help="offered events/s in the latency run (1000)"
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=60.0, help="length of the latency run (60)"
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (4)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument(
        "--flows",
        type=_flow_names,
        default=FLOW_ORDER,
        metavar="NAMES",
        help="comma-separated flows to measure on their own (all four); for profiling one flow",
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="measure each flow as a replay (--until-idle) instead of tailing like production",
    )
    parser.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the live latency run (its JSON figures are then absent); for profiling",
    )
    parser.add_argument(
        "--service-seconds",
        type=_positive_seconds,
        default=5.0,
        metavar="S",
        help="how long each rate is offered to the availability service (5)",
    )
    parser.add_argument(
        "--no-service",
        action="store_true",
        help="skip the availability service (omnistream serve under load; JSON `service`)",
    )


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds, 0 < S ≤ 3600; got {text!r}")
    return seconds


def _flow_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FLOW_ORDER]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(FLOW_ORDER)}; got {text!r}"
        )
    return names
