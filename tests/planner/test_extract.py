"""The extractive composer's guards: echo retried then replaced, repetition, parts, true citations.

The primary LLM is the scripted OpenAI-compatible endpoint (real `openai` client over HTTP): these
tests need an LLM that echoes or repeats on cue.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from loraswarm.services.planner.extract import (
    PHRASE_SLACK_TOKENS,
    UNSUPPORTED_NOTE,
    compose_extractive,
    extract,
    passage_units,
)
from loraswarm.services.planner.llm import PrimaryLLM
from loraswarm.services.planner.state import PlannerState, TaskState
from loraswarm.shared import answer_checks as checks
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import Citation, Passage, RecommendationRequested, SpecialistResult
from loraswarm.shared.settings import OrchestrationSettings
from tests.planner.scripted_llm import Script, serve

QUESTION = "What is the maximum weight of a single pallet, and who handles large claims?"
PALLET = Passage(
    text="# Warehouse rules\n\n- A single pallet may weigh at most 800 kg.\n- Forklifts need a licence.",
    score=0.9,
    citation=Citation(doc_id="warehouse", source="handbook", position=0),
)
CLAIMS = Passage(
    text="Large claims (over 5,000 euros) are handled by Maria Lund in the claims team.",
    score=0.8,
    citation=Citation(doc_id="claims", source="handbook", position=0),
)
OFFTOPIC = Passage(
    text="The canteen opens at 8:00.", score=0.5, citation=Citation(doc_id="canteen", source="handbook")
)


def state(question: str, passages: list[Passage], answers: dict[str, str]) -> PlannerState:
    request = RecommendationRequested(tenant_id="acme", question=question)
    s = PlannerState(request=request, deadline_at=utc_now() + timedelta(seconds=60), passages=passages)
    for name, answer in answers.items():
        task_id = uuid.uuid4()
        result = request.caused(SpecialistResult, specialist=name, task_id=task_id, answer=answer)
        s.tasks[str(task_id)] = TaskState(
            task_id=task_id, specialist=name, question=question, adapter_ids=[], result=result
        )
    return s


def llm(url: str) -> PrimaryLLM:
    return PrimaryLLM(OrchestrationSettings(primary_llm_base_url=url, llm_timeout_s=2.0))


def phrased(text: str) -> str:
    return json.dumps({"answer": text})


def test_a_numbered_list_stays_one_unit_under_its_heading() -> None:
    units = passage_units(
        "# Booking travel\n\n1. Ask the manager.\n2. Book the hotel.\n\nIn short: ask first."
    )
    text, about, is_list = units[0]
    assert (text, is_list) == ("1. Ask the manager.\n2. Book the hotel.", True)
    assert " ".join(about.split()) == "Booking travel 1. Ask the manager. 2. Book the hotel."
    assert units[1][0] == "In short: ask first."


def test_the_chunkers_title_line_is_a_heading() -> None:
    units = passage_units(
        "Northwind processes > Booking travel\n1. Upload the receipts.\n2. Ask the manager."
    )
    assert len(units) == 1 and units[0][2] and "Booking travel" in units[0][1]


def test_each_part_gets_the_unit_that_answers_it() -> None:
    s = state(QUESTION, [OFFTOPIC, PALLET, CLAIMS], {"policy": QUESTION + " Pallets are heavy."})
    picked = extract(s).picked
    assert picked[0] is not None and "800 kg" in picked[0].text
    assert picked[1] is not None and "Maria Lund" in picked[1].text


def handbook(doc_id: str, text: str) -> Passage:
    return Passage(text=text, score=0.9, citation=Citation(doc_id=doc_id, source="handbook", position=0))


def test_what_a_passage_states_beats_a_specialist_sentence_that_restates_the_scenario() -> None:
    # The demo's acme answer: the specialist's sentence shares more of the question's words than
    # the rule does, but no passage says it.
    question = "A customer wants a refund for a tent bought 45 days ago. What should we do?"
    rule = handbook(
        "refunds",
        "# Refunds and returns\nAcme Outdoor refunds tents within 30 days of purchase.\n"
        "After 30 days we offer store credit instead of a refund, up to 60 days.",
    )
    invented = "We apologize and provide a refund for the tent purchased 45 days ago."
    s = state(question, [rule], {"policy": invented})
    [unit] = extract(s).picked
    assert unit is not None and unit.supported and unit.origin == "passage"
    assert "30 days" in unit.text
    # The demo's globex answer: the specialist repeats the question's words, which must not raise
    # the bar for the rule that shares fewer of them.
    seal = "A customer wants to return an unused gearbox seal after 60 days. What applies?"
    returns = handbook(
        "returns",
        "# Returns of parts\nGlobex accepts returns of unused turbine parts within 90 days. "
        "A restocking fee of 15 percent applies.\nCustom-machined parts cannot be returned.",
    )
    made_up = (
        "60 days after the original installation, the customer is required to return the unused gearbox seal."
    )
    [unit] = extract(state(seal, [returns], {"contracts": made_up})).picked
    assert unit is not None and unit.supported and "90 days" in unit.text
    # With nothing supported that answers, the specialist's sentence is still the answer.
    [unit] = extract(state(question, [OFFTOPIC], {"policy": invented})).picked
    assert unit is not None and unit.text == invented and not unit.supported


async def test_an_echo_is_retried_once_with_the_other_prompt_then_replaced() -> None:
    s = state(QUESTION, [PALLET, CLAIMS], {})
    script = Script([phrased(QUESTION), phrased("Who handles large claims? What is the pallet weight?")])
    with serve(script) as url:
        client = llm(url)
        outcome = await compose_extractive(client, s, max_tokens=64, timeout_s=2.0, phrase_it=True)
        await client.aclose()
    assert len(script.requests) == 2  # retried once, not more
    assert script.requests[0]["messages"][0]["content"] != script.requests[1]["messages"][0]["content"]
    text = outcome.recommendations[0].text
    assert not checks.echoes(text, QUESTION)
    assert "800 kg" in text and "Maria Lund" in text  # the extracted sentences replaced the echo
    assert [n for n in outcome.notes if "rejected (echo)" in n] == [
        "phrasing attempt 1 rejected (echo)",
        "phrasing attempt 2 rejected (echo)",
    ]


async def test_a_phrasing_that_repeats_or_drops_a_number_is_not_used() -> None:
    s = state(QUESTION, [PALLET, CLAIMS], {})
    for bad in (
        "A pallet may weigh 800 kg. A pallet may weigh 800 kg. Maria Lund handles large claims.",
        "A pallet may weigh a lot, and Maria Lund handles large claims.",
        "A single pallet may weigh at most 800 kg.",  # the second part left out
    ):
        with serve(Script([phrased(bad)])) as url:
            client = llm(url)
            outcome = await compose_extractive(client, s, max_tokens=64, timeout_s=2.0, phrase_it=True)
            await client.aclose()
        text = outcome.recommendations[0].text
        assert text != bad and not checks.repeated_sentences(text) and "800 kg" in text


async def test_a_good_phrasing_is_kept_and_cites_only_the_passages_that_support_it() -> None:
    s = state(QUESTION, [OFFTOPIC, PALLET, CLAIMS], {"policy": "Call the canteen at 8:00."})
    good = "A single pallet may weigh at most 800 kg; Maria Lund handles large claims (over 5,000 euros)."
    with serve(Script([phrased(good)])) as url:
        client = llm(url)
        outcome = await compose_extractive(client, s, max_tokens=64, timeout_s=2.0, phrase_it=True)
        await client.aclose()
    rec = outcome.recommendations[0]
    assert rec.text == good
    assert sorted(c.doc_id for c in rec.citations) == ["claims", "warehouse"]  # never the canteen


async def test_the_phrasing_budget_is_the_extracts_length_not_the_composers_limit() -> None:
    s = state(QUESTION, [PALLET, CLAIMS], {})
    good = "A single pallet may weigh at most 800 kg; Maria Lund handles large claims (over 5,000 euros)."
    script = Script([phrased(good)])
    with serve(script) as url:
        client = llm(url)
        outcome = await compose_extractive(client, s, max_tokens=400, timeout_s=2.0, phrase_it=True)
        await client.aclose()
    extracted = extract(s).text()
    budget = script.requests[0]["max_tokens"]
    assert budget == len(extracted) // 3 + PHRASE_SLACK_TOKENS < 400, (budget, extracted)
    assert outcome.recommendations[0].text == good


async def test_a_part_nothing_answers_is_marked_and_an_unsupported_answer_cites_nothing() -> None:
    s = state(QUESTION, [PALLET], {})
    outcome = await compose_extractive(None, s, max_tokens=64, timeout_s=2.0, phrase_it=True)
    rec = outcome.recommendations[0]
    assert "800 kg" in rec.text
    assert "Who handles large claims: not in the documents." in rec.text
    assert checks.check(rec.text, QUESTION, [PALLET.text]).all_parts
    assert [c.doc_id for c in rec.citations] == ["warehouse"]
    nothing = state("Who handles large claims?", [OFFTOPIC], {"policy": "Maria Lund handles large claims."})
    outcome = await compose_extractive(None, nothing, max_tokens=64, timeout_s=2.0, phrase_it=False)
    assert outcome.recommendations[0].citations == []  # the canteen passage does not say this
    assert outcome.recommendations[0].rationale == UNSUPPORTED_NOTE


async def test_a_request_to_write_takes_the_best_specialist_answer_whole() -> None:
    question = "Write a short reply to a customer who asks where the head office is."
    office = Passage(
        text="The head office is in Porto.", score=1.0, citation=Citation(doc_id="o", source="h")
    )
    reply = "Hello from Acme. Our head office is in Porto. Our head office is in Porto. The Acme team"
    s = state(question, [office], {"support": reply})
    outcome = await compose_extractive(None, s, max_tokens=64, timeout_s=2.0, phrase_it=True)
    text = outcome.recommendations[0].text
    assert text.startswith("Hello from Acme") and text.endswith("The Acme team")
    assert text.count("Porto") == 1
    assert [c.doc_id for c in outcome.recommendations[0].citations] == ["o"]


async def test_a_scenario_nothing_answers_is_marked_in_one_sentence_not_echoed() -> None:
    question = "A customer missed the payroll cut-off by one day. What happens?"
    outcome = await compose_extractive(
        None, state(question, [OFFTOPIC], {}), max_tokens=64, timeout_s=2.0, phrase_it=True
    )
    text = outcome.recommendations[0].text
    assert text.endswith("not in the documents.") and len(checks.sentences(text)) == 1
    assert not checks.echoes(text, question)


async def test_the_title_is_the_cited_documents_never_the_questions() -> None:
    titled = PALLET.model_copy(
        update={"citation": PALLET.citation.model_copy(update={"title": "Warehouse rules"})}
    )
    question = "What is the maximum weight of a single pallet?"
    outcome = await compose_extractive(
        None, state(question, [titled], {}), max_tokens=64, timeout_s=2.0, phrase_it=False
    )
    assert outcome.recommendations[0].title == "Warehouse rules"
    # No titled passage cited: the answer's first words, not the question's.
    outcome = await compose_extractive(
        None, state(question, [PALLET], {}), max_tokens=64, timeout_s=2.0, phrase_it=False
    )
    title = outcome.recommendations[0].title
    assert outcome.recommendations[0].text.startswith(title) and "maximum" not in title
