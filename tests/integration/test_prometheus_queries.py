"""A real Prometheus scrapes the running flows and ``omnistream serve``; every board panel and
alert expression is evaluated through its HTTP API: every expression parses and every panel
returns data from what was really scraped. The panels are the rendered boards' queries with
their ``$flow`` and ``$region`` variables substituted as Grafana does ("All" is ``.*``; a
selection of several values is ``(a|b)``), and the variables' ``label_values`` answer the
flows and regions. No scraped series has an ``exported_*`` label (the flows' own ``flow``
label against the scrape's), and the alerts' ``runbook_url`` is rendered under the
``runbook_base`` external label.

The scrape configuration is the deployed one (``monitoring/prometheus.yml``) with its compose
host names pointed at this test's processes, so the job names and target labels the panels and
alerts select on (``job="omnistream"`` for the flows, ``job="omnistream-serve"`` for the
service) are the ones production uses.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from base.config import Config, dump_config
from connectors.generator import GeneratedEvent, TrafficModel, produce
from connectors.reference_files import load_reference
from domain.reference import ReferenceData
from flows.attribution import OTHER_CHANNEL, channel_allowlist
from omnistream.dashboards import BOARDS, rendered
from omnistream.embedded import die_with_parent, free_port
from omnistream.processes import start_flow, stop_process, wait_for_metrics
from tests.integration.test_service import served

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FLOWS = ("stock_pool", "identity_stitch", "rule_triggers", "attribution")
#: The compose service name of ``omnistream serve``: its target host in prometheus.yml.
SERVICE = "serve"
#: How error and rare-event panels end (omnistream/dashboards.py): an empty panel reads 0.
FALLBACK = " or vector(0)"
#: Panels whose fallback may be all there is: events this test's traffic does not cause
#: (Redis and the broker stay up, the rules file is not edited, and the generator's shoppers
#: never share a login or a member card nor type a junk identifier).
RARE_EVENT_PANELS = frozenset(
    {
        "Redis errors per second",
        "Kafka consumer errors per second",
        "Rules file reloads",
        "Conflicts per second by reason",
        "Junk or blocked identifiers per second",
    }
)
#: Traffic runs until every panel has data, at most this long.
TRAFFIC_LIMIT_S = 150.0
#: Where this test's Prometheus says the runbook is (its ``runbook_base`` external label).
RUNBOOK_BASE = "https://runbooks.test/omnistream/runbook.md"
#: A target of the flows' job that nobody serves: OmnistreamFlowDown goes pending for it.
GONE_FLOW = "retired_flow"


def query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
    except urllib.error.HTTPError as error:
        answer = json.loads(error.read())
    return answer


def wait_until_ready(prom_port: int, prometheus: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert prometheus.poll() is None, f"prometheus exited with {prometheus.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    pytest.fail("prometheus did not get ready within 60 s")


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "monitoring/rules/omnistream.rules.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def scrape_config(ports: dict[str, int], gone_port: int) -> dict[str, Any]:
    """monitoring/prometheus.yml with every ``host:port`` target turned into this test's
    ``127.0.0.1:<port of host>`` (jobs, metrics paths, target labels and honor_labels kept),
    plus a flow target on ``gone_port`` that nothing serves, scraping every second; alert
    rules evaluated under the ``runbook_base`` external label, no Alertmanager."""
    deployed = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())
    hosts = {
        target.rsplit(":", 1)[0]
        for job in deployed["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert hosts == set(ports), f"prometheus.yml scrapes {sorted(hosts)}, the test runs {ports}"
    jobs = [
        {
            **job,
            "static_configs": [
                {
                    **group,
                    "targets": [
                        f"127.0.0.1:{ports[target.rsplit(':', 1)[0]]}"
                        for target in group["targets"]
                    ],
                }
                for group in job["static_configs"]
            ],
        }
        for job in deployed["scrape_configs"]
    ]
    flows_job = next(job for job in jobs if job["job_name"] == "omnistream")
    flows_job["static_configs"].append(
        {"targets": [f"127.0.0.1:{gone_port}"], "labels": {"flow": GONE_FLOW}}
    )
    return {
        "global": {
            "scrape_interval": "1s",
            "evaluation_interval": "1s",
            "external_labels": {"runbook_base": RUNBOOK_BASE},
        },
        "rule_files": [str(ROOT / "monitoring/rules/omnistream.rules.yml")],
        "scrape_configs": jobs,
    }


class ServiceTraffic:
    """What store apps and order management ask ``omnistream serve``, a few requests per
    round: availability near a store and in a region, a sku's stock, one bad quantity (400)
    and one unknown sku (404). ``sent`` counts the answers by (route template, status)."""

    def __init__(self, http: httpx.Client, reference: ReferenceData) -> None:
        self.http = http
        self.rng = random.Random(16)
        self.skus = sorted(reference.products)
        self.origins = sorted(
            (loc for loc in reference.locations.values() if loc.has_coordinates),
            key=lambda loc: loc.location_id,
        )
        self.regions = sorted({loc.region for loc in reference.locations.values()})
        self.sent: Counter[tuple[str, str]] = Counter()
        self.options_offered = 0

    def _get(self, route: str, path: str, status: int, **params: Any) -> dict[str, Any]:
        reply = self.http.get(path, params=params)
        assert reply.status_code == status, f"GET {path} {params}: {reply.status_code} {reply.text}"
        self.sent[(route, str(status))] += 1
        answer: dict[str, Any] = reply.json()
        return answer

    def round(self) -> None:
        sku = self.rng.choice(self.skus)
        origin = self.rng.choice(self.origins)
        near = self._get(
            "/v1/availability",
            "/v1/availability",
            200,
            sku=sku,
            qty=1,
            lat=origin.lat,
            lon=origin.lon,
            mode=self.rng.choice(("pickup", "delivery")),
        )
        in_region = self._get(
            "/v1/availability",
            "/v1/availability",
            200,
            sku=sku,
            qty=1,
            region=self.rng.choice(self.regions),
        )
        self.options_offered += len(near["options"]) + len(in_region["options"])
        self._get("/v1/stock/{sku}", f"/v1/stock/{sku}", 200)
        bad = self._get("/v1/availability", "/v1/availability", 400, sku=sku, qty=0)
        assert "qty" in bad["error"], bad
        self._get("/v1/stock/{sku}", "/v1/stock/NO-SUCH-SKU", 404)


def scraped_requests(prom_port: int) -> dict[tuple[str, str], float]:
    """The service's API requests by (route, status) as Prometheus last scraped them, from
    the deployed job and target label."""
    reply = query(
        prom_port,
        "sum by (route, status) (omnistream_http_requests_total"
        '{job="omnistream-serve", service="serve", route=~"/v1/.*"})',
    )
    return {
        (row["metric"]["route"], row["metric"]["status"]): float(row["value"][1])
        for row in reply["data"]["result"]
    }


def prom_api(port: int, path: str, **params: str) -> Any:
    """The ``data`` of a Prometheus HTTP API answer."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as reply:
        answer: dict[str, Any] = json.loads(reply.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def label_values(port: int, label: str, selector: str) -> set[str]:
    """What Grafana's ``label_values(selector, label)`` lists."""
    return set(prom_api(port, f"label/{label}/values", **{"match[]": selector}))


def runbook_url_of_flow_down(port: int, flow: str) -> str:
    """The runbook_url of OmnistreamFlowDown for ``flow`` (pending or firing), once the
    rules have evaluated its failed scrape."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for alert in prom_api(port, "alerts")["alerts"]:
            if alert["labels"].get("alertname") == "OmnistreamFlowDown":
                if alert["labels"].get("flow") == flow:
                    url: str = alert["annotations"]["runbook_url"]
                    return url
        time.sleep(0.5)
    pytest.fail(f"no OmnistreamFlowDown for {flow} within 30 s")


def unplaceable_order(reference: ReferenceData, seed: int) -> GeneratedEvent:
    """The first order of the traffic that stock_pool sources (a delivery without a
    location), copied under new ids for more units than any location holds: the series of
    unfulfillable orders from the first round, where the generator's own first one comes
    after about 12,000 events (more than a minute of this test's traffic)."""
    for event in TrafficModel(reference, seed=seed).events(None):
        doc = orjson.loads(event.value) if event.bad_reason is None else {}
        fulfillment = doc.get("fulfillment") or {}
        if (
            doc.get("event_type") == "order_placed"
            and fulfillment.get("type") == "delivery"
            and "location_id" not in fulfillment
        ):
            line = {**doc["lines"][0], "qty": 1_000_000}
            doc.update(
                event_id=f"{doc['event_id']}-unplaceable",
                order_id=f"{doc['order_id']}-UNPLACEABLE",
                lines=[line],
                total=round(line["qty"] * line["unit_price"], 2),
            )
            return GeneratedEvent(event.topic, event.key, orjson.dumps(doc), doc["event_id"], None)
    raise AssertionError("unreachable: the traffic never ends")


def rendered_queries() -> list[tuple[str, str, str]]:
    """(board uid, panel title, expr) of every query of the rendered boards, variables in."""
    return [
        (board.uid, panel["title"], target["expr"])
        for board in BOARDS
        for panel in json.loads(rendered()[f"{board.uid}.json"])["panels"]
        for target in panel["targets"]
    ]


def substituted(expr: str, flow: str, region: str) -> str:
    """The query as Grafana sends it for these values of ``$flow`` and ``$region``."""
    assert "$" not in expr.replace("$flow", "").replace("$region", ""), expr
    return expr.replace("$flow", flow).replace("$region", region)


def panel_failures(prom_port: int) -> list[str]:
    """Every panel expression (variables at "All") that does not parse or returns nothing,
    and every one ending in the ``or vector(0)`` fallback whose own series are missing (the
    fallback would draw a flat 0 over a series nobody scrapes), rare-event panels excepted."""
    failures = []
    for uid, title, template in rendered_queries():
        expr = substituted(template, ".*", ".*")
        reply = query(prom_port, expr)
        if reply.get("status") != "success":
            failures.append(f"{uid} / {title}: {reply.get('error')}")
        elif not reply["data"]["result"]:
            failures.append(f"{uid} / {title}: no data for {expr}")
        elif expr.endswith(FALLBACK) and title not in RARE_EVENT_PANELS:
            scraped = expr.removesuffix(FALLBACK)
            if not query(prom_port, scraped)["data"]["result"]:
                failures.append(
                    f"{uid} / {title}: only the fallback answered, no data for {scraped}"
                )
    return failures


def test_every_panel_returns_data_and_every_alert_parses(
    omni_config: Config, tmp_path: Path
) -> None:
    prometheus_binary = shutil.which("prometheus")
    assert prometheus_binary, "the Debian package prometheus is installed by scripts/setup.sh"
    config = omni_config.with_overrides(pii={"key": "test-secret"})
    reference = load_reference(config)
    ports = {flow: free_port() for flow in FLOWS}
    prom_port = free_port()
    logs = []
    flows = []
    prometheus = None
    try:
        for flow, port in ports.items():
            path = tmp_path / f"{flow}.yaml"
            dump_config(config.with_overrides(metrics={"port": port}), path)
            log = (tmp_path / f"{flow}.log").open("wb")
            logs.append(log)
            flows.append(start_flow(flow, path, log=log))
        for process, port in zip(flows, ports.values(), strict=True):
            wait_for_metrics(port, process)
        with (
            # the experiment report recomputed every second, as Prometheus scrapes here
            served(
                config.with_overrides(service={"experiments_cache_seconds": 1}), tmp_path
            ) as service,
            httpx.Client(base_url=service.url, timeout=10) as http,
        ):
            service_port = int(urllib.parse.urlsplit(service.url).port or 0)
            (tmp_path / "prometheus.yml").write_text(
                yaml.safe_dump(scrape_config({**ports, SERVICE: service_port}, free_port()))
            )
            prom_log = (tmp_path / "prometheus.log").open("wb")
            logs.append(prom_log)
            prometheus = subprocess.Popen(
                [
                    prometheus_binary,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=prom_log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
            wait_until_ready(prom_port, prometheus)
            # The generator's default traffic places most delivery orders without a location
            # (stock_pool sources them) and some at a store for pickup, and one order here
            # cannot be placed anywhere: the fulfilment panels' series. Steady traffic while
            # Prometheus scrapes, until every panel has data.
            model = TrafficModel(reference, seed=4, bad_ratio=0.05)
            events = model.events(None)
            produce(config, [unplaceable_order(reference, seed=4)], progress=False)
            api = ServiceTraffic(http, reference)
            started = time.monotonic()
            checked = started
            failures = ["no traffic yet"]
            while failures and time.monotonic() - started < TRAFFIC_LIMIT_S:
                produce(config, (next(events) for _ in range(400)), progress=False)
                api.round()
                time.sleep(0.5)
                if time.monotonic() - checked > 3:
                    checked = time.monotonic()
                    failures = panel_failures(prom_port)
            assert api.options_offered, "no availability answer offered a location"
            # the last requests reach Prometheus with its next scrape of the service
            settle = time.monotonic() + 10
            while scraped_requests(prom_port) != api.sent and time.monotonic() < settle:
                time.sleep(0.5)
            assert scraped_requests(prom_port) == api.sent

            failures = panel_failures(prom_port)
            for alert, expr in alert_expressions():
                reply = query(prom_port, expr)
                if reply.get("status") != "success":
                    failures.append(f"alert {alert}: {reply.get('error')}")
            # a selection of several flows and regions, as Grafana formats it: still PromQL
            regions = sorted({loc.region for loc in reference.locations.values()})
            for uid, title, template in rendered_queries():
                expr = substituted(template, "(stock_pool|rule_triggers)", f"({regions[0]})")
                reply = query(prom_port, expr)
                if reply.get("status") != "success":
                    failures.append(f"{uid} / {title} (a selection): {reply.get('error')}")
            assert not failures, "\n".join(failures)

            # the boards' variables offer every flow and region that was scraped
            assert set(FLOWS) <= label_values(prom_port, "flow", 'up{job="omnistream"}')
            assert label_values(prom_port, "region", "omnistream_stock_units") == set(regions)
            # the flows' own `flow` label is kept, not renamed beside the target's
            labels = prom_api(prom_port, "labels")
            assert labels and not [name for name in labels if name.startswith("exported_")]
            flows_seen = label_values(prom_port, "flow", "omnistream_events_consumed_total")
            assert flows_seen == set(FLOWS), flows_seen
            # the attribution gauges name the configured channels or `other`, nothing else
            channels = label_values(prom_port, "channel", "omnistream_attributed_revenue")
            assert channels and channels <= channel_allowlist(config) | {OTHER_CHANNEL}, channels
            # the down target's alert links its runbook section under the external label
            assert runbook_url_of_flow_down(prom_port, GONE_FLOW) == (
                f"{RUNBOOK_BASE}#omnistreamflowdown"
            )
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        for process in flows:
            stop_process(process)
        for log in logs:
            log.close()
