"""docker-compose.yml is valid, runs every flow and the service, and holds no default secret."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from base.topics import ALL_TOPICS
from omnistream.runner import FLOWS

ROOT = Path(__file__).resolve().parents[2]
#: One process of a Bytewax cluster (CONTRACT §13).
CLUSTER_SETTINGS = frozenset({"OMNI_FLOW_PROCESS_ID", "OMNI_FLOW_ADDRESSES"})
#: The compose services of the stock_pool cluster, in process-id order.
STOCK_POOL_PROCESSES = ("stock_pool", "stock_pool_1")


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", "demo", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes: docker-compose v1 prints them as
    "source:target:mode", v2 as mappings."""
    return [
        (v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
        for v in service.get("volumes", [])
    ]


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
    words = {word.strip(";\\") for word in services["kafka-init"]["command"][0].split()}
    assert set(ALL_TOPICS) <= words, "kafka-init must create every topic"


def test_compose_runs_the_service_like_the_flows() -> None:
    """Same image and environment as the flows, on Redis alone, checked through /readyz."""
    env = {**os.environ, "OMNI_PII_KEY": "compose-test-secret", "GRAFANA_ADMIN_PASSWORD": "pw"}
    reply = compose_config(env)
    assert reply.returncode == 0, reply.stderr
    services = yaml.safe_load(reply.stdout)["services"]
    serve, flow = services["serve"], services["stock_pool"]
    assert serve["command"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert serve["image"] == flow["image"] and serve["build"] == flow["build"]
    flow_env = {k: v for k, v in flow["environment"].items() if k not in CLUSTER_SETTINGS}
    assert serve["environment"] == flow_env
    assert serve["environment"]["OMNI_PII_KEY"] == "compose-test-secret"
    assert serve["environment"]["OMNI_REDIS_URL"] == "redis://redis:6379/0"
    assert set(serve["depends_on"]) == {"redis"}
    assert serve["depends_on"]["redis"]["condition"] == "service_healthy"
    # docker-compose v1 prints ports as "host_ip:published:target/proto", v2 as mappings.
    ports = [
        p
        if isinstance(p, str)
        else f"{p['host_ip']}:{p['published']}:{p['target']}/{p['protocol']}"
        for p in serve["ports"]
    ]
    assert ports == ["127.0.0.1:8080:8080/tcp"]
    assert "/readyz" in " ".join(serve["healthcheck"]["test"])


def test_compose_runs_stock_pool_as_a_two_process_cluster() -> None:
    """Both processes get the same addresses and their own id; address i is process i's own
    host and cluster port; each keeps its recovery partitions on its own volume. The other
    flows stay single processes."""
    env = {**os.environ, "OMNI_PII_KEY": "compose-test-secret", "GRAFANA_ADMIN_PASSWORD": "pw"}
    reply = compose_config(env)
    assert reply.returncode == 0, reply.stderr
    services = yaml.safe_load(reply.stdout)["services"]
    processes = [services[name] for name in STOCK_POOL_PROCESSES]
    addresses = {p["environment"]["OMNI_FLOW_ADDRESSES"] for p in processes}
    assert len(addresses) == 1, f"the processes disagree on the addresses: {addresses}"
    hosts = [address.rsplit(":", 1) for address in addresses.pop().split(",")]
    assert len(hosts) == len(processes)
    assert [p["environment"]["OMNI_FLOW_PROCESS_ID"] for p in processes] == ["0", "1"]
    for name, (host, port) in zip(STOCK_POOL_PROCESSES, hosts, strict=True):
        assert host == name, "address i must be the host of process i"
        assert port.isdigit()
    for process in processes:
        assert process["command"] == ["run", "stock_pool"]
        assert process["image"] == processes[0]["image"]
        others = {k: v for k, v in process["environment"].items() if k != "OMNI_FLOW_PROCESS_ID"}
        assert others == {
            k: v for k, v in processes[0]["environment"].items() if k != "OMNI_FLOW_PROCESS_ID"
        }
    recovery_dir = processes[0]["environment"]["OMNI_RECOVERY_DIR"]
    volumes = [{src for src, target in mounts(p) if target == recovery_dir} for p in processes]
    assert all(len(v) == 1 for v in volumes), "each process needs a volume at its recovery dir"
    assert volumes[0].isdisjoint(volumes[1]), "each process keeps its own recovery volume"
    for flow in FLOWS:
        if flow != "stock_pool":
            assert not CLUSTER_SETTINGS & set(services[flow]["environment"]), flow


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
    jobs = {
        job["job_name"]: job for job in yaml.safe_load(config_path.read_text())["scrape_configs"]
    }
    flows = {target["labels"]["flow"] for target in jobs["omnistream"]["static_configs"]}
    assert flows == set(FLOWS)
    service = jobs["omnistream-serve"]
    assert service.get("metrics_path", "/metrics") == "/metrics"
    assert [t["targets"] for t in service["static_configs"]] == [["serve:8080"]]
