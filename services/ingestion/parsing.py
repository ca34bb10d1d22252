"""From a submitted `Document` to titled sections of text, or a reason why not.

Markdown, plain text, HTML and PDF give one document each; CSV, JSON and JSONL give one
document per record (`records.py`). Bytes are checked before anything else: size, emptiness,
binary content, and the character set — text must be UTF-8 unless its media type declares
another (`text/plain; charset=latin-1`); encodings are never guessed, since a wrong guess
indexes mojibake that nobody will ever find.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import io
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from loraswarm.shared.events import Document
from loraswarm.shared.settings import RetrievalSettings


class Unparseable(Exception):
    """A document that cannot be indexed; the message is the reason the submitter sees."""


@dataclass(frozen=True)
class Section:
    heading: str  # the heading path, "Handbook > Refunds", or "" before any heading
    text: str


@dataclass(frozen=True)
class ParsedDocument:
    """One indexable unit: a file, a page of a site, or one record of a CSV/JSON file."""

    doc_id: str
    title: str
    sections: list[Section]
    metadata: dict[str, Any] = field(default_factory=dict)


MEDIA_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".csv": "text/csv",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
}
RECORD_TYPES = {"text/csv", "application/json", "application/x-ndjson", "application/jsonl"}
_ALIASES = {"text/x-markdown": "text/markdown", "application/jsonl": "application/x-ndjson"}


def media_type_of(document: Document) -> tuple[str, str | None]:
    """The effective media type and declared charset.

    An explicit type wins; the default `text/plain` (and `application/octet-stream`) defer to the
    extension of the document's source or id, so a posted `notes.md` is read as Markdown.
    """
    base, _, params = document.media_type.partition(";")
    media = _ALIASES.get(base.strip().lower(), base.strip().lower())
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    if media in ("text/plain", "application/octet-stream", ""):
        for name in (document.source, document.doc_id):
            guessed = MEDIA_TYPES.get(PurePosixPath(name.split("?")[0]).suffix.lower())
            if guessed:
                return guessed, charset
    return media or "text/plain", charset


def raw_bytes(document: Document) -> bytes:
    if document.content_encoding == "base64":
        try:
            return base64.b64decode(document.content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Unparseable(f"content is not valid base64: {exc}") from exc
    return document.content.encode("utf-8")


def check_size(size: int, limit: int) -> None:
    if size == 0:
        raise Unparseable("empty document (0 bytes)")
    if size > limit:
        raise Unparseable(
            f"too large: {human_size(size)}, over the {human_size(limit)} limit "
            "(LORASWARM_RETRIEVAL__MAX_DOCUMENT_BYTES); split it or raise the limit"
        )


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


_CONTROL = set(range(0, 9)) | {11} | set(range(14, 32)) | {127}


def decode_text(raw: bytes, charset: str | None, media_type: str) -> str:
    """Bytes of a text document as a str; binary or mis-encoded bytes are refused with why."""
    sample = raw[:65536]
    if b"\x00" in sample and not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise Unparseable(f"binary content (NUL bytes) in a {media_type} document; it is not text")
    if charset is None:
        if raw.startswith(codecs.BOM_UTF8):
            charset, raw = "utf-8", raw[len(codecs.BOM_UTF8) :]
        elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            charset = "utf-16"
    try:
        text = raw.decode(charset or "utf-8")
    except LookupError as exc:
        raise Unparseable(f"unknown charset {charset!r} in the media type") from exc
    except UnicodeDecodeError as exc:
        byte = raw[exc.start : exc.start + 1].hex()
        raise Unparseable(
            f"not valid {charset or 'UTF-8'}: byte 0x{byte} at offset {exc.start}; re-encode the "
            f"file as UTF-8 or declare its charset (media type `{media_type}; charset=...`)"
        ) from exc
    controls = sum(1 for ch in text[:65536] if ord(ch) in _CONTROL)
    if controls > max(8, len(text[:65536]) // 20):
        raise Unparseable(f"binary content ({controls} control characters) in a {media_type} document")
    return text


def _require_text(sections: list[Section], what: str) -> list[Section]:
    kept = [s for s in sections if s.text.strip()]
    if not kept:
        raise Unparseable(f"no text in this {what}")
    return kept


# ---------------------------------------------------------------- formats


def plain_sections(text: str) -> list[Section]:
    return _require_text([Section("", _tidy(text))], "document (empty or whitespace only)")


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def markdown_sections(text: str) -> tuple[str, list[Section]]:
    """Sections under their heading path, and the title (front matter `title:` or the first H1).

    Headings inside fenced code blocks are code, not headings.
    """
    lines = text.splitlines()
    title = ""
    if lines and lines[0].strip() == "---":  # YAML front matter
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                for line in lines[1:end]:
                    key, _, value = line.partition(":")
                    if key.strip().lower() == "title":
                        title = value.strip().strip("\"'")
                lines = lines[end + 1 :]
                break
    path: list[tuple[int, str]] = []
    sections: list[Section] = []
    body: list[str] = []
    fence: str | None = None

    def flush() -> None:
        sections.append(Section(" > ".join(h for _, h in path), _tidy("\n".join(body))))
        body.clear()

    def open_heading(level: int, heading: str) -> None:
        nonlocal title
        flush()
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, heading))
        if level == 1 and not title:
            title = heading

    for line in lines:
        fenced = _FENCE.match(line)
        if fence is not None:
            body.append(line)
            if fenced and fenced.group(1)[0] == fence[0] and len(fenced.group(1)) >= len(fence):
                fence = None
            continue
        if fenced:
            fence = fenced.group(1)
            body.append(line)
            continue
        atx = _ATX.match(line)
        if atx:
            open_heading(len(atx.group(1)), (atx.group(2) or "").strip())
            continue
        setext = _SETEXT.match(line)
        if setext and body and body[-1].strip() and (len(body) == 1 or not body[-2].strip()):
            heading = body.pop().strip()
            open_heading(1 if setext.group(1)[0] == "=" else 2, heading)
            continue
        body.append(line)
    flush()
    return title, _require_text(sections, "Markdown document")


_BLOCKS = [
    "p",
    "div",
    "section",
    "article",
    "main",
    "aside",
    "header",
    "footer",
    "li",
    "ul",
    "ol",
    "table",
    "tr",
    "td",
    "th",
    "dt",
    "dd",
    "pre",
    "blockquote",
    "figcaption",
    "caption",
    "br",
    "hr",
    "form",
    "fieldset",
    "details",
    "summary",
]
_HEADING_MARK = "\x01"


def html_sections(text: str) -> tuple[str, list[Section]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["head", "script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    # Mark headings and block ends in the tree, then read the text once in document order.
    for tag in soup.find_all(re.compile(r"^h[1-6]$")):
        level = int(tag.name[1])
        heading = " ".join(tag.get_text(" ", strip=True).split())
        tag.replace_with(f"\n{_HEADING_MARK}{level}{heading}\n")
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    path: list[tuple[int, str]] = []
    sections: list[Section] = []
    body: list[str] = []
    for line in soup.get_text().splitlines():
        if line.startswith(_HEADING_MARK):
            sections.append(Section(" > ".join(h for _, h in path), _tidy("\n".join(body))))
            body.clear()
            level, heading = int(line[1]), line[2:].strip()
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, heading))
            if not title and level == 1:
                title = heading
        elif line.strip():  # block boundaries leave empty lines; one line per block is enough
            body.append(" ".join(line.split()))
    sections.append(Section(" > ".join(h for _, h in path), _tidy("\n".join(body))))
    return title, _require_text(sections, "HTML page")


def pdf_sections(raw: bytes) -> tuple[str, list[Section]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unparseable("the PDF is encrypted; submit a decrypted copy")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = reader.metadata
        title = str(meta.title) if meta is not None and meta.title else ""
    except Unparseable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise Unparseable(f"not a readable PDF: {exc}") from exc
    sections = [Section(f"page {i}", _tidy(text)) for i, text in enumerate(pages, 1)]
    if not any(s.text.strip() for s in sections):
        raise Unparseable(f"the PDF has no text layer ({len(pages)} page(s) of images?); run OCR on it first")
    return title, [s for s in sections if s.text.strip()]


def _tidy(text: str) -> str:
    """Trim trailing spaces and collapse runs of blank lines (paragraph breaks stay)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _fallback_title(document: Document) -> str:
    if document.title:
        return document.title
    name = PurePosixPath(document.source or document.doc_id).name or document.doc_id
    return PurePosixPath(name).stem or name


def parse(
    document: Document, settings: RetrievalSettings
) -> tuple[list[ParsedDocument], list[tuple[str, str]]]:
    """The indexable documents in `document`, and (doc_id, reason) for what could not be read.

    Raises `Unparseable` when nothing of it can be indexed.
    """
    from loraswarm.services.ingestion.records import parse_records

    raw = raw_bytes(document)
    check_size(len(raw), settings.max_document_bytes)
    media, charset = media_type_of(document)
    fallback = _fallback_title(document)
    if media == "application/pdf":
        title, sections = pdf_sections(raw)
        return [ParsedDocument(document.doc_id, document.title or title or fallback, sections)], []
    text = decode_text(raw, charset, media)
    if media in RECORD_TYPES:
        return parse_records(document, text, media, settings)
    if media == "text/markdown":
        title, sections = markdown_sections(text)
    elif media in ("text/html", "application/xhtml+xml"):
        title, sections = html_sections(text)
    elif media.startswith("text/"):
        title, sections = "", plain_sections(text)
    else:
        raise Unparseable(
            f"unsupported media type {media!r}; send Markdown, plain text, HTML, PDF, CSV, JSON or JSONL"
        )
    return [ParsedDocument(document.doc_id, document.title or title or fallback, sections)], []
