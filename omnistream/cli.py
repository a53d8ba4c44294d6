"""The ``omnistream`` command (CONTRACT §7).

Every subcommand reads one configuration (``--config`` or ``OMNI_CONFIG``, plus ``OMNI_*``
overrides), validated before anything starts; those that need the broker or Redis check that
they answer first. ``--config`` and ``-v`` are taken before or after the subcommand. Exit
codes: 0 success (also a flow stopped by SIGTERM or Ctrl-C), 1 runtime failure (an
unreachable broker or Redis: one line, never a traceback), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from base.config import Config, ConfigError, load_config, unknown_variables
from domain.reference import ReferenceDataError
from domain.rules import RulesError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


_CONFIG_HELP = (
    "YAML configuration file (default: $OMNI_CONFIG, else built-in defaults); every key can "
    "be overridden with OMNI_<SECTION>_<KEY>"
)
_VERBOSE_HELP = "log at debug level"


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``-v`` on a subcommand, as on ``omnistream`` itself.

    Their default is ``SUPPRESS``: argparse copies a subcommand's namespace over the top
    level's, so a default here would overwrite ``omnistream --config x.yaml stock SKU``'s
    value with None; suppressed, only an option given after the subcommand lands."""
    parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=_CONFIG_HELP)
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP
    )


class _Parser(argparse.ArgumentParser):
    """argparse with a bad argument reported in one line (exit 2) instead of the usage block
    and the error: ``omnistream serve: argument --port: expected a port 1..65535, got
    '99999' (omnistream serve --help)``. Subcommands inherit the class."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} ({self.prog} --help)\n")


def _version() -> str:
    """The installed package's version (its metadata), or "unknown" from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("omnistream")
    except PackageNotFoundError:
        return "unknown"


def _cmd_run(config: Config, args: argparse.Namespace) -> int:
    from omnistream.runner import run_flow

    run_flow(_with_cluster_options(config, args), args.flow, until_idle=args.until_idle)
    return EXIT_OK


def _with_cluster_options(config: Config, args: argparse.Namespace) -> Config:
    """``--process-id``/``--addresses`` over ``flow.process_id``/``flow.addresses``, checked
    together with the rest of the configuration (an id out of the addresses' range is a
    configuration error naming both)."""
    flow: dict[str, object] = {}
    origins: dict[str, str] = {}
    if args.process_id is not None:
        flow["process_id"], origins["flow.process_id"] = args.process_id, "option --process-id"
    if args.addresses is not None:
        flow["addresses"], origins["flow.addresses"] = args.addresses, "option --addresses"
    return config.with_overrides(origins, flow=flow) if flow else config


def _process_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a process id 0, 1, 2 …, got {text!r}")
    return int(text)


def _addresses(text: str) -> str:
    from base.config import parse_addresses

    try:
        parse_addresses(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (every process, comma-separated)") from None
    return text


def _needs(config: Config, *, kafka: bool = False, redis: bool = False) -> None:
    """Fail in seconds, with one line, when the broker or Redis a command needs is not there
    (``omnistream.preflight``), instead of hanging on the first call."""
    from omnistream.preflight import check

    check(config, kafka=kafka, redis=redis)


def _cmd_stock(config: Config, args: argparse.Namespace) -> int:
    from connectors.reference_files import load_reference
    from omnistream.stock_report import print_stock

    _needs(config, redis=True)
    return print_stock(config, load_reference(config), args.sku, as_json=args.json)


def _cmd_generate(config: Config, args: argparse.Namespace) -> int:
    from omnistream.generate_cli import run_generate

    _needs(config, kafka=True)
    if not args.verbose:
        # A broker lost mid-run is said by the summary line (NOT DELIVERED) and the exit
        # code; librdkafka's reconnect lines (warnings) are for -v only.
        logging.getLogger("librdkafka").setLevel(logging.ERROR)
    return run_generate(config, args)


def _cmd_whois(config: Config, args: argparse.Namespace) -> int:
    from omnistream.identity_cli import whois

    _needs(config, redis=True)
    return whois(config, args.type, args.value, as_json=args.json)


def _cmd_forget(config: Config, args: argparse.Namespace) -> int:
    from omnistream.identity_cli import forget

    _needs(config, kafka=True, redis=True)
    return forget(config, args.type, args.value)


def _cmd_grafana_push(config: Config, args: argparse.Namespace) -> int:
    from omnistream.dashboards import push_boards

    return push_boards(args.url, args.token, args.folder_uid)


def _cmd_rules_check(config: Config, args: argparse.Namespace) -> int:
    from omnistream.rules_cli import check_rules

    return check_rules(args.file)


def _cmd_rules_backtest(config: Config, args: argparse.Namespace) -> int:
    from omnistream.backtest import run_backtest

    if args.topic:
        _needs(config, kafka=True)
    return run_backtest(config, args.file, args.events, args.topic, args.triggers, args.stock)


def _cmd_attribution_report(config: Config, args: argparse.Namespace) -> int:
    from omnistream.attribution_report import report

    _needs(config, redis=True)
    return report(config, as_json=args.json)


def _cmd_experiments_report(config: Config, args: argparse.Namespace) -> int:
    from omnistream.experiments_report import run_report

    _needs(config, redis=True)
    return run_report(config, args.json)


def _cmd_bench(config: Config, args: argparse.Namespace) -> int:
    from omnistream.bench import run_bench

    return run_bench(config, args)


def _cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from connectors.reference_files import load_reference
    from omnistream.serve import run

    reference = load_reference(config)
    _needs(config, redis=True)
    host = args.host if args.host is not None else config.service.host
    port = args.port if args.port is not None else config.service.port
    try:
        run(config, reference, host, port)
    except OSError as exc:  # the port is taken or the address is not this host's
        print(f"omnistream serve: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {text!r}")
    return port


def _cmd_top(config: Config, args: argparse.Namespace) -> int:
    from omnistream.top import run_top

    return int(run_top(config, args))


def _cmd_topics_create(config: Config, args: argparse.Namespace) -> int:
    from omnistream.topics_cli import create_topics

    _needs(config, kafka=True)
    return create_topics(config)


def _cmd_topics_list(config: Config, args: argparse.Namespace) -> int:
    from omnistream.topics_cli import list_topics

    _needs(config, kafka=True)
    return list_topics(config)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0, got {text!r}"
        ) from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _cmd_demo(config: Config, args: argparse.Namespace) -> int:
    from omnistream.demo import run_demo

    return run_demo(config, args)


def build_parser() -> argparse.ArgumentParser:
    from omnistream.cli_args import FLOW_ORDER, add_demo_arguments
    from omnistream.generate_cli import add_generate_arguments

    parser = _Parser(
        prog="omnistream",
        description="Real-time omnichannel retail engine: one stock pool across warehouses, "
        "stores and online orders, and one customer id across devices, accounts, loyalty "
        "cards and orders, fed from Kafka, served from Redis.",
    )
    parser.add_argument("--version", action="version", version=f"omnistream {_version()}")
    parser.add_argument("--config", metavar="PATH", help=_CONFIG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the whole system on an embedded broker and Redis with generated traffic",
        description="Start an embedded Kafka-compatible broker (Tansu) and redis-server on free "
        "loopback ports, run the four flows (stock_pool, identity_stitch, rule_triggers, "
        "attribution) as their own processes, feed them generated traffic (--events, --rate, "
        "--seed, --bad-ratio; --uplift sets the experiments' true uplift), then print a "
        "summary (stock, sourcing, store tasks, customers, triggers, attribution, "
        "experiments). --prometheus also starts the Debian Prometheus, scraping the flows' "
        "/metrics with the project's alert rules, and prints its URL. --keep also runs the "
        "HTTP service and keeps everything running after the summary, printing the "
        "`export OMNI_…` lines with which `stock`, `whois`, `serve` and `top` work against it "
        "from another shell, until Ctrl-C or SIGTERM. "
        "Ctrl-C stops everything cleanly.",
    )
    _add_config_argument(demo)
    add_demo_arguments(demo)
    demo.set_defaults(handler=_cmd_demo)

    run = sub.add_parser(
        "run",
        help="run one flow (or one process of its cluster) on the configured broker and Redis",
        description="Run one flow until stopped (Ctrl-C / SIGTERM), or with --until-idle until "
        "every partition of its input topics is drained, with flow.workers worker threads. "
        "Metrics are served on http://HOST:<metrics.port>/metrics. With --addresses the "
        "process is one of a Bytewax cluster: start one process per address, each with the "
        "same addresses and its own --process-id; they wait up to flow.cluster_wait_seconds "
        "for each other. Each process serves its own metrics, on metrics.port plus the "
        "number of processes before it in --addresses with the same host (processes on "
        "hosts of their own all use metrics.port; 127.0.0.1:7001,127.0.0.1:7002 serve on "
        "metrics.port and metrics.port + 1), and process N keeps its recovery snapshots in "
        "<recovery.dir>/process-N. A cluster cannot go on without one "
        "of its processes: when one ends, the others end too (exit 1, or 0 for a process "
        "stopped by signal); start them all again and they resume from their snapshots.",
    )
    run.add_argument("flow", choices=sorted(FLOW_ORDER), help="the flow to run")
    run.add_argument(
        "--until-idle",
        action="store_true",
        help="stop (exit 0) once all input partitions are read to their end",
    )
    run.add_argument(
        "--process-id",
        type=_process_id,
        metavar="N",
        help="this process's position in --addresses, from 0 (default: flow.process_id, "
        "$OMNI_FLOW_PROCESS_ID, 0)",
    )
    run.add_argument(
        "--addresses",
        type=_addresses,
        metavar="HOST:PORT,…",
        help="every process of the flow's cluster, the same list for each "
        "(default: flow.addresses, $OMNI_FLOW_ADDRESSES; none: one process)",
    )
    _add_config_argument(run)
    run.set_defaults(handler=_cmd_run)

    generate = sub.add_parser(
        "generate",
        help="produce synthetic, reproducible traffic into the input topics",
        description="Produce seeded synthetic traffic (browsing, orders, till sales, returns, "
        "warehouse movements) into clickstream, pos.sales and wms.movements.",
    )
    _add_config_argument(generate)
    add_generate_arguments(generate)
    generate.set_defaults(handler=_cmd_generate)

    stock = sub.add_parser(
        "stock",
        help="print the stock of one sku per location, region and in total (from Redis)",
        description="Read the stock pool of one sku from Redis and print on hand, reserved, "
        "available, units sold in the last 1 h / 24 h and days of cover per location, then the "
        "region and network totals.",
    )
    stock.add_argument("sku", help="the sku to show")
    stock.add_argument(
        "--json",
        action="store_true",
        help="print the figures as one JSON object (README: Commands, JSON output)",
    )
    _add_config_argument(stock)
    stock.set_defaults(handler=_cmd_stock)

    identifier_types = ["user", "member", "phone", "email", "order", "anon"]
    whois = sub.add_parser(
        "whois",
        help="print the customer owning an identifier and all its identifiers",
        description="Look up the customer (OneID) that owns an identifier in Redis and print "
        "all its identifiers; phone and e-mail are shown as their keyed hashes. A raw phone or "
        "e-mail given here is normalised and hashed with OMNI_PII_KEY first. Exit 1 when no "
        "customer owns it.",
    )
    whois.add_argument("type", choices=identifier_types, help="identifier type")
    whois.add_argument("value", help="identifier value (raw or hashed for phone/email)")
    whois.add_argument(
        "--json",
        action="store_true",
        help="print the customer as one JSON object (README: Commands, JSON output)",
    )
    _add_config_argument(whois)
    whois.set_defaults(handler=_cmd_whois)

    forget = sub.add_parser(
        "forget",
        help="erase the customer owning an identifier (right to be forgotten)",
        description="Delete every identifier key and the internal record of the customer "
        "owning this identifier, and publish an `erased` event on identity.changes. A later "
        "event from one of those identifiers starts a new customer.",
    )
    forget.add_argument("type", choices=identifier_types, help="identifier type")
    forget.add_argument("value", help="identifier value (raw or hashed for phone/email)")
    _add_config_argument(forget)
    forget.set_defaults(handler=_cmd_forget)

    rules = sub.add_parser(
        "rules",
        help="rule_triggers rules files",
        description="Work with rules files of the rule_triggers flow.",
    )
    _add_config_argument(rules)
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_sub.add_parser(
        "check",
        help="validate a rules file",
        description="Validate a rules file and list its rules; every problem is reported "
        "with the rule (id and position), the key and what was expected. Exit 1 when the "
        "file is invalid.",
    )
    check.add_argument("file", help="the rules file (YAML)")
    _add_config_argument(check)
    check.set_defaults(handler=_cmd_rules_check)
    backtest = rules_sub.add_parser(
        "backtest",
        help="replay recorded events through a rules file, offline",
        description="Replay recorded events (events.resolved records, stock.changes "
        "CloudEvents and wms.movements events) through a rules file, the way "
        "`run rule_triggers --until-idle` replays them, and print what would fire per rule and "
        "variant, what cooldowns, the frequency cap and control groups would hold back, and "
        "what would convert. Nothing is written to a live topic or to Redis; the stock a rule "
        "looks up is the recorded stock (--stock).",
    )
    backtest.add_argument("file", help="the rules file to test (YAML)")
    source = backtest.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--events", type=Path, metavar="FILE", help="a JSON-lines file of recorded events"
    )
    source.add_argument(
        "--topic",
        action="store_true",
        help="read events.resolved, stock.changes and wms.movements of the configured broker "
        "from their beginning to their current end",
    )
    backtest.add_argument(
        "--triggers",
        type=Path,
        metavar="FILE",
        help="also write every would-be trigger (JSON lines, with the topic it would go to)",
    )
    backtest.add_argument(
        "--stock",
        choices=("recorded", "end"),
        default="recorded",
        help="the stock rules look up: as recorded at the moment of the lookup (default), or "
        "at the end of the recording, as a replay behind a caught-up stock_pool reads it",
    )
    _add_config_argument(backtest)
    backtest.set_defaults(handler=_cmd_rules_backtest)

    serve = sub.add_parser(
        "serve",
        help="serve availability, stock and customer look-ups and the store console over HTTP",
        description="Answer HTTP requests from the Redis the stock_pool and identity_stitch "
        "flows keep (it reads Redis and writes nothing): GET /v1/availability?sku=&qty=[&lat=&"
        "lon=][&region=][&mode=pickup|delivery] (the locations that can give qty units, nearest "
        "or own region first), /v1/stock/{sku}, /v1/customers/{type}/{value} (a raw phone or "
        "e-mail is hashed with OMNI_PII_KEY first), the store console /stores/{store_id} "
        "(open pickups, exceptions and visiting customers, updated live), /healthz, /readyz "
        "(Redis answers), /metrics, and the API's OpenAPI page at /docs. Bad parameters answer "
        "400 naming the parameter; Redis unreachable 503. Stops on Ctrl-C / SIGTERM.",
    )
    serve.add_argument("--host", help="address to listen on (default: service.host, 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: service.port, 8080)")
    _add_config_argument(serve)
    serve.set_defaults(handler=_cmd_serve)

    bench = sub.add_parser(
        "bench",
        help="measure throughput, trigger latency and memory against references",
        description="Start an embedded broker and Redis and measure: a raw confluent-kafka "
        "consumer and a plain Bytewax pipeline over a generated stream (the references), each "
        "flow's events/s on the same stream with its inputs preloaded (and the ratio to the "
        "reference, run again after each flow and averaged over the runs around it) and peak "
        "memory, then trigger latency and stock freshness with all flows "
        "live at a steady offered rate. Prints a table; --json writes the figures.",
    )
    from omnistream.cli_args import add_bench_arguments

    add_bench_arguments(bench)
    _add_config_argument(bench)
    bench.set_defaults(handler=_cmd_bench)

    attribution_report = _report_command(
        sub,
        "attribution",
        "attribution totals",
        "Work with the totals of the attribution flow.",
        "print attributed revenue and conversions per model and channel",
        "Print, per model (first_touch, last_touch, linear, time_decay, "
        "position_based, markov), the revenue and conversions credited to each channel, from "
        "the running totals the attribution flow keeps in Redis.",
    )
    attribution_report.add_argument(
        "--json",
        action="store_true",
        help="print the totals as one JSON object (README: Commands, JSON output)",
    )
    attribution_report.set_defaults(handler=_cmd_attribution_report)

    experiments_report = _report_command(
        sub,
        "experiments",
        "read the rules' A/B experiments",
        "Read the experiments of the rules file (CONTRACT §12).",
        "per rule × variant: conversions and uplift against control with a 95%% CI",
        "Print, per rule × variant, the customers assigned, triggers sent or held "
        "out, customers converted, conversion rate, revenue per customer, and the uplift "
        "against the rule's control with a 95 % Wald interval and p-value (or 'too small'), "
        "from what rule_triggers keeps in Redis.",
    )
    experiments_report.add_argument(
        "--json", action="store_true", help="print the figures as JSON (CONTRACT §12)"
    )
    experiments_report.set_defaults(handler=_cmd_experiments_report)

    grafana = sub.add_parser(
        "grafana",
        help="Grafana boards",
        description="Work with the Grafana boards of grafana/dashboards.",
    )
    _add_config_argument(grafana)
    grafana_sub = grafana.add_subparsers(dest="grafana_command", required=True, metavar="ACTION")
    push = grafana_sub.add_parser(
        "push",
        help="upload the boards to a Grafana server",
        description="Create or overwrite the project's boards (grafana/dashboards) on a "
        "Grafana server through Grafana's HTTP API. Each board has a `$datasource` variable: "
        "pick the Prometheus datasource that scrapes the flows on the board.",
    )
    push.add_argument("--url", required=True, help="Grafana base URL, e.g. http://127.0.0.1:3000")
    push.add_argument("--token", required=True, help="service-account token with editor rights")
    push.add_argument("--folder-uid", help="folder to put the boards in (default: General)")
    _add_config_argument(push)
    push.set_defaults(handler=_cmd_grafana_push)

    top = sub.add_parser(
        "top",
        help="live terminal view of every flow from its /metrics: events/s, lag, dead "
        "letters, triggers, stock alerts",
        description="Live terminal view of every flow from its /metrics: events/s, lag, dead "
        "letters, triggers, stock alerts, refreshed in place until Ctrl-C.",
    )
    top.add_argument(
        "--interval",
        type=_interval,
        default=2.0,
        metavar="SECONDS",
        help="seconds between two refreshes (default %(default)s)",
    )
    top.add_argument("--once", action="store_true", help="print one view and exit")
    top.add_argument(
        "--targets",
        metavar="URL,…",
        help="the flows' /metrics URLs, comma-separated (default: the flows on metrics.host "
        "from metrics.port)",
    )
    _add_config_argument(top)
    top.set_defaults(handler=_cmd_top)

    doctor = sub.add_parser(
        "doctor",
        help="check configuration, PII key, broker, topics, Redis and rules, one line each",
        description="Check what the flows need, one line each (ok, warn or FAIL): the "
        "configuration loads, the PII key is set, the broker answers, every input and output "
        "topic exists with kafka.partitions partitions, Redis answers (and its version), and "
        "the reference data and rules file are valid. Exit 1 when a check fails (a warning "
        "does not fail).",
    )
    _add_config_argument(doctor)

    topics = sub.add_parser(
        "topics",
        help="create or list the project's topics on the configured broker",
        description="For operators running their own Kafka: the project's input and output "
        "topics (with kafka.topic_prefix), with kafka.partitions partitions and "
        "kafka.replication_factor replicas.",
    )
    _add_config_argument(topics)
    topics_sub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = topics_sub.add_parser(
        "create",
        help="create every missing topic",
        description="Create every project topic that does not exist yet, with kafka.partitions "
        "partitions and kafka.replication_factor replicas. Existing topics are reported and "
        "left alone; one with fewer partitions than configured is reported as a mismatch "
        "(exit 1), since Kafka cannot take partitions away and adding some moves keys.",
    )
    _add_config_argument(create)
    create.set_defaults(handler=_cmd_topics_create)
    listing = topics_sub.add_parser(
        "list",
        help="list every project topic with its partitions and replication",
        description="Print every project topic with its partitions and replication factor, "
        "or `missing`.",
    )
    _add_config_argument(listing)
    listing.set_defaults(handler=_cmd_topics_list)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _report_command(
    sub: argparse._SubParsersAction[_Parser],
    group: str,
    group_help: str,
    group_description: str,
    report_help: str,
    description: str,
) -> argparse.ArgumentParser:
    """``omnistream GROUP report``: a command group whose one action prints a report read
    from Redis (it takes ``--config``)."""
    parser = sub.add_parser(group, help=group_help, description=group_description)
    _add_config_argument(parser)
    actions = parser.add_subparsers(dest=f"{group}_command", required=True, metavar="ACTION")
    report: argparse.ArgumentParser = actions.add_parser(
        "report", help=report_help, description=description
    )
    _add_config_argument(report)
    return report


def _service_errors() -> tuple[type[BaseException], ...]:
    """Errors of Redis or the broker that no command handles itself (the connection went
    away after the start-up check, a server answering something else than Redis)."""
    import redis
    from confluent_kafka import KafkaException

    return (redis.RedisError, KafkaException)


def _service_error_line(exc: BaseException) -> str:
    import redis

    if isinstance(exc, redis.RedisError):
        lost = isinstance(exc, redis.ConnectionError | redis.TimeoutError)
        return f"Redis failed ({type(exc).__name__}: {exc}); check redis.url / OMNI_REDIS_URL" + (
            " and that Redis is up" if lost else " (its user's ACL rules)"
        )
    return (
        f"Kafka failed ({exc}); check kafka.bootstrap / OMNI_KAFKA_BOOTSTRAP and that the "
        "broker is up"
    )


def main(argv: Sequence[str] | None = None) -> int:
    # A stop by signal unwinds through Bytewax's Rust core, which prints a backtrace unless
    # told otherwise (it must be set before Bytewax is imported); RUST_BACKTRACE=1 brings it
    # back for debugging.
    os.environ.setdefault("RUST_BACKTRACE", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # SIGTERM (kill, docker stop, CI timeouts) unwinds like Ctrl-C, so embedded services,
    # child flows and temporary directories are cleaned up either way.
    signal.signal(signal.SIGTERM, _terminate)
    # A process started in the background of a non-interactive shell inherits SIGINT as
    # ignored; restore Ctrl-C so it always stops the command.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from omnistream.preflight import Unreachable

    # Once per process, before anything else is said: a mistyped name would otherwise be
    # ignored without a word (the flows a demo starts inherit the demo's environment).
    for warning in unknown_variables(os.environ):
        print(f"omnistream: warning: {warning}", file=sys.stderr)
    try:
        if args.command == "doctor":  # it reports a configuration error as a check of its own
            from omnistream.doctor import run_doctor

            code = run_doctor(args.config)
        else:
            code = int(args.handler(load_config(args.config), args))
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except Unreachable as exc:
        # One line, no traceback: what could not be reached, why, and the setting to check.
        print(f"omnistream: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except _service_errors() as exc:
        # Redis or the broker lost after the start-up check answered: still one line.
        print(f"omnistream: {_service_error_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except (ConfigError, ReferenceDataError) as exc:
        print(f"omnistream: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RulesError as exc:
        for problem in exc.problems:
            print(f"omnistream: rules file error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("omnistream: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``omnistream stock SKU | head``): nothing to say, no
        # traceback; stdout points at /dev/null so the interpreter's final flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
