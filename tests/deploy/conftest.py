"""Deployment tests. Those marked ``deploy`` (test_compose.py: the compose stack, with each compose;
test_dockerfile.py: deploy/Dockerfile on a stand-in base) are left out of a plain ``pytest`` run: they build
images and start twelve containers, which takes minutes on two cores. ``.ci/run`` runs them as a step of its own
after the main run. The others (replicas, Kubernetes manifests) run by default. Run the ``deploy`` ones with::

    deploy/host/tools.sh compose compose-v5 prometheus && uv run pytest -m deploy tests/deploy

They need root (the deployment directory's key directories are handed to the containers' uid; debootstrap),
Docker with symbi/busybox:1 (deploy/host/setup-docker.sh), Docker Compose v5 and Debian's docker-compose, and
the cached Jaeger and Prometheus builds (deploy/host/tools.sh; built here when missing).
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``deploy`` tests unless the ``-m`` expression names them."""
    if "deploy" in (config.getoption("markexpr") or ""):
        return
    keep = [item for item in items if item.get_closest_marker("deploy") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("deploy")])
        items[:] = keep
