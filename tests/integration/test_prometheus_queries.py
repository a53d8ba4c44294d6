"""A real Prometheus scrapes the running flows; every board panel and alert expression is
evaluated through its HTTP API: every expression parses and every panel returns data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from base.config import Config, dump_config
from connectors.generator import TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.dashboards import BOARDS
from omnistream.embedded import die_with_parent, free_port
from omnistream.processes import start_flow, stop_process, wait_for_metrics

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FLOWS = ("stock_pool", "identity_stitch", "rule_triggers", "attribution")


def query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "monitoring/rules/omnistream.rules.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_every_panel_returns_data_and_every_alert_parses(
    omni_config: Config, tmp_path: Path
) -> None:
    prometheus_binary = shutil.which("prometheus")
    assert prometheus_binary, "the Debian package prometheus is installed by scripts/setup.sh"
    config = omni_config.with_overrides(pii={"key": "test-secret"})
    ports = {flow: free_port() for flow in FLOWS}
    scrape = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "monitoring/rules/omnistream.rules.yml")],
        "scrape_configs": [
            {
                "job_name": "omnistream",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"flow": flow}}
                    for flow, port in ports.items()
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
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
        model = TrafficModel(load_reference(config), seed=4, bad_ratio=0.05)
        events = model.events(None)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:  # steady traffic while Prometheus scrapes
            produce(config, (next(events) for _ in range(400)), progress=False)
            time.sleep(0.5)

        failures = []
        for board in BOARDS:
            for panel in board.panels:
                for expr, _ in panel.exprs:
                    reply = query(prom_port, expr)
                    if reply.get("status") != "success":
                        failures.append(f"{board.uid} / {panel.title}: {reply.get('error')}")
                    elif not reply["data"]["result"]:
                        failures.append(f"{board.uid} / {panel.title}: no data for {expr}")
        for alert, expr in alert_expressions():
            reply = query(prom_port, expr)
            if reply.get("status") != "success":
                failures.append(f"alert {alert}: {reply.get('error')}")
        assert not failures, "\n".join(failures)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        for process in flows:
            stop_process(process)
        for log in logs:
            log.close()
