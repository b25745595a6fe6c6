"""Compliance reports: pure builders over event metadata, findings, erasures and a checkpoint.

A framework is a list of sections, each selecting events by event-type glob (and optionally by
producing service). HIPAA, GDPR and SOX are built in; a custom framework is a TOML document::

    name = "acme"
    title = "ACME quarterly evidence"

    [[sections]]
    name = "agent changes"
    description = "Every registration and configuration change"
    event_types = ["agent.registered", "agent.configured"]
    producers = ["lifecycle"]          # optional

Every report states its integrity status — the findings in its range and the signed checkpoint the
range was verified against — so a reader knows what the rows are worth. JSON and CSV renderings hold
the same rows.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import tomllib
from dataclasses import dataclass, field
from typing import Any

import msgspec
from symbi_contracts.sandbox_agent.events import OUTPUT_EVENT_TYPES

from symbi_audit.errors import FrameworkInvalid, ReportTooLarge

#: Bounds of a custom framework (each section repeats the rows it matches) and of the rows a report holds:
#: the events read for it and, again, the rows of all its sections together (:class:`ReportTooLarge`).
MAX_SECTIONS = 32
MAX_PATTERNS = 256
MAX_REPORT_ROWS = 100_000
#: At most this many ``budget.reconciled`` payloads are read (one stream read each) for a usage section.
MAX_USAGE_LOOKUPS = 10_000


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    event_types: list[str] = msgspec.field(default_factory=list)
    producers: list[str] = msgspec.field(default_factory=list)
    erasures: bool = False
    """List the erasure requests and their execution (GDPR)."""
    usage: bool = False
    """Sum the model usage of the range (``budget.reconciled`` events) per agent and model."""

    def matches(self, row: dict[str, Any]) -> bool:
        etype = row.get("event_type") or ""
        if not any(fnmatch.fnmatchcase(etype, pattern) for pattern in self.event_types):
            return False
        return not self.producers or row.get("producer") in self.producers


class Framework(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    title: str = ""
    sections: list[Section] = msgspec.field(default_factory=list)


HIPAA = Framework(
    name="hipaa",
    title="HIPAA: access to sensitive data (who, what, when)",
    sections=[
        Section(
            name="access to sensitive data",
            description="Reads of data, memories and knowledge, and task inputs and outputs handled by agents",
            event_types=[
                "data.*",
                "memory.*",
                "knowledge.*",
                "*.read",
                "*.accessed",
                "task.submitted",
                *OUTPUT_EVENT_TYPES,  # task outputs: chunks, and the terminal events with a run's last output
            ],
        ),
        Section(
            name="access control changes",
            description="Policy changes that decide who may access data",
            event_types=["policy.*"],
        ),
    ],
)
GDPR = Framework(
    name="gdpr",
    title="GDPR: processing of personal data, erasure requests and their execution",
    sections=[
        Section(
            name="processing of personal data",
            description="Events that store or process agent memories, knowledge, data and task inputs",
            event_types=["data.*", "memory.*", "knowledge.*", "task.submitted", "execution.*"],
        ),
        Section(
            name="erasure",
            description="Erasure requests (crypto-shredding) and their execution",
            event_types=["audit.erasure_*"],
            erasures=True,
        ),
    ],
)
SOX = Framework(
    name="sox",
    title="SOX: privileged and configuration changes, policy changes, integrity status",
    sections=[
        Section(
            name="privileged and configuration changes",
            description="Agent registration, configuration and termination; host and schedule changes; erasures",
            event_types=["agent.registered", "agent.configured", "agent.terminated", "host.*", "schedule.*", "audit.*"],
        ),
        Section(name="policy changes", description="Every change of the policy set", event_types=["policy.*"]),
    ],
)
MODELS = Framework(
    name="models",
    title="Model usage: calls, tokens and money per agent and model, and every budget event",
    sections=[
        Section(
            name="model usage",
            description="Model calls through the model gateway: reserved, reconciled with the provider's usage, released",
            event_types=["budget.*"],
            usage=True,
        ),
    ],
)
BUILT_IN = {f.name: f for f in (HIPAA, GDPR, SOX, MODELS)}
#: The event a usage section sums, and the fields of its rows.
USAGE_EVENT = "budget.reconciled"
USAGE_FIELDS = ("agent_id", "model", "calls", "input_tokens", "output_tokens", "micro_usd", "estimated_calls")


def usage_rows(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model usage per (agent, model), from the payloads of ``budget.reconciled`` events (sorted by agent, model)."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for p in payloads:
        key = (str(p.get("agent_id", "")), str(p.get("model", "")))
        row = totals.setdefault(key, dict.fromkeys(USAGE_FIELDS, 0) | {"agent_id": key[0], "model": key[1]})
        row["calls"] += 1
        row["estimated_calls"] += 1 if p.get("estimated") else 0
        for f in ("input_tokens", "output_tokens", "micro_usd"):
            row[f] += int(p.get(f, 0) or 0)
    return [totals[k] for k in sorted(totals)]


def parse_framework(text: str) -> Framework:
    """A custom framework from TOML; :class:`FrameworkInvalid` says what is wrong."""
    try:
        data = tomllib.loads(text)
        framework = msgspec.convert(data, Framework)
    except tomllib.TOMLDecodeError as exc:
        raise FrameworkInvalid(f"framework is not valid TOML: {exc}") from None
    except msgspec.ValidationError as exc:
        raise FrameworkInvalid(f"framework definition: {exc}") from None
    if not framework.sections:
        raise FrameworkInvalid("a framework needs at least one [[sections]] entry")
    if len(framework.sections) > MAX_SECTIONS:
        raise FrameworkInvalid(f"a framework has at most {MAX_SECTIONS} sections, got {len(framework.sections)}")
    patterns = sum(len(s.event_types) + len(s.producers) for s in framework.sections)
    if patterns > MAX_PATTERNS:
        raise FrameworkInvalid(
            f"a framework has at most {MAX_PATTERNS} event_types and producers in all, got {patterns}"
        )
    for s in framework.sections:
        if not s.event_types and not s.erasures:
            raise FrameworkInvalid(f"section {s.name!r} selects nothing: give it event_types")
    return framework


@dataclass(frozen=True, slots=True)
class CheckpointRef:
    size: int
    root_b64: str
    last_sequence: int
    note: str
    signature_valid: bool


@dataclass
class ReportInput:
    since: str
    until: str
    events: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    erasures: list[dict[str, Any]]
    checkpoint: CheckpointRef | None
    generated_at: str
    last_sequence: int = field(default=0)
    #: Payloads of the range's ``budget.reconciled`` events (read only for a framework with a usage section).
    usage: list[dict[str, Any]] = field(default_factory=list)


ROW_FIELDS = ("sequence", "occurred_at", "producer", "signing_key_id", "aggregate", "event_type", "correlation_id",
              "verified")  # fmt: skip


def _row(e: dict[str, Any]) -> dict[str, Any]:
    aggregate = f"{e.get('aggregate_type')}.{e.get('aggregate_id')}" if e.get("aggregate_type") else e.get("subject")
    return {
        "sequence": e["sequence"],
        "occurred_at": e.get("occurred_at"),
        "producer": e.get("producer"),
        "signing_key_id": e.get("signing_key_id"),
        "aggregate": aggregate,
        "event_type": e.get("event_type"),
        "correlation_id": e.get("correlation_id"),
        "verified": e.get("verified"),
    }


def _integrity(data: ReportInput, covered: bool) -> str:
    """``verified`` only for events in the range, none with a finding, under a checkpoint that covers them and
    checked out here (signature, origin, size and root as stored)."""
    if data.findings:
        return "findings"
    if not data.events:
        return "empty"
    if data.checkpoint is None or not covered:
        return "not yet checkpointed"
    return "verified" if data.checkpoint.signature_valid else "checkpoint invalid"


def build_report(framework: Framework, data: ReportInput, *, max_rows: int = MAX_REPORT_ROWS) -> dict[str, Any]:
    """The report as a JSON-able document; :class:`ReportTooLarge` if its sections hold over ``max_rows`` rows."""
    covered = data.checkpoint is not None and data.checkpoint.last_sequence >= data.last_sequence
    sections = []
    held = 0
    for s in framework.sections:
        rows = []
        for e in data.events:
            if s.matches(e):
                held += 1
                if held > max_rows:
                    raise ReportTooLarge("rows (in all its sections)", limit=max_rows)
                rows.append(_row(e))
        section: dict[str, Any] = {"name": s.name, "description": s.description, "count": len(rows), "rows": rows}
        if s.erasures:
            section["erasures"] = [
                {**e, "status": "executed" if e.get("executed_sequence") is not None else "pending"}
                for e in data.erasures
            ]
        if s.usage:
            section["usage"] = usage_rows(data.usage)
        sections.append(section)
    return {
        "framework": framework.name,
        "title": framework.title,
        "range": {"since": data.since, "until": data.until},
        "generated_at": data.generated_at,
        "integrity": {
            "status": _integrity(data, covered),
            "findings": data.findings,
            "events": len(data.events),
            "last_sequence": data.last_sequence,
        },
        "checkpoint": None
        if data.checkpoint is None
        else {
            "size": data.checkpoint.size,
            "root": data.checkpoint.root_b64,
            "last_sequence": data.checkpoint.last_sequence,
            "signature_valid": data.checkpoint.signature_valid,
            "covers_range": covered,
            "note": data.checkpoint.note,
        },
        "sections": sections,
    }


def report_csv(report: dict[str, Any]) -> str:
    """The report's rows as CSV, after comment lines stating the framework, range, integrity and checkpoint."""
    out = io.StringIO()
    cp = report["checkpoint"]
    out.write(f"# framework: {report['framework']} ({report['title']})\n")
    out.write(f"# range: {report['range']['since']} .. {report['range']['until']}\n")
    out.write(f"# integrity: {report['integrity']['status']}, {len(report['integrity']['findings'])} findings\n")
    if cp is None:
        out.write("# checkpoint: none yet\n")
    else:
        out.write(
            f"# checkpoint: size {cp['size']} root {cp['root']} last_sequence {cp['last_sequence']} "
            f"signature_valid {cp['signature_valid']}\n"
        )
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", *ROW_FIELDS])
    for section in report["sections"]:
        for row in section["rows"]:
            writer.writerow([section["name"], *(row[f] for f in ROW_FIELDS)])
        for e in section.get("erasures", []):
            writer.writerow(
                [f"{section['name']}: erasure", e.get("executed_sequence") or e.get("requested_sequence"),
                 e.get("executed_at") or e.get("requested_at"), "audit", "", e["aggregate"], e["status"],
                 e["erasure_id"], ""]
            )  # fmt: skip
        for u in section.get("usage", []):
            writer.writerow([f"{section['name']}: usage", *(u[f] for f in USAGE_FIELDS)])
    return out.getvalue()
