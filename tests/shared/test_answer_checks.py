"""The answer checks: the support score against labelled examples, echo, repetition, parts."""

from __future__ import annotations

import pytest

from loraswarm.shared import answer_checks as checks

Q_SHIP = "How much does standard shipping cost at Northwind Freight?"
P_SHIP = "- Standard shipping at Northwind Freight costs 13 euros."
Q_LEAD = "Who leads the research team at Northwind Freight?"
P_LEADS = "Oskar Pelyaspa leads the research team at Northwind Freight.\nWren Sivewen leads the finance team."
Q_REFUND = "Can I refund a tent after 45 days?"
P_REFUND = "Refunds are accepted within 60 days of purchase with a receipt."

# (claim, passage, question, supported?) — labelled by hand. The threshold in checks.py was
# chosen on these: every supported claim scores >= 0.6, every unsupported one <= 0.4.
LABELLED = [
    ("Standard shipping costs 13 euros.", P_SHIP, Q_SHIP, True),
    ("It costs 13 euros.", P_SHIP, Q_SHIP, True),
    ("13 euros.", P_SHIP, Q_SHIP, True),
    ("Standard shipping costs 15 euros.", P_SHIP, Q_SHIP, False),  # a number the passage lacks
    ("Shipping is free for members.", P_SHIP, Q_SHIP, False),
    ("The shipping cost at Northwind Freight is in the documents.", P_SHIP, Q_SHIP, False),
    (Q_SHIP, P_SHIP, Q_SHIP, False),  # the question said back states nothing
    ("Oskar Pelyaspa leads it.", P_LEADS, Q_LEAD, True),
    ("Pelyaspa.", P_LEADS, Q_LEAD, True),
    ("Felix Norzukel leads the research team.", P_LEADS, Q_LEAD, False),
    ("Yes, refunds are accepted within 60 days of purchase.", P_REFUND, Q_REFUND, True),
    ("Refunds need a receipt and are accepted for 60 days.", P_REFUND, Q_REFUND, True),
    ("No, refunds are only accepted within 30 days.", P_REFUND, Q_REFUND, False),
    ("Please contact our support team for help.", P_REFUND, Q_REFUND, False),
    ("Standard shipping costs 13 euros.", P_LEADS, Q_SHIP, False),  # the wrong passage
]


@pytest.mark.parametrize(("claim", "passage", "question", "supported"), LABELLED)
def test_the_support_score_separates_the_labelled_examples(
    claim: str, passage: str, question: str, supported: bool
) -> None:
    score = checks.support(claim, passage, question)
    assert checks.supports(claim, passage, question) is supported
    # a margin on both sides of the threshold: the labels do not sit on its edge
    assert score >= 0.6 if supported else score <= 0.4


def test_supported_by_names_only_the_passages_that_state_the_answer() -> None:
    passages = [P_LEADS, P_SHIP, "Northwind Freight was founded in Porto."]
    assert checks.supported_by("Standard shipping costs 13 euros.", passages, Q_SHIP) == [1]
    assert checks.supported_by("Shipping: not in the documents.", passages, Q_SHIP) == []


def test_a_list_of_steps_is_supported_by_its_own_steps_and_not_by_another_numbered_list() -> None:
    asked = "What are the steps, in order, for booking travel?"
    answer = "1. Reserve the hotel.\n2. Upload the receipts.\n3. Book through the portal."
    travel = "Booking travel\n1. Reserve the hotel.\n2. Upload the receipts.\n3. Book through the portal."
    other = "Escalating a complaint\n1. Confirm by letter.\n2. Call the team lead.\n3. Log the complaint."
    written = "For booking travel: reserve the hotel, then upload the receipts, then book through the portal."
    assert checks.claims(answer) == ["Reserve the hotel.", "Upload the receipts.", "Book through the portal."]
    assert checks.supported_by(answer, [other, travel, written], asked) == [1, 2]
    assert checks.ungrounded_claims(answer, [other], asked) == checks.claims(answer)
    inline = "The steps: 1. Reserve the hotel. 2. Upload the receipts. 3. Book through the portal."
    assert checks.supported_by(inline, [other, travel], asked) == [1]
    # A number alone on its line is an answer, not a list marker.
    assert checks.claims("The limit per order:\n30.") == ["The limit per order:", "30."]


def test_an_echo_is_detected_and_an_answer_is_not() -> None:
    echo = "Summary: A customer wants a refund for a tent bought 45 days ago. What should we do?"
    asked = "A customer wants a refund for a tent bought 45 days ago. What should we do?"
    assert checks.echoes(echo, asked)
    assert checks.echoes(Q_SHIP, Q_SHIP)
    assert not checks.echoes("Standard shipping costs 13 euros.", Q_SHIP)
    discount = "What is the staff discount code at Bluepeak Textiles?"
    assert not checks.echoes("The staff discount code at Bluepeak Textiles is PELRA-955.", discount)
    assert checks.echoes("The staff discount code at Bluepeak Textiles is in the handbook.", discount)
    assert not checks.echoes("Refunds are accepted within 60 days, so yes.", asked)
    # The demo's specialist ran a number into its unit; it is still the question said back.
    seal = "A customer wants to return an unused gearbox seal after 60 days. What applies?"
    assert checks.echoes("A customer wants to return an unused gearbox seal after 60days", seal)
    assert checks.terms("800kg on the 22nd") == {"800", "kg", "22nd"}


def test_a_repeated_sentence_is_found_and_removed() -> None:
    answer = "Shipping costs 13 euros. Shipping costs 13 euros! Oskar leads research."
    assert checks.repeated_sentences(answer) == ["Shipping costs 13 euros!"]
    assert checks.without_repeats(checks.sentences(answer)) == [
        "Shipping costs 13 euros.",
        "Oskar leads research.",
    ]
    assert checks.repeated_sentences("Shipping costs 13 euros. Oskar leads research.") == []
    loop = "Penetrode: 22nd, 3 employees, 100% of the 22nd, 3 employees, 100% of the 22nd"
    assert checks.repeated_sentences(loop) == [loop]
    assert not checks.loops("Upload the receipts, then ask the manager, then book the hotel.")


def test_a_two_part_question_has_two_parts_and_each_is_checked() -> None:
    question = "What is the maximum weight of a single pallet, and who handles large claims?"
    parts = checks.question_parts(question)
    assert parts == ["What is the maximum weight of a single pallet", "who handles large claims"]
    both = "A single pallet may weigh 800 kg. Large claims go to Maria Lund."
    one = "A single pallet may weigh 800 kg."
    marked = "A single pallet may weigh 800 kg.\nWho handles large claims: not in the documents."
    assert checks.check(both, question, []).all_parts
    assert not checks.check(one, question, []).all_parts
    assert checks.check(marked, question, []).all_parts
    assert checks.question_parts(Q_SHIP) == [Q_SHIP.rstrip("?")]


def test_rates_count_citations_against_what_supports_the_answer() -> None:
    good = checks.check("Standard shipping costs 13 euros.", Q_SHIP, [P_SHIP, P_LEADS], [P_SHIP])
    wrong = checks.check("Standard shipping costs 13 euros.", Q_SHIP, [P_SHIP, P_LEADS], [P_LEADS])
    none = checks.check("Standard shipping costs 13 euros.", Q_SHIP, [P_SHIP, P_LEADS], [])
    r = checks.rates([good, wrong, none])
    assert r.citation_precision == 0.5  # one of the two citations supports its answer
    assert r.citation_recall == pytest.approx(1 / 3)  # the supporting passage was cited once in three
    assert r.uncited == 1
    assert r.echo_rate == 0.0
