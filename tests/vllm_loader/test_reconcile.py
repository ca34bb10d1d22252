"""The vLLM loader's comparison of the adapter store with what vLLM has loaded (reconcile.py)."""

from __future__ import annotations

from pathlib import Path

from loraswarm.services.vllm_loader.reconcile import Plan, loaded, plan, wanted
from loraswarm.shared.adapter_store import AdapterStore
from loraswarm.shared.stacks import publish_stack, rollback_with_stacks
from tests.model_server.conftest import AdapterFactory
from tests.shared.test_stacks import factory, publish

__all__ = ["factory"]  # the fixture, shared with the stacks' tests

MODELS = {
    "object": "list",
    "data": [
        {"id": "base", "object": "model", "root": "/models/SmolLM2", "parent": None},
        {"id": "acme/company", "object": "model", "root": "/store/acme/company/1", "parent": "base"},
        {"id": "acme/gone", "object": "model", "root": "/store/acme/gone/1", "parent": "base"},
        {"id": "static-demo", "object": "model", "root": "/static", "parent": "base"},
    ],
}


def test_vllms_models_list_gives_each_adapter_and_its_folder() -> None:
    assert loaded(MODELS) == {
        "acme/company": "/store/acme/company/1",
        "acme/gone": "/store/acme/gone/1",
        "static-demo": "/static",
    }


def test_the_plan_unloads_the_gone_and_the_changed_and_loads_the_new_and_the_changed() -> None:
    want = {"acme/company": "/store/acme/company/2", "acme/user-ana.stack": "/store/acme/user-ana.stack/1"}
    assert plan(want, loaded(MODELS)) == Plan(
        unload=["acme/company", "acme/gone"],  # `static-demo` is vLLM's own (--lora-modules): left alone
        load=[
            ("acme/company", "/store/acme/company/2"),
            ("acme/user-ana.stack", "/store/acme/user-ana.stack/1"),
        ],
    )
    assert not plan(loaded(MODELS) | {"static-demo": "/static"}, loaded(MODELS))


def test_the_store_wants_every_current_lora_adapter_its_stacks_included(
    factory: AdapterFactory, tmp_path: Path
) -> None:
    store = AdapterStore.under(tmp_path / "data")
    company = publish(factory, store, "company", 1)
    user = publish(factory, store, "user-ana", 2, user="ana")
    stack = publish_stack(store, user, company)
    publish(factory, store, "company", 3)
    want, skipped = wanted(store, max_rank=32)
    assert want == {
        "acme/company": str(store.resolve("acme/company@2").path.resolve()),
        "acme/user-ana": str(user.path.resolve()),
        "acme/user-ana.stack": str(stack.path.resolve()),
    }
    assert skipped == {}
    # The stack is rank 8 (4 + 4): above a limit of 4 it is reported, not loaded.
    assert wanted(store, max_rank=4)[1] == {"acme/user-ana.stack": "rank 8 is above vLLM's --max-lora-rank 4"}
    # A rollback serves the company adapter from another folder: vLLM must load that one.
    rollback_with_stacks(store, "acme", "company", "1")
    assert wanted(store, max_rank=32)[0]["acme/company"] == str(company.path.resolve())
