"""``omnistream top``'s frames from real /metrics text.

The texts in ``tests/unit/data/top/`` were scraped from real flow processes: the four flows
of a ``demo --keep`` run after its traffic (``<flow>.prom``), and stock_pool reading a
40,000-event backlog, scraped twice while it caught up (``stock_pool_catching_up_*.prom``).
The expected figures come from a line-by-line reading of the same text written here (not
the Prometheus parser the code uses).
"""

from __future__ import annotations

import argparse
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from base.config import ConfigError, load_config
from omnistream.cli_args import FLOW_ORDER
from omnistream.top import (
    STOCK_TRIGGER_KINDS,
    Reading,
    Target,
    build_frame,
    build_row,
    fetch,
    flow_targets,
    parse_targets,
    read_text,
    render,
    run_top,
)

DATA = Path(__file__).parent / "data" / "top"
_SAMPLE = re.compile(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def text(name: str) -> str:
    return (DATA / f"{name}.prom").read_text()


def lines(name: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """Every sample line of ``metric`` in the file: its labels and value."""
    found = []
    for line in text(name).splitlines():
        sample = _SAMPLE.fullmatch(line)
        if sample and sample[1] == metric:
            found.append((dict(_LABEL.findall(sample[2] or "")), float(sample[3])))
    return found


def summed(name: str, metric: str = "omnistream_events_consumed_total") -> float:
    return sum(value for _, value in lines(name, metric))


def by(name: str, metric: str, label: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for labels, value in lines(name, metric):
        counts[labels[label]] = counts.get(labels[label], 0) + int(value)
    return {k: n for k, n in counts.items() if n > 0}


def reading(name: str, at: float = 100.0) -> Reading:
    return read_text(text(name), at)


def screen(rendered: object) -> str:
    console = Console(width=160, record=True, file=open("/dev/null", "w"))
    console.print(rendered)
    console.file.close()
    return console.export_text()


@pytest.mark.parametrize("flow", FLOW_ORDER)
def test_a_flows_row_holds_its_own_counts(flow: str) -> None:
    row = build_row(Target("http://127.0.0.1:9/metrics", flow), None, reading(flow))
    assert row.down is None and row.flow == flow
    consumed = sum(v for _, v in lines(flow, "omnistream_events_consumed_total"))
    assert row.consumed == consumed > 0
    assert row.events_per_s is None  # one scrape: no rate yet
    assert dict(row.dead_letters) == by(flow, "omnistream_deadletters_total", "reason")
    lags = lines(flow, "omnistream_consumer_lag_messages")
    assert row.lag == sum(v for _, v in lags)
    fired = by(flow, "omnistream_triggers_fired_total", "kind")
    assert dict(row.fired) == {k: n for k, n in fired.items() if k not in STOCK_TRIGGER_KINDS}
    assert dict(row.held) == by(flow, "omnistream_triggers_suppressed_total", "reason")
    stock_triggers = {k: n for k, n in fired.items() if k in STOCK_TRIGGER_KINDS}
    assert {k: n for k, n in row.stock.items() if k in STOCK_TRIGGER_KINDS} == stock_triggers


def test_each_flow_shows_what_it_does() -> None:
    rows = {
        flow: build_row(Target("http://127.0.0.1:9/metrics", flow), None, reading(flow))
        for flow in FLOW_ORDER
    }
    stock = rows["stock_pool"].stock
    assert stock["stockouts"] == sum(
        v for _, v in lines("stock_pool", "omnistream_stock_stockouts")
    )
    low = sum(v for _, v in lines("stock_pool", "omnistream_stock_low_positions"))
    assert stock["low_stock"] == low > 0
    assert rows["stock_pool"].dead_letters  # the demo's stream has malformed events
    # Coupons, hold-backs and stock triggers are rule_triggers' alone.
    assert rows["rule_triggers"].fired and rows["rule_triggers"].held
    assert set(rows["rule_triggers"].stock) <= STOCK_TRIGGER_KINDS
    assert rows["rule_triggers"].stock
    for flow in ("stock_pool", "identity_stitch", "attribution"):
        assert not rows[flow].fired and not rows[flow].held


def test_the_rate_is_the_counters_increase_over_the_time_between_replies() -> None:
    earlier = reading("stock_pool_catching_up_1", at=10.0)
    latest = reading("stock_pool_catching_up_2", at=12.5)
    row = build_row(Target("http://127.0.0.1:9/metrics"), earlier, latest)
    before = sum(
        v for _, v in lines("stock_pool_catching_up_1", "omnistream_events_consumed_total")
    )
    after = sum(v for _, v in lines("stock_pool_catching_up_2", "omnistream_events_consumed_total"))
    assert after > before
    assert row.events_per_s == pytest.approx((after - before) / 2.5)
    # Lag: the sum over partitions, and the partition furthest behind.
    lags = lines("stock_pool_catching_up_2", "omnistream_consumer_lag_messages")
    assert row.lag == sum(v for _, v in lags) > 0
    worst = max(lags, key=lambda p: p[1])
    assert row.lag_max == (f"{worst[0]['topic']}/{worst[0]['partition']}", worst[1])
    # No flow given: the metrics' flow label names the row.
    assert row.flow == "stock_pool"


def test_a_counter_that_went_down_counts_from_zero() -> None:
    """A restarted process starts its counters again: the rate is what it read since."""
    earlier = reading("stock_pool_catching_up_2", at=10.0)
    latest = reading("stock_pool_catching_up_1", at=12.0)
    row = build_row(Target("http://127.0.0.1:9/metrics"), earlier, latest)
    now = sum(v for _, v in lines("stock_pool_catching_up_1", "omnistream_events_consumed_total"))
    assert row.events_per_s == pytest.approx(now / 2.0)


def test_the_flow_the_metrics_name_wins_over_the_expected_one() -> None:
    row = build_row(
        Target("http://127.0.0.1:9/metrics", "identity_stitch"), None, reading("stock_pool")
    )
    assert row.flow == "stock_pool"
    assert row.consumed == sum(
        v for _, v in lines("stock_pool", "omnistream_events_consumed_total")
    )


def test_a_flow_that_does_not_answer_is_a_row_that_says_down() -> None:
    targets = [Target(f"http://127.0.0.1:{9000 + n}/metrics", f) for n, f in enumerate(FLOW_ORDER)]
    latest = {t.url: reading(t.flow or "") for t in targets}
    latest[targets[1].url] = Reading(100.0, None, "connection refused")
    frame = build_frame(7, targets, {}, latest, interval_s=2.0, taken_at="12:00:00")
    assert [r.down for r in frame.rows] == [None, "connection refused", None, None]
    assert frame.rows[1].flow == "identity_stitch"
    shown = screen(render(frame))
    assert "frame 7" in shown and "flows up 3/4" in shown
    assert "identity_stitch down: http://127.0.0.1:9001/metrics: connection refused" in shown
    (row,) = [line for line in shown.splitlines() if line.startswith("│ identity_stitch ")]
    assert "down" in row and re.search(r"\d", row.replace("9001", "")) is None


def test_the_screen_shows_the_rows_figures() -> None:
    target = Target("http://127.0.0.1:9/metrics", "stock_pool")
    earlier = {target.url: reading("stock_pool_catching_up_1", at=10.0)}
    latest = {target.url: reading("stock_pool_catching_up_2", at=12.0)}
    frame = build_frame(2, [target], earlier, latest, interval_s=2.0, taken_at="12:00:02")
    row = frame.rows[0]
    shown = screen(render(frame))
    (line,) = [ln for ln in shown.splitlines() if ln.startswith("│ stock_pool ")]
    cells = [cell.strip() for cell in line.split("│")[1:-1]]
    assert cells[:6] == [
        "stock_pool",
        "up",
        f"{row.consumed:,}",
        f"{row.events_per_s:,.1f}",
        f"{row.lag:,}",
        f"{row.lag_max[0]} {row.lag_max[1]:,}" if row.lag_max else "",
    ]
    assert cells[6] == f"{sum(row.dead_letters.values()):,}"
    reasons = ", ".join(f"{k} {n:,}" for k, n in sorted(row.dead_letters.items()))
    assert f"stock_pool dead letters: {reasons}" in " ".join(shown.split())


@pytest.mark.parametrize("width", [120, 100, 80, 70])
def test_a_narrow_terminal_moves_columns_under_the_table_and_loses_no_figure(width: int) -> None:
    targets = [Target(f"http://127.0.0.1:{9000 + n}/metrics", f) for n, f in enumerate(FLOW_ORDER)]
    earlier = {t.url: reading(t.flow or "", at=1.0) for t in targets}
    earlier[targets[0].url] = reading("stock_pool_catching_up_1", at=1.0)
    latest = {t.url: reading(t.flow or "", at=3.0) for t in targets}
    latest[targets[0].url] = reading("stock_pool_catching_up_2", at=3.0)
    frame = build_frame(2, targets, earlier, latest, interval_s=2.0, taken_at="12:00:00")
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(render(frame, width))
    console.file.close()
    shown = console.export_text()
    table = [line for line in shown.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and all(len(line) <= width for line in table)
    flat = " ".join(shown.split())
    stock_pool = frame.rows[0]
    assert stock_pool.lag_max is not None and stock_pool.lag_max[1] > 0
    head = " ".join(" ".join(line for line in table if line.startswith("┃")).split())
    if "partition" not in head:
        assert f"stock_pool max lag: {stock_pool.lag_max[0]} {stock_pool.lag_max[1]:,}" in flat
    if "outs" not in head:
        stock = stock_pool.stock
        assert (
            f"stock_pool stock alerts: stockouts {stock['stockouts']:,}, "
            f"low_stock {stock['low_stock']:,}"
        ) in flat
    # The columns that always stay: the flow, its state, its events and rate, lag, dead letters.
    (line,) = [ln for ln in table if ln.startswith("│ stock_pool ")]
    cells = [cell.strip() for cell in line.split("│")[1:-1]]
    assert cells[:5] == [
        "stock_pool",
        "up",
        f"{stock_pool.consumed:,}",
        f"{stock_pool.events_per_s:,.1f}",
        f"{stock_pool.lag:,}",
    ]


def test_text_that_is_not_metrics_is_a_reason_not_a_crash() -> None:
    got = read_text("<html><body>Grafana</body></html>", 1.0)
    assert got.samples is None and got.error is not None
    assert got.error.startswith("not Prometheus metrics")


def test_targets_from_the_configuration_follow_the_demo_layout() -> None:
    config = load_config(env={"OMNI_METRICS_PORT": "45759", "OMNI_METRICS_HOST": "0.0.0.0"})
    assert flow_targets(config) == [
        Target(f"http://127.0.0.1:{45759 + n}/metrics", flow) for n, flow in enumerate(FLOW_ORDER)
    ]
    with pytest.raises(ConfigError, match=r"environment OMNI_METRICS_PORT|metrics\.port"):
        flow_targets(load_config(env={"OMNI_METRICS_PORT": "65534"}))


def test_targets_from_the_command_line() -> None:
    assert parse_targets(["http://10.0.0.5:3031", "https://flows.example:443/m"]) == [
        Target("http://10.0.0.5:3031/metrics"),
        Target("https://flows.example:443/m"),
    ]
    assert parse_targets("http://a:1/metrics, http://b:2/metrics") == [
        Target("http://a:1/metrics"),
        Target("http://b:2/metrics"),
    ]
    for bad in ("localhost:3031", "http://:3031/metrics", "http://a/metrics", "ftp://a:1/x", ","):
        with pytest.raises(ValueError, match="--targets: expected"):
            parse_targets(bad)


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def metrics_server() -> Iterator[int]:
    """A /metrics endpoint serving rule_triggers' captured text."""
    handler = type("Handler", (_Metrics,), {"body": text("rule_triggers").encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_reads_an_endpoint_and_names_why_one_does_not_answer(metrics_server: int) -> None:
    got = fetch(Target(f"http://127.0.0.1:{metrics_server}/metrics"), 2.0)
    assert got.error is None and got.samples is not None
    assert "omnistream_triggers_fired_total" in got.samples
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert fetch(Target(f"http://127.0.0.1:{port}/metrics"), 2.0).error == "connection refused"
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        target = Target(f"http://127.0.0.1:{silent.getsockname()[1]}/metrics")
        assert fetch(target, 0.3).error == "no answer within 0.3 s"


def test_once_prints_one_frame_and_exits_0(
    metrics_server: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    args = argparse.Namespace(
        interval=0.05, once=True, targets=[f"http://127.0.0.1:{metrics_server}/metrics"]
    )
    assert run_top(load_config(env={}), args) == 0
    out = capsys.readouterr().out
    assert "frame 2" in out and "flows up 1/1" in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("│ rule_triggers ")]
    cells = [cell.strip() for cell in line.split("│")[1:-1]]
    consumed = sum(v for _, v in lines("rule_triggers", "omnistream_events_consumed_total"))
    assert cells[1:4] == ["up", f"{int(consumed):,}", "0.0"]
    fired = by("rule_triggers", "omnistream_triggers_fired_total", "kind")
    coupons = sum(n for k, n in fired.items() if k not in STOCK_TRIGGER_KINDS)
    assert cells[7] == f"{coupons:,}"


def test_a_bad_argument_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(interval=1.0, once=True, targets=["localhost:3031"])
    assert run_top(load_config(env={}), args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("omnistream top: --targets: expected")
