"""Draw the catalogue of subjects (:mod:`symbi_contracts.subjects`) as Markdown with a Mermaid diagram.

``uv run python -m symbi_contracts.diagram > docs/subjects.md`` writes the committed page; a test fails
when the committed page differs from what this prints, so it cannot go stale.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from symbi_contracts.subjects import CATALOGUE, CLI, SERVICES, Subject

COMMAND = "python -m symbi_contracts.diagram > docs/subjects.md"
_VARIABLE = re.compile(r"<[^>]+>")


def _node(name: str) -> str:
    return name.replace("-", "_")


def _short(subject: str) -> str:
    """``evt.agent.<agent_id>`` → ``evt.agent.*``; ``a|b`` → ``a, b`` (safe inside a Mermaid label)."""
    return _VARIABLE.sub("*", subject).replace("|", ", ")


def _edges(catalogue: Iterable[Subject]) -> list[str]:
    labels: dict[tuple[str, str, bool], list[str]] = {}
    for s in catalogue:
        command = s.kind == "command"
        for reader in s.readers:
            if reader == s.owner:
                continue
            key = (reader, s.owner, True) if command else (s.owner, reader, False)
            labels.setdefault(key, []).append(_short(s.subject))
    lines = []
    for (source, target, command), names in labels.items():
        arrow = ('-. "{}" .->' if command else '-- "{}" -->').format("<br/>".join(names))
        lines.append(f"    {_node(source)} {arrow} {_node(target)}")
    return lines


def _events_table(catalogue: Iterable[Subject]) -> list[str]:
    rows = ["| subject | written by | read by | event types (schema version) |", "|---|---|---|---|"]
    for s in catalogue:
        if s.kind != "events":
            continue
        types = ", ".join(f"`{e.type}` v{e.version}" for e in s.events)
        rows.append(f"| `{s.subject}` | {s.owner} | {', '.join(s.readers)} | {types} |")
    return rows


def _others_table(catalogue: Iterable[Subject]) -> list[str]:
    rows = [
        "| subject | kind | served / written by | used / read by | carries | body (`symbi_contracts`) |",
        "|---|---|---|---|---|---|",
    ]
    for s in catalogue:
        if s.kind == "events":
            continue
        subject = s.subject.replace("|", "\\|")
        bodies = ", ".join(f"`{t.__module__.removeprefix('symbi_contracts.')}.{t.__name__}`" for t in s.bodies)
        rows.append(f"| `{subject}` | {s.kind} | {s.owner} | {', '.join(s.readers)} | {s.what} | {bodies} |")
    return rows


def render(catalogue: tuple[Subject, ...] = CATALOGUE) -> str:
    """The Markdown page for ``catalogue``."""
    nodes = [f'    {_node(name)}["{name}"]' for name in (*SERVICES, CLI)]
    lines = [
        "# Subjects between services",
        "",
        f"<!-- Generated from symbi_contracts.subjects by `uv run {COMMAND}`. Do not edit by hand:",
        "     a test fails when this page differs from what the command prints. -->",
        "",
        "Services share nothing but `libs/common` and `libs/contracts`; they talk only through these subjects.",
        "Solid arrows: events and messages, from the service that writes them to the services that read them.",
        "Dotted arrows: commands (request/reply), from the caller to the service that serves them. Every event",
        "is also read by the audit service, which verifies the whole log.",
        "",
        "```mermaid",
        "flowchart LR",
        *nodes,
        *_edges(catalogue),
        "```",
        "",
        "## Event subjects (stream `EVENTS`)",
        "",
        *_events_table(catalogue),
        "",
        "## Commands, work items, buckets and notices",
        "",
        *_others_table(catalogue),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
