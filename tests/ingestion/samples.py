"""Test documents built in code: PDFs with and without a text layer, and a Document helper."""

from __future__ import annotations

import base64
import io
from typing import Any

from loraswarm.shared.events import Document


def pdf_with_text(*lines: str) -> bytes:
    """A one-page PDF whose text layer holds `lines` (Helvetica, ASCII)."""
    ops = ["BT /F1 12 Tf 72 720 Td"]
    for i, line in enumerate(lines):
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(("0 -16 Td " if i else "") + f"({escaped}) Tj")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def pdf_without_text(pages: int = 2) -> bytes:
    """A PDF of blank pages: what a scan without OCR looks like to a text extractor."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def doc(doc_id: str, content: str | bytes, **fields: Any) -> Document:
    """A Document; bytes travel as base64, as a file or a binary upload would."""
    fields.setdefault("source", "tests")
    if isinstance(content, bytes):
        return Document(
            doc_id=doc_id,
            content=base64.b64encode(content).decode("ascii"),
            content_encoding="base64",
            **fields,
        )
    return Document(doc_id=doc_id, content=content, **fields)
