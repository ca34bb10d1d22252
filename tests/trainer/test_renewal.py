"""A company adapter's new version asks for each dependent user stack to be renewed on it, once."""

from __future__ import annotations

from pathlib import Path

from loraswarm.services.trainer.renewal import renewal_requests
from loraswarm.shared.adapter_store import AdapterStore, AdapterVersion
from loraswarm.shared.events import AdapterPublished, TrainingData
from loraswarm.shared.stacks import publish_stack
from tests.model_server.conftest import AdapterFactory
from tests.shared.test_stacks import factory, publish, tenant

__all__ = ["factory"]  # the fixture, shared with the stacks' tests


def published(version: AdapterVersion) -> AdapterPublished:
    return AdapterPublished(
        tenant_id="acme",
        adapter_id=version.ref.unversioned,
        version=str(version.ref.version),
        uri=str(version.path),
    )


def test_a_new_company_version_renews_each_user_stack_on_an_older_one(
    factory: AdapterFactory, tmp_path: Path
) -> None:
    store = AdapterStore.under(tmp_path / "data")
    company1 = publish(factory, store, "company", 1)
    for seed, user in enumerate(["ana", "bo"], start=2):
        # What the trainer records of the request: its hyper-parameters and data.
        version = publish(
            factory,
            store,
            f"user-{user}",
            seed,
            user=user,
            hyperparameters={"steps": 40, "stack_on": "auto", "target_modules": ["q_proj"], "note": None},
            data={"sources": ["handbook"]},
        )
        publish_stack(store, version, company1)
    assert renewal_requests(published(company1), store, tenant()) == []  # both already on company@1
    event = published(publish(factory, store, "company", 9))
    requests = renewal_requests(event, store, tenant())
    assert [(r.name, r.user_id) for r in requests] == [("user-ana", "ana"), ("user-bo", "bo")]
    ana = requests[0]
    assert ana.hyperparameters == {"steps": 40, "stack_on": "auto", "target_modules": ["q_proj"]}
    assert ana.data == TrainingData(sources=["handbook"]) and ana.method == "lora"
    assert ana.causation_id == event.event_id
    # A redelivered event asks for the same requests (same ids): the trainer trains each once.
    assert [r.event_id for r in renewal_requests(event, store, tenant())] == [r.event_id for r in requests]
    # A user adapter's own publish, or a stack's, renews nothing.
    assert renewal_requests(published(store.resolve("acme/user-ana")), store, tenant()) == []
    assert renewal_requests(published(store.resolve("acme/user-ana.stack")), store, tenant()) == []
