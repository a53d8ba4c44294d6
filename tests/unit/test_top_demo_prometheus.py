"""The scrape configuration of ``demo --prometheus``: the deployed one pointed at the demo's
processes, accepted by ``promtool`` with the project's rule files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from omnistream.cli_args import FLOW_ORDER
from omnistream.demo_prometheus import MONITORING_DIR, find_prometheus, scrape_config

DEPLOYED: dict[str, Any] = yaml.safe_load((MONITORING_DIR / "prometheus.yml").read_text())
FLOW_PORTS = {flow: 41000 + n for n, flow in enumerate(FLOW_ORDER)}


def targets_by_job(config: dict[str, Any]) -> dict[str, list[str]]:
    return {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }


def test_every_deployed_target_points_at_the_demos_process_of_that_name() -> None:
    _, rules = find_prometheus()
    config = scrape_config(DEPLOYED, {**FLOW_PORTS, "serve": 42000}, rules)
    deployed = targets_by_job(DEPLOYED)
    ours = targets_by_job(config)
    assert set(ours) == set(deployed)
    for job, targets in deployed.items():
        ports = {**FLOW_PORTS, "serve": 42000}
        assert ours[job] == [f"127.0.0.1:{ports[t.rsplit(':', 1)[0]]}" for t in targets]
    # Target labels and paths stay as deployed: the alerts select on them.
    for mine, theirs in zip(config["scrape_configs"], DEPLOYED["scrape_configs"], strict=True):
        assert {k: v for k, v in mine.items() if k != "static_configs"} == {
            k: v for k, v in theirs.items() if k != "static_configs"
        }
        assert [g.get("labels") for g in mine["static_configs"]] == [
            g.get("labels") for g in theirs["static_configs"]
        ]
    assert config["rule_files"] == [str(path) for path in rules]
    assert all(Path(path).is_absolute() for path in config["rule_files"])
    assert "alerting" not in config


def test_without_the_service_its_job_is_left_out() -> None:
    _, rules = find_prometheus()
    config = scrape_config(DEPLOYED, FLOW_PORTS, rules)
    assert set(targets_by_job(config)) == {"omnistream"}
    assert sorted(targets_by_job(config)["omnistream"]) == sorted(
        f"127.0.0.1:{port}" for port in FLOW_PORTS.values()
    )


def test_promtool_accepts_the_configuration_and_its_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is needed (Debian package prometheus)"
    _, rules = find_prometheus()
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(scrape_config(DEPLOYED, {**FLOW_PORTS, "serve": 42000}, rules)))
    checked = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
