"""``omnistream demo``: the whole system on an embedded broker and Redis.

Starts Tansu and redis-server on free loopback ports, runs each flow as its own process
(exactly ``omnistream run <flow>``), feeds them generated traffic at a steady rate, waits
until every flow has consumed everything, and prints a summary. Ctrl-C at any
point stops the flow, the broker and Redis, and removes the temporary directory.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from base import topics
from base.config import Config, dump_config
from connectors.generator import TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.attribution_report import report
from omnistream.embedded import EmbeddedStack, free_port
from omnistream.processes import (
    Samples,
    scrape,
    start_flow,
    stop_process,
    total,
    wait_for_metrics,
)
from omnistream.trigger_watch import TriggerWatch, percentile

#: The flows the demo runs, with the input topics each consumes.
DEMO_FLOWS: dict[str, tuple[str, ...]] = {
    "stock_pool": (topics.CLICKSTREAM, topics.POS_SALES, topics.WMS_MOVEMENTS),
    "identity_stitch": (topics.CLICKSTREAM, topics.POS_SALES),
    "rule_triggers": (topics.EVENTS_RESOLVED, topics.STOCK_CHANGES, topics.WMS_MOVEMENTS),
    "attribution": (topics.EVENTS_RESOLVED, topics.TRIGGERS_COUPON, topics.IDENTITY_CHANGES),
}


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


@dataclass
class FlowProcess:
    name: str
    inputs: tuple[str, ...]
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def consumed(self) -> float:
        return total(scrape(self.port), "omnistream_events_consumed_total", flow=self.name)


def _wait_until_consumed(
    flows: list[FlowProcess], produced: dict[str, int], timeout_s: float
) -> None:
    """Poll each flow's metrics until it consumed every message of its input topics. A flow
    that reads other flows' outputs (whose size is not known in advance) is done once those
    flows are and its own count has not moved for two seconds."""
    deadline = time.monotonic() + timeout_s
    last_print = 0.0
    last_count: dict[str, tuple[float, float]] = {}
    while time.monotonic() < deadline:
        progress = [(f, f.consumed(), sum(produced.get(t, 0) for t in f.inputs)) for f in flows]
        fed = [(f, done, wanted) for f, done, wanted in progress if f.inputs[0] in produced]
        downstream = [(f, done) for f, done, _ in progress if f.inputs[0] not in produced]
        upstream_done = all(done >= wanted for _, done, wanted in fed)
        now = time.monotonic()
        settled = True
        for f, done in downstream:
            count, since = last_count.get(f.name, (-1.0, now))
            if done != count:
                last_count[f.name] = (done, now)
                settled = False
            elif now - since < 2.0:
                settled = False
        if upstream_done and settled:
            break
        if time.monotonic() - last_print > 1:
            line = "  ".join(
                f"{f.name} {int(done):,}" + (f"/{wanted:,}" if f.inputs[0] in produced else "")
                for f, done, wanted in progress
            )
            print(f"\r  consumed: {line}", end="", file=sys.stderr)
            last_print = time.monotonic()
        time.sleep(0.25)
    print(file=sys.stderr)


def _dead_letters(samples: Samples | None) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for labels, value in (samples or {}).get("omnistream_deadletters_total", []):
        if value > 0:
            reasons[labels["reason"]] = reasons.get(labels["reason"], 0) + int(value)
    return reasons


def _print_triggers(samples: Samples | None, watch: TriggerWatch) -> None:
    fired = sorted(
        ((labels["rule"], labels["kind"], labels["variant"]), int(value))
        for labels, value in (samples or {}).get("omnistream_triggers_fired_total", [])
        if value > 0
    )
    print(f"triggers fired: {sum(n for _, n in fired):,}")
    for (rule, kind, variant), n in fired:
        print(f"  {rule:<20} {kind:<20} {variant:<14} {n:>7,}")
    held: dict[str, int] = {}
    for labels, value in (samples or {}).get("omnistream_triggers_suppressed_total", []):
        held[labels["reason"]] = held.get(labels["reason"], 0) + int(value)
    print(
        "held back: "
        + ("  ".join(f"{reason}={n:,}" for reason, n in sorted(held.items())) or "none")
        + "  (control = sent to triggers.holdout only)"
    )
    conversions: dict[str, int] = {}
    for labels, value in (samples or {}).get("omnistream_trigger_conversions_total", []):
        key = f"{labels['rule']}/{labels['variant']}"
        conversions[key] = conversions.get(key, 0) + int(value)
    print(
        "conversions: "
        + ("  ".join(f"{key}={n}" for key, n in sorted(conversions.items())) or "none yet")
    )
    latencies = watch.latencies_ms()
    if latencies:
        print(
            f"trigger latency (input produced → trigger on its topic, {len(latencies):,} "
            f"event-driven triggers): p50 {percentile(latencies, 0.5):.0f} ms, "
            f"p99 {percentile(latencies, 0.99):.0f} ms"
        )


def _print_summary(
    flows: list[FlowProcess], produced: dict[str, int], elapsed_s: float, watch: TriggerWatch
) -> None:
    samples = {f.name: scrape(f.port) for f in flows}
    stock, identity = samples.get("stock_pool"), samples.get("identity_stitch")
    print()
    print("== Omnistream demo summary ==")
    print(
        f"events produced: {sum(produced.values()):,}  "
        + "  ".join(f"{topic}={n:,}" for topic, n in sorted(produced.items()))
    )
    for f in flows:
        consumed = total(samples[f.name], "omnistream_events_consumed_total", flow=f.name)
        print(f"events consumed by {f.name}: {int(consumed):,} in {elapsed_s:.1f} s")
    # Every input is dead-lettered by each flow that reads it; stock_pool reads all three.
    reasons = _dead_letters(stock)
    print(
        f"dead letters: {sum(reasons.values()):,}  "
        + "  ".join(f"{reason}={n}" for reason, n in sorted(reasons.items()))
    )
    print(
        f"stock positions written to Redis: "
        f"{int(total(stock, 'omnistream_stock_positions_written_total')):,}"
    )
    print(
        f"stockouts (sku × location with available ≤ 0): "
        f"{int(total(stock, 'omnistream_stock_stockouts'))}"
    )
    print(
        f"low stock (available below reorder point): "
        f"{int(total(stock, 'omnistream_stock_low_positions'))}"
    )
    for figure in ("on_hand", "reserved", "available"):
        units = int(total(stock, "omnistream_stock_units", figure=figure))
        print(f"units {figure}: {units:,}")
    created = int(total(identity, "omnistream_identity_customers_created_total"))
    merges = int(total(identity, "omnistream_identity_merges_total"))
    print(f"customers: {created - merges:,} (created {created:,}, merged {merges:,})")
    conflicts = {
        labels["reason"]: int(value)
        for labels, value in (identity or {}).get("omnistream_identity_conflicts_total", [])
    }
    print(
        f"identity conflicts: {sum(conflicts.values()):,}  "
        + "  ".join(f"{reason}={n}" for reason, n in sorted(conflicts.items()))
    )
    print(f"identifiers linked: {int(total(identity, 'omnistream_identity_links_total')):,}")
    _print_triggers(samples.get("rule_triggers"), watch)
    for f in flows:
        print(
            f"metrics of {f.name}: http://127.0.0.1:{f.port}/metrics "
            "(while the demo runs; use --keep)"
        )
    print(
        "full stack (Kafka, Redis, the flows, Prometheus with alerts, Grafana boards): "
        "OMNI_PII_KEY=<secret> GRAFANA_ADMIN_PASSWORD=<password> docker compose up -d "
        "(Grafana http://127.0.0.1:3000, Prometheus http://127.0.0.1:9090; "
        "add --profile demo for generated traffic)"
    )


def _start_flows(
    demo_config: Config, workdir: Path, stack_note: str, logs: list[IO[bytes]]
) -> list[FlowProcess]:
    flows = []
    for name, inputs in DEMO_FLOWS.items():
        port = free_port()
        config_path = workdir / f"{name}.yaml"
        dump_config(demo_config.with_overrides(metrics={"port": port}), config_path)
        log_path = workdir / f"{name}.log"
        log = log_path.open("wb")
        logs.append(log)
        flows.append(
            FlowProcess(name, inputs, port, start_flow(name, config_path, log=log), log_path)
        )
    print(
        stack_note + "  " + "  ".join(f"{f.name} :{f.port}/metrics" for f in flows), file=sys.stderr
    )
    for f in flows:
        wait_for_metrics(f.port, f.process)
    return flows


def run_demo(config: Config, args: argparse.Namespace) -> int:
    reference = load_reference(config)
    if not config.pii.key:
        print(
            "omnistream demo: OMNI_PII_KEY is not set; using a random development key "
            "(hashes of phones and e-mails will not match any other run)",
            file=sys.stderr,
        )
        config = config.with_overrides(pii={"key": secrets.token_hex(16)})
    logs: list[IO[bytes]] = []
    flows: list[FlowProcess] = []
    failed: list[FlowProcess] = []
    with (
        tempfile.TemporaryDirectory(prefix="omnistream-demo-") as tmp,
        EmbeddedStack(Path(tmp) / "stack", partitions=args.partitions) as stack,
    ):
        workdir = Path(tmp)
        demo_config = stack.config(config)
        try:
            flows = _start_flows(
                demo_config,
                workdir,
                f"broker {stack.kafka_bootstrap}  redis {stack.redis_url}",
                logs,
            )
            started = time.monotonic()
            model = TrafficModel(reference, seed=args.seed, bad_ratio=args.bad_ratio)
            watch = TriggerWatch(demo_config)
            watch.start()
            stats = produce(
                demo_config,
                watch.stamp(model.events(args.events)),
                rate=args.rate or None,
                progress=True,
            )
            produced = dict(stats.produced)
            _wait_until_consumed(flows, produced, timeout_s=300)
            time.sleep(1.5)  # let the last epoch flush its Redis and Kafka writes
            watch.stop()
            _print_summary(flows, produced, time.monotonic() - started, watch)
            print("\n== Attribution (omnistream attribution report) ==")
            report(demo_config)
            if args.keep:
                print("running; Ctrl-C to stop", file=sys.stderr)
                while all(f.process.poll() is None for f in flows):
                    time.sleep(1)
        finally:
            for f in flows:
                if stop_process(f.process) not in (0, -2, -15, 130):
                    failed.append(f)
            for log in logs:
                log.close()
            for f in failed:
                print(f.log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
                print(
                    f"omnistream demo: {f.name} exited with code {f.process.returncode}",
                    file=sys.stderr,
                )
    return 1 if failed else 0
