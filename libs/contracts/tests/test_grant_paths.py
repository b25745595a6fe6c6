"""The filesystem-grant path rule shared by registration (lifecycle, DSL compiler) and the sandbox-agent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from symbi_contracts.grant_paths import MAX_COMPONENTS, BadPath, grant_path_problem, path_components

REFUSED = [
    ("relative/dir", "must be an absolute path"),
    ("/data/./logs", "'.', '..' or '//'"),
    ("/data/../etc", "'.', '..' or '//'"),
    ("/data//logs", "'.', '..' or '//'"),
    ("/data/logs/.", "'.', '..' or '//'"),
    ("/data/logs/..", "'.', '..' or '//'"),
    ("/./data", "'.', '..' or '//'"),
    ("/data/lo\x00gs", "not printable"),
    ("/data/\nlogs", "not printable"),
    ("/data/" + "x" * 256, "too long"),
    ("/" + "/".join(["d"] * (MAX_COMPONENTS + 1)), f"more than {MAX_COMPONENTS} components"),
]


@pytest.mark.parametrize(("path", "why"), REFUSED)
def test_a_grant_path_with_dot_components_or_worse_is_refused_saying_why(path: str, why: str) -> None:
    problem = grant_path_problem(path)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize("path", ["/data", "/data/", "/symbi/data/logs/app", "/srv/data-2/x_y.z", "/"])
def test_plain_absolute_paths_are_grantable(path: str) -> None:
    assert grant_path_problem(path) is None


@given(st.lists(st.text(st.characters(blacklist_characters="/\x00"), min_size=1, max_size=12), max_size=8))
def test_components_round_trip_or_are_refused(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    try:
        got = path_components(path)
    except BadPath:
        assert any(p in (".", "..") or not p.isprintable() for p in parts)
        return
    assert got == tuple(parts)
