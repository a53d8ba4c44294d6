"""``omnistream demo``: the whole system on an embedded broker and Redis.

Starts Tansu and redis-server on free loopback ports, runs each flow as its own process
(exactly ``omnistream run <flow>``), feeds them generated traffic at a steady rate, waits
until every flow has consumed everything, and prints a summary: stock, sourcing outcomes
and open store tasks, identities, triggers, attribution. With ``--keep`` the HTTP service
(exactly ``omnistream serve``) runs beside the flows too, the summary names a store console
to open, and everything keeps running after it, with the ``export OMNI_…`` lines that point
``stock``, ``whois``, ``serve`` and ``top`` of another shell at it. With ``--prometheus`` the
OS's Prometheus scrapes the flows and evaluates the alert rules (``demo_prometheus``).
Ctrl-C or SIGTERM at any point stops the flows, the service, Prometheus, the broker and
Redis, and removes the temporary directory.

The flows serve their metrics on consecutive ports, flow N of ``FLOW_ORDER`` on the first
plus N: the layout ``omnistream top`` reads from ``metrics.port`` alone.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis

from base import topics
from base.config import Config, dump_config
from connectors.generator import TrafficModel, produce
from connectors.generator.response import ResponseModel
from connectors.reference_files import load_reference
from omnistream.attribution_report import report
from omnistream.cli_args import FLOW_ORDER
from omnistream.demo_prometheus import (
    DemoPrometheus,
    PrometheusUnavailable,
    find_prometheus,
    start_prometheus,
)
from omnistream.demo_shoppers import Shoppers
from omnistream.embedded import EmbeddedStack, free_port
from omnistream.experiments_report import run_report
from omnistream.processes import (
    Samples,
    answers_ok,
    free_port_block,
    scrape,
    start_flow,
    start_until_ready,
    stop_process,
    total,
    wait_for_metrics,
)
from omnistream.trigger_watch import TriggerWatch, percentile
from state.redis_io import connect

#: The flows the demo runs, with the input topics each consumes.
DEMO_FLOWS: dict[str, tuple[str, ...]] = {
    "stock_pool": (topics.CLICKSTREAM, topics.POS_SALES, topics.WMS_MOVEMENTS),
    "identity_stitch": (topics.CLICKSTREAM, topics.POS_SALES),
    "rule_triggers": (topics.EVENTS_RESOLVED, topics.STOCK_CHANGES, topics.WMS_MOVEMENTS),
    "attribution": (topics.EVENTS_RESOLVED, topics.TRIGGERS_COUPON, topics.IDENTITY_CHANGES),
}


@dataclass
class FlowProcess:
    name: str
    inputs: tuple[str, ...]
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def consumed(self) -> float:
        return total(scrape(self.port), "omnistream_events_consumed_total", flow=self.name)


@dataclass
class ServiceProcess:
    """``omnistream serve`` beside the flows (``--keep``), on its own free port."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start_service(
    demo_config: Config, workdir: Path, logs: list[IO[bytes]], timeout_s: float = 60.0
) -> ServiceProcess | None:
    """Start ``omnistream serve`` on a free loopback port and wait until it answers; None
    (with its log on stderr) when it does not come up — the flows run on without it."""
    port = free_port()
    config_path = workdir / "serve.yaml"
    dump_config(demo_config, config_path)
    log_path = workdir / "serve.log"
    log = log_path.open("wb")
    logs.append(log)
    command = [sys.executable, "-m", "omnistream.cli", "serve", "--config", str(config_path)]
    healthz = f"http://127.0.0.1:{port}/healthz"
    process = start_until_ready(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        log,
        lambda: answers_ok(healthz),
        timeout_s,
    )
    if process is not None:
        return ServiceProcess(port, process, log_path)
    print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
    print(
        "omnistream demo: omnistream serve did not come up; running without the store console",
        file=sys.stderr,
    )
    return None


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


def _by_label(samples: Samples | None, name: str, label: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for labels, value in (samples or {}).get(name, []):
        if label in labels:
            counts[labels[label]] = counts.get(labels[label], 0) + int(value)
    return counts


def _print_fulfilment(stock: Samples | None) -> None:
    """Sourcing outcomes and open store tasks, from stock_pool's own metrics (CONTRACT §10).
    Overdue is judged there on the stream's event time, which a generated stream runs far
    ahead of the wall clock the store console judges by."""
    outcomes = _by_label(stock, "omnistream_orders_sourced_total", "outcome")
    print(
        f"delivery orders sourced by stock_pool: {sum(outcomes.values()):,}  "
        f"sourced={outcomes.get('sourced', 0):,}  "
        f"unfulfillable={outcomes.get('unfulfillable', 0):,}"
    )
    open_tasks = _by_label(stock, "omnistream_store_tasks_open", "kind")
    overdue = int(total(stock, "omnistream_pickup_tasks_overdue"))
    print(
        f"open store tasks: {sum(open_tasks.values()):,}  "
        + "".join(f"{kind}={n:,}  " for kind, n in sorted(open_tasks.items()))
        + f"overdue pickups: {overdue:,} (as of the stream's event time)"
    )


def _store_with_tasks(config: Config) -> tuple[str, int] | None:
    """The store with the most open tasks in Redis (``<prefix>tasks:<store_id>``), with
    their count; ties go to the lower store id. None when no store has a task."""
    prefix = f"{config.redis.key_prefix}tasks:"
    client = connect(config)
    try:
        ranked: list[tuple[int, str]] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1_000):
            name = key.decode() if isinstance(key, bytes) else str(key)
            tasks = [json.loads(raw) for raw in client.hvals(key)]
            if tasks:
                open_count = sum(1 for task in tasks if task.get("status", "open") == "open")
                ranked.append((-open_count, name[len(prefix) :]))
    finally:
        client.close()
    if not ranked:
        return None
    most, store_id = min(ranked)
    return store_id, -most


def _print_console(config: Config, service: ServiceProcess) -> None:
    try:
        busiest = _store_with_tasks(config)
    except (redis.RedisError, ValueError) as exc:
        print(f"store console: cannot read the store tasks from Redis: {exc}")
        busiest = None
    if busiest is None:
        print(f"store console: no store has tasks yet; {service.url}/stores/<store_id>")
    else:
        store_id, open_count = busiest
        print(
            f"store console of {store_id} ({open_count:,} open tasks): "
            f"{service.url}/stores/{store_id}"
        )
    print(f"HTTP service: {service.url}/docs (availability, stock, customers), /metrics")


def _print_customers(triggers: Samples | None) -> None:
    """The customer rules of CONTRACT §11 in one line, from rule_triggers' own counters:
    coupons of the life-cycle rules (by rule kind), the ``customer_visit`` tasks it gave the
    stores (``store.tasks``; stock_pool's open-task gauge above counts only its pickups) and
    the coupons held back for want of consent or stock. The generated stream sets these up
    (check-ins, consent withdrawals, a backdated history of lapsing members and repurchase
    items), so all of them should be above zero once the rules are configured."""
    fired = _by_label(triggers, "omnistream_triggers_fired_total", "kind")
    held = _by_label(triggers, "omnistream_triggers_suppressed_total", "reason")
    visits = sum(
        int(value)
        for labels, value in (triggers or {}).get("omnistream_store_tasks_total", [])
        if labels.get("kind") == "customer_visit" and labels.get("status") == "open"
    )
    print(
        f"customer rules: lapsed coupons={fired.get('lapsed', 0):,}  "
        f"repurchase coupons={fired.get('repurchase', 0):,}  "
        f"customer_visit tasks={visits:,}  "
        f"held back no_consent={held.get('no_consent', 0):,} no_stock={held.get('no_stock', 0):,}"
    )


def _print_sample_profile(config: Config) -> None:
    """One generated customer's profile as ``omni:profile:<customer_id>`` holds it (the
    first of the most loyal profiles Redis lists): what CRM reads. PII never reaches it:
    the customer id is a OneID, identifiers are hashed before identity_stitch stores them."""
    client = connect(config)
    try:
        keys = [
            k.decode() for k in client.scan_iter(f"{config.redis.key_prefix}profile:*", count=500)
        ]
        keys = sorted(keys)[:2000]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        best: tuple[int, str, dict[str, str]] | None = None
        for key, raw in zip(keys, pipe.execute(), strict=True):
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            purchases = int(fields.get("purchases", "0") or 0)
            if best is None or purchases > best[0]:
                best = (purchases, key, fields)
    except redis.RedisError as exc:
        print(f"sample profile: cannot read the profiles from Redis: {exc}")
        return
    finally:
        client.close()
    if best is None:
        print("sample profile: no profile in Redis")
        return
    _, key, fields = best
    print(f"sample profile {key}:")
    for name, value in fields.items():
        print(f"  {name:<18} {value}")


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
    flows: list[FlowProcess],
    produced: dict[str, int],
    elapsed_s: float,
    watch: TriggerWatch,
    service: ServiceProcess | None,
    config: Config,
    prometheus: DemoPrometheus | None = None,
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
    for figure in ("on_hand", "reserved", "available", "available_to_sell", "in_transit"):
        units = int(total(stock, "omnistream_stock_units", figure=figure))
        print(f"units {figure}: {units:,}")
    _print_fulfilment(stock)
    created = int(total(identity, "omnistream_identity_customers_created_total"))
    merges = int(total(identity, "omnistream_identity_merges_total"))
    base = int(total(identity, "omnistream_identity_customers"))
    print(f"customers: {base:,} (created {created:,}, merged {merges:,})")
    segments = {
        labels["segment"]: int(value)
        for labels, value in (samples.get("rule_triggers") or {}).get("omnistream_customers", [])
    }
    print("profiles by segment: " + "  ".join(f"{s}={n:,}" for s, n in segments.items()))
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
    _print_customers(samples.get("rule_triggers"))
    _print_sample_profile(config)
    for f in flows:
        print(
            f"metrics of {f.name}: http://127.0.0.1:{f.port}/metrics "
            "(while the demo runs; use --keep)"
        )
    print(
        f"live view of the flows: OMNI_METRICS_PORT={flows[0].port} omnistream top "
        "(while the demo runs; use --keep)"
    )
    if service is not None:
        _print_console(config, service)
    else:
        print("store console and HTTP service: run the demo with --keep")
    if prometheus is not None:
        print(
            f"Prometheus: {prometheus.url} (targets {prometheus.url}/targets, alerts "
            f"{prometheus.url}/alerts; scraping the demo every 5 s)"
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
    """Every flow of the demo as ``omnistream run``, flow N of FLOW_ORDER serving its
    metrics on the first of a block of free ports plus N (what ``omnistream top`` reads)."""
    flows = []
    first_port = free_port_block(len(FLOW_ORDER))
    for n, name in enumerate(FLOW_ORDER):
        inputs, port = DEMO_FLOWS[name], first_port + n
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


#: Rounds of answering the triggers of the stream's end (an answer may lead to a trigger).
RESPONSE_ROUNDS = 4


class _Pump:
    """Produces the shoppers' purchases every half second while the stream is produced."""

    def __init__(self, shoppers: Shoppers) -> None:
        self.shoppers = shoppers
        self.produced: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-purchases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.produced += self.shoppers.produce_due()

    def stop(self) -> Counter[str]:
        """Stop, and the messages produced per input topic."""
        self._stop.set()
        self._thread.join(timeout=30)
        return self.produced


def _print_response(shoppers: Shoppers) -> None:
    model = shoppers.model
    truth = ", ".join(f"{v} {u:+.0%}" for v, u in model.uplift.items())
    made = sum(n for k, n in shoppers.outcome.items() if k != "no_identifier")
    print(
        f"shoppers answering {len(shoppers.answered):,} triggers: {made:,} purchases "
        f"(control buys with {model.base_rate:.0%}; true uplift: {truth}; "
        f"{model.redeem_share:.0%} of coupon buyers redeem the code at a till)"
    )
    if shoppers.outcome["no_identifier"]:
        print(f"  {shoppers.outcome['no_identifier']:,} purchases skipped: no identifier known")


def export_lines(
    demo_config: Config, flows: list[FlowProcess], *, generated_key: bool
) -> list[str]:
    """The shell lines that point another shell's ``omnistream`` at the kept stack: the
    settings the demo changed from the configuration it was given (broker, topic prefix and
    partitions, Redis), the PII key when the demo made it up (without it ``whois`` of a phone
    hashes differently; a key the user gave is not printed), and ``OMNI_METRICS_PORT`` = the
    first flow's metrics port, from which ``omnistream top`` finds all four."""
    values = {
        "OMNI_KAFKA_BOOTSTRAP": demo_config.kafka.bootstrap,
        "OMNI_TOPIC_PREFIX": demo_config.kafka.topic_prefix,
        "OMNI_KAFKA_PARTITIONS": str(demo_config.kafka.partitions),
        "OMNI_REDIS_URL": demo_config.redis.url,
    }
    if generated_key:
        values["OMNI_PII_KEY"] = demo_config.pii.key
    values["OMNI_METRICS_PORT"] = str(flows[0].port)
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


def _print_kept(
    demo_config: Config,
    flows: list[FlowProcess],
    args: argparse.Namespace,
    *,
    sku: str,
    generated_key: bool,
) -> None:
    print("\n== Kept running until Ctrl-C or SIGTERM; in another shell: ==")
    for line in export_lines(demo_config, flows, generated_key=generated_key):
        print(line)
    if not generated_key:
        print("# and the OMNI_PII_KEY the demo was started with")
    config_path = getattr(args, "config", None)
    config_option = f" --config {shlex.quote(str(config_path))}" if config_path else ""
    print(
        f"# then: omnistream stock {sku}{config_option} · omnistream whois <type> <value> · "
        "omnistream top (the four flows) · omnistream serve --port <free port>",
        flush=True,
    )


def _keep_running(flows: list[FlowProcess]) -> None:
    """Until Ctrl-C or SIGTERM (the command line turns it into KeyboardInterrupt), or a flow
    exits; the stop by request is the normal end of a kept demo."""
    print("running; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while all(f.process.poll() is None for f in flows):
            time.sleep(1)
    except KeyboardInterrupt:
        print("omnistream demo: stopping", file=sys.stderr, flush=True)


def run_demo(config: Config, args: argparse.Namespace) -> int:
    reference = load_reference(config)
    if args.prometheus:
        try:
            find_prometheus()
        except PrometheusUnavailable as exc:
            print(f"omnistream demo: {exc}", file=sys.stderr)
            return 2
    generated_key = not config.pii.key
    if generated_key:
        print(
            "omnistream demo: OMNI_PII_KEY is not set; using a random development key "
            "(hashes of phones and e-mails will not match any other run)",
            file=sys.stderr,
        )
        config = config.with_overrides(pii={"key": secrets.token_hex(16)})
    logs: list[IO[bytes]] = []
    flows: list[FlowProcess] = []
    failed: list[FlowProcess] = []
    service: ServiceProcess | None = None
    prometheus: DemoPrometheus | None = None
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
            if args.keep:
                service = _start_service(demo_config, workdir, logs)
            if args.prometheus:
                scraped = {f.name: f.port for f in flows}
                if service is not None:
                    scraped["serve"] = service.port
                prometheus = start_prometheus(workdir, scraped, logs)
                print(f"Prometheus {prometheus.url}", file=sys.stderr)
            started = time.monotonic()
            model = TrafficModel(reference, seed=args.seed, bad_ratio=args.bad_ratio)
            watch = TriggerWatch(demo_config)
            watch.start()
            response = ResponseModel(uplift=args.uplift, seed=args.seed)
            shoppers = Shoppers(demo_config, reference=reference, model=response)
            shoppers.start()
            pump = _Pump(shoppers)
            pump.start()
            stats = produce(
                demo_config,
                watch.stamp(model.events(args.events)),
                rate=args.rate or None,
                progress=True,
            )
            produced = Counter(stats.produced) + pump.stop()
            for _ in range(RESPONSE_ROUNDS):
                _wait_until_consumed(flows, dict(produced), timeout_s=300)
                time.sleep(1.5)  # let the last epoch flush its Redis and Kafka writes
                answers = shoppers.produce_due()  # to the triggers of the stream's end
                if not answers:
                    break
                produced += answers
            shoppers.stop()
            watch.stop()
            _print_summary(
                flows,
                produced,
                time.monotonic() - started,
                watch,
                service,
                demo_config,
                prometheus,
            )
            print("\n== Experiments (omnistream experiments report) ==")
            _print_response(shoppers)
            run_report(demo_config, as_json_output=False)
            print("\n== Attribution (omnistream attribution report) ==")
            report(demo_config)
            if args.keep:
                sku = min(reference.products, default="<sku>")
                _print_kept(demo_config, flows, args, sku=sku, generated_key=generated_key)
                _keep_running(flows)
        finally:
            if prometheus is not None and prometheus.stop() not in (0, -2, -15):
                print(prometheus.log_path.read_text(errors="replace")[-2000:], file=sys.stderr)
            if service is not None and stop_process(service.process) not in (0, -2, -15, 130):
                print(service.log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
                print(
                    f"omnistream demo: omnistream serve exited with code "
                    f"{service.process.returncode}",
                    file=sys.stderr,
                )
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
