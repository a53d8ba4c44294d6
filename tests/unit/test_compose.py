"""docker-compose.yml is valid, runs every flow, and holds no default secret."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from omnistream.runner import FLOWS

ROOT = Path(__file__).resolve().parents[2]


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", "demo", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_compose_file_is_accepted_and_runs_every_flow() -> None:
    env = {**os.environ, "OMNI_PII_KEY": "compose-test-secret", "GRAFANA_ADMIN_PASSWORD": "pw"}
    reply = compose_config(env)
    assert reply.returncode == 0, reply.stderr
    services = yaml.safe_load(reply.stdout)["services"]
    assert {
        "kafka",
        "kafka-init",
        "redis",
        "generator",
        "prometheus",
        "alertmanager",
        *FLOWS,
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "--appendonly" in services["redis"]["command"]  # Redis keeps its data
    for flow in FLOWS:
        service = services[flow]
        assert service["command"] == ["run", flow]
        assert service["environment"]["OMNI_RECOVERY_DIR"]
        assert any("recovery" in str(volume) for volume in service["volumes"])


def test_compose_refuses_to_start_without_its_secrets() -> None:
    for secret in ("OMNI_PII_KEY", "GRAFANA_ADMIN_PASSWORD"):
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"OMNI_PII_KEY", "GRAFANA_ADMIN_PASSWORD"}
        }
        env["GRAFANA_ADMIN_PASSWORD" if secret == "OMNI_PII_KEY" else "OMNI_PII_KEY"] = "x"
        reply = compose_config(env)
        assert reply.returncode != 0
        assert secret in reply.stderr


def test_prometheus_config_is_valid_and_scrapes_every_flow() -> None:
    config_path = ROOT / "monitoring" / "prometheus.yml"
    reply = subprocess.run(
        ["promtool", "check", "config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reply.returncode == 0, reply.stdout + reply.stderr
    scrape = yaml.safe_load(config_path.read_text())["scrape_configs"]
    flows = {target["labels"]["flow"] for job in scrape for target in job["static_configs"]}
    assert flows == set(FLOWS)
