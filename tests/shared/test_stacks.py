"""Served stacks (shared/stacks.py): what the specialists ask for, publishing the gated pair once,
and rolling a company adapter back with the stacks it is part of."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from loraswarm.shared.adapter_store import AdapterManifest, AdapterNotFound, AdapterStore, AdapterVersion
from loraswarm.shared.settings import Settings
from loraswarm.shared.stacks import (
    StackPart,
    delete_with_stacks,
    parts_of,
    publish_stack,
    rollback_with_stacks,
    served_candidates,
    stacks_with,
)
from loraswarm.shared.tenants import TenantConfig
from tests.model_server.conftest import AdapterFactory, AdapterSpec


def tenant(method: str = "lora") -> TenantConfig:
    specialist = {"name": "policy", "description": "Policies.", "instructions": "Answer.", "adapter": "user"}
    return TenantConfig.model_validate(
        {
            "tenant_id": "acme",
            "users": ["ana", "bo"],
            "user_adapter_method": method,
            "specialists": [specialist],
        }
    )


def test_a_users_pair_is_asked_for_as_its_stack_then_the_company_then_the_base_model() -> None:
    pair = ["acme/company", "acme/user-ana"]
    assert served_candidates(tenant(), pair) == [
        ("acme/user-ana.stack", pair),
        ("acme/company", ["acme/company"]),
        (None, []),
    ]
    # A LLaMA-Adapter does not join: the project's model server stacks the two by name.
    assert served_candidates(tenant("llama_adapter"), pair)[0] == ("acme/company+acme/user-ana", pair)
    assert served_candidates(tenant(), ["acme/company"]) == [("acme/company", ["acme/company"]), (None, [])]
    assert served_candidates(tenant(), []) == [(None, [])]


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> AdapterFactory:
    return AdapterFactory(Settings(device="cpu"), tmp_path_factory.mktemp("stacks"))  # type: ignore[call-arg]


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore.under(tmp_path / "data")


def publish(
    factory: AdapterFactory,
    store: AdapterStore,
    name: str,
    seed: int,
    user: str | None = None,
    **extra: object,
) -> AdapterVersion:
    """A real rank-4 LoRA adapter of the base model, published as `acme/<name>` (`extra`: more of
    what the trainer writes into a manifest)."""
    spec = AdapterSpec("acme", name, 4, ("q_proj", "v_proj"), seed=seed)
    manifest = AdapterManifest.model_validate(
        {
            "tenant_id": "acme",
            "user_id": user,
            "name": name,
            "base_model": "SmolLM2-135M-Instruct",
            "base_model_hash": factory.base_hash,
            **extra,
        }
    )
    return store.publish(factory.save(spec), manifest)


def test_the_gated_pair_is_published_once_and_made_current_again(
    factory: AdapterFactory, store: AdapterStore
) -> None:
    company1 = publish(factory, store, "company", 1)
    ana1 = publish(factory, store, "user-ana", 2, user="ana")
    stack = publish_stack(store, ana1, company1)
    assert stack.ref.id == "acme/user-ana.stack@1"
    assert parts_of(stack.manifest) == [
        StackPart(name="company", version="1"),
        StackPart(name="user-ana", version="1"),
    ]
    assert stack.manifest.user_id == "ana" and stack.manifest.method == "lora"
    weights = load_file(str(stack.path / "adapter_model.safetensors"))
    assert any(t.shape[0] == 8 for k, t in weights.items() if "lora_A" in k)  # rank 4 + 4, joined
    # The company adapter republished: the stack stays on the pair that was gated.
    publish(factory, store, "company", 3)
    assert parts_of(store.resolve("acme/user-ana.stack").manifest)[0].version == "1"
    # The same pair again (a redelivery): no new version.
    assert publish_stack(store, ana1, company1).ref.version == stack.ref.version
    # A user adapter on the base model alone: its stack is a copy of it.
    solo = publish_stack(store, publish(factory, store, "user-bo", 4, user="bo"), None)
    assert parts_of(solo.manifest) == [StackPart(name="user-bo", version="1")]
    assert stacks_with(store, "acme", "company") == ["user-ana.stack"]


def test_a_company_rollback_takes_its_stacks_with_it(factory: AdapterFactory, store: AdapterStore) -> None:
    company1 = publish(factory, store, "company", 1)
    ana1 = publish(factory, store, "user-ana", 2, user="ana")
    publish_stack(store, ana1, company1)
    company2 = publish(factory, store, "company", 3)
    ana2 = publish(factory, store, "user-ana", 4, user="ana")  # renewed on company@2
    assert publish_stack(store, ana2, company2).ref.version == "2"
    version, moved = rollback_with_stacks(store, "acme", "company")
    assert (version, moved) == ("1", {"user-ana.stack": "1"})
    assert parts_of(store.resolve("acme/user-ana.stack").manifest)[1] == StackPart(
        name="user-ana", version="1"
    )
    # Forward again to company@2: its pair is current again.
    assert rollback_with_stacks(store, "acme", "company", "2") == ("2", {"user-ana.stack": "2"})


def test_a_stack_with_no_pair_on_the_version_rolled_back_to_is_withdrawn(
    factory: AdapterFactory, store: AdapterStore
) -> None:
    publish(factory, store, "company", 1)
    company2 = publish(factory, store, "company", 2)
    publish_stack(store, publish(factory, store, "user-ana", 3, user="ana"), company2)
    assert rollback_with_stacks(store, "acme", "company") == ("1", {"user-ana.stack": None})
    with pytest.raises(AdapterNotFound):
        store.resolve("acme/user-ana.stack")
    assert [v.ref.name for v in store.list("acme")] == ["company", "user-ana"]
    # Rolling forward brings it back.
    assert rollback_with_stacks(store, "acme", "company", "2") == ("2", {"user-ana.stack": "1"})


def test_deleting_an_adapter_deletes_the_stacks_that_hold_its_weights(
    factory: AdapterFactory, store: AdapterStore
) -> None:
    company = publish(factory, store, "company", 1)
    publish_stack(store, publish(factory, store, "user-ana", 2, user="ana"), company)
    publish_stack(store, publish(factory, store, "user-bo", 3, user="bo"), company)
    assert delete_with_stacks(store, "acme", "user-ana") == ["user-ana.stack"]
    assert [v.ref.name for v in store.list("acme")] == ["company", "user-bo", "user-bo.stack"]
    assert delete_with_stacks(store, "acme", "company") == ["user-bo.stack"]
    assert [v.ref.name for v in store.list("acme")] == ["user-bo"]
    assert delete_with_stacks(store, "acme", "company") is None
