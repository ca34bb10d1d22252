"""Decoding records: every kind of poison is named, and no input makes the decoder raise."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from loraswarm.shared.codec import REQUEST_ID_HEADER, Poison, decode, encode
from loraswarm.shared.events import EVENT_BY_TYPE, RetrievalRequested
from loraswarm.shared.tracing import BUS_HEADERS
from tests.samples import sample_events

LIMIT = 1024 * 1024


def test_encode_then_decode_is_identity_for_every_event() -> None:
    for event in sample_events():
        record = encode(event)
        assert record.key == event.tenant_id.encode()
        assert record.headers["event-type"] == event.type
        assert record.headers[REQUEST_ID_HEADER] == str(event.request_id)
        assert decode(record.value, record.key, expected_type=event.type, max_bytes=LIMIT) == event
        assert record.value == event.model_dump_json().encode()


def test_the_bus_headers_are_what_trace_extraction_leaves_out() -> None:
    """A consumer keys its cached trace context on the headers other than these (tracing.py)."""
    record = encode(RetrievalRequested(tenant_id="acme", query="q"))
    assert set(record.headers) == BUS_HEADERS  # no span is current: no trace headers


def test_each_kind_of_poison_is_named() -> None:
    good = RetrievalRequested(tenant_id="acme", query="q")
    cases = {
        b"{": "not_json",
        b"[1, 2]": "not_json",
        b'{"type": "nope"}': "unknown_type",
        b'{"tenant_id": "acme"}': "unknown_type",
        json.dumps({"type": "retrieval.completed", "tenant_id": "acme"}).encode(): "validation",
        json.dumps(
            {"type": "retrieval.requested", "tenant_id": "ACME!", "query": "q"}
        ).encode(): "validation",
        b"x" * (LIMIT + 1): "too_large",
    }
    for value, kind in cases.items():
        result = decode(value, b"acme", expected_type="retrieval.requested", max_bytes=LIMIT)
        assert isinstance(result, Poison) and result.kind == kind, (value[:40], result)
    assert decode(None, b"acme", expected_type="retrieval.requested", max_bytes=LIMIT) == Poison(
        "not_json", "the record has no value (a tombstone?)"
    )
    value = good.model_dump_json().encode()
    for key in (None, b"globex"):
        result = decode(value, key, expected_type="retrieval.requested", max_bytes=LIMIT)
        assert isinstance(result, Poison) and result.kind == "key_mismatch"


def test_validation_reasons_name_the_field() -> None:
    value = json.dumps({"type": "retrieval.requested", "tenant_id": "acme", "query": "q", "k": 0}).encode()
    result = decode(value, b"acme", expected_type="retrieval.requested", max_bytes=LIMIT)
    assert isinstance(result, Poison)
    assert result.reason.startswith("retrieval.requested: k:")


@given(value=st.binary(max_size=2048), key=st.one_of(st.none(), st.binary(max_size=16)))
def test_arbitrary_bytes_never_raise(value: bytes, key: bytes | None) -> None:
    for event_type in EVENT_BY_TYPE:
        decode(value, key, expected_type=event_type, max_bytes=LIMIT)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    payload=st.dictionaries(
        st.sampled_from(["type", "tenant_id", "query", "k", "event_id", "x"]), json_values
    )
)
def test_arbitrary_json_objects_are_either_events_or_named_poison(payload: dict[str, object]) -> None:
    result = decode(
        json.dumps(payload).encode(), b"acme", expected_type="retrieval.requested", max_bytes=LIMIT
    )
    assert isinstance(result, (Poison, RetrievalRequested))
