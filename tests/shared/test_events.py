"""The envelope's rules: tenant ids, derived ids, and what a caused event inherits."""

from __future__ import annotations

import os
import uuid

import pytest
from pydantic import ValidationError

from loraswarm.shared.envelope import RandomIds, new_id
from loraswarm.shared.events import EVENT_MODELS, RecommendationRequested, RetrievalRequested


@pytest.mark.parametrize("tenant", ["Acme", "", "a" * 64, "acme corp", "-acme", "acme/x"])
def test_bad_tenant_ids_are_refused(tenant: str) -> None:
    with pytest.raises(ValidationError, match="tenant_id"):
        RetrievalRequested(tenant_id=tenant, query="q")


def test_every_event_declares_its_type_and_schema_version() -> None:
    for model in EVENT_MODELS:
        assert model.model_fields["type"].default == model.event_type
        assert "." in model.event_type


def test_caused_events_keep_tenant_request_and_user() -> None:
    request = RecommendationRequested(tenant_id="acme", user_id="ana", question="q")
    child = request.caused(RetrievalRequested, query="q")
    assert (child.tenant_id, child.request_id, child.user_id) == ("acme", request.request_id, "ana")
    assert child.causation_id == request.event_id


def test_events_are_immutable_and_reject_unknown_fields() -> None:
    event = RetrievalRequested(tenant_id="acme", query="q")
    with pytest.raises(ValidationError):
        event.query = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        RetrievalRequested(tenant_id="acme", query="q", surprise=1)  # type: ignore[call-arg]


def test_new_ids_are_random_version_4_uuids_and_a_forked_child_gets_its_own() -> None:
    ids = [new_id() for _ in range(3 * RandomIds.BATCH)]
    assert len(set(ids)) == len(ids)
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)
    for made in ids[:10]:  # the same object uuid.UUID would make from its text
        parsed = uuid.UUID(str(made))
        assert made == parsed and hash(made) == hash(parsed) and made.is_safe == parsed.is_safe
        assert made.bytes == parsed.bytes and repr(made) == repr(parsed)
    new_id()  # the pool is now part-used: a child must not take its next entries
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its first id, and leave without pytest's clean-up
        os.write(write, new_id().bytes)
        os._exit(0)
    os.waitpid(pid, 0)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.close(write)
    assert child != new_id()
