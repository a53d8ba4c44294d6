"""``omnistream top``: every flow's figures from its own /metrics, redrawn in place.

Grafana needs Docker and a Prometheus; an operator on a flow's host (or a demo user) still
wants to see at a glance that each flow reads its inputs, keeps up with them and what it
produces. ``top`` reads only what the flows already serve on /metrics — nothing in Kafka or
Redis — so it works on any host that reaches the metrics ports, and a flow that does not
answer is a row that says ``down``, not a traceback.

The figures are the flows' own metrics (docs/metrics.md): events read
(``omnistream_events_consumed_total``; per second between two scrapes), consumer lag
(``omnistream_consumer_lag_messages``: the sum and the partition furthest behind), dead
letters by reason, coupon triggers fired by rule kind and held back by reason, and the stock
alerts (stockouts and positions under their reorder point from stock_pool, stock triggers
by kind from rule_triggers). Turning scraped text into a frame is pure
(:func:`build_frame`), so it is tested on real /metrics text without a terminal.

Targets: ``--targets URL,…``, or from the configuration — the flows of one host in the
demo's layout: ``stock_pool``, ``identity_stitch``, ``rule_triggers``, ``attribution`` on
``metrics.port``, ``+1``, ``+2``, ``+3`` of ``metrics.host`` (``omnistream demo --keep``
exports ``OMNI_METRICS_PORT`` so; compose publishes the flows on 127.0.0.1:3031…3034 in the
same order).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from base.config import Config, ConfigError
from omnistream.cli_args import FLOW_ORDER
from omnistream.processes import Samples, samples_of

EXIT_OK, EXIT_USAGE = 0, 2

#: Kinds of ``omnistream_triggers_fired_total`` that are stock triggers
#: (``triggers.replenishment``), shown with the stock alerts; every other kind is a coupon
#: rule's kind.
STOCK_TRIGGER_KINDS = frozenset({"replenish", "transfer", "stockout", "prepare"})

#: Addresses meaning "every interface" (a flow listening there answers on loopback).
_ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - compared, not bound

#: Metrics that carry a ``flow`` label: where a process says which flow it is.
_FLOW_LABELLED = (
    "omnistream_events_consumed_total",
    "omnistream_consumer_lag_messages",
    "omnistream_deadletters_total",
)


@dataclass(frozen=True)
class Target:
    """A /metrics URL to scrape, and the flow expected there (None: learn it from the
    metrics' ``flow`` label, else show the address)."""

    url: str
    flow: str | None = None

    @property
    def address(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc


@dataclass(frozen=True)
class Reading:
    """One scrape of a target: when the reply was complete (monotonic seconds) and its
    samples, or why there are none."""

    at: float
    samples: Samples | None
    error: str | None = None


@dataclass(frozen=True)
class FlowRow:
    """One flow's line of a frame. ``down`` says why the flow did not answer (None: it
    did); rates are None until two scrapes of the flow answered."""

    flow: str
    url: str
    down: str | None = None
    consumed: int = 0
    events_per_s: float | None = None
    #: Messages of its input partitions not yet read; None before its first fetch.
    lag: int | None = None
    #: The partition furthest behind as ``topic/partition`` and its lag.
    lag_max: tuple[str, int] | None = None
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    #: Coupon triggers sent, by rule kind.
    fired: Mapping[str, int] = field(default_factory=dict)
    #: Rule matches not sent, by reason (cooldown, cap, control, no_consent, no_stock, …).
    held: Mapping[str, int] = field(default_factory=dict)
    #: stockouts and low_stock positions (stock_pool), stock triggers by kind (rule_triggers).
    stock: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    """Everything one redraw shows."""

    number: int
    taken_at: str
    interval_s: float
    rows: tuple[FlowRow, ...]


# -- targets ---------------------------------------------------------------------------------


def flow_targets(config: Config) -> list[Target]:
    """The four flows of one host in the demo's layout: flow N of FLOW_ORDER on
    ``metrics.port + N`` of ``metrics.host`` (all interfaces are read on loopback)."""
    last = config.metrics.port + len(FLOW_ORDER) - 1
    if last > 65535:
        raise ConfigError(
            f"{config.source}: key `metrics.port`: expected a port ≤ {65536 - len(FLOW_ORDER)} "
            f"(omnistream top reads the flows on metrics.port … metrics.port + "
            f"{len(FLOW_ORDER) - 1}), got {config.metrics.port!r}"
        )
    host = config.metrics.host
    host = "127.0.0.1" if host in _ALL_INTERFACES else host
    host = f"[{host}]" if ":" in host else host
    return [
        Target(f"http://{host}:{config.metrics.port + n}/metrics", name)
        for n, name in enumerate(FLOW_ORDER)
    ]


def parse_targets(value: str | Sequence[str]) -> list[Target]:
    """``--targets``: comma-separated ``http://HOST:PORT[/PATH]`` URLs (no path:
    ``/metrics``). ValueError naming the first bad one."""
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    targets: list[Target] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        url = urllib.parse.urlsplit(part)
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme not in ("http", "https") or not url.hostname or port is None:
            raise ValueError(
                f"--targets: expected comma-separated http://HOST:PORT/metrics URLs, got {part!r}"
            )
        path = url.path or "/metrics"
        targets.append(Target(urllib.parse.urlunsplit(url._replace(path=path))))
    if not targets:
        raise ValueError("--targets: expected at least one http://HOST:PORT/metrics URL")
    return targets


# -- scraping --------------------------------------------------------------------------------


def read_text(text: str, at: float) -> Reading:
    """A reading from a reply's text; text that is not Prometheus' format is an error."""
    try:
        return Reading(at, samples_of(text))
    except ValueError as exc:
        return Reading(at, None, f"not Prometheus metrics ({exc})")


def fetch(target: Target, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> Reading:
    """Scrape one target; every way of not answering is a reading with its reason."""
    try:
        with urllib.request.urlopen(target.url, timeout=timeout_s) as reply:  # noqa: S310
            text = reply.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return Reading(clock(), None, f"HTTP {exc.code}")
    except urllib.error.URLError as exc:
        return Reading(clock(), None, _reason(exc.reason, timeout_s))
    except (http.client.HTTPException, OSError) as exc:
        return Reading(clock(), None, _reason(exc, timeout_s))
    return read_text(text, clock())


def _reason(error: object, timeout_s: float) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return f"no answer within {timeout_s:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def fetch_all(
    targets: Sequence[Target], timeout_s: float, clock: Callable[[], float] = time.monotonic
) -> dict[str, Reading]:
    """Scrape every target at once (a flow that hangs costs its own row ``timeout_s``, not
    the others'), by URL. Daemon threads: Ctrl-C never waits for a hanging scrape."""
    found: dict[str, Reading] = {}

    def one(target: Target) -> None:
        found[target.url] = fetch(target, timeout_s, clock)

    threads = [threading.Thread(target=one, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s + 1.0)
    return {
        t.url: found.get(t.url) or Reading(clock(), None, f"no answer within {timeout_s:g} s")
        for t in targets
    }


# -- frames (pure) ---------------------------------------------------------------------------


def _flows_named(samples: Samples) -> set[str]:
    return {
        labels["flow"]
        for name in _FLOW_LABELLED
        for labels, _ in samples.get(name, [])
        if "flow" in labels
    }


def _sum(samples: Samples, name: str, flow: str | None) -> float:
    return sum(
        value
        for labels, value in samples.get(name, [])
        if flow is None or labels.get("flow", flow) == flow
    )


def _by(samples: Samples, name: str, label: str, flow: str | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for labels, value in samples.get(name, []):
        if label in labels and (flow is None or labels.get("flow", flow) == flow):
            counts[labels[label]] = counts.get(labels[label], 0) + int(value)
    return {key: n for key, n in sorted(counts.items()) if n > 0}


def build_row(target: Target, earlier: Reading | None, latest: Reading) -> FlowRow:
    """A flow's row from its latest scrape and the one before (for the rate).

    The flow is the one its metrics name (``flow`` label), else the target's, else its
    address; flow-labelled metrics are counted for that flow only. The rate is the increase
    of the events counter over the time between the two replies; a counter that went down
    (the process restarted) counts from zero, as Prometheus' ``rate`` does."""
    named = _flows_named(latest.samples) if latest.samples is not None else set()
    if earlier is not None and earlier.samples is not None and not named:
        named = _flows_named(earlier.samples)
    if len(named) == 1:
        flow = next(iter(named))
    elif target.flow is not None:
        flow = target.flow
    else:
        flow = "+".join(sorted(named)) or target.address
    if latest.samples is None:
        return FlowRow(flow, target.url, down=latest.error or "no answer")
    samples = latest.samples
    only = flow if flow in named else None
    consumed = _sum(samples, "omnistream_events_consumed_total", only)
    rate = None
    if earlier is not None and earlier.samples is not None and latest.at > earlier.at:
        before = _sum(earlier.samples, "omnistream_events_consumed_total", only)
        increase = consumed - before if consumed >= before else consumed
        rate = increase / (latest.at - earlier.at)
    lags = [
        (f"{labels.get('topic', '?')}/{labels.get('partition', '?')}", int(value))
        for labels, value in samples.get("omnistream_consumer_lag_messages", [])
        if only is None or labels.get("flow") == only
    ]
    lag_max = min(lags, key=lambda p: (-p[1], p[0])) if lags else None
    fired = _by(samples, "omnistream_triggers_fired_total", "kind")
    stock = {
        **{
            name: int(_sum(samples, metric, None))
            for name, metric in (
                ("stockouts", "omnistream_stock_stockouts"),
                ("low_stock", "omnistream_stock_low_positions"),
            )
            if metric in samples
        },
        **{kind: n for kind, n in fired.items() if kind in STOCK_TRIGGER_KINDS},
    }
    return FlowRow(
        flow,
        target.url,
        consumed=int(consumed),
        events_per_s=rate,
        lag=sum(n for _, n in lags) if lags else None,
        lag_max=lag_max,
        dead_letters=_by(samples, "omnistream_deadletters_total", "reason", only),
        fired={kind: n for kind, n in fired.items() if kind not in STOCK_TRIGGER_KINDS},
        held=_by(samples, "omnistream_triggers_suppressed_total", "reason"),
        stock=stock,
    )


def build_frame(
    number: int,
    targets: Sequence[Target],
    earlier: Mapping[str, Reading],
    latest: Mapping[str, Reading],
    *,
    interval_s: float,
    taken_at: str,
) -> Frame:
    """The frame of one scrape round: a row per target, in the targets' order."""
    rows = tuple(build_row(t, earlier.get(t.url), latest[t.url]) for t in targets)
    return Frame(number, taken_at, interval_s, rows)


# -- drawing ---------------------------------------------------------------------------------


def _total(counts: Mapping[str, int]) -> str:
    return f"{sum(counts.values()):,}"


def _breakdown(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in counts.items())


#: The table's columns (a header of two words is drawn on two lines: narrower).
_COLUMNS = (
    "flow",
    "status",
    "events",
    "events/s",
    "lag",
    "max lag\npartition",
    "dead\nletters",
    "triggers\nfired",
    "held\nback",
    "stock-\nouts",
    "low\nstock",
)
#: Columns left out, in this order, while the table is wider than the terminal; what they
#: showed is in the lines under the table (the partition on a line of its own, the others
#: in the breakdowns), so a narrow terminal loses no figure.
_OPTIONAL = ("max lag\npartition", "low\nstock", "stock-\nouts", "held\nback", "triggers\nfired")


def _natural_width(lines: list[list[str]], columns: list[int]) -> int:
    """The table's width with every cell on one line: the widest cell or header word of
    each column, one space either side, and a border between and around them."""
    widths = [
        max([len(line[n]) for line in lines] + [len(word) for word in _COLUMNS[n].split()])
        for n in columns
    ]
    return sum(widths) + 3 * len(columns) + 1


def render(frame: Frame, width: int | None = None) -> Group:
    """The frame as a header line, a table of one line per flow (fitted to ``width``
    columns of terminal), the breakdown by reason and kind of what a flow counted, and a
    line per flow down saying why."""
    up = sum(1 for row in frame.rows if row.down is None)
    header = Text.assemble(
        ("omnistream top", "bold"),
        f"  frame {frame.number}  {frame.taken_at}  every {frame.interval_s:g} s  "
        f"flows up {up}/{len(frame.rows)}  (Ctrl-C to quit)",
    )
    lines: list[list[str]] = []
    for row in frame.rows:
        if row.down is not None:
            lines.append([row.flow, "down", *["–"] * 9])
            continue
        triggers = bool(row.fired or row.held or row.flow == "rule_triggers")
        lines.append(
            [
                row.flow,
                "up",
                f"{row.consumed:,}",
                "…" if row.events_per_s is None else f"{row.events_per_s:,.1f}",
                "–" if row.lag is None else f"{row.lag:,}",
                "–" if row.lag_max is None else f"{row.lag_max[0]} {row.lag_max[1]:,}",
                _total(row.dead_letters),
                _total(row.fired) if triggers else "–",
                _total(row.held) if triggers else "–",
                f"{row.stock['stockouts']:,}" if "stockouts" in row.stock else "–",
                f"{row.stock['low_stock']:,}" if "low_stock" in row.stock else "–",
            ]
        )
    shown = list(range(len(_COLUMNS)))
    for name in _OPTIONAL:
        if width is None or _natural_width(lines, shown) <= width:
            break
        shown.remove(_COLUMNS.index(name))
    table = Table(header_style="bold")
    for n in shown:
        left = n in (0, 1) or _COLUMNS[n] == "max lag\npartition"
        table.add_column(_COLUMNS[n], justify="left" if left else "right", no_wrap=True)
    for line in lines:
        cells: list[str | Text] = [line[n] for n in shown]
        cells[1] = Text(line[1], "green" if line[1] == "up" else "bold red")
        table.add_row(*cells)
    details: list[Text] = []
    partition_shown = _COLUMNS.index("max lag\npartition") in shown
    stock_shown = _COLUMNS.index("stock-\nouts") in shown
    for row in frame.rows:
        if row.down is not None:
            continue
        if row.lag_max is not None and not partition_shown:
            details.append(
                Text.assemble(
                    (f"{row.flow} max lag: ", "bold"), f"{row.lag_max[0]} {row.lag_max[1]:,}"
                )
            )
        stock = {k: n for k, n in row.stock.items() if k in STOCK_TRIGGER_KINDS or not stock_shown}
        for what, counts in (
            ("dead letters", row.dead_letters),
            ("triggers fired", row.fired),
            ("held back", row.held),
            ("stock alerts" if not stock_shown else "stock triggers", stock),
        ):
            if counts:
                details.append(Text.assemble((f"{row.flow} {what}: ", "bold"), _breakdown(counts)))
    notes = [
        Text(f"{row.flow} down: {row.url}: {row.down}", "red")
        for row in frame.rows
        if row.down is not None
    ]
    return Group(header, table, *details, *notes)


# -- the command -----------------------------------------------------------------------------


def frames(
    targets: Sequence[Target],
    interval_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], datetime] = lambda: datetime.now(tz=UTC).astimezone(),
) -> Iterator[Frame]:
    """A frame every ``interval_s`` (the first at once, without rates), forever."""
    timeout_s = max(0.5, min(2.0, interval_s))
    earlier: dict[str, Reading] = {}
    started = clock()
    number = 0
    while True:
        latest = fetch_all(targets, timeout_s, clock)
        number += 1
        yield build_frame(
            number,
            targets,
            earlier,
            latest,
            interval_s=interval_s,
            taken_at=wall().strftime("%H:%M:%S"),
        )
        earlier = latest
        sleep(max(0.0, started + number * interval_s - clock()))


def _console() -> Console:
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=160)  # piped: wide enough that a row stays on one line


def run_top(config: Config, args: argparse.Namespace) -> int:
    """``omnistream top [--interval S] [--once] [--targets URL,…]``: exit 0 on Ctrl-C or
    SIGTERM, and after one frame with ``--once``; 2 on a bad argument."""
    interval_s = float(args.interval)
    if not 0 < interval_s < float("inf"):
        print(
            f"omnistream top: --interval: expected a number of seconds > 0, got {args.interval!r}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        targets = parse_targets(args.targets) if args.targets else flow_targets(config)
    except ValueError as exc:  # ConfigError included
        print(f"omnistream top: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console = _console()
    shown = frames(targets, interval_s)
    try:
        if args.once:
            next(shown)  # the first scrape only gives the rates their start
            console.print(render(next(shown), console.width))
        elif console.is_terminal:
            with Live(console=console, auto_refresh=False) as live:
                for frame in shown:
                    live.update(render(frame, console.width), refresh=True)
        else:
            for frame in shown:
                console.print(render(frame, console.width))
    except KeyboardInterrupt:
        pass
    return EXIT_OK
