"""The Kubernetes Secrets of a deployment directory (``symbi deploy k8s-secrets DIR | kubectl apply -f -``).

deploy/k8s mounts one set of Secrets per party, each made from its own part of the directory ``symbi deploy
init`` writes: a service's keys (``symbi-<service>-keys``), its env file (``symbi-<service>-env``: its NATS
user, its database role) and its TLS certificate (``symbi-<service>-tls``); NATS' users' passwords, route
password and certificate; Jaeger's certificate (``symbi-jaeger-tls``, its OTLP receiver's); the provisioning
job's env and certificate; the deployment's CA certificate alone (``symbi-tls-ca``: Prometheus checks the
services' HTTPS certificates against it); the public registry files; PostgreSQL's passwords. Made here as one
``v1/List``, so nothing is left out or mounted from the wrong directory. What is the operator's
(``DIR/operator/``: the root key, the token issuer's key, the TLS CA's key; ``DIR/tls/operator``) goes into none
of them.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from symbi_cli.deploy_dir import parse_env
from symbi_cli.deploy_tls import CA_CERT_FILE, JAEGER_PARTY, NATS_PARTY, party_files
from symbi_cli.errors import CliError
from symbi_cli.runtime_options import ALL_SERVICES

NAMESPACE = "symbi"
#: The public files of the keyring the provisioning job publishes (Secret ``symbi-registry``).
REGISTRY_FILES = ("registry.json", "registry.json.sig", "root.pub")


def _secret(name: str, data: dict[str, bytes], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "symbi"}},
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode() for key, value in sorted(data.items())},
    }


def _files(paths: list[Path]) -> dict[str, bytes]:
    """Each file by its name, like ``kubectl create secret --from-file`` (a missing one is an error)."""
    try:
        return {path.name: path.read_bytes() for path in paths}
    except FileNotFoundError as exc:
        raise CliError(f"{exc.filename} is missing: run `symbi deploy init` on the directory first") from None


def _directory(path: Path) -> dict[str, bytes]:
    if not path.is_dir():
        raise CliError(f"{path} is missing: run `symbi deploy init` on the directory first")
    return _files(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))


def _env(path: Path) -> dict[str, bytes]:
    """The variables of an env file, like ``kubectl create secret --from-env-file``."""
    (text,) = _files([path]).values()
    return {key: value.encode() for key, value in parse_env(text.decode()).items()}


def k8s_secrets(directory: Path, namespace: str = NAMESPACE) -> dict[str, Any]:
    """Every Secret deploy/k8s mounts, from ``directory``, as one ``v1/List``."""
    env, keys = directory / "env", directory / "keys"
    made: list[tuple[str, dict[str, bytes]]] = []
    for service in ALL_SERVICES:
        made.append((f"symbi-{service}-keys", _directory(keys / service)))
        made.append((f"symbi-{service}-env", _env(env / f"{service}.env")))
        made.append((f"symbi-{service}-tls", _directory(party_files(directory, service).directory)))
    made += [
        ("symbi-nats-passwords", _env(env / "nats.env")),
        ("symbi-nats-route", _env(env / "nats-route.env")),
        ("symbi-nats-tls", _directory(party_files(directory, NATS_PARTY).directory)),
        ("symbi-jaeger-tls", _directory(party_files(directory, JAEGER_PARTY).directory)),
        ("symbi-provision-env", _env(env / "provision.env")),
        ("symbi-provision-tls", _directory(party_files(directory, "provision").directory)),
        ("symbi-tls-ca", _files([directory / CA_CERT_FILE])),  # ca.pem: the certificate, never the CA's key
        ("symbi-registry", _files([keys / name for name in REGISTRY_FILES])),
        ("symbi-postgres", _directory(directory / "postgres")),
    ]
    return {"apiVersion": "v1", "kind": "List", "items": [_secret(name, data, namespace) for name, data in made]}
