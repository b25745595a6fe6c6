"""Ingesting a document is bounded: a small PDF that expands into a flood of text is refused as invalid input
once its text passes the limit, extraction runs off the event loop (the service answers meanwhile), and a PDF
that trips one of pypdf's own limits is invalid input too, not an internal error."""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from typing import Any

import pytest
from symbi_context.chunking import MAX_DOCUMENT_CHARS, extract_text
from symbi_context.errors import InvalidContext


def shared_stream_pdf(pages: int, content: bytes) -> bytes:
    """A PDF of ``pages`` pages that all draw one Flate-compressed content stream ``content``."""
    packed = zlib.compress(content, 9)
    kids = " ".join(f"{5 + i} 0 R" for i in range(pages))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 3 0 R >> >> >>"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(packed)} /Filter /FlateDecode >>\nstream\n".encode() + packed + b"\nendstream",
        *([page] * pages),
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def text_stream(chars: int) -> bytes:
    """A content stream that shows about ``chars`` characters of words in one string."""
    return b"BT /F1 12 Tf 72 720 Td (" + b"lorem ipsum " * (chars // 12) + b") Tj ET"


async def test_an_expanding_pdf_is_refused_while_the_service_keeps_answering(running: Any) -> None:
    # Three pages of 2 M characters each from a few kilobytes: past the limit on the third page.
    pdf = shared_stream_pdf(3, text_stream(2_000_000))
    assert len(pdf) < 20_000
    assert 2 * 2_000_000 < MAX_DOCUMENT_CHARS < 3 * 2_000_000
    body = {
        "agent_id": "librarian",
        "title": "bomb",
        "content": base64.b64encode(pdf).decode(),
        "media_type": "application/pdf",
    }
    loop = asyncio.get_running_loop()
    started = loop.time()
    ingest = asyncio.create_task(running.http.post("/v1/knowledge/docs/documents", json=body))
    try:
        # The loop is never held for long while the document is extracted, and another request is answered.
        worst = 0.0
        probe = None
        while not ingest.done() and loop.time() - started < 20:
            before = loop.time()
            await asyncio.sleep(0.02)
            worst = max(worst, loop.time() - before - 0.02)
            if probe is None and loop.time() - started > 0.2:
                probe = await running.http.get("/healthz")
                assert not ingest.done()  # answered while the extraction was still going on
        assert probe is not None
        assert probe.status_code == 200
        assert worst < 0.5
        response = await asyncio.wait_for(ingest, 1)
    finally:
        ingest.cancel()
    assert loop.time() - started < 15
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_context"
    assert error["details"]["field"] == "content"
    assert f"{MAX_DOCUMENT_CHARS}" in error["message"]


def test_the_limit_is_counted_as_pages_accumulate() -> None:
    started = time.process_time()
    with pytest.raises(InvalidContext, match=f"{MAX_DOCUMENT_CHARS}") as caught:
        extract_text(shared_stream_pdf(200, text_stream(1_000_000)), "application/pdf")
    assert caught.value.field == "content"
    assert time.process_time() - started < 5  # a handful of pages extracted, not 200
    # Under the limit the text is kept whole; a small limit refuses a small document.
    small = shared_stream_pdf(2, b"BT /F1 12 Tf 72 720 Td (hello world) Tj ET")
    assert extract_text(small, "application/pdf") == "hello world\n\nhello world"
    with pytest.raises(InvalidContext, match="at most 10 characters"):
        extract_text(small, "application/pdf", max_chars=10)
    with pytest.raises(InvalidContext, match="at most 10 characters"):
        extract_text(b"x" * 11, "text/plain", max_chars=10)


def test_a_pdf_past_a_pypdf_limit_is_invalid_input() -> None:
    # A stream that inflates past pypdf's decompression limit raises its LimitReachedError.
    bomb = shared_stream_pdf(1, b"BT /F1 12 Tf 72 720 Td (a) Tj ET " + b" " * 80_000_000)
    with pytest.raises(InvalidContext, match="not a readable PDF") as caught:
        extract_text(bomb, "application/pdf")
    assert caught.value.field == "content"
