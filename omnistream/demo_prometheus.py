"""``omnistream demo --prometheus``: the OS's Prometheus beside the demo, scraping its flows.

Grafana needs Docker, Prometheus does not: the set-up script installs Debian's
``prometheus`` package (for ``promtool``), and its server is enough to query the demo's
metrics and to see the project's alert rules evaluated on them. The scrape configuration is
the deployed one (``monitoring/prometheus.yml``: its jobs, paths and target labels, which the
alerts select on) with each compose host pointed at the demo's process of that name; the
rules are ``monitoring/rules/*.yml``. Storage lives in the demo's temporary directory, so
nothing outlives the demo.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from omnistream.embedded import LOOPBACK, free_port
from omnistream.processes import answers_ok, start_until_ready, stop_process

#: The project's monitoring files, beside the packages in a checkout (not package data: an
#: installed wheel has none, and ``--prometheus`` says so).
MONITORING_DIR = Path(__file__).resolve().parent.parent / "monitoring"

#: How often the demo's Prometheus scrapes and evaluates the rules (production: 15 s).
SCRAPE_INTERVAL = "5s"


class PrometheusUnavailable(RuntimeError):
    """The binary or the project's monitoring files are missing; the message says which."""


def find_prometheus(monitoring: Path = MONITORING_DIR) -> tuple[str, list[Path]]:
    """The ``prometheus`` binary and the alert rule files, checked before the demo starts
    anything."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusUnavailable(
            "--prometheus needs the prometheus server on PATH (Debian: apt-get install "
            "prometheus; scripts/setup.sh installs it)"
        )
    deployed = monitoring / "prometheus.yml"
    rules = sorted((monitoring / "rules").glob("*.yml"))
    if not deployed.is_file() or not rules:
        raise PrometheusUnavailable(
            f"--prometheus needs the project's {monitoring}/prometheus.yml and "
            f"{monitoring}/rules/*.yml (run the demo from a checkout)"
        )
    return binary, rules


def scrape_config(
    deployed: Mapping[str, Any], ports: Mapping[str, int], rule_files: list[Path]
) -> dict[str, Any]:
    """``deployed`` (monitoring/prometheus.yml) with every ``host:port`` target whose host
    the demo runs turned into ``127.0.0.1:<its port>``; targets of hosts the demo does not
    run (the service without ``--keep``) are left out, and so are jobs left without a
    target. Alertmanager is not configured: alerts show on Prometheus' own /alerts page."""
    jobs = []
    for job in deployed.get("scrape_configs", []):
        groups = []
        for group in job.get("static_configs", []):
            targets = [
                f"{LOOPBACK}:{ports[host]}"
                for host in (t.rsplit(":", 1)[0] for t in group.get("targets", []))
                if host in ports
            ]
            if targets:
                groups.append({**group, "targets": targets})
        if groups:
            jobs.append({**job, "static_configs": groups})
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": jobs,
    }


@dataclass
class DemoPrometheus:
    """A running Prometheus of the demo: its port, process and log."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> int:
        return stop_process(self.process)


def start_prometheus(
    workdir: Path,
    ports: Mapping[str, int],
    logs: list[IO[bytes]],
    monitoring: Path = MONITORING_DIR,
    timeout_s: float = 60.0,
) -> DemoPrometheus:
    """Start Prometheus on a free loopback port scraping ``ports`` (compose host name →
    port) and wait until it is ready; RuntimeError with its log's tail if it is not."""
    binary, rules = find_prometheus(monitoring)
    deployed = yaml.safe_load((monitoring / "prometheus.yml").read_text(encoding="utf-8"))
    config_path = workdir / "prometheus.yml"
    config_path.write_text(
        yaml.safe_dump(scrape_config(deployed, ports, rules), sort_keys=False), encoding="utf-8"
    )
    port = free_port()
    log_path = workdir / "prometheus.log"
    log = log_path.open("wb")
    logs.append(log)
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    ready = f"http://{LOOPBACK}:{port}/-/ready"
    process = start_until_ready(command, log, lambda: answers_ok(ready), timeout_s)
    if process is not None:
        return DemoPrometheus(port, process, log_path)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"prometheus did not get ready within {timeout_s:.0f} s:\n{tail}")
