"""Files and folders as `Document`s (for `loraswarm ingest` and anyone indexing from disk).

A file's doc_id is its absolute path, so ingesting the same file again — from any working
directory — addresses the same document. Content travels as base64 of the file's bytes: the
parser, not the loader, decides whether they are text, so a file and a posted document are
checked alike. A file over the size limit is refused from its size alone, without reading it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loraswarm.services.ingestion.parsing import MEDIA_TYPES, Unparseable, check_size
from loraswarm.shared.events import Document, DocumentFailure


@dataclass(frozen=True)
class FileOptions:
    source: str = "files"
    visibility: str = "company"
    metadata: dict[str, Any] | None = None
    max_bytes: int = 10 * 1024 * 1024


def discover(paths: Sequence[Path]) -> Iterator[Path]:
    """The files named, and the files of known types under the folders named (hidden ones skipped)."""
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
                if file.is_file() and not hidden and file.suffix.lower() in MEDIA_TYPES:
                    yield file
        else:
            yield path


def load_file(path: Path, options: FileOptions) -> Document | DocumentFailure:
    """The file as a document, or why it cannot be one."""
    doc_id = path.resolve().as_posix()
    try:
        check_size(path.stat().st_size, options.max_bytes)
        raw = path.read_bytes()
    except Unparseable as exc:
        return DocumentFailure(doc_id=doc_id, reason=str(exc))
    except OSError as exc:
        return DocumentFailure(doc_id=doc_id, reason=f"cannot read the file: {exc.strerror or exc}")
    try:
        return _document(path, doc_id, raw, options)
    except ValidationError as exc:
        return DocumentFailure(doc_id=doc_id[:512], reason=f"not a valid document: {exc.errors()[0]['msg']}")


def _document(path: Path, doc_id: str, raw: bytes, options: FileOptions) -> Document:
    return Document(
        doc_id=doc_id,
        source=options.source,
        title="",
        visibility=options.visibility,
        media_type=MEDIA_TYPES.get(path.suffix.lower(), "text/plain"),
        content=base64.b64encode(raw).decode("ascii"),
        content_encoding="base64",
        metadata={"path": doc_id, **(options.metadata or {})},
    )
