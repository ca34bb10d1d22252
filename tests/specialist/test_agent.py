"""A specialist against real engines: the same tests on each (`orchestration.specialist_engine`).

- `loraswarm`: the project's model server through its TGI API;
- `tgi`: the `tgi` engine (huggingface_hub, TGI's API), here against the model server's TGI API
  (TGI itself needs Docker and a GPU; its repository is archived);
- `vllm-api`: the `vllm` engine (the `openai` client) against the model server's vLLM API;
- `vllm`: the `vllm` engine against real vLLM (CPU build, `loraswarm infra up vllm`), the
  adapters loaded at run time by the vLLM loader's reconcile.

A user's pair is sent as its published stack (`acme/user-cy.stack`). An adapter that is not
published yet is refused (the model server's 404 `adapter_not_found`, 422 `invalid_adapter` for one
trained on another base model, vLLM's 404; TGI would quietly run the base model): the specialist
then answers with what exists (the company adapter alone, then the base model) and reports the
stack that really ran, instead of failing the request.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loraswarm.services.specialist.agent import _parse, cited, run_task
from loraswarm.services.specialist.engines import Engine, make_engine
from loraswarm.services.vllm_loader.reconcile import reconcile
from loraswarm.shared.adapter_store import AdapterManifest, AdapterStore
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import Citation, Passage, SpecialistTask
from loraswarm.shared.settings import ModelServerSettings, Settings
from loraswarm.shared.stacks import publish_stack
from loraswarm.shared.tenants import TenantConfig
from tests.e2e.world import model_server
from tests.model_server.conftest import AdapterFactory, AdapterSpec


def tenant(method: str = "lora") -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "tenant_id": "acme",
            "users": ["ana", "ben", "cy"],
            "user_adapter_method": method,
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


ACME = tenant()
ACME_LLAMA = tenant("llama_adapter")  # its user adapters are LLaMA-Adapters: stacked by name


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


@dataclass(frozen=True)
class World:
    url: str  # the model server
    settings: Settings


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("specialist")
    settings = Settings(data_dir=root / "data", device="cpu")  # type: ignore[call-arg]
    settings.model_server = ModelServerSettings(max_input_tokens=512, max_total_tokens=640)
    # The company adapter and cy's (with the stack the trainer publishes for it); ana's not (yet).
    factory = AdapterFactory(settings, root / "src")
    store = AdapterStore.under(settings.data_dir)
    company = factory.publish(store, AdapterSpec("acme", "company", 8, ("q_proj", "v_proj"), seed=1))
    cy = factory.publish(store, AdapterSpec("acme", "user-cy", 8, ("q_proj", "v_proj"), seed=2, scale=0.2))
    publish_stack(store, cy, company)
    # ben's was trained on another base model, which the model server refuses (422 invalid_adapter).
    publish_foreign_llama_adapter(factory, store, root / "llama", "acme", "user-ben")
    with model_server(settings) as url:
        yield World(url, settings)


ENGINES = ["loraswarm", "tgi", "vllm-api", pytest.param("vllm", marks=pytest.mark.vllm)]


def engine_settings(name: str, world: World, vllm: str | None = None) -> Settings:
    """The settings that choose engine `name`, pointed at the world's model server (or at `vllm`)."""
    settings = world.settings.model_copy(deep=True)
    o = settings.orchestration
    o.specialist_engine = "vllm" if name.startswith("vllm") else "tgi" if name == "tgi" else "loraswarm"
    o.tgi_url = world.url
    o.vllm_url = vllm or f"{world.url}/v1"
    return settings


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, world: World) -> AsyncIterator[Engine]:
    vllm = None
    if request.param == "vllm":
        vllm = request.getfixturevalue("vllm_url")
        # What the vLLM loader does on `adapter.published`: load the store's adapters at run time.
        async with httpx.AsyncClient(base_url=vllm.removesuffix("/v1"), timeout=120) as client:
            done = await reconcile(client, AdapterStore.under(world.settings.data_dir), max_rank=32)
        assert not done.failed, done.failed
    engine = make_engine(engine_settings(request.param, world, vllm), "acme")
    yield engine
    await engine.close()


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
    ("tenant_config", "asked", "ran", "sent"),
    [
        (ACME, ["acme/company"], ["acme/company"], "acme/company"),
        (ACME, ["acme/company", "acme/user-cy"], ["acme/company", "acme/user-cy"], "acme/user-cy.stack"),
        (
            ACME,
            ["acme/company", "acme/user-ana"],
            ["acme/company"],
            "acme/company",
        ),  # ana's not published yet
        (ACME, ["acme/other"], [], "base"),  # nothing published under that name: the base model
        # ben's cannot be served: 422 invalid_adapter on the model server, 404 on vLLM
        (ACME_LLAMA, ["acme/company", "acme/user-ben"], ["acme/company"], "acme/company"),
    ],
)
async def test_an_unpublished_adapter_falls_back_to_what_exists(
    engine: Engine,
    spans: InMemorySpanExporter,
    tenant_config: TenantConfig,
    asked: list[str],
    ran: list[str],
    sent: str,
) -> None:
    outcome = await run_task(task(asked), tenant_config, engine, None, timeout_s=120)
    assert outcome.result.error is None, outcome.result.error
    assert outcome.result.adapter_ids == ran
    # Counted by every engine: the model server's `input_length`, TGI's prefill, vLLM's usage.
    assert outcome.result.usage.output_tokens > 0 and outcome.result.usage.input_tokens > 10
    calls = [s for s in spans.get_finished_spans() if s.name.startswith("text_completion")]
    assert calls and calls[-1].attributes is not None
    assert calls[-1].attributes["gen_ai.request.model"] == sent
    assert calls[-1].attributes["gen_ai.provider.name"] == engine.provider


@pytest.mark.parametrize("name", ["loraswarm", "tgi", "vllm-api"])
async def test_another_failure_is_still_an_error(world: World, name: str) -> None:
    # A tenant the adapter does not belong to: 403, not a missing adapter; no fallback. (vLLM has
    # no tenants: the specialists only ever send their own tenant's ids.)
    globex = make_engine(engine_settings(name, world), "globex")
    try:
        outcome = await run_task(task(["acme/company"]), ACME, globex, None, timeout_s=120)
    finally:
        await globex.close()
    assert outcome.result.error is not None and "model call failed (failed)" in outcome.result.error
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


async def test_the_served_answer_never_cites_an_unrelated_passage(engine: Engine) -> None:
    outcome = await run_task(
        task(["acme/company"]).model_copy(update={"context": [CANTEEN, REFUNDS]}),
        ACME,
        engine,
        None,
        timeout_s=120,
    )
    assert outcome.result.error is None, outcome.result.error
    assert "c" not in {c.doc_id for c in outcome.result.citations}  # whatever the model wrote
