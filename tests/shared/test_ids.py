"""Typed ids: one tenant pattern and one adapter-id form, the same in events and in the adapter store."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from loraswarm.shared.adapter_store import AdapterNotFound, parse_adapter_id
from loraswarm.shared.events import AdapterId
from loraswarm.shared.ids import AdapterRef, TenantId


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("acme/company", AdapterRef("acme", "company")),
        ("acme/company@3", AdapterRef("acme", "company", "3")),
        ("acme/user-ana.v2@12", AdapterRef("acme", "user-ana.v2", "12")),
    ],
)
def test_adapter_ids_parse_and_format_back(text: str, ref: AdapterRef) -> None:
    assert AdapterRef.parse(text) == ref
    assert ref.format() == text == str(ref) == ref.id
    assert ref.at(None).format() == ref.unversioned
    assert TypeAdapter(AdapterId).validate_python(text) == text


@pytest.mark.parametrize(
    "text", ["acme/company@v1.2", "acme/company@", "Acme/company", "acme", "acme/", "/x"]
)
def test_one_form_is_refused_alike_by_events_and_the_store(text: str) -> None:
    """`@v1.2` once passed event validation and then failed in the store: now both refuse it."""
    with pytest.raises(ValueError, match="not an adapter id"):
        AdapterRef.parse(text)
    with pytest.raises(AdapterNotFound):
        parse_adapter_id(text)
    with pytest.raises(ValidationError):
        TypeAdapter(AdapterId).validate_python(text)


def test_tenant_ids() -> None:
    assert TypeAdapter(TenantId).validate_python("acme-2") == "acme-2"
    for bad in ("", "Acme", "-acme", "a" * 64, "a b"):
        with pytest.raises(ValidationError, match="tenant_id must be"):
            TypeAdapter(TenantId).validate_python(bad)
