"""Extracting a PDF is bounded per document, not only in the text it yields: a small file whose one page
inflates into tens of megabytes stops before holding more than a few times the text limit in memory, and a
small file whose pages draw the same stream over and over stops after a bounded amount of work."""

from __future__ import annotations

import time
import tracemalloc

import pypdf
import pytest
from symbi_context.chunking import MAX_DOCUMENT_CHARS, extract_text
from symbi_context.errors import InvalidContext

from .test_ingest_limits import shared_stream_pdf, text_stream

assert pypdf.__version__  # imported before memory is traced: its modules are no part of the peak


def test_one_page_that_inflates_to_tens_of_megabytes_stays_within_a_few_times_the_text_limit() -> None:
    # One page, one compressed content stream showing 24 M characters: a few dozen kilobytes of file.
    pdf = shared_stream_pdf(1, text_stream(24_000_000))
    assert len(pdf) < 100_000
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(InvalidContext) as caught:
            extract_text(pdf, "application/pdf")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.field == "content"
    assert peak < 4 * MAX_DOCUMENT_CHARS, f"peak {peak / 2**20:.0f} MiB"
    assert time.process_time() - started < 5


def test_pages_drawing_one_stream_over_and_over_stop_after_bounded_work() -> None:
    # Every page draws the same stream of a little text and 70,000 drawing tokens: a few dozen kilobytes of file
    # whose pages would take half a minute to parse, with hardly any text to reach the text limit.
    drawing = b"BT /F1 12 Tf 72 720 Td (page) Tj ET " + b"1 0 0 1 0 0 cm " * 10_000
    pdf = shared_stream_pdf(200, drawing)
    assert len(pdf) < 40_000
    started = time.process_time()
    with pytest.raises(InvalidContext, match="steps to extract") as caught:
        extract_text(pdf, "application/pdf")
    assert caught.value.field == "content"
    assert time.process_time() - started < 5
    # The same drawing on a few pages is an ordinary document: its text is extracted whole.
    assert extract_text(shared_stream_pdf(2, drawing), "application/pdf") == "page\n\npage"
