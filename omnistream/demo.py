"""``omnistream demo``: the whole system on an embedded broker and Redis.

Starts Tansu and redis-server on free loopback ports, runs the stock_pool flow as its own
process (exactly ``omnistream run stock_pool``), feeds it generated traffic at a steady
rate, waits until the flow has consumed everything, and prints a summary. Ctrl-C at any
point stops the flow, the broker and Redis, and removes the temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from connectors.generator import TrafficModel, produce
from omnistream.config import Config, dump_config
from omnistream.embedded import EmbeddedStack, free_port
from omnistream.processes import scrape, start_flow, stop_process, total, wait_for_metrics
from omnistream.reference import load_reference

FLOW = "stock_pool"


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
        help="after the summary, keep everything running until Ctrl-C "
        "(to look at /metrics or query Redis)",
    )


def _wait_until_consumed(port: int, produced: int, process: object, timeout_s: float) -> float:
    """Poll the flow's metrics until it consumed every produced message; returns the count."""
    deadline = time.monotonic() + timeout_s
    consumed = 0.0
    last_print = 0.0
    while time.monotonic() < deadline:
        consumed = total(scrape(port), "omnistream_events_consumed_total", flow=FLOW)
        if consumed >= produced:
            return consumed
        if time.monotonic() - last_print > 1:
            print(f"\r  flow consumed {int(consumed):,} / {produced:,}", end="", file=sys.stderr)
            last_print = time.monotonic()
        time.sleep(0.25)
    print(file=sys.stderr)
    return consumed


def _print_summary(
    samples: dict | None, produced: dict[str, int], elapsed_s: float, port: int
) -> None:
    print()
    print("== Omnistream demo summary ==")
    print(
        f"events produced: {sum(produced.values()):,}  "
        + "  ".join(f"{topic}={n:,}" for topic, n in sorted(produced.items()))
    )
    consumed = total(samples, "omnistream_events_consumed_total", flow=FLOW)
    print(f"events consumed by {FLOW}: {int(consumed):,} in {elapsed_s:.1f} s")
    reasons = {
        labels["reason"]: int(value)
        for labels, value in (samples or {}).get("omnistream_deadletters_total", [])
        if labels.get("flow") == FLOW and value > 0
    }
    print(
        f"dead letters: {sum(reasons.values()):,}  "
        + "  ".join(f"{reason}={n}" for reason, n in sorted(reasons.items()))
    )
    positions = int(total(samples, "omnistream_stock_positions_written_total"))
    print(f"stock positions written to Redis: {positions:,}")
    print(
        f"stockouts (sku × location with available ≤ 0): "
        f"{int(total(samples, 'omnistream_stock_stockouts'))}"
    )
    print(
        f"low stock (available below reorder point): "
        f"{int(total(samples, 'omnistream_stock_low_positions'))}"
    )
    for figure in ("on_hand", "reserved", "available"):
        units = int(total(samples, "omnistream_stock_units", figure=figure))
        print(f"units {figure}: {units:,}")
    print(f"metrics: http://127.0.0.1:{port}/metrics (while the demo runs; use --keep)")


def run_demo(config: Config, args: argparse.Namespace) -> int:
    reference = load_reference(config)
    with (
        tempfile.TemporaryDirectory(prefix="omnistream-demo-") as workdir,
        EmbeddedStack(Path(workdir) / "stack", partitions=args.partitions) as stack,
    ):
        port = free_port()
        demo_config = stack.config(config).with_overrides(metrics={"port": port})
        config_path = Path(workdir) / "omnistream.yaml"
        dump_config(demo_config, config_path)
        print(
            f"broker {stack.kafka_bootstrap}  redis {stack.redis_url}  "
            f"metrics http://127.0.0.1:{port}/metrics",
            file=sys.stderr,
        )
        log_path = Path(workdir) / f"{FLOW}.log"
        with log_path.open("wb") as log:
            flow = start_flow(FLOW, config_path, log=log)
            try:
                wait_for_metrics(port, flow)
                started = time.monotonic()
                model = TrafficModel(reference, seed=args.seed, bad_ratio=args.bad_ratio)
                stats = produce(
                    demo_config, model.events(args.events), rate=args.rate or None, progress=True
                )
                produced = dict(stats.produced)
                _wait_until_consumed(port, sum(produced.values()), flow, timeout_s=300)
                time.sleep(1.5)  # let the last epoch flush its Redis and Kafka writes
                _print_summary(scrape(port), produced, time.monotonic() - started, port)
                if args.keep:
                    print("running; Ctrl-C to stop", file=sys.stderr)
                    while flow.poll() is None:
                        time.sleep(1)
            finally:
                code = stop_process(flow)
        if code not in (0, -2, 130):
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            print(f"omnistream demo: the flow exited with code {code}", file=sys.stderr)
            return 1
    return 0
