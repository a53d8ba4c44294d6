"""``omnistream generate``: its options and the command itself.

Argument glue between the command line, the traffic model and ``produce``: options are
validated by argparse (so a bad value is a usage error, exit 2, before anything connects),
the reference data is read and a ``TrafficModel`` built, the input topics are made sure of,
and ``produce`` sends the stream; a one-line summary goes to stdout. ``omnistream.cli``
mounts ``add_generate_arguments`` on its ``generate`` sub-command and calls ``run_generate``.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import KafkaException

from base import topics
from base.config import Config
from connectors.generator.producing import GenerateStats, produce
from connectors.generator.simulation import (
    DEFAULT_CONSENT_WITHDRAWAL_SHARE,
    DEFAULT_INACTIVE_DAYS,
    DEFAULT_LAPSING_SHARE,
    DEFAULT_UNSOURCED_SHARE,
)
from connectors.generator.traffic import DEFAULT_CUSTOMERS, DEFAULT_SEED, TrafficModel
from connectors.kafka_clients import ensure_topics
from connectors.reference_files import load_reference
from domain.reference import ReferenceDataError

#: Messages sent when neither ``--count`` nor ``--duration`` is given.
DEFAULT_COUNT = 10_000

#: How long a message may wait for its broker before it counts as not delivered, unless
#: ``kafka.client`` says otherwise. librdkafka's own default is 5 minutes: a broker lost in
#: the middle of a run kept ``generate`` waiting that long per message, silent but for a
#: librdkafka line a minute. Traffic for a test or a demo is worth no more than this.
MESSAGE_TIMEOUT_MS = "30000"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``omnistream generate``."""
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="random seed (default %(default)s). The same seed and options produce the same "
        "messages byte for byte, event ids included, so running it twice sends duplicates "
        "that the flows drop; use another seed for new traffic",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help=f"send N messages, then stop (default without --duration: {DEFAULT_COUNT:,}); "
        "duplicates and malformed messages count towards N",
    )
    amount.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="send for this many seconds of wall-clock time, then stop",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        metavar="EPS",
        help="send at most EPS messages per second on average (default: as fast as the "
        "broker accepts them). Event times in the messages are simulated and do not follow "
        "the wall clock",
    )
    parser.add_argument(
        "--customers",
        type=_positive_int,
        default=DEFAULT_CUSTOMERS,
        metavar="N",
        help="number of simulated shoppers (default %(default)s); they are the same for "
        "every seed, so different seeds are different days of the same customers",
    )
    parser.add_argument(
        "--bad-ratio",
        type=_ratio,
        default=0.0,
        metavar="F",
        help="share of malformed messages from 0 to 1 (default %(default)s): broken JSON, "
        "missing or mistyped fields, bad values or timestamps, unknown event types, skus and "
        "locations; the flows must send each to the deadletter topic",
    )
    parser.add_argument(
        "--unsourced-share",
        type=_ratio,
        default=DEFAULT_UNSOURCED_SHARE,
        metavar="F",
        help="share of delivery orders placed without a fulfilling location, from 0 to 1 "
        "(default %(default)s): they carry the delivery address and region, and the stock "
        "flow chooses where they ship; the others name their warehouse",
    )
    parser.add_argument(
        "--consent-withdrawal-share",
        type=_ratio,
        default=DEFAULT_CONSENT_WITHDRAWAL_SHARE,
        metavar="F",
        help="share of signed-in sessions in which the shopper turns marketing off, from 0 "
        "to 1 (default %(default)s); a third of them turn it back on within hours. Coupons "
        "to them are held back (no_consent)",
    )
    parser.add_argument(
        "--lapsing-share",
        type=_ratio,
        default=DEFAULT_LAPSING_SHARE,
        metavar="F",
        help="share of the customers who bought once --inactive-days before the stream "
        "starts and never come back, from 0 to 1 (default %(default)s); the stream opens "
        "with their purchases, backdated, so a lapsed rule fires in its first hours",
    )
    parser.add_argument(
        "--inactive-days",
        type=_positive_int,
        default=DEFAULT_INACTIVE_DAYS,
        metavar="DAYS",
        help="the lapsed rule's inactive_days that the lapsing customers' backdated "
        "purchases are dated for (default %(default)s, as in the sample rules)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not show the progress line on stderr",
    )


def _summary(config: Config, stats: GenerateStats) -> str:
    per_topic = ", ".join(
        f"{config.topic(name)} {stats.produced.get(name, 0):,}" for name in topics.INPUT_TOPICS
    )
    bad = sum(stats.bad.values())
    text = (
        f"{'interrupted after' if stats.interrupted else 'generated'} {stats.total:,} messages "
        f"in {stats.elapsed_s:.1f} s ({stats.rate:,.0f}/s): {per_topic}; "
        f"{stats.duplicates:,} duplicates, {bad:,} malformed"
    )
    if stats.delivery_failures:
        text += f"; {stats.delivery_failures:,} NOT DELIVERED"
    return text


def run_generate(config: Config, args: argparse.Namespace) -> int:
    """``omnistream generate``: 0 when everything was delivered, 1 otherwise, 2 on bad input."""
    try:
        reference = load_reference(config)
        model = TrafficModel(
            reference,
            seed=args.seed,
            customers=args.customers,
            bad_ratio=args.bad_ratio,
            unsourced_share=args.unsourced_share,
            consent_withdrawal_share=args.consent_withdrawal_share,
            lapsing_share=args.lapsing_share,
            inactive_days=args.inactive_days,
        )
    except (ReferenceDataError, ValueError) as exc:
        print(f"omnistream generate: {exc}", file=sys.stderr)
        return 2
    count: int | None = args.count
    if count is None and args.duration is None:
        count = DEFAULT_COUNT
    client = config.kafka.client
    if "message.timeout.ms" not in client and "delivery.timeout.ms" not in client:
        config = config.with_overrides(
            kafka={"client": {**client, "message.timeout.ms": MESSAGE_TIMEOUT_MS}}
        )
    try:
        ensure_topics(config, list(topics.INPUT_TOPICS))
    except (KafkaException, RuntimeError) as exc:
        reason = str(exc)
        if isinstance(exc.__cause__, TimeoutError):  # a future that never completed
            reason += "the broker did not answer in time"
        print(
            f"omnistream generate: cannot prepare the input topics on {config.kafka.bootstrap}: "
            f"{reason}",
            file=sys.stderr,
        )
        return 1
    stats = produce(
        config,
        model.events(count),
        rate=args.rate,
        duration_s=args.duration,
        progress=args.progress,
        total=count,
    )
    print(_summary(config, stats))
    if stats.interrupted:
        return 130
    return 1 if stats.delivery_failures else 0
