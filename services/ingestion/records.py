"""CSV, JSON and JSONL files: one indexed document per record, its text from a template.

The template (`{subject}\\n{body}`) comes from the document's `metadata.text_template`, else
`LORASWARM_RETRIEVAL__RECORD_TEMPLATE`. A record id comes from its id field (stable when rows
move) or its row number; the record's doc_id is `<file doc_id>#<record id>`. A record the
template cannot fill fails on its own — the other records of the file are still indexed.
"""

from __future__ import annotations

import csv
import io
import json
import string
from typing import Any

from loraswarm.services.ingestion.parsing import ParsedDocument, Section, Unparseable, _fallback_title
from loraswarm.shared.events import Document
from loraswarm.shared.settings import RetrievalSettings

Failure = tuple[str, str]  # (doc_id, reason)
_METADATA_VALUE_CHARS = 256


def template_fields(template: str) -> list[str]:
    """The placeholders of a template; only plain names (no attribute access, no formatting)."""
    fields = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise Unparseable(f"bad record template {template!r}: {exc}") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or any(c in name for c in ".[]") or spec or conversion:
            raise Unparseable(
                f"bad record template {template!r}: use plain `{{field}}` placeholders "
                f"(got `{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}`)"
            )
        fields.append(name)
    if not fields:
        raise Unparseable(f"the record template {template!r} names no field")
    return fields


def render(template: str, record: dict[str, Any]) -> str:
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(_as_text(record[name]))
    return "".join(out)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _records(text: str, media: str) -> list[tuple[int, Any]]:
    """(row number, record) pairs; a line that is not JSON is a record failure of its own."""
    if media == "text/csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise Unparseable("the CSV file has no header row")
        return [(n, row) for n, row in enumerate(reader, 1) if any((v or "").strip() for v in row.values())]
    if media == "application/json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Unparseable(f"not valid JSON: {exc}") from exc
        items = data if isinstance(data, list) else [data]
        return list(enumerate(items, 1))
    rows: list[tuple[int, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            rows.append((n, _BadLine(str(exc))))
    return rows


class _BadLine:
    def __init__(self, error: str) -> None:
        self.error = error


def parse_records(
    document: Document, text: str, media: str, settings: RetrievalSettings
) -> tuple[list[ParsedDocument], list[Failure]]:
    meta = document.metadata
    template = str(meta.get("text_template") or settings.record_template)
    id_field = meta.get("id_field", settings.record_id_field)
    title_field = meta.get("title_field", settings.record_title_field)
    fields = template_fields(template)
    what = "line" if media == "application/x-ndjson" else "row" if media == "text/csv" else "record"
    parent_title = _fallback_title(document)

    parsed: list[ParsedDocument] = []
    failures: list[Failure] = []
    seen: set[str] = set()
    rows = _records(text, media)
    if not rows:
        raise Unparseable(f"no records in this {media} document")
    for n, record in rows:
        key = str(record.get(id_field) or "").strip() if isinstance(record, dict) and id_field else ""
        doc_id = f"{document.doc_id}#{key or n}"
        label = f"{what} {n}" + (f" (id {key})" if key else "")
        if isinstance(record, _BadLine):
            failures.append((doc_id, f"{label} is not JSON: {record.error}"))
            continue
        if not isinstance(record, dict):
            failures.append((doc_id, f"{label} is a {type(record).__name__}, not an object"))
            continue
        missing = [f for f in fields if f not in record or not _as_text(record[f]).strip()]
        if missing:
            failures.append(
                (
                    doc_id,
                    f"{label} has no {', '.join(repr(f) for f in missing)} field, which the text "
                    f"template {template!r} needs",
                )
            )
            continue
        if doc_id in seen:
            failures.append((doc_id, f"{label} repeats the id {key!r} of an earlier record"))
            continue
        seen.add(doc_id)
        title = _as_text(record.get(title_field)).strip() if title_field else ""
        extra = {
            k: _as_text(v)[:_METADATA_VALUE_CHARS]
            for k, v in record.items()
            if k not in fields and isinstance(v, (str, int, float, bool))
        }
        parsed.append(
            ParsedDocument(
                doc_id=doc_id,
                title=title or f"{parent_title} {what} {key or n}",
                sections=[Section("", render(template, record).strip())],
                metadata={**meta, "record": extra} if extra else dict(meta),
            )
        )
    return parsed, failures  # when no record could be read, each failure says why
