"""Diagnostics a person can act on: file, line, column, the source line with a caret under the problem, a hint.

Every check collects diagnostics instead of stopping at the first, and :class:`DslError` carries all
of them, so one run of ``symbi dsl check`` shows everything wrong with a file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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


#: A reporter lists at most this many errors and this many warnings; the rest are counted, and said to be there.
MAX_DIAGNOSTICS = 200


class Lines:
    """The line starts of a text, found once: line ``n`` of any size of file in constant time."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.starts = [0]
        find = source.find
        at = find("\n")
        while at >= 0:
            self.starts.append(at + 1)
            at = find("\n", at + 1)

    def count(self) -> int:
        """The number of lines (as :meth:`str.splitlines` counts them: a final newline ends the last one)."""
        n = len(self.starts)
        return n - 1 if n > 1 and self.starts[-1] == len(self.source) else n

    def window(self, line: int, start: int, width: int) -> str:
        """At most ``width`` characters of line ``line`` (1-based) from 0-based column ``start``."""
        begin = self.starts[line - 1]
        end = self.starts[line] - 1 if line < len(self.starts) else len(self.source)
        if end > begin and self.source[end - 1] == "\r":
            end -= 1
        return self.source[min(end, begin + start) : min(end, begin + start + width)]

    def length(self, line: int) -> int:
        end = self.starts[line] - 1 if line < len(self.starts) else len(self.source)
        return end - self.starts[line - 1]


def excerpt(source: str | Lines, line: int, column: int, length: int = 1) -> str:
    """The source line ``line`` with a caret run under ``column`` … ``column + length - 1``; only a window of
    160 characters around the column of a longer line."""
    lines = source if isinstance(source, Lines) else Lines(source)
    if not 1 <= line <= lines.count():
        return ""
    start = max(0, column - 80) if lines.length(line) > 160 else 0
    text = lines.window(line, start, 160).replace("\t", " ")
    column -= start
    width = max(1, min(length, len(text) - column + 1))
    gutter = f"{line:>5} | "
    return f"{gutter}{text}\n{' ' * (len(gutter) - 2)}| {' ' * (column - 1)}{'^' * width}"


@dataclass
class Unlisted:
    """What a reporter counted but did not list: errors, warnings, and the lines of unsupported warnings (which
    registration refuses, listed or not)."""

    errors: int = 0
    warnings: int = 0
    unsupported_lines: list[int] = field(default_factory=list)


class Reporter:
    """Collects the diagnostics of one file, computing each one's excerpt from the source. Lists at most
    ``limit`` errors and ``limit`` warnings (:attr:`unlisted` counts the rest)."""

    def __init__(
        self, source: str, file: str = DEFAULT_FILE, *, strict: bool = False, limit: int = MAX_DIAGNOSTICS
    ) -> None:
        self.source = source
        self.file = file
        self.strict = strict
        self.limit = limit
        self.diagnostics: list[Diagnostic] = []
        self.unlisted = Unlisted()
        self._lines: Lines | None = None
        self._listed = {"error": 0, "warning": 0}

    @property
    def lines(self) -> Lines:
        if self._lines is None:
            self._lines = Lines(self.source)
        return self._lines

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

    @property
    def error_count(self) -> int:
        """Every error reported, listed or not."""
        return self._listed["error"] + self.unlisted.errors

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Whatever is reported inside is forgotten (for a check whose problems were already reported)."""
        saved = list(self.diagnostics)
        listed = dict(self._listed)
        unlisted = replace(self.unlisted, unsupported_lines=list(self.unlisted.unsupported_lines))
        try:
            yield
        finally:
            self.diagnostics[:] = saved
            self._listed = listed
            self.unlisted = unlisted

    def error(self, code: str, message: str, span: Span | None, hint: str = "", severity: str = "error") -> None:
        line, column = (span.line, span.column) if span is not None else (0, 0)
        if self._listed.get(severity, 0) >= self.limit:
            if severity == "error":
                self.unlisted.errors += 1
            else:
                self.unlisted.warnings += 1
                if code in UNSUPPORTED:
                    self.unlisted.unsupported_lines.append(line)
            return
        self._listed[severity] = self._listed.get(severity, 0) + 1
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
                excerpt=excerpt(self.lines, line, column, length) if line else "",
                hint=hint,
            )
        )

    def listed(self) -> list[Diagnostic]:
        """The diagnostics, then one per severity saying how many more there were (if any)."""
        out = list(self.diagnostics)
        for severity, n in (("error", self.unlisted.errors), ("warning", self.unlisted.warnings)):
            if n:
                out.append(unlisted(n, severity, self.file))
        return out

    def raise_if_any(self) -> None:
        """:class:`DslError` (with the warnings too) if any error was reported."""
        if self.error_count:
            raise DslError(self.listed())


def unlisted(n: int, severity: str, file: str = DEFAULT_FILE) -> Diagnostic:
    """The diagnostic standing for ``n`` of ``severity`` that are not listed."""
    return Diagnostic(
        code="too_many",
        message=f"and {n} more {severity}{'s' if n != 1 else ''} not listed",
        severity=severity,
        file=file,
        hint="fix the problems listed, then check again to see the rest",
    )


class DslError(DomainError):
    """A definition has problems; ``diagnostics`` lists every one found (warnings too), in source order, up to a
    reporter's limit: then a ``too_many`` diagnostic at the end says how many more there are."""

    code = "dsl_error"

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        ordered = sorted(diagnostics, key=lambda d: (d.code == "too_many", d.file, d.line, d.column))
        worst = next((d for d in ordered if d.severity == "error"), ordered[0] if ordered else None)
        first = worst.render().splitlines()[0] if worst is not None else "invalid definition"
        more = f" (and {len(ordered) - 1} more)" if len(ordered) > 1 else ""
        details: dict[str, Any] = {"diagnostics": [msgspec.to_builtins(d) for d in ordered]}
        super().__init__(f"{first}{more}", **details)
        self.diagnostics = ordered

    def render(self) -> str:
        return "\n\n".join(d.render() for d in self.diagnostics)
