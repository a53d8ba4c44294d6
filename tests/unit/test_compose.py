"""docker-compose.yml is valid, runs every flow and the service, checks their health, lets the
host reach Kafka, gives up restarting a configuration error, and takes its secrets from files
that are never committed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import start_http_server

from base.config import load_config
from base.topics import ALL_TOPICS
from omnistream.embedded import free_port
from omnistream.runner import FLOWS

ROOT = Path(__file__).resolve().parents[2]
#: One process of a Bytewax cluster (CONTRACT §13).
CLUSTER_SETTINGS = frozenset({"OMNI_FLOW_PROCESS_ID", "OMNI_FLOW_ADDRESSES"})
#: The compose services of the stock_pool cluster, in process-id order.
STOCK_POOL_PROCESSES = ("stock_pool", "stock_pool_1")
#: Every service running a flow process, and the service: the image's long-running processes.
FLOW_SERVICES = (*FLOWS, "stock_pool_1")
SECRETS_DIR = "/run/secrets"


def compose_config(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", "demo", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy() if env is None else env,
        cwd=ROOT,
    )


def rendered(env: dict[str, str] | None = None) -> dict:
    """The whole file as ``docker-compose config`` resolves it."""
    reply = compose_config(env)
    assert reply.returncode == 0, reply.stderr
    return yaml.safe_load(reply.stdout)


@pytest.fixture(scope="module")
def services() -> dict:
    return rendered()["services"]


def published(service: dict) -> list[str]:
    """docker-compose v1 prints ports as "host_ip:published:target/proto", v2 as mappings."""
    return [
        p
        if isinstance(p, str)
        else f"{p['host_ip']}:{p['published']}:{p['target']}/{p['protocol']}"
        for p in service.get("ports", [])
    ]


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes: docker-compose v1 prints them as
    "source:target:mode", v2 as mappings."""
    return [
        (v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
        for v in service.get("volumes", [])
    ]


def test_compose_file_is_accepted_and_runs_every_flow(services: dict) -> None:
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


def test_compose_runs_the_service_like_the_flows(services: dict) -> None:
    """Same image and environment as the flows, on Redis alone, checked through /readyz."""
    serve, flow = services["serve"], services["stock_pool"]
    assert serve["command"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert serve["image"] == flow["image"] and serve["build"] == flow["build"]
    flow_env = {k: v for k, v in flow["environment"].items() if k not in CLUSTER_SETTINGS}
    assert serve["environment"] == flow_env
    assert serve["environment"]["OMNI_PII_KEY_FILE"] == f"{SECRETS_DIR}/pii_key"
    assert serve["environment"]["OMNI_REDIS_URL"] == "redis://redis:6379/0"
    assert set(serve["depends_on"]) == {"redis"}
    assert serve["depends_on"]["redis"]["condition"] == "service_healthy"
    assert published(serve) == ["127.0.0.1:8080:8080/tcp"]
    assert "/readyz" in " ".join(serve["healthcheck"]["test"])


def test_compose_runs_stock_pool_as_a_two_process_cluster(services: dict) -> None:
    """Both processes get the same addresses and their own id; address i is process i's own
    host and cluster port; each keeps its recovery partitions on its own volume. The other
    flows stay single processes."""
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


# -- health ---------------------------------------------------------------------------------


def healthcheck_program(service: dict) -> str:
    """The Python program of a ``CMD python -c …`` healthcheck."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return test[3]


@pytest.fixture
def metrics_endpoint() -> Iterator[int]:
    """A real Prometheus exposition on a free loopback port, as a flow serves its /metrics."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(program: str, port: int) -> int:
    return subprocess.run(
        [sys.executable, "-c", program.replace(":3030/", f":{port}/")],
        capture_output=True,
        timeout=30,
    ).returncode


def test_every_flow_is_checked_on_its_own_metrics_port(
    services: dict, metrics_endpoint: int
) -> None:
    """The check asks /metrics on the port the flow serves it on (OMNI_METRICS_PORT, inside
    the container) with what the slim image has: the program passes against a real metrics
    endpoint and fails where nothing listens."""
    for name in FLOW_SERVICES:
        service = services[name]
        port = service["environment"]["OMNI_METRICS_PORT"]
        program = healthcheck_program(service)
        assert f"http://127.0.0.1:{port}/metrics" in program, name
        assert service["healthcheck"]["retries"] >= 1
        assert service["healthcheck"].get("start_period"), "a flow needs time to start"
    program = healthcheck_program(services["stock_pool"])
    assert run_healthcheck(program, metrics_endpoint) == 0
    assert run_healthcheck(program, free_port()) != 0
    assert services["generator"]["healthcheck"]["test"] == ["NONE"]  # generate serves none


# -- Kafka from the host ------------------------------------------------------------------------


def listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,…`` → name → host:port."""
    return dict(item.split("://", 1) for item in value.split(","))


def test_kafka_has_a_listener_for_the_host_beside_the_internal_one(services: dict) -> None:
    kafka = services["kafka"]["environment"]
    bound, advertised = (
        listeners(kafka["KAFKA_LISTENERS"]),
        listeners(kafka["KAFKA_ADVERTISED_LISTENERS"]),
    )
    protocols = dict(
        item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert advertised["PLAINTEXT"] == "kafka:9092"
    assert kafka.get("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT") == "PLAINTEXT"
    assert all(services[f]["environment"]["OMNI_KAFKA_BOOTSTRAP"] == "kafka:9092" for f in FLOWS)
    # The host's clients bootstrap at, and are told to use, the published loopback address.
    host, port = advertised["EXTERNAL"].rsplit(":", 1)
    assert host in {"127.0.0.1", "localhost"}
    assert bound["EXTERNAL"].rsplit(":", 1)[1] == port
    assert protocols["EXTERNAL"] == "PLAINTEXT"
    assert f"127.0.0.1:{port}:{port}/tcp" in published(services["kafka"])


# -- restarts -------------------------------------------------------------------------------


RESTART = re.compile(r"^on-failure:(?P<attempts>\d+)$")


def test_restarts_give_up_on_a_configuration_error(services: dict) -> None:
    """Docker restarts on any non-zero exit, so the bound is the number of attempts: a
    configuration error exits 2 at once, again at every attempt, and stops after them; a
    crash still restarts. Neither always nor unless-stopped (they restart exit 2 for ever)."""
    for name in (*FLOW_SERVICES, "serve"):
        match = RESTART.match(services[name]["restart"])
        assert match, f"{name}: restart {services[name]['restart']!r}"
        assert 1 <= int(match["attempts"]) <= 20, name
    assert services["generator"]["restart"] == "no"


def test_a_flow_with_a_configuration_error_exits_2_at_once() -> None:
    """What the restart policy above counts on: a configuration error is a non-zero exit
    before anything starts (here the compose environment with a port that is no number)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OMNI_")},
        "OMNI_METRICS_PORT": "metrics",
        "OMNI_PII_KEY": "compose-test-key",
    }
    reply = subprocess.run(
        [sys.executable, "-m", "omnistream.cli", "run", "stock_pool"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert reply.returncode == 2, reply.stderr
    assert reply.stderr.splitlines() == [
        "omnistream: configuration error: environment OMNI_METRICS_PORT: key `metrics.port`: "
        "expected an integer, got 'metrics'"
    ]


# -- secrets --------------------------------------------------------------------------------


def test_secrets_are_files_mounted_into_the_flows_and_grafana(services: dict) -> None:
    """No secret in the environment: the flows read the PII key from the mounted file
    (OMNI_PII_KEY_FILE), Grafana its admin password (GF_…__FILE)."""
    for name in (*FLOW_SERVICES, "serve"):
        service = services[name]
        assert [s["source"] for s in service["secrets"]] == ["pii_key"], name
        assert service["environment"]["OMNI_PII_KEY_FILE"] == f"{SECRETS_DIR}/pii_key"
        assert "OMNI_PII_KEY" not in service["environment"]
    grafana = services["grafana"]
    assert [s["source"] for s in grafana["secrets"]] == ["grafana_admin_password"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        f"{SECRETS_DIR}/grafana_admin_password"
    )
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]


def test_the_flows_read_the_pii_key_from_the_secret_file(tmp_path: Path) -> None:
    """The compose wiring end to end, without Docker: the secret's host file (from
    OMNISTREAM_SECRETS_DIR) stands where compose mounts it, and the configuration loader,
    given a flow's environment as compose renders it, reads the key from it."""
    (tmp_path / "pii_key").write_text("store-hashing-key-0042\n", encoding="utf-8")
    config = rendered({**os.environ, "OMNISTREAM_SECRETS_DIR": str(tmp_path)})
    host_file = Path(config["secrets"]["pii_key"]["file"])
    assert host_file == tmp_path / "pii_key"
    mounted = {f"{SECRETS_DIR}/{name}": spec["file"] for name, spec in config["secrets"].items()}
    flow_env = {
        k: mounted.get(v, v) for k, v in config["services"]["stock_pool"]["environment"].items()
    }
    assert load_config(env=flow_env).pii.key == "store-hashing-key-0042"


def test_no_secret_is_committed_and_the_files_stay_out_of_git_and_the_image() -> None:
    config = rendered()
    for spec in config["secrets"].values():
        secret = Path(spec["file"])
        assert secret.parent == ROOT / "secrets"
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(secret)], cwd=ROOT, timeout=30
        ).returncode
        assert ignored == 0, f"{secret} would be committed"
    tracked = subprocess.run(
        ["git", "ls-files", "secrets"], capture_output=True, text=True, cwd=ROOT, timeout=30
    ).stdout.split()
    assert tracked in ([], ["secrets/.gitignore"])
    assert "secrets" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
