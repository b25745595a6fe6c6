"""deploy/k8s, validated offline: every manifest against the Kubernetes 1.37 schemas (kubernetes-validate,
strict: an unknown field is an error), and the properties the deployment promises checked on the objects.

No cluster runs here. kubeconform would need its schemas downloaded at run time; kubernetes-validate ships
them in its wheel.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from symbi_cli.runtime_options import ALL_SERVICES

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.37.0"


@functools.cache
def manifests() -> dict[str, list[dict[str, Any]]]:
    """Each resource file of the kustomization, as its documents."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return {name: [d for d in yaml.safe_load_all((K8S / name).read_text()) if d] for name in kustomization["resources"]}


def objects() -> list[dict[str, Any]]:
    return [doc for docs in manifests().values() for doc in docs]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def test_every_file_is_listed_and_every_object_passes_the_schema_strictly() -> None:
    listed = set(manifests())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "a manifest is missing from kustomization.yaml (or listed but absent)"
    for doc in objects():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises with the path of the error


def test_the_validator_refuses_what_a_cluster_would() -> None:
    broken = find("Deployment", "symbi-policy")
    broken = {**broken, "spec": {**broken["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    unknown = {**find("Service", "nats"), "specification": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSION, strict=True)


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_each_service_runs_with_only_its_own_secrets(service: str) -> None:
    kind = "DaemonSet" if service == "sandbox-agent" else "Deployment"
    obj = find(kind, f"symbi-{service}")
    spec = pod_spec(obj)
    secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    (container,) = spec["containers"]
    secrets |= {e["secretRef"]["name"] for e in container.get("envFrom", [])}
    assert secrets == {f"symbi-{service}-keys", f"symbi-{service}-env"}
    assert container["command"] == ["python", "-m", f"symbi_{service.replace('-', '_')}"]
    assert {"readinessProbe", "livenessProbe", "resources"} <= set(container)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_sandbox_agent_shares_its_channel_secret_and_work_directories_with_the_node() -> None:
    """The node's engine binds these into sandboxes by path: the sandbox-agent must write them on the node, at the
    same path (the secrets on the node's tmpfs), not in its own container's filesystem."""
    spec = pod_spec(find("DaemonSet", "symbi-sandbox-agent"))
    (container,) = spec["containers"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounted = {m["mountPath"]: host_paths.get(m["name"]) for m in container["volumeMounts"]}
    for path in ("/run/symbi/channels", "/dev/shm/symbi-secrets", "/var/lib/symbi/work"):
        assert mounted.get(path) == path, (path, mounted)


def test_replicas_are_several_where_commands_share_a_queue_group_and_one_where_order_matters() -> None:
    replicas = {s: find("Deployment", f"symbi-{s}")["spec"]["replicas"] for s in ALL_SERVICES if s != "sandbox-agent"}
    assert replicas["audit"] == 1  # the single writer of the Merkle tree and the checkpoints
    assert all(n >= 2 for s, n in replicas.items() if s != "audit"), replicas
    for service, n in replicas.items():
        if n > 1:
            assert find("PodDisruptionBudget", f"symbi-{service}")["spec"]["minAvailable"] == 1


def test_nats_is_a_three_node_cluster_that_fsyncs_every_write() -> None:
    sts = find("StatefulSet", "symbi-nats")
    assert sts["spec"]["replicas"] == 3
    conf = find("ConfigMap", "symbi-nats-config")["data"]["nats.conf"]
    assert "sync_interval: always" in conf
    for i in range(3):
        assert f"nats://symbi-nats-{i}.symbi-nats:6222" in conf
    assert find("Job", "symbi-provision")["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "SYMBI_NATS__REPLICAS", "value": "3"}
    ]


def test_copies_of_the_compose_configuration_match_their_sources() -> None:
    postgres = find("ConfigMap", "symbi-postgres-start")["data"]["start.sh"]
    assert postgres == (REPO / "deploy/postgres/start.sh").read_text()
    jaeger = find("ConfigMap", "symbi-jaeger-config")["data"]["jaeger.yaml"]
    assert jaeger == (REPO / "deploy/jaeger/jaeger.yaml").read_text()


def test_the_root_key_is_mounted_nowhere() -> None:
    text = "\n".join((K8S / name).read_text() for name in manifests())
    assert "root.key" not in text
    pods = [o for o in objects() if "template" in o.get("spec", {})]
    mounted = {v["secret"]["secretName"] for o in pods for v in pod_spec(o).get("volumes", []) if "secret" in v}
    assert not {name for name in mounted if "operator" in name or "root" in name}, mounted


def test_prometheus_discovers_and_labels_every_service_pod() -> None:
    """The pod-discovery relabelling, applied to each service's pod template as Prometheus would: every
    service is kept, at its HTTP container port and metrics path, with the ``service`` label the dashboards use."""
    config = yaml.safe_load(find("ConfigMap", "symbi-prometheus-config")["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["symbi"]}}]
    for service in ALL_SERVICES:
        obj = find("DaemonSet" if service == "sandbox-agent" else "Deployment", f"symbi-{service}")
        template = obj["spec"]["template"]
        meta = {"__meta_kubernetes_pod_ip": "10.0.0.7", "__meta_kubernetes_pod_name": f"symbi-{service}-0"}
        for key, value in {**template["metadata"]["annotations"], **template["metadata"]["labels"]}.items():
            kind = "annotation" if key in template["metadata"].get("annotations", {}) else "label"
            meta[f"__meta_kubernetes_pod_{kind}_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}"] = value
        target = relabel(meta, job["relabel_configs"])
        assert target is not None, f"{service}'s pods are not scraped"
        (container,) = pod_spec(obj)["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        assert target["__address__"] == f"10.0.0.7:{port}"
        assert target["__metrics_path__"] == "/metrics"
        assert target["service"] == service
    unannotated = {"__meta_kubernetes_pod_ip": "10.0.0.9", "__meta_kubernetes_pod_name": "symbi-postgres-0"}
    assert relabel(unannotated, job["relabel_configs"]) is None


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's ``keep`` and ``replace`` relabel actions (anchored regex, ``;``-joined sources); None
    when the target is dropped."""
    out = dict(labels)
    for rule in rules:
        value = ";".join(out.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if match is None:
                return None
        elif match is not None:
            out[rule["target_label"]] = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
    return out


def test_prometheus_may_only_read_pods_of_its_namespace() -> None:
    role = find("Role", "symbi-prometheus")
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    binding = find("RoleBinding", "symbi-prometheus")
    assert binding["roleRef"]["name"] == "symbi-prometheus"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "symbi-prometheus", "namespace": "symbi"}]
    assert pod_spec(find("Deployment", "symbi-prometheus"))["serviceAccountName"] == "symbi-prometheus"
    assert not [o for o in objects() if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
