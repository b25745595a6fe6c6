"""Deployment tests. Those marked ``deploy`` (test_compose.py: the compose stack) are left out of a plain
``pytest`` run, and so of ``.ci/run``: they build images and start eleven containers, which takes minutes on
two cores. The others (replicas, Kubernetes manifests) run by default. Run the ``deploy`` ones with::

    uv run pytest -m deploy tests/deploy

They need root (the deployment directory's key directories are handed to the containers' uid), Docker with
symbi/busybox:1 (deploy/host/setup-docker.sh), docker-compose (deploy/host/tools.sh compose) and the cached
Jaeger and Prometheus builds (deploy/host/tools.sh; built here when missing).
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
