"""A company adapter's new version asks for each dependent user stack to be renewed on it, once;
a user adapter published on a company version no longer current asks for itself again."""

from __future__ import annotations

from pathlib import Path

from loraswarm.services.trainer.renewal import renewal_requests
from loraswarm.shared.adapter_store import AdapterStore, AdapterVersion
from loraswarm.shared.events import AdapterPublished, TrainingData
from loraswarm.shared.stacks import publish_stack
from tests.model_server.conftest import AdapterFactory
from tests.shared.test_stacks import factory, publish, tenant

__all__ = ["factory"]  # the fixture, shared with the stacks' tests

# What the trainer records of a user adapter's request: its hyper-parameters and data.
RECORD = {
    "hyperparameters": {"steps": 40, "stack_on": "auto", "target_modules": ["q_proj"], "note": None},
    "data": {"sources": ["handbook"]},
}


def published(version: AdapterVersion) -> AdapterPublished:
    return AdapterPublished(
        tenant_id="acme",
        adapter_id=version.ref.unversioned,
        version=str(version.ref.version),
        uri=str(version.path),
    )


def user(
    factory: AdapterFactory, store: AdapterStore, name: str, seed: int, on: AdapterVersion
) -> AdapterVersion:
    """A user adapter gated on `on`, published with its stack, as the trainer does."""
    version = publish(factory, store, f"user-{name}", seed, user=name, stacked_on=on.ref.id, **RECORD)
    publish_stack(store, version, on)
    return version


def test_a_new_company_version_renews_each_user_stack_on_an_older_one(
    factory: AdapterFactory, tmp_path: Path
) -> None:
    store = AdapterStore.under(tmp_path / "data")
    company1 = publish(factory, store, "company", 1)
    for seed, name in enumerate(["ana", "bo"], start=2):
        user(factory, store, name, seed, company1)
    assert renewal_requests(published(company1), store, tenant()) == []  # both already on company@1
    assert renewal_requests(published(store.resolve("acme/user-ana")), store, tenant()) == []
    event = published(publish(factory, store, "company", 9))
    requests = renewal_requests(event, store, tenant())
    assert [(r.name, r.user_id) for r in requests] == [("user-ana", "ana"), ("user-bo", "bo")]
    ana = requests[0]
    assert ana.hyperparameters == {"steps": 40, "stack_on": "auto", "target_modules": ["q_proj"]}
    assert ana.data == TrainingData(sources=["handbook"]) and ana.method == "lora"
    assert ana.causation_id == event.event_id
    # A redelivered event asks for the same requests (same ids): the trainer trains each once.
    assert [r.event_id for r in renewal_requests(event, store, tenant())] == [r.event_id for r in requests]
    # A stack's publish, or a late redelivery of company@1 (no longer current), renews nothing.
    assert renewal_requests(published(store.resolve("acme/user-ana.stack")), store, tenant()) == []
    assert renewal_requests(published(company1), store, tenant()) == []


def test_a_user_adapter_gated_on_an_older_company_version_asks_for_itself_again(
    factory: AdapterFactory, tmp_path: Path
) -> None:
    # ana's job was running on company@1 when company@2 was published: that event's renewal of her
    # adapter was refused as already training; her publish on company@1 asks again.
    store = AdapterStore.under(tmp_path / "data")
    company1 = publish(factory, store, "company", 1)
    publish(factory, store, "company", 2)
    late = user(factory, store, "ana", 3, company1)
    event = published(late)
    (again,) = renewal_requests(event, store, tenant())
    assert (again.name, again.user_id, again.causation_id) == ("user-ana", "ana", event.event_id)
    # A user adapter on the base model by choice (`stack_on: none`) is never moved.
    solo = publish(factory, store, "user-cy", 4, user="cy", hyperparameters={"stack_on": "none"})
    assert renewal_requests(published(solo), store, tenant()) == []
