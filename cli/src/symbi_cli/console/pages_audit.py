"""Audit: the latest checkpoint and its cosignatures, inclusion proofs, verifying an export, reports; and the
live event tail (the audit service's own Server-Sent Events, relayed with the operator's token)."""

from __future__ import annotations

import asyncio
import base64
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_tlog.notes import parse_checkpoint
from symbi_tlog.offline import TrustAnchor, check_checkpoint, verify_export_file

from symbi_cli.console import paging
from symbi_cli.console.app import Ctx, CtxDep, path_id
from symbi_cli.console.services import ServiceCallFailed
from symbi_cli.console.views import inclusion_path
from symbi_cli.trust import audit_settings, trust_anchor

router = APIRouter()
#: Export uploads larger than this are refused (use `symbi audit verify` for big logs).
MAX_EXPORT_BYTES = 64 * 1024 * 1024
#: A checkpoint note is a few lines (origin, size, root, signatures): larger uploads are refused.
MAX_CHECKPOINT_BYTES = 64 * 1024
REPORT_FORMATS = {"json": "application/json", "csv": "text/csv"}


def _anchor(c: Ctx) -> TrustAnchor:
    """What the console trusts: this runtime's root-signed registry, the configured origin and witnesses."""
    return trust_anchor(KeyRegistry.load(c.request.app.state.config.keys_dir), audit_settings(None))


def checkpoint_view(note: str, anchor: TrustAnchor) -> dict[str, Any]:
    """The checkpoint, its signature lines, and what the console's own check of them found."""
    checkpoint, findings = check_checkpoint(note, anchor)
    _, signatures = parse_checkpoint(note)
    return {
        "note": note,
        "checkpoint": checkpoint,
        "root_b64": base64.b64encode(checkpoint.root).decode() if checkpoint else "",
        "signatures": [name for name, _, _ in signatures],
        "findings": findings,
        "witnesses": [w.name for w in anchor.witnesses],
        "min_witnesses": anchor.min_witnesses,
        "verified": checkpoint is not None and not findings,
    }


@router.get("/audit", response_class=HTMLResponse)
async def audit(c: CtxDep, findings_after: str = "") -> Response:
    """The audit status and checkpoint, and one page of findings (oldest first, after the id
    ``findings_after``) with a link to the next."""
    after = paging.position(findings_after, "findings list")
    status = await c.services.get("audit", "/v1/audit/status")
    latest = None
    if status.get("checkpoint"):
        latest = checkpoint_view(status["checkpoint"]["note"], _anchor(c))
    size = paging.FINDINGS_PAGE
    read = (await c.services.get("audit", "/v1/audit/findings", after=after, limit=size + 1))["items"]
    findings = read[:size]
    return c.page(
        "audit.html",
        status=status,
        latest=latest,
        findings=findings,
        paged=after > 0,
        next_link=paging.link("/audit", findings_after=findings[-1]["id"]) + "#findings" if len(read) > size else None,
    )


@router.get("/audit/proof/{sequence}", response_class=HTMLResponse)
async def proof(sequence: int, c: CtxDep) -> Response:
    event = await c.services.get("audit", f"/v1/audit/events/{sequence}")
    served = await c.services.get("audit", "/v1/audit/proofs/inclusion", sequence=sequence)
    cp = checkpoint_view(served["checkpoint"], _anchor(c))
    signed = cp["checkpoint"]
    path = None
    if signed is not None and served.get("sequence") == sequence == event.get("sequence"):
        path = inclusion_path(served, signed.root, signed.size)
    return c.page("proof.html", event=event, served=served, cp=cp, path=path)


@router.post("/audit/verify", response_class=HTMLResponse)
async def verify_export(
    export: Annotated[UploadFile, File()], c: CtxDep, checkpoint: Annotated[UploadFile | None, File()] = None
) -> Response:
    """Verify an uploaded export (`symbi audit export`) in this process against the pinned log key: no service
    is asked (but one, so a revoked token ends the session here too). Reading, not changing: the auditor may."""
    await c.probe()
    note = None
    if checkpoint is not None and checkpoint.filename:
        raw = await checkpoint.read(MAX_CHECKPOINT_BYTES + 1)
        if len(raw) > MAX_CHECKPOINT_BYTES:
            return c.page("verify_result.html", error=f"the checkpoint is larger than {MAX_CHECKPOINT_BYTES} bytes")
        try:
            note = raw.decode()
        except UnicodeDecodeError:
            return c.page("verify_result.html", error="the checkpoint is not UTF-8 text (a checkpoint note)")
    with tempfile.TemporaryDirectory(prefix="symbi-console-") as tmp:
        path = Path(tmp) / "export.jsonl"
        size = 0
        with path.open("wb") as fh:
            while chunk := await export.read(1 << 20):
                size += len(chunk)
                if size > MAX_EXPORT_BYTES:
                    return c.page("verify_result.html", error=f"the export is larger than {MAX_EXPORT_BYTES} bytes")
                fh.write(chunk)
        try:
            anchor = _anchor(c)

            def run() -> Any:
                with path.open("rb") as fh:
                    return verify_export_file(fh, note, anchor)  # no checkpoint: the finding says what that leaves

            report = await asyncio.to_thread(run)
        except (OSError, SymbiError) as exc:
            return c.page("verify_result.html", error=str(exc))
    return c.page("verify_result.html", report=report, error=None)


@router.get("/audit/reports/{framework}")
async def report(framework: str, c: CtxDep, format: str = "csv") -> Response:
    path_id(framework, "report framework")  # also what goes into the Content-Disposition header below
    if format not in REPORT_FORMATS:
        format = "csv"
    answer = await c.services.call("audit", "GET", f"/v1/audit/reports/{framework}", params={"format": format})
    headers = {"Content-Disposition": f'attachment; filename="symbi-{framework}-report.{format}"'}
    return Response(answer.content, media_type=REPORT_FORMATS[format], headers=headers)


@router.get("/events", response_class=HTMLResponse)
async def events(c: CtxDep) -> Response:
    await c.probe()
    return c.page("events.html")


@router.get("/events/stream")
async def stream(c: CtxDep, agent: str = "", event_type: str = "") -> StreamingResponse:
    """The audit service's live feed (verified events' metadata), relayed; subject and aggregate filters are
    applied in the browser."""

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            async for line in c.services.stream_lines("audit", "/v1/audit/stream", agent=agent, event_type=event_type):
                yield line + b"\n"
        except ServiceCallFailed as exc:
            # One event: CR, LF and CRLF all end a line of an event stream.
            data = str(exc).encode().replace(b"\r", b" ").replace(b"\n", b" ")
            yield b"event: failed\ndata: " + data + b"\n\n"

    # Ends with the session (logout, expiry): the feed is relayed only while the operator is logged in.
    return StreamingResponse(c.live(body()), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
