"""Document ingestion: text extraction (plain text, Markdown, PDF) and chunking with overlap.

Chunks follow the document's own structure where it has one: Markdown sections (each chunk remembers its
heading), then paragraphs, then sentences; only a sentence longer than a chunk is cut by characters.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

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


def _check_size(chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise InvalidContext(
            f"the document has more than {max_chars} characters of text; at most {max_chars} characters per "
            "document: split it into several",
            field="content",
        )


def _pdf_text(content: bytes, max_chars: int) -> str:
    """The text of a PDF's pages, joined with blank lines; the size is checked after each page, so a small file
    whose pages expand into far more text (all drawing one compressed stream) stops at the limit."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    pages: list[str] = []
    chars = 0
    try:
        for page in PdfReader(io.BytesIO(content)).pages:
            text = (page.extract_text() or "").strip()
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
