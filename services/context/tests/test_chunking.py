"""Text extraction and chunking."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from symbi_context.chunking import chunk_text, extract_text
from symbi_context.errors import InvalidContext


def test_pdf_text_is_extracted(make_pdf: Callable[[list[str]], bytes]) -> None:
    text = extract_text(make_pdf(["Quarterly report", "Revenue grew by ten percent."]), "application/pdf")
    assert "Quarterly report" in text
    assert "Revenue grew by ten percent." in text


def test_bad_documents_are_refused() -> None:
    with pytest.raises(InvalidContext, match="PDF"):
        extract_text(b"%PDF-1.4 garbage", "application/pdf")
    with pytest.raises(InvalidContext, match="UTF-8"):
        extract_text(b"\xff\xfe\xfa", "text/plain")
    with pytest.raises(InvalidContext, match="unsupported"):
        extract_text(b"x", "image/png")
    with pytest.raises(InvalidContext, match="no text"):
        chunk_text("   \n\n  ")


def test_markdown_chunks_carry_their_heading_and_respect_the_size() -> None:
    body = " ".join(f"Sentence number {i} explains one more detail of the topic." for i in range(40))
    doc = f"# Guide\n\nIntro paragraph.\n\n## Install\n\n{body}\n\n## Use\n\nRun it."
    chunks = chunk_text(doc, size=300, overlap=60, markdown=True)
    assert chunks[0].text == "Guide: Intro paragraph."
    install = [c for c in chunks if c.text.startswith("Install: ")]
    assert len(install) > 3
    assert all(len(c.text) <= 300 + len("Install: ") for c in install)
    assert chunks[-1].text == "Use: Run it."
    assert [c.position for c in chunks] == list(range(len(chunks)))
    # Consecutive chunks of a section overlap, so no sentence is only ever seen cut in half.
    first, second = install[0].text, install[1].text.removeprefix("Install: ")
    assert second.split(" Sentence")[0] in first


def test_plain_text_long_sentence_is_cut() -> None:
    chunks = chunk_text("x" * 2500, size=1000, overlap=0)
    assert [len(c.text) for c in chunks] == [1000, 1000, 500]
