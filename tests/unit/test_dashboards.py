"""The checked-in Grafana boards are what ``omnistream.dashboards`` renders."""

from __future__ import annotations

import json
import re

from prometheus_client.metrics import MetricWrapperBase

import base.metrics
from omnistream import experiment_metrics
from omnistream.dashboards import BOARDS, OUT_DIR, rendered

#: Labels Prometheus attaches to every scraped series (monitoring/prometheus.yml).
TARGET_LABELS = frozenset({"job", "instance", "flow"})
#: Series a metric of each type exposes, by suffix (the Prometheus text format).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
METRIC_NAME = re.compile(r"\bomnistream_[a-z0-9_]+")


def test_checked_in_boards_match_the_code() -> None:
    for name, content in rendered().items():
        assert (OUT_DIR / name).read_bytes() == content, (
            f"{name} is stale: run `python -m omnistream.dashboards`"
        )


#: What every panel, query and query variable reads: the board's ``$datasource``.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: A series selector in the rendered PromQL: metric name and its optional matchers.
SELECTOR = re.compile(r"\b(omnistream_[a-z0-9_]+|up)\b(?:\{([^}]*)\})?")


def boards() -> dict[str, dict]:
    return {board.uid: json.loads(rendered()[f"{board.uid}.json"]) for board in BOARDS}


def targets() -> list[tuple[str, str, str]]:
    """(board uid, panel title, expr) of every query of every rendered board."""
    return [
        (uid, panel["title"], target["expr"])
        for uid, doc in boards().items()
        for panel in doc["panels"]
        for target in panel["targets"]
    ]


def test_boards_are_well_formed() -> None:
    for doc in boards().values():
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
        for panel in doc["panels"]:
            assert panel["datasource"] == DATASOURCE
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
            assert all(t["datasource"] == DATASOURCE for t in panel["targets"])
            assert "sku" not in json.dumps(panel["targets"])  # no per-sku series


def test_boards_have_datasource_flow_and_region_variables() -> None:
    for uid, doc in boards().items():
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert set(variables) == {"datasource", "flow", "region"}, uid
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name, label in (("flow", "flow"), ("region", "region")):
            variable = variables[name]
            assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
            query = variable["query"]["query"]
            assert re.fullmatch(rf"label_values\((omnistream_[a-z_]+|up)\S*, {label}\)", query)
            assert variable["includeAll"] and variable["allValue"] == ".*"
        # no data source uid is written anywhere but as the variable
        uids = set(re.findall(r'"uid":\s*"([^"]*)"', json.dumps(doc)))
        assert uids == {"${datasource}", uid}, uids


def test_every_query_filters_by_flow_and_region_where_the_series_has_them() -> None:
    """Every series a flow exports carries ``flow`` (its own label or the scrape's target
    label); the stock series carry ``region``. The service's series have no ``flow``."""
    series = exposed_series()
    service_only = set(experiment_metrics.SERIES) | {
        name for name in series if name.startswith("omnistream_http_")
    }
    checked = 0
    for uid, title, expr in targets():
        for name, matchers in SELECTOR.findall(expr):
            where = f"{uid} / {title}: {name}{{{matchers}}}"
            if name == "up":
                assert 'flow=~"$flow"' in matchers, where
                continue
            if name in service_only:
                assert "$flow" not in matchers, where
            else:
                assert 'flow=~"$flow"' in matchers, where
                checked += 1
            assert ('region=~"$region"' in matchers) == ("region" in series[name]), where
    assert checked > 40


def exposed_series() -> dict[str, frozenset[str]]:
    """Series name → its labels, for every metric base/metrics.py defines and every one of
    the experiment collector ``omnistream serve`` registers."""
    series: dict[str, frozenset[str]] = dict(experiment_metrics.SERIES)
    for metric in vars(base.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            # prometheus_client keeps name, type and label names in these attributes only.
            for suffix in SUFFIXES[str(metric._type)]:
                extra = {"le"} if suffix == "_bucket" else set()
                series[metric._name + suffix] = frozenset(metric._labelnames) | extra
    return series


def aggregated_spans(expr: str) -> list[tuple[set[str], str]]:
    """Each ``by (labels) (argument)`` of an expression: the labels and the argument's text."""
    spans = []
    for match in re.finditer(r"\bby \(([^)]*)\)\s*\(", expr):
        depth, end = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        labels = {label.strip() for label in match.group(1).split(",")}
        spans.append((labels, expr[match.end() : end - 1]))
    return spans


def test_panels_query_metrics_and_labels_that_exist() -> None:
    """A misspelt metric or label renders an empty panel, never an error: catch it here."""
    series = exposed_series()
    for uid, title, expr in targets():
        where = f"{uid} / {title}: {expr}"
        for name in METRIC_NAME.findall(expr):
            assert name in series, f"{where}: {name} is not in base/metrics.py"
        for selector_metric, selector in re.findall(r"\b(omnistream_[a-z0-9_]+)\{([^}]*)\}", expr):
            used = set(re.findall(r"(\w+)\s*[=!]~?", selector))
            assert used <= series[selector_metric] | TARGET_LABELS, where
        for labels, argument in aggregated_spans(expr):
            known = set(TARGET_LABELS)
            for name in METRIC_NAME.findall(argument):
                known |= series[name]
            assert labels <= known, f"{where}: by ({', '.join(sorted(labels - known))})"


def test_the_label_check_catches_a_misspelt_label() -> None:
    """The parser the test above relies on finds what it should."""
    spans = aggregated_spans(
        "sum by (route, le) (rate(omnistream_http_request_seconds_bucket[5m])) / "
        "sum by (outcome) (rate(omnistream_orders_sourced_total[5m]))"
    )
    assert spans == [
        ({"route", "le"}, "rate(omnistream_http_request_seconds_bucket[5m])"),
        ({"outcome"}, "rate(omnistream_orders_sourced_total[5m])"),
    ]
    series = exposed_series()
    assert series["omnistream_http_request_seconds_bucket"] == {"route", "le"}
    assert series["omnistream_orders_sourced_total"] == {"outcome"}
    assert "omnistream_pickup_tasks_overdue" in series
    assert "omnistream_orders_sourced" not in series  # a counter is exposed as …_total
    assert series["omnistream_experiment_uplift"] == {"rule", "variant"}


def test_push_uploads_every_board_with_the_token() -> None:
    """Against a recording stand-in for Grafana's HTTP API (no Grafana server here)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from omnistream.dashboards import push_boards

    received: list[tuple[str, str, dict]] = []

    class Grafana(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, self.headers.get("Authorization", ""), body))
            reply = json.dumps({"status": "success", "uid": body["dashboard"]["uid"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Grafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert push_boards(url, "glsa_test_token", folder_uid="ops") == 0
    finally:
        server.shutdown()
        server.server_close()
    assert [path for path, _, _ in received] == ["/api/dashboards/db"] * len(BOARDS)
    assert all(auth == "Bearer glsa_test_token" for _, auth, _ in received)
    assert {body["dashboard"]["uid"] for _, _, body in received} == {b.uid for b in BOARDS}
    assert all(body["overwrite"] and body["folderUid"] == "ops" for _, _, body in received)
