"""Document ingestion: text extraction (plain text, Markdown, PDF) and chunking with overlap.

Chunks follow the document's own structure where it has one: Markdown sections (each chunk remembers its
heading), then paragraphs, then sentences; only a sentence longer than a chunk is cut by characters.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from symbi_context.errors import InvalidContext

MEDIA_TYPES = ("text/plain", "text/markdown", "application/pdf")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
#: The most text one document may have, in characters (4 MiB: several hundred pages of prose). A PDF of a few
#: kilobytes can expand into far more (every page drawing one compressed stream): its extraction stops here.
MAX_DOCUMENT_CHARS = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TextChunk:
    position: int
    text: str


def _too_long(max_chars: int) -> str:
    return (
        f"the document has more than {max_chars} characters of text; at most {max_chars} characters per "
        "document: split it into several"
    )


def _check_size(chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise InvalidContext(_too_long(max_chars), field="content")


#: The most bytes one stream of a PDF may decode to (a page's content, a form it draws, a font's character map):
#: a few kilobytes of a compressed stream can inflate a thousandfold. Parsing a content stream holds up to about
#: twelve times its size in memory (a string is read byte by byte), so this bounds the memory of one page.
MAX_PDF_STREAM_BYTES = 2 * 1024 * 1024
#: The most tokens (operators, operands, array elements) one content stream of a PDF is parsed into at once.
MAX_PDF_STREAM_TOKENS = 200_000
#: The work extracting a PDF may take, in steps (one per token parsed and processed, a few microseconds): this
#: many for any document, plus this many per byte of the file. Time grows with what was sent: a small file
#: cannot make extraction run long, however often its pages and forms draw one stream.
PDF_BASE_WORK = 400_000
PDF_WORK_PER_BYTE = 4
#: A string is parsed byte by byte: it costs one more step per this many bytes.
PDF_STRING_BYTES_PER_STEP = 16
#: pypdf's own limits, lowered to the bounds above for every stream it decodes or parses.
_PYPDF_LIMITS: dict[str, int] = {
    "maximum_declared_stream_length": MAX_PDF_STREAM_BYTES,
    "array_based_stream_maximum_output_length": MAX_PDF_STREAM_BYTES,
    "zlib_maximum_output_length": MAX_PDF_STREAM_BYTES,
    "lzw_maximum_output_length": MAX_PDF_STREAM_BYTES,
    "run_length_maximum_output_length": MAX_PDF_STREAM_BYTES,
    "brotli_maximum_output_length": MAX_PDF_STREAM_BYTES,
    "jbig2_maximum_output_length": MAX_PDF_STREAM_BYTES,
    "image_maximum_buffer_size": MAX_PDF_STREAM_BYTES,
    "stream_parsing_work_maximum_count": MAX_PDF_STREAM_TOKENS,
}


def _steps(operands: list[Any]) -> int:
    """The steps of work an operation with ``operands`` took: one per object (the operator too), arrays and
    dictionaries counted with their elements, strings one more per :data:`PDF_STRING_BYTES_PER_STEP` bytes."""
    count, stack = 0, [operands]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (str, bytes)):
            count += len(item) // PDF_STRING_BYTES_PER_STEP
    return count


class _PdfBudget:
    """What extracting one PDF may cost, counted while pypdf extracts (its visitor callbacks see every operation
    and every piece of text as it goes): the work (:data:`PDF_BASE_WORK` and :data:`PDF_WORK_PER_BYTE` of the
    file) and the characters extracted (``max_chars``, the pages before included). Past either it raises
    :class:`InvalidContext` and remembers it: pypdf ignores errors raised inside a form it draws, so
    :meth:`check` raises it again."""

    def __init__(self, size: int, max_chars: int) -> None:
        self.size = size
        self.max_work = PDF_BASE_WORK + PDF_WORK_PER_BYTE * size
        self.max_chars = max_chars
        self.work = 0
        self.chars = 0
        self.error: InvalidContext | None = None

    def page(self, chars: int) -> None:
        """A new page starts; ``chars``: the text of the pages before, as joined."""
        self.chars = chars

    def operation(self, _operator: object, operands: list[Any], _cm: object, _tm: object) -> None:
        self.check()
        self.work += _steps(operands)
        if self.work > self.max_work:
            self._fail(
                f"the PDF takes more than {self.max_work} steps to extract, the most a file of {self.size} bytes "
                "may take (its pages draw far more than the file holds): send its text instead"
            )

    def text(self, text: str, *_: object) -> None:
        self.chars += len(text)
        if self.chars > self.max_chars:
            self._fail(_too_long(self.max_chars))

    def check(self) -> None:
        """Raise the error a bound was passed with, if any."""
        if self.error is not None:
            raise self.error

    def _fail(self, message: str) -> None:
        self.error = InvalidContext(message, field="content")
        raise self.error


def _pdf_text(content: bytes, max_chars: int) -> str:
    """The text of a PDF's pages, joined with blank lines. The work is bounded as it goes (:class:`_PdfBudget`,
    :data:`MAX_PDF_STREAM_BYTES`, :data:`MAX_PDF_STREAM_TOKENS`): a small file whose pages expand into far more
    text or drawing (one compressed stream drawn by every page, a form drawn over and over) stops at a bound."""
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import PyPdfError

    budget = _PdfBudget(len(content), max_chars)
    pages: list[str] = []
    chars = 0
    try:
        with apply_configuration(None, **_PYPDF_LIMITS):
            for page in PdfReader(io.BytesIO(content)).pages:
                budget.page(chars + (2 if pages else 0))
                extracted = page.extract_text(visitor_operand_before=budget.operation, visitor_text=budget.text)
                budget.check()
                text = (extracted or "").strip()
                if text:
                    chars += len(text) + (2 if pages else 0)  # as joined, with blank lines
                    _check_size(chars, max_chars)
                    pages.append(text)
    # PyPdfError: every pypdf error, its LimitReachedError (a decompression bomb) among them.
    except (PyPdfError, ValueError, KeyError) as exc:
        raise InvalidContext(f"not a readable PDF: {exc}", field="content") from exc
    return "\n\n".join(pages)


def extract_text(content: bytes, media_type: str, *, max_chars: int = MAX_DOCUMENT_CHARS) -> str:
    """The text of a document; PDF pages are joined with blank lines. Blocking and CPU-bound (a PDF may take
    seconds): call it in a worker thread. More than ``max_chars`` characters of text are refused."""
    if media_type not in MEDIA_TYPES:
        raise InvalidContext(
            f"unsupported type {media_type!r}; use one of {', '.join(MEDIA_TYPES)}", field="media_type"
        )
    if media_type == "application/pdf":
        return _pdf_text(content, max_chars)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidContext(f"text is not UTF-8: {exc}", field="content") from exc
    _check_size(len(text), max_chars)
    return text


def _sections(text: str, markdown: bool) -> list[tuple[str, str]]:
    """(heading, body) pairs; one unnamed section for plain text."""
    if not markdown:
        return [("", text)]
    sections: list[tuple[str, str]] = []
    matches = list(_HEADING.finditer(text))
    if not matches:
        return [("", text)]
    if matches[0].start() > 0:
        sections.append(("", text[: matches[0].start()]))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        sections.append((match.group(2).strip(), text[match.end() : end]))
    return sections


def _pieces(body: str, size: int) -> list[str]:
    """Paragraphs, split into sentences (and sentences into slices) only where longer than ``size``."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", body):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para) <= size:
            out.append(para)
            continue
        for sentence in _SENTENCE.split(para):
            while len(sentence) > size:
                out.append(sentence[:size])
                sentence = sentence[size:]
            if sentence:
                out.append(sentence)
    return out


def chunk_text(text: str, *, size: int = 1000, overlap: int = 150, markdown: bool = False) -> list[TextChunk]:
    """Chunks of at most about ``size`` characters; each starts with the tail (``overlap``) of the previous one
    in the same section, and a Markdown chunk starts with its section heading."""
    if size < 100 or not 0 <= overlap < size // 2:
        raise InvalidContext("chunk size must be >= 100 and overlap < size / 2", field="chunk_chars")
    chunks: list[str] = []
    for heading, body in _sections(text, markdown):
        prefix = f"{heading}: " if heading else ""
        current = ""
        for piece in _pieces(body, size):
            if current and len(current) + 1 + len(piece) > size:
                chunks.append(prefix + current)
                tail = current[-overlap:] if overlap else ""
                tail = tail[tail.find(" ") + 1 :] if " " in tail else tail
                current = f"{tail} {piece}".strip() if tail else piece
            else:
                current = f"{current} {piece}".strip()
        if current:
            chunks.append(prefix + current)
    if not chunks:
        raise InvalidContext("the document has no text", field="content")
    return [TextChunk(i, c) for i, c in enumerate(chunks)]
