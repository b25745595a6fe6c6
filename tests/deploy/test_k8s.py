"""deploy/k8s, validated offline: every manifest against the Kubernetes 1.37 schemas (kubernetes-validate,
strict: an unknown field is an error), and the properties the deployment promises checked on the objects.

No cluster runs here. kubeconform would need its schemas downloaded at run time; kubernetes-validate ships
them in its wheel.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from cryptography import x509
from symbi_cli.deploy_dir import ROUTE_PASSWORD_ENV, DeployConfig, init_deploy_dir, parse_env
from symbi_cli.deploy_k8s import k8s_secrets
from symbi_cli.deploy_tls import JAEGER_PARTY, NATS_PARTY, PARTIES, ensure_tls, issue, new_ca, party_files
from symbi_cli.runtime_options import ALL_SERVICES, DATABASE_SERVICES
from symbi_fixtures.pem_files import write_pem_pair
from symbi_fixtures.runtimes import take_free_port

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
    assert secrets == {f"symbi-{service}-keys", f"symbi-{service}-env", f"symbi-{service}-tls"}
    assert mounted_secrets(spec, container) == {"/keys": f"symbi-{service}-keys", "/tls": f"symbi-{service}-tls"}
    assert container["command"] == ["python", "-m", f"symbi_{service.replace('-', '_')}"]
    assert {"readinessProbe", "livenessProbe", "resources"} <= set(container)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_each_service_serves_its_api_over_https_with_its_own_certificate(service: str) -> None:
    """The service is told to serve HTTPS with the certificate and key of its own TLS Secret (mounted at /tls),
    and the kubelet's probes speak HTTPS to it; an annotation naming a scrape scheme, if any, says https."""
    obj = find("DaemonSet" if service == "sandbox-agent" else "Deployment", f"symbi-{service}")
    spec = pod_spec(obj)
    (container,) = spec["containers"]
    env = {var["name"]: var.get("value") for var in container["env"]}
    (tls,) = [path for path, name in mounted_secrets(spec, container).items() if name == f"symbi-{service}-tls"]
    assert (env.get("SYMBI_HTTP_TLS_CERT"), env.get("SYMBI_HTTP_TLS_KEY")) == (f"{tls}/cert.pem", f"{tls}/key.pem")
    probes = {
        name: container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe") if name in container
    }
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for name, probe in probes.items():
        assert probe["httpGet"]["port"] == "http", (service, name)
        assert probe["httpGet"].get("scheme") == "HTTPS", (service, name)
    assert obj["spec"]["template"]["metadata"]["annotations"].get("prometheus.io/scheme", "https") == "https"
    # Spans go to Jaeger over mutual TLS with the same certificate, as in the compose file.
    assert {k: v for k, v in env.items() if k.startswith("OTEL_EXPORTER_OTLP_")} == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://jaeger:4318",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": f"{tls}/ca.pem",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": f"{tls}/cert.pem",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": f"{tls}/key.pem",
    }


def test_jaeger_takes_spans_over_mutual_tls_with_its_own_certificate() -> None:
    """Jaeger's OTLP receiver presents the certificate of Secret symbi-jaeger-tls and asks each sender for one of
    the deployment's CA (tests/e2e/test_jaeger_tls.py runs this configuration in a real Jaeger)."""
    spec = pod_spec(find("Deployment", "symbi-jaeger"))
    (container,) = spec["containers"]
    assert mounted_secrets(spec, container) == {"/tls": "symbi-jaeger-tls"}
    config = yaml.safe_load(find("ConfigMap", "symbi-jaeger-config")["data"]["jaeger.yaml"])
    assert config["receivers"]["otlp"]["protocols"]["http"]["tls"] == {
        "cert_file": "/tls/cert.pem",
        "key_file": "/tls/key.pem",
        "client_ca_file": "/tls/ca.pem",
    }


def test_the_provisioning_job_runs_with_only_its_own_secrets() -> None:
    spec = pod_spec(find("Job", "symbi-provision"))
    (container,) = spec["containers"]
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == ["symbi-provision-env"]
    assert mounted_secrets(spec, container) == {"/registry": "symbi-registry", "/tls": "symbi-provision-tls"}


def mounted_secrets(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """Where ``container`` mounts each Secret volume of its pod: mount path → Secret name (read-only, each)."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] in secrets}
    assert all(m.get("readOnly") is True for m in mounts.values()), mounts
    return {path: secrets[m["name"]] for path, m in mounts.items()}


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
    assert "routes: [$NATS_ROUTE_0, $NATS_ROUTE_1, $NATS_ROUTE_2]" in conf
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


def tls_parties() -> set[str]:
    """Every party whose TLS directory the cluster gets as a Secret: nats-server, Jaeger, the services,
    provisioning."""
    return {NATS_PARTY, JAEGER_PARTY, *ALL_SERVICES, "provision"}


def pods() -> dict[str, dict[str, Any]]:
    """Each workload's pod spec, by its ``app.kubernetes.io/name`` without ``symbi-`` (its party's name)."""
    found = {}
    for obj in objects():
        if "template" in obj.get("spec", {}):
            found[obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"].removeprefix("symbi-")] = (
                pod_spec(obj)
            )
    return found


def test_each_pod_mounts_only_its_own_tls_secret_and_the_ca_key_nowhere() -> None:
    """A pod that speaks to NATS mounts its own party's TLS Secret at /tls and no other party's; the operator's
    TLS directory and the CA's key (DIR/operator/tls-ca.key) are in no Secret and no manifest."""
    text = "\n".join((K8S / name).read_text() for name in [*manifests(), "kustomization.yaml"])
    assert "tls-ca.key" not in text
    assert "symbi-operator-tls" not in text
    sources = re.findall(r"--from-(?:env-)?file=(\S+)", text)
    assert sources, "no Secret sources in kustomization.yaml"
    assert not [s for s in sources if s.startswith(("DIR/operator", "DIR/tls/operator")) or s == "DIR/tls/"], sources
    mounted = {}
    for party, spec in pods().items():
        (container,) = spec["containers"]
        tls = {path: name for path, name in mounted_secrets(spec, container).items() if name.endswith("-tls")}
        if tls:
            mounted[party] = tls
    assert mounted == {party: {"/tls": f"symbi-{party}-tls"} for party in tls_parties()}
    # every party `symbi deploy init` issues a certificate to, but the operator's CLI (outside the cluster)
    assert tls_parties() == set(PARTIES) - {"operator"}


def test_nats_speaks_mutual_tls_to_clients_and_routes_and_plain_http_to_probes() -> None:
    """nats.conf asks a client certificate from every client (port 4222, mapped to its user) and every route
    (``cluster``), signed by the CA of its own /tls; the monitoring port stays plain HTTP for the probes and
    Prometheus."""
    conf = find("ConfigMap", "symbi-nats-config")["data"]["nats.conf"]
    cluster = conf_block(conf, "cluster")
    outside = conf.replace(cluster, "")
    expected = {
        "cert_file": '"/tls/cert.pem"',
        "key_file": '"/tls/key.pem"',
        "ca_file": '"/tls/ca.pem"',
        "verify": "true",
        "timeout": "2",
    }
    # Clients: the certificate also names the user it logs in as (verify_and_map, which verifies as well).
    clients = {k: v for k, v in expected.items() if k != "verify"} | {"verify_and_map": "true"}
    assert conf_settings(conf_block(outside, "tls")) == clients
    assert conf_settings(conf_block(cluster, "tls")) == expected
    assert "http_port: 8222" in outside
    assert "https" not in conf
    spec = pod_spec(find("StatefulSet", "symbi-nats"))
    (container,) = spec["containers"]
    assert mounted_secrets(spec, container) == {"/tls": "symbi-nats-tls"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "monitor"
        assert "scheme" not in container[probe]["httpGet"]  # HTTP


def conf_block(text: str, name: str) -> str:
    """The first ``name { ... }`` block of a nats.conf text at the outermost level it occurs (braces matched)."""
    match = re.search(rf"^\s*{name}\s*\{{", text, re.MULTILINE)
    assert match is not None, f"no {name} block in {text}"
    depth = 0
    for end in range(match.end() - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[match.start() : end + 1]
    raise AssertionError(f"unbalanced {name} block")


def conf_settings(block: str) -> dict[str, str]:
    """The ``key: value`` lines of a block without nested blocks."""
    inner = block[block.index("{") + 1 : block.rindex("}")]
    assert "{" not in inner, block
    return dict(line.strip().split(": ", 1) for line in inner.splitlines() if line.strip())


def secret_files(spec: dict[str, Any], volume: dict[str, Any]) -> tuple[int, int, int]:
    """(owner, group, mode) of a Secret volume's files as the kubelet writes them: owned by root with the volume's
    ``defaultMode`` (0644 when unset); with the pod's ``fsGroup`` their group is that group, which may read them
    (the kubelet adds r--r----- to a read-only volume's files)."""
    mode = volume["secret"].get("defaultMode", 0o644)
    fs_group = spec["securityContext"].get("fsGroup")
    if fs_group is None:
        return 0, 0, mode
    return 0, fs_group, mode | 0o440


def may_read(uid: int, groups: set[int], owner: int, group: int, mode: int) -> bool:
    if uid == 0:
        return True
    if uid == owner:
        return bool(mode & 0o400)
    if group in groups:
        return bool(mode & 0o040)
    return bool(mode & 0o004)


def test_each_container_can_read_its_secrets_and_other_users_cannot() -> None:
    """A container's own user (its uid, its fsGroup) can read every Secret it mounts, private keys included: a
    Secret's files are root's unless the pod has an fsGroup, so a non-root service needs one. No Secret holding
    a private key is readable by any other user (no bits for others); only the public registry is."""
    public = {"symbi-registry"}
    for party, spec in pods().items():
        (container,) = spec["containers"]
        context = {**spec["securityContext"], **container.get("securityContext", {})}
        uid = context["runAsUser"]
        groups = {g for g in (context.get("runAsGroup"), spec["securityContext"].get("fsGroup")) if g is not None}
        groups |= set(spec["securityContext"].get("supplementalGroups", []))
        volumes = {v["name"]: v for v in spec.get("volumes", []) if "secret" in v}
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                continue
            volume = volumes[mount["name"]]
            owner, group, mode = secret_files(spec, volume)
            assert may_read(uid, groups, owner, group, mode), (party, mount["mountPath"], uid, oct(mode))
            if volume["secret"]["secretName"] not in public:
                assert mode & 0o007 == 0, (party, mount["mountPath"], oct(mode))


def test_prometheus_discovers_and_labels_every_service_pod() -> None:
    """The pod-discovery relabelling, applied to each service's pod template as Prometheus would: every
    service is kept, at its HTTP container port and metrics path, with the ``service`` label the dashboards use."""
    config = yaml.safe_load(find("ConfigMap", "symbi-prometheus-config")["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["symbi"]}}]
    for service in ALL_SERVICES:
        obj = find("DaemonSet" if service == "sandbox-agent" else "Deployment", f"symbi-{service}")
        template = obj["spec"]["template"]
        meta = {
            "__meta_kubernetes_pod_ip": "10.0.0.7",
            "__meta_kubernetes_pod_name": f"symbi-{service}-0",
            "__scheme__": job.get("scheme", "http"),  # as Prometheus starts each target, before relabelling
        }
        for key, value in {**template["metadata"]["annotations"], **template["metadata"]["labels"]}.items():
            kind = "annotation" if key in template["metadata"].get("annotations", {}) else "label"
            meta[f"__meta_kubernetes_pod_{kind}_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}"] = value
        target = relabel(meta, job["relabel_configs"])
        assert target is not None, f"{service}'s pods are not scraped"
        (container,) = pod_spec(obj)["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        assert target["__address__"] == f"10.0.0.7:{port}"
        assert target["__metrics_path__"] == "/metrics"
        assert target["__scheme__"] == "https"
        assert target["service"] == service
    unannotated = {"__meta_kubernetes_pod_ip": "10.0.0.9", "__meta_kubernetes_pod_name": "symbi-postgres-0"}
    assert relabel(unannotated, job["relabel_configs"]) is None


def prometheus_job() -> dict[str, Any]:
    """The one scrape job of deploy/k8s/prometheus.yaml."""
    config = yaml.safe_load(find("ConfigMap", "symbi-prometheus-config")["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert isinstance(job, dict)
    return job


def test_prometheus_scrapes_over_https_checking_the_deployment_ca_it_alone_mounts() -> None:
    """The services' pods are scraped over HTTPS, each checked against the deployment's CA for the shared service
    name (they are scraped by address, which no certificate names), never without checking. That CA comes from
    Secret symbi-tls-ca, mounted at /tls in Prometheus' pod and in no other."""
    job = prometheus_job()
    assert job["scheme"] == "https"
    assert job["tls_config"] == {"ca_file": "/tls/ca.pem", "server_name": "symbi-service"}
    spec = pod_spec(find("Deployment", "symbi-prometheus"))
    (container,) = spec["containers"]
    assert mounted_secrets(spec, container) == {"/tls": "symbi-tls-ca"}
    mounting = {
        party
        for party, pod in pods().items()
        for v in pod.get("volumes", [])
        if v.get("secret", {}).get("secretName") == "symbi-tls-ca"
    }
    assert mounting == {"prometheus"}


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


# --- NATS routes ----------------------------------------------------------------------------------


def kubernetes_env(container: dict[str, Any], secrets: dict[str, dict[str, str]], pod_name: str) -> dict[str, str]:
    """A container's environment as the kubelet builds it: ``envFrom`` Secrets first, then ``env`` in order,
    each ``$(VAR)`` replaced by a variable defined before it (an undefined one stays as written)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "valueFrom" in var:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, var
            env[var["name"]] = pod_name
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
    return env


def test_nats_routes_need_the_route_password(tmp_path: Path) -> None:
    """Every member accepts a route only with the route password, and presents it in each route URL: the
    configuration, with the Secrets `symbi deploy init` makes (its TLS files in place of /tls) and the
    environment Kubernetes builds, is one the real nats-server accepts, and every route URL carries the route
    user and password."""
    directory = tmp_path / "deploy"
    init_deploy_dir(directory, DeployConfig(), uid=os.getuid())
    secrets = {
        "symbi-nats-passwords": parse_env((directory / "env" / "nats.env").read_text()),
        "symbi-nats-route": parse_env((directory / "env" / "nats-route.env").read_text()),
    }
    route_password = secrets["symbi-nats-route"][ROUTE_PASSWORD_ENV]
    assert route_password not in secrets["symbi-nats-passwords"].values()
    conf = find("ConfigMap", "symbi-nats-config")["data"]["nats.conf"]
    cluster = conf[conf.index("cluster {") :]
    assert re.search(r"authorization \{\s*user: route\s*password: \$NATS_ROUTE_PASSWORD\b", cluster), cluster
    (container,) = pod_spec(find("StatefulSet", "symbi-nats"))["containers"]
    nats_server = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert nats_server is not None
    shutil.copy(REPO / "deploy" / "nats" / "users.conf", tmp_path / "users.conf")
    tls = party_files(directory, NATS_PARTY).directory
    ensure_tls(directory)  # kept as `symbi deploy init` left it; its certificate and key as Secret symbi-nats-tls
    assert conf.count('"/tls/') == 6, conf
    (tmp_path / "nats.conf").write_text(conf.replace('"/tls/', f'"{tls}/'))
    for pod in range(3):
        env = kubernetes_env(container, secrets, f"symbi-nats-{pod}")
        routes = [urlsplit(env[f"NATS_ROUTE_{i}"]) for i in range(3)]
        assert [(r.username, r.password) for r in routes] == [("route", route_password)] * 3
        assert [(r.hostname, r.port) for r in routes] == [(f"symbi-nats-{i}.symbi-nats", 6222) for i in range(3)]
        done = subprocess.run(
            [nats_server, "-c", str(tmp_path / "nats.conf"), "-t"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr


# --- NetworkPolicies ------------------------------------------------------------------------------

NAMESPACE = "symbi"
NAME = "app.kubernetes.io/name"
#: Pods that are no workload of the deployment: one in its namespace, one in another namespace that copies
#: Prometheus' labels, and one in a namespace labelled as the operators' entry point (an ingress controller).
STRANGER = "stranger"
ELSEWHERE = "elsewhere-as-prometheus"
OPERATORS = "operator-access"
#: A port no container declares: open to no one.
UNLISTED = 9999
SERVICE_PODS = {f"symbi-{s}" for s in ALL_SERVICES}


def expected_reach() -> dict[tuple[str, int], set[str]]:
    """(workload, port) → who may connect; every other port of every workload is reachable from no pod."""
    return {
        ("symbi-nats", 4222): SERVICE_PODS | {"symbi-provision"},
        ("symbi-nats", 6222): {"symbi-nats"},
        ("symbi-nats", 8222): {"symbi-prometheus"},
        ("symbi-postgres", 5432): {f"symbi-{s}" for s in DATABASE_SERVICES},
        ("symbi-jaeger", 4318): SERVICE_PODS,
        ("symbi-jaeger", 16686): {OPERATORS},
        ("symbi-prometheus", 9090): {OPERATORS},
        **{(pod, 8080): {"symbi-prometheus", OPERATORS} for pod in SERVICE_PODS},
    }


def workloads() -> dict[str, tuple[dict[str, str], dict[str, int]]]:
    """Each workload's pods: name → (pod labels, container port name → number)."""
    found = {}
    for obj in objects():
        if "template" in obj.get("spec", {}):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            ports = {
                p.get("name", str(p["containerPort"])): p["containerPort"]
                for c in pod_spec(obj)["containers"]
                for p in c.get("ports", [])
            }
            found[labels[NAME]] = (labels, ports)
    return found


def sources() -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Every pod that could connect: name → (pod labels, its namespace's labels)."""
    here = {"kubernetes.io/metadata.name": NAMESPACE}
    found = {name: (labels, here) for name, (labels, _) in workloads().items()}
    found[STRANGER] = ({NAME: STRANGER}, here)
    found[ELSEWHERE] = ({NAME: "symbi-prometheus"}, {"kubernetes.io/metadata.name": "elsewhere"})
    found[OPERATORS] = (
        {NAME: "ingress-nginx"},
        {"kubernetes.io/metadata.name": "ingress", "symbi.dev/operator-access": "true"},
    )
    return found


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (an empty one selects everything)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_admits(peer: dict[str, Any], labels: dict[str, str], namespace: dict[str, str]) -> bool:
    """One ``from`` entry of an ingress rule, for a pod with ``labels`` in a namespace with ``namespace`` labels."""
    if "ipBlock" in peer:
        return True  # an address range: any pod's address may be in it
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], namespace)
    else:  # a podSelector alone: the policy's own namespace
        in_namespace = namespace.get("kubernetes.io/metadata.name") == NAMESPACE
    return in_namespace and selects(peer.get("podSelector", {}), labels)


def rule_covers(ports: list[dict[str, Any]], named: dict[str, int], port: int) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in entry:
            return True
        first = named.get(entry["port"]) if isinstance(entry["port"], str) else entry["port"]
        if first is not None and first <= port <= entry.get("endPort", first):
            return True
    return False


def reach(policies: list[dict[str, Any]]) -> dict[tuple[str, int], set[str]]:
    """From the NetworkPolicies: (workload, port) → the sources that may connect, for every declared port of
    every workload and :data:`UNLISTED`. A pod no ingress policy selects accepts everyone."""
    matrix = {}
    for target, (labels, named) in workloads().items():
        applying = [
            p["spec"]
            for p in policies
            if selects(p["spec"]["podSelector"], labels) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        ]
        for port in {*named.values(), UNLISTED}:
            matrix[(target, port)] = {
                name
                for name, (source_labels, namespace) in sources().items()
                if not applying
                or any(
                    rule_covers(rule.get("ports", []), named, port)
                    and (not rule.get("from") or any(peer_admits(f, source_labels, namespace) for f in rule["from"]))
                    for spec in applying
                    for rule in spec.get("ingress", [])
                )
            }
    return matrix


def network_policies() -> list[dict[str, Any]]:
    return [o for o in objects() if o["kind"] == "NetworkPolicy"]


def test_each_port_is_reachable_only_from_the_pods_that_use_it() -> None:
    """The NetworkPolicies, applied to every workload's pods and every declared port: NATS clients from the
    services and the provisioning job, NATS routes from NATS, monitoring and metrics from Prometheus, PostgreSQL
    from the services that keep a database, OTLP from the services, the UIs and APIs from the operators' entry
    point. Nothing else, from anywhere (a pod of another namespace that copies a workload's labels included)."""
    expected = expected_reach()
    matrix = reach(network_policies())
    assert set(expected) <= set(matrix), f"not a declared port: {sorted(set(expected) - set(matrix))}"
    wrong = {
        key: (sorted(got), sorted(expected.get(key, set())))
        for key, got in matrix.items()
        if got != expected.get(key, set())
    }
    assert not wrong, f"(workload, port): (allowed, expected) {wrong}"


@pytest.mark.parametrize("name", [p["metadata"]["name"] for p in network_policies()])
def test_every_network_policy_is_needed(name: str) -> None:
    """Without any one of the policies the matrix above is wrong: each one's absence would be noticed."""
    rest = [p for p in network_policies() if p["metadata"]["name"] != name]
    assert reach(rest) != expected_reach()


def test_a_policy_that_is_too_wide_is_noticed() -> None:
    """The matrix catches a rule that admits more than it should: any pod of the namespace to NATS's clients'
    port, or a podSelector that another namespace's pods match too."""
    wider: list[dict[str, Any]] = [
        {"podSelector": {}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {NAME: "symbi-prometheus"}}},
    ]
    for widen in wider:
        policies = [dict(p, spec=dict(p["spec"])) for p in network_policies()]
        nats = next(p for p in policies if p["metadata"]["name"] == "symbi-nats")
        nats["spec"]["ingress"] = [{**rule, "from": [*rule["from"], widen]} for rule in nats["spec"]["ingress"]]
        assert reach(policies) != expected_reach(), widen


def referenced_secrets() -> dict[str, set[str]]:
    """Each Secret deploy/k8s uses → the keys its users name (empty: the whole Secret, as a volume or envFrom)."""
    used: dict[str, set[str]] = {}
    for obj in objects():
        if obj["kind"] not in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            continue
        spec = pod_spec(obj)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                used.setdefault(volume["secret"]["secretName"], set())
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                used.setdefault(source["secretRef"]["name"], set())
            for var in container.get("env", []):
                if "secretKeyRef" in var.get("valueFrom", {}):
                    ref = var["valueFrom"]["secretKeyRef"]
                    used.setdefault(ref["name"], set()).add(ref["key"])
    return used


def test_k8s_secrets_makes_every_secret_the_manifests_use_from_its_own_part_of_the_directory(tmp_path: Path) -> None:
    """``symbi deploy k8s-secrets DIR`` (deploy_k8s): exactly the Secrets the manifests mount, each valid for the
    schema, with the files or variables of its own part of the directory — and no byte of the operator's keys."""
    directory = tmp_path / "deploy"
    init_deploy_dir(directory, DeployConfig(), uid=os.getuid())
    done = subprocess.run(
        [str(Path(sys.executable).parent / "symbi"), "deploy", "k8s-secrets", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
    for item in listed["items"]:
        kubernetes_validate.validate(item, K8S_VERSION, strict=True)
    secrets = {item["metadata"]["name"]: item for item in listed["items"]}
    used = referenced_secrets()
    assert set(secrets) == set(used), "a Secret the manifests use is not made, or one is made that none uses"
    data = {name: {k: base64.b64decode(v) for k, v in s["data"].items()} for name, s in secrets.items()}
    for name, keys in used.items():
        assert keys <= set(data[name]), (name, keys - set(data[name]))
        assert secrets[name]["metadata"]["namespace"] == "symbi"

    def files(path: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}

    for service in ALL_SERVICES:
        assert data[f"symbi-{service}-keys"] == files(directory / "keys" / service)
        assert data[f"symbi-{service}-tls"] == files(directory / "tls" / service)
        env = parse_env((directory / "env" / f"{service}.env").read_text())
        assert data[f"symbi-{service}-env"] == {k: v.encode() for k, v in env.items()}
    assert data["symbi-nats-tls"] == files(directory / "tls" / NATS_PARTY)
    assert data["symbi-jaeger-tls"] == files(directory / "tls" / JAEGER_PARTY)
    assert data["symbi-provision-tls"] == files(directory / "tls" / "provision")
    # Prometheus' CA Secret: the CA's certificate and nothing else; every service's HTTPS certificate is one of
    # that CA, for the name Prometheus checks, and its env names files its own TLS Secret has.
    assert data["symbi-tls-ca"] == {"ca.pem": (directory / "tls" / "ca.pem").read_bytes()}
    ca = x509.load_pem_x509_certificate(data["symbi-tls-ca"]["ca.pem"])
    server_name = prometheus_job()["tls_config"]["server_name"]
    for service in ALL_SERVICES:
        tls = data[f"symbi-{service}-tls"]
        cert = x509.load_pem_x509_certificate(tls["cert.pem"])
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert server_name in names.get_values_for_type(x509.DNSName), (service, names)
        kind = "DaemonSet" if service == "sandbox-agent" else "Deployment"
        (container,) = pod_spec(find(kind, f"symbi-{service}"))["containers"]
        env = {var["name"]: var.get("value", "") for var in container["env"]}
        for var in ("SYMBI_HTTP_TLS_CERT", "SYMBI_HTTP_TLS_KEY"):
            assert Path(env[var]).name in tls, (service, var)
    assert set(data["symbi-registry"]) == {"registry.json", "registry.json.sig", "root.pub"}
    assert set(data["symbi-postgres"]) == {p.name for p in (directory / "postgres").iterdir()}
    assert data["symbi-nats-route"] == {
        ROUTE_PASSWORD_ENV: parse_env((directory / "env" / "nats-route.env").read_text())[ROUTE_PASSWORD_ENV].encode()
    }
    # The operator's own: the root key, the token issuer's key, the TLS CA's key, its TLS key and certificate.
    # (secrets.key is in operator/ and in the sandbox-agent's keys by design: docs/secrets.md.)
    own = [p for p in (directory / "operator").iterdir() if p.suffix == ".key" and p.name != "secrets.key"]
    own += [p for p in (directory / "tls" / "operator").iterdir() if p.name != "ca.pem"]
    assert {p.name for p in own} >= {"root.key", "operator-issuer.key", "tls-ca.key", "key.pem", "cert.pem"}
    operator = [p.read_bytes().strip() for p in own]
    every = [value for secret in data.values() for value in secret.values()]
    leaked = [o[:12] for o in operator if any(o in value for value in every)]
    assert not leaked, f"the operator's key material is in a Secret: {leaked}"
    assert not [name for name, value in data["symbi-tls-ca"].items() if b"PRIVATE KEY" in value]


def test_k8s_secrets_refuses_a_directory_deploy_init_did_not_write(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "symbi"), "deploy", "k8s-secrets", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "1000"},
    )
    assert done.returncode == 1
    assert "run `symbi deploy init` on the directory first" in done.stderr
    assert done.stdout == ""


# --- Prometheus' scrape over HTTPS, with a real Prometheus ----------------------------------------------


def prometheus_binary() -> Path:
    """Prometheus 3.16.0 as ``deploy/host/tools.sh prometheus`` built it (the image's own version)."""
    found = subprocess.run(
        [str(REPO / "deploy/host/tools.sh"), "--print", "prometheus"], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        pytest.fail("Prometheus is not built: run deploy/host/tools.sh prometheus")
    return Path(found.stdout.strip())


class MetricsHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with one sample in Prometheus' text format."""

    def do_GET(self) -> None:
        body = b"symbi_scrape_check 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def https_server(cert: Path, key: Path) -> Iterator[int]:
    """An HTTPS server on loopback showing ``cert``; yields its port. A refused handshake drops that connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", take_free_port()), MetricsHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.deploy
def test_a_real_prometheus_scrapes_a_services_certificate_and_refuses_others(tmp_path: Path) -> None:
    """The manifest's scrape settings (scheme, tls_config) run in Prometheus 3.16.0 against loopback targets, as
    it reaches pods by address, with the CA file Secret symbi-tls-ca holds: a server showing a service's
    certificate from `symbi deploy init` is scraped; one showing nats-server's certificate (the deployment's CA,
    not the service name) or a certificate of another CA for the service name is not."""
    directory = tmp_path / "deploy"
    init_deploy_dir(directory, DeployConfig(), uid=os.getuid())
    (ca_secret,) = [s for s in k8s_secrets(directory)["items"] if s["metadata"]["name"] == "symbi-tls-ca"]
    mounted = tmp_path / "prometheus-tls"  # what Prometheus' pod sees at /tls
    mounted.mkdir()
    for name, value in ca_secret["data"].items():
        (mounted / name).write_bytes(base64.b64decode(value))
    job = prometheus_job()
    assert job["tls_config"]["ca_file"].startswith("/tls/")
    tls_config = {**job["tls_config"], "ca_file": str(mounted / job["tls_config"]["ca_file"].removeprefix("/tls/"))}
    other_key, other_ca = new_ca()
    stranger = write_pem_pair(
        tmp_path / "stranger", *issue(other_key, other_ca, "lifecycle", server_names=["symbi-service"])
    )
    servers = {
        "service": (party_files(directory, "lifecycle").cert, party_files(directory, "lifecycle").key),
        "nats": (party_files(directory, NATS_PARTY).cert, party_files(directory, NATS_PARTY).key),
        "other-ca": stranger,
    }
    with contextlib.ExitStack() as stack:
        ports = {case: stack.enter_context(https_server(*files)) for case, files in servers.items()}
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": job["job_name"],
                    "scheme": job["scheme"],
                    "tls_config": tls_config,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": {"case": case}} for case, port in ports.items()
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        web = take_free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        stack.callback(log.close)
        prometheus = subprocess.Popen(
            [
                str(prometheus_binary()),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(prometheus.wait, 30)
        stack.callback(prometheus.terminate)
        health = scraped_health(f"http://127.0.0.1:{web}", set(ports), prometheus)
    assert {case: up for case, (up, _) in health.items()} == {"service": "up", "nats": "down", "other-ca": "down"}
    for case in ("nats", "other-ca"):
        assert "certificate" in health[case][1], health[case]


def scraped_health(url: str, cases: set[str], prometheus: subprocess.Popen[bytes]) -> dict[str, tuple[str, str]]:
    """Each target's health and last error once Prometheus has scraped them all (within 60 s)."""
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url, timeout=5) as http_client:
        while time.monotonic() < deadline:
            assert prometheus.poll() is None, "Prometheus exited (see prometheus.log)"
            try:
                targets = http_client.get("/api/v1/targets").json()["data"]["activeTargets"]
            except httpx.TransportError:
                targets = []
            health = {t["labels"]["case"]: (t["health"], t["lastError"]) for t in targets}
            if set(health) == cases and "unknown" not in {up for up, _ in health.values()}:
                return health
            time.sleep(0.5)
    raise AssertionError("Prometheus did not scrape every target within 60 s")
