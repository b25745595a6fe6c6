"""Text from outside that PostgreSQL could not store is refused at the edge, naming where it is."""

from __future__ import annotations

import msgspec
import pytest
from symbi_common.bounds import check_no_nul, query_text
from symbi_common.errors import BadRequest


class Inner(msgspec.Struct):
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = msgspec.field(default_factory=dict)


class Outer(msgspec.Struct):
    name: str
    inner: Inner


def test_query_text() -> None:
    assert query_text(None, "q") is None
    assert query_text("", "q") is None
    assert query_text("ada", "q") == "ada"
    with pytest.raises(BadRequest, match="q: must not contain a NUL"):
        query_text("a\x00", "q")
    with pytest.raises(BadRequest, match="q: 1025 characters, at most 1024"):
        query_text("x" * 1025, "q")


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (Outer(name="a\x00", inner=Inner()), "name"),
        (Outer(name="a", inner=Inner(tags=("ok", "b\x00"))), "inner.tags[1]"),
        (Outer(name="a", inner=Inner(meta={"k": "\x00"})), "inner.meta.k"),
        (Outer(name="a", inner=Inner(meta={"k\x00": "v"})), "inner.meta.k\x00"),
    ],
)
def test_a_nul_anywhere_in_a_body_is_refused_by_its_path(value: Outer, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_no_nul(value)
    assert caught.value.details["field"] == field


def test_bodies_without_nul_pass() -> None:
    check_no_nul(Outer(name="a", inner=Inner(tags=("x",), meta={"k": "v"})))
