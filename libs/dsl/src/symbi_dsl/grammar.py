"""The LALR parser of ``symbiont.lark`` (built once), with the comments it meets collected per thread."""

from __future__ import annotations

import threading
from functools import cache
from importlib import resources

import lark
from lark import Token

from symbi_dsl.builder import BUILD


class _Comments(threading.local):
    items: list[tuple[int, int, str]]

    def __init__(self) -> None:
        self.items = []


comments = _Comments()


def _collect_comment(tok: Token) -> Token:
    comments.items.append((tok.line or 0, tok.column or 0, str(tok).rstrip()))
    return tok


@cache
def lark_parser() -> lark.Lark:
    grammar = resources.files("symbi_dsl").joinpath("symbiont.lark").read_text(encoding="utf-8")
    return lark.Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        maybe_placeholders=True,
        transformer=BUILD,
        lexer_callbacks={"COMMENT": _collect_comment},
    )


def raw_parser() -> lark.Lark:
    """The grammar without the tree building (the baseline of the parse benchmark)."""
    grammar = resources.files("symbi_dsl").joinpath("symbiont.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=True)
