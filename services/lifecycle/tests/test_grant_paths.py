"""Filesystem grant paths are checked at registration with the sandbox-agent's rule (a typed ConfigIssue),
not only when a task's sandbox is started."""

from __future__ import annotations

from symbi_lifecycle.config import convert_config, validate_config


def test_grant_paths_with_dot_components_are_refused_at_registration() -> None:
    paths = ["/data/ok", "/data/./x", "/data/../etc", "/data//x", "/data/x/.", "rel", "/data/ok/"]
    config = convert_config({"name": "reader", "filesystem_access": [{"path": p} for p in paths]})
    issues = {i.field: i.message for i in validate_config(config)}
    assert set(issues) == {f"filesystem_access[{i}].path" for i in (1, 2, 3, 4, 5)}
    assert "'.', '..' or '//'" in issues["filesystem_access[4].path"]
    assert "must be an absolute path" in issues["filesystem_access[5].path"]
