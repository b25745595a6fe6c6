"""Diagnostics a person can act on: file, line, column, the source line with a caret under the problem, a hint.

Every check collects diagnostics instead of stopping at the first, and :class:`DslError` carries all
of them, so one run of ``symbi dsl check`` shows everything wrong with a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from symbi_common.errors import DomainError

from symbi_dsl.ast import Span

DEFAULT_FILE = "<definition>"

#: Warning codes for what Symbi cannot honour at run time: shown by ``check``, refused at registration.
UNSUPPORTED = frozenset({"unsupported", "policy"})


class Diagnostic(msgspec.Struct, frozen=True, kw_only=True):
    """One problem in a definition. ``line``/``column`` are 1-based; ``excerpt`` is the line plus a caret."""

    code: str
    message: str
    severity: str = "error"
    file: str = DEFAULT_FILE
    line: int = 0
    column: int = 0
    length: int = 1
    excerpt: str = ""
    hint: str = ""

    def render(self) -> str:
        """``file:line:col: error: message``, the excerpt, and the hint (the format compilers use)."""
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        parts = [f"{where}: {self.severity}[{self.code}]: {self.message}"]
        if self.excerpt:
            parts.append(self.excerpt)
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)


def excerpt(source: str, line: int, column: int, length: int = 1) -> str:
    """The source line ``line`` with a caret run under ``column`` … ``column + length - 1``."""
    lines = source.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    text = lines[line - 1].replace("\t", " ")
    if len(text) > 160:  # keep very long lines readable: a window around the column
        start = max(0, column - 80)
        text, column = text[start : start + 160], column - start
    width = max(1, min(length, len(text) - column + 1))
    gutter = f"{line:>5} | "
    return f"{gutter}{text}\n{' ' * (len(gutter) - 2)}| {' ' * (column - 1)}{'^' * width}"


class Reporter:
    """Collects the diagnostics of one file, computing each one's excerpt from the source."""

    def __init__(self, source: str, file: str = DEFAULT_FILE, *, strict: bool = False) -> None:
        self.source = source
        self.file = file
        self.strict = strict
        self.diagnostics: list[Diagnostic] = []

    def warn(self, code: str, message: str, span: Span | None, hint: str = "") -> None:
        """A problem Symbiont itself accepts (our extra strictness, or what Symbi cannot honour): printed, but
        only an error under ``strict``. Codes in :data:`UNSUPPORTED` are refused when an agent is registered."""
        self.error(code, message, span, hint, severity="error" if self.strict else "warning")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def error(self, code: str, message: str, span: Span | None, hint: str = "", severity: str = "error") -> None:
        line, column = (span.line, span.column) if span is not None else (0, 0)
        length = 1
        if span is not None and span.end_line == span.line and span.end_column > span.column:
            length = span.end_column - span.column
        self.diagnostics.append(
            Diagnostic(
                code=code,
                message=message,
                severity=severity,
                file=self.file,
                line=line,
                column=column,
                length=length,
                excerpt=excerpt(self.source, line, column, length) if line else "",
                hint=hint,
            )
        )

    def raise_if_any(self) -> None:
        """:class:`DslError` (with the warnings too) if any error was reported."""
        if self.errors:
            raise DslError(self.diagnostics)


class DslError(DomainError):
    """A definition has problems; ``diagnostics`` lists every one found (warnings too), in source order."""

    code = "dsl_error"

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        ordered = sorted(diagnostics, key=lambda d: (d.file, d.line, d.column))
        worst = next((d for d in ordered if d.severity == "error"), ordered[0] if ordered else None)
        first = worst.render().splitlines()[0] if worst is not None else "invalid definition"
        more = f" (and {len(ordered) - 1} more)" if len(ordered) > 1 else ""
        details: dict[str, Any] = {"diagnostics": [msgspec.to_builtins(d) for d in ordered]}
        super().__init__(f"{first}{more}", **details)
        self.diagnostics = ordered

    def render(self) -> str:
        return "\n\n".join(d.render() for d in self.diagnostics)
