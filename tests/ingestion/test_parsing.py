"""Parsers: every format to titled sections, every bad input to a reason a person can act on."""

from __future__ import annotations

import json
import os

import pytest

from loraswarm.services.ingestion.parsing import (
    Unparseable,
    html_sections,
    markdown_sections,
    media_type_of,
    parse,
)
from loraswarm.shared.settings import RetrievalSettings
from tests.ingestion.samples import doc, pdf_with_text, pdf_without_text

SETTINGS = RetrievalSettings()


def test_markdown_sections_follow_the_heading_path_and_ignore_code() -> None:
    text = """---
title: Staff handbook
---
Intro before any heading.

# Handbook

## Refunds
Within 60 days.

```bash
# not a heading
```

### Exceptions
Final sale.

Shipping
--------
DHL worldwide.
"""
    title, sections = markdown_sections(text)
    assert title == "Staff handbook"
    by_heading = {s.heading: s.text for s in sections}
    assert by_heading[""] == "Intro before any heading."
    assert "Within 60 days." in by_heading["Handbook > Refunds"]
    assert "# not a heading" in by_heading["Handbook > Refunds"]
    assert by_heading["Handbook > Refunds > Exceptions"] == "Final sale."
    assert by_heading["Handbook > Shipping"] == "DHL worldwide."


def test_html_keeps_headings_and_inline_text_and_drops_scripts() -> None:
    html = """<html><head><title>Store FAQ</title><style>p{}</style></head><body>
    <nav>Home</nav><h1>FAQ</h1><p>We ship <b>worldwide</b> with DHL.</p>
    <script>var secret = 1;</script><h2>Returns</h2><ul><li>60 days</li><li>free label</li></ul>
    </body></html>"""
    title, sections = html_sections(html)
    assert title == "Store FAQ"
    by_heading = {s.heading: s.text for s in sections}
    assert "We ship worldwide with DHL." in by_heading["FAQ"]
    assert by_heading["FAQ > Returns"].split("\n") == ["60 days", "free label"]
    assert not any("secret" in s.text for s in sections)


def test_pdf_text_layer_is_read_per_page() -> None:
    parsed, failures = parse(doc("a.pdf", pdf_with_text("Refunds within 60 days."), source="a.pdf"), SETTINGS)
    assert failures == []
    (unit,) = parsed
    assert unit.sections[0].heading == "page 1"
    assert "Refunds within 60 days." in unit.sections[0].text


def test_records_use_the_template_and_fail_one_by_one() -> None:
    csv = "id,subject,body\n7,Tent,Pole snapped\n8,Boots,\n9,Stove,Will not light\n"
    parsed, failures = parse(
        doc("tickets.csv", csv, metadata={"text_template": "{subject}: {body}"}), SETTINGS
    )
    assert [(p.doc_id, p.sections[0].text) for p in parsed] == [
        ("tickets.csv#7", "Tent: Pole snapped"),
        ("tickets.csv#9", "Stove: Will not light"),
    ]
    assert failures == [
        (
            "tickets.csv#8",
            "row 2 (id 8) has no 'body' field, which the text template '{subject}: {body}' needs",
        )
    ]


def test_jsonl_and_json_records() -> None:
    lines = [json.dumps({"id": "a", "text": "first"}), "{not json", json.dumps({"id": "a", "text": "again"})]
    parsed, failures = parse(doc("r.jsonl", "\n".join(lines)), SETTINGS)
    assert [p.doc_id for p in parsed] == ["r.jsonl#a"]
    assert failures[0][0] == "r.jsonl#2" and "line 2 is not JSON" in failures[0][1]
    assert "repeats the id 'a'" in failures[1][1]

    parsed, failures = parse(doc("r.json", json.dumps([{"text": "x", "title": "T"}, 5])), SETTINGS)
    assert [(p.doc_id, p.title) for p in parsed] == [("r.json#1", "T")]
    assert failures == [("r.json#2", "record 2 is a int, not an object")]


def test_a_template_may_only_name_fields() -> None:
    with pytest.raises(Unparseable, match="plain `\\{field\\}` placeholders"):
        parse(doc("r.json", "[]", metadata={"text_template": "{text.__class__}"}), SETTINGS)


def test_media_type_comes_from_the_extension_when_not_given() -> None:
    assert media_type_of(doc("x", "a", source="notes/readme.md")) == ("text/markdown", None)
    assert media_type_of(doc("x", "a", media_type="text/plain; charset=latin-1")) == ("text/plain", "latin-1")
    assert media_type_of(doc("x", "a", source="x.md", media_type="text/html")) == ("text/html", None)


@pytest.mark.parametrize(
    ("content", "fields", "reason"),
    [
        (b"", {}, "empty document (0 bytes)"),
        ("  \n\t\n", {}, "no text in this document"),
        (os.urandom(4096), {}, "binary content"),
        ("café".encode("latin-1"), {}, "not valid UTF-8: byte 0xe9 at offset 3"),
        (pdf_without_text(), {"media_type": "application/pdf"}, "the PDF has no text layer (2 page(s)"),
        (b"%PDF-1.4 garbage", {"media_type": "application/pdf"}, "not a readable PDF"),
        ("x" * 200, {"media_type": "image/png"}, "unsupported media type 'image/png'"),
    ],
    ids=["empty", "whitespace", "binary-garbage", "latin-1", "pdf-without-text", "broken-pdf", "image"],
)
def test_bad_input_is_refused_with_its_reason(
    content: str | bytes, fields: dict[str, str], reason: str
) -> None:
    with pytest.raises(Unparseable) as refused:
        parse(doc("bad", content, **fields), SETTINGS)
    assert reason in str(refused.value)


def test_a_declared_charset_is_honoured_and_the_size_limit_names_itself() -> None:
    parsed, _ = parse(doc("l", "café".encode("latin-1"), media_type="text/plain; charset=latin-1"), SETTINGS)
    assert parsed[0].sections[0].text == "café"
    small = RetrievalSettings(max_document_bytes=1024)
    with pytest.raises(
        Unparseable, match=r"too large: 2.0 KiB, over the 1.0 KiB limit \(LORASWARM_RETRIEVAL"
    ):
        parse(doc("big", "x" * 2048), small)
