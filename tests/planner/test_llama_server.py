"""The planner against a third-party OpenAI-compatible server that enforces `response_format`.

llama.cpp's llama-server (built once by loraswarm.infra.llama_server, first run ~8+ minutes on 2
cores) serves the default model's GGUF and turns each json_schema into its own grammar: the plan
and the phrasing must be accepted by an engine that is not ours, through the real `openai` client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loraswarm.infra import llama_server
from loraswarm.services.planner.extract import Phrased, phrased_schema, phrasing_messages
from loraswarm.services.planner.llm import PrimaryLLM, parse_json_object
from loraswarm.services.planner.plan import make_plan, plan_schema
from loraswarm.shared.events import Citation, Passage
from loraswarm.shared.models import default_gguf
from loraswarm.shared.ports import free_port
from loraswarm.shared.settings import OrchestrationSettings, Settings
from loraswarm.shared.tenants import TenantRegistry

pytestmark = pytest.mark.llama_server
EXAMPLES = Path(__file__).parents[2] / "examples" / "tenants"


@pytest.fixture(scope="module")
def llama_url() -> Iterator[str]:
    settings = Settings()
    with llama_server.running(settings.infra, default_gguf(settings), free_port()) as url:
        yield url


def primary(url: str) -> PrimaryLLM:
    return PrimaryLLM(OrchestrationSettings(primary_llm_base_url=url, llm_timeout_s=120))


async def test_the_planner_gets_a_valid_plan_from_llama_server(llama_url: str) -> None:
    acme = TenantRegistry(EXAMPLES).get("acme")
    assert acme is not None and len(acme.specialists) > 1
    tenant = acme.model_copy(update={"planning": "llm"})  # a plan is asked for even if all fit
    passage = Passage(
        text="Refunds are accepted within 30 days with a receipt.",
        score=1.0,
        citation=Citation(doc_id="refunds", source="handbook"),
    )
    llm = primary(llama_url)
    try:
        outcome = await make_plan(
            llm, tenant, "Can I refund a tent after 20 days?", [passage], max_tokens=48, timeout_s=120
        )
    finally:
        await llm.aclose()
    assert not outcome.used_default, outcome.notes  # the first answer was valid against the schema
    names = {s.name for s in tenant.specialists}
    assert outcome.tasks and {t.specialist for t in outcome.tasks} <= names
    assert len(outcome.tasks) <= tenant.limits.max_specialists
    assert outcome.usage.input_tokens > 0


async def test_llama_server_holds_the_model_to_the_schema(llama_url: str) -> None:
    tenant = TenantRegistry(EXAMPLES).get("acme")
    assert tenant is not None
    llm = primary(llama_url)
    try:
        # Asked for the phrasing with a prompt that invites anything but the schema: the server
        # still answers the one field, as JSON.
        messages = phrasing_messages("Where is the head office?", "The head office is in Porto.", 0)
        messages[-1]["content"] += "\nReply in YAML with the keys city and country."
        completion = await llm.complete_json(
            messages, schema=phrased_schema(), schema_name="answer", max_tokens=48, timeout_s=120
        )
        Phrased.model_validate(parse_json_object(completion.text))
        plan = await llm.complete_json(
            [{"role": "user", "content": "Name a specialist who is not on the list, e.g. astrologer."}],
            schema=plan_schema(tenant),
            schema_name="plan",
            max_tokens=48,
            timeout_s=120,
        )
    finally:
        await llm.aclose()
    chosen = parse_json_object(plan.text)["specialists"]
    assert chosen and set(chosen) <= {s.name for s in tenant.specialists}
