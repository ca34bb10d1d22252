"""A specialist against the real model server: an adapter that is not published yet.

TGI would quietly run the base model for an unknown `adapter_id`; the model server answers 404
`adapter_not_found`, and one it cannot serve (one trained on another base model) 422 `invalid_adapter`. The
specialist then answers with what exists (the company adapter alone,
then the base model) and reports the stack that really ran, instead of failing the request.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from huggingface_hub import AsyncInferenceClient

from loraswarm.services.specialist.agent import _parse, cited, run_task
from loraswarm.shared.adapter_store import AdapterManifest, AdapterStore
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import Citation, Passage, SpecialistTask
from loraswarm.shared.settings import ModelServerSettings, Settings
from loraswarm.shared.tenants import TenantConfig
from tests.e2e.world import model_server
from tests.model_server.conftest import AdapterFactory, AdapterSpec

ACME = TenantConfig.model_validate(
    {
        "tenant_id": "acme",
        "users": ["ana"],
        "specialists": [
            {
                "name": "policy",
                "description": "Policies.",
                "instructions": "Answer.",
                "adapter": "user",
                "max_new_tokens": 8,
            }
        ],
    }
)


def publish_foreign_llama_adapter(
    factory: AdapterFactory, store: AdapterStore, folder: Path, tenant: str, name: str
) -> None:
    """A LLaMA-Adapter whose manifest says it was trained on another base model: served by nobody."""
    from peft import AdaptionPromptConfig, TaskType, get_peft_model

    config = AdaptionPromptConfig(adapter_len=4, adapter_layers=2, task_type=TaskType.CAUSAL_LM)
    get_peft_model(copy.deepcopy(factory.base), config).save_pretrained(str(folder))
    manifest = AdapterManifest(
        tenant_id=tenant,
        name=name,
        base_model="llama-7b",
        base_model_hash="0123456789abcdef",
        method="llama_adapter",
    )
    store.publish(folder, manifest)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("specialist")
    settings = Settings(data_dir=root / "data", device="cpu")  # type: ignore[call-arg]
    settings.model_server = ModelServerSettings(max_input_tokens=512, max_total_tokens=640)
    # Only the company adapter is published; ana's is not (yet).
    factory = AdapterFactory(settings, root / "src")
    store = AdapterStore.under(settings.data_dir)
    factory.publish(store, AdapterSpec("acme", "company", 8, ("q_proj", "v_proj"), seed=1))
    # ben's was trained on another base model, which the model server refuses (422 invalid_adapter).
    publish_foreign_llama_adapter(factory, store, root / "llama", "acme", "user-ben")
    with model_server(settings) as url:
        yield url


def task(adapter_ids: list[str]) -> SpecialistTask:
    return SpecialistTask(
        tenant_id="acme",
        user_id="ana",
        specialist="policy",
        question="Can a tent be refunded?",
        adapter_ids=adapter_ids,
        deadline_at=utc_now() + timedelta(minutes=5),
    )


@pytest.mark.parametrize(
    ("asked", "ran"),
    [
        (["acme/company"], ["acme/company"]),
        (["acme/company", "acme/user-ana"], ["acme/company"]),  # ana's not published yet
        (["acme/other"], []),  # nothing published under that name: the base model
        (["acme/company", "acme/user-ben"], ["acme/company"]),  # ben's cannot be served (422)
    ],
)
async def test_an_unpublished_adapter_falls_back_to_what_exists(
    server: str, asked: list[str], ran: list[str]
) -> None:
    client = AsyncInferenceClient(base_url=server, headers={"X-Tenant-Id": "acme"})
    outcome = await run_task(task(asked), ACME, client, None, timeout_s=120)
    assert outcome.result.error is None, outcome.result.error
    assert outcome.result.adapter_ids == ran
    assert outcome.result.usage.output_tokens > 0


async def test_another_failure_is_still_an_error(server: str) -> None:
    # A tenant the adapter does not belong to: 403, not a missing adapter; no fallback.
    client = AsyncInferenceClient(base_url=server, headers={"X-Tenant-Id": "globex"})
    outcome = await run_task(task(["acme/company"]), ACME, client, None, timeout_s=120)
    assert outcome.result.error is not None and "model call failed" in outcome.result.error
    assert outcome.result.adapter_ids == ["acme/company"]


@pytest.mark.parametrize(
    ("generated", "answer"),
    [
        ('{"answer": "Refund within 30 days.", "handoff": null}', "Refund within 30 days."),
        # max_new_tokens cut the JSON: the answer so far, not the JSON around it
        ('{"answer": "Refund within 30 days, say \\"sorry\\" and', 'Refund within 30 days, say "sorry" and'),
        ('{"answer": "cut in an escape \\', "cut in an escape"),
        ("not JSON at all", "not JSON at all"),
    ],
)
def test_the_answer_is_read_from_whole_or_cut_off_json(generated: str, answer: str) -> None:
    assert _parse(generated) == (answer, None)


REFUNDS = Passage(
    text="Tents can be refunded within 30 days.", score=1.0, citation=Citation(doc_id="r", source="h")
)
CANTEEN = Passage(text="The canteen opens at 8:00.", score=0.9, citation=Citation(doc_id="c", source="h"))


def test_a_specialist_cites_only_what_supports_its_answer() -> None:
    q = "Can a tent be refunded?"
    assert [c.doc_id for c in cited("Yes, within 30 days.", [CANTEEN, REFUNDS], q)] == ["r"]
    assert cited("Ask the manager.", [CANTEEN, REFUNDS], q) == []  # nothing by default
    assert cited("", [CANTEEN, REFUNDS], q) == []


async def test_the_served_answer_never_cites_an_unrelated_passage(server: str) -> None:
    client = AsyncInferenceClient(base_url=server, headers={"X-Tenant-Id": "acme"})
    outcome = await run_task(
        task(["acme/company"]).model_copy(update={"context": [CANTEEN, REFUNDS]}),
        ACME,
        client,
        None,
        timeout_s=120,
    )
    assert outcome.result.error is None, outcome.result.error
    assert "c" not in {c.doc_id for c in outcome.result.citations}  # whatever the model wrote
