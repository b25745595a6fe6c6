"""deploy/dashboards: Grafana dashboards as JSON (written here; no Grafana code), each query over documented metrics.

That every query is valid PromQL that the real Prometheus evaluates is checked against the compose stack
(tests/deploy/test_compose.py, marker ``deploy``); here: the JSON's shape and that each ``symbi_*`` series a
panel asks for is one docs/observability.md documents.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "deploy" / "dashboards").glob("*.json"))
#: A histogram's series are its name with these suffixes.
SUFFIXES = ("_bucket", "_count", "_sum")


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel of every dashboard."""
    out = []
    for path in DASHBOARDS:
        dashboard: dict[str, Any] = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            out.extend((panel["title"], target["expr"]) for target in panel["targets"])
    return out


def documented_metrics() -> set[str]:
    text = (REPO / "docs" / "observability.md").read_text()
    return set(re.findall(r"`(symbi_[a-z_]+)`", text))


def test_every_panel_queries_documented_metrics_only() -> None:
    assert DASHBOARDS, "no dashboard in deploy/dashboards"
    documented = documented_metrics()
    for title, expr in queries():
        used = set(re.findall(r"\bsymbi_[a-z_]+", expr))
        for name in used:
            base = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
            assert base in documented, f"panel {title!r} asks for {name}, which docs/observability.md does not list"


def test_panels_have_unique_ids_and_a_prometheus_datasource() -> None:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path
        assert all(p["datasource"]["type"] == "prometheus" for p in dashboard["panels"]), path
