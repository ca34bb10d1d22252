"""Scoring: normalized matching, step recall and order, style rules, bootstrap intervals."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loraswarm.eval.scoring import (
    bootstrap,
    contains,
    fact_scores,
    longest_increasing,
    normalize,
    parse_rule,
    process_scores,
    style_score,
)

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


def test_fact_contains_ignores_case_and_punctuation_but_not_word_boundaries() -> None:
    assert fact_scores("Refunds: within 30 DAYS.", ["30 days"]) == (1.0, 0.0)
    assert fact_scores("30 days", ["30 days"]) == (1.0, 1.0)
    assert fact_scores("within 300 days", ["30 days"]) == (0.0, 0.0)
    assert fact_scores("mail haldor@northwind.example now", ["haldor@northwind.example"])[0] == 1.0


def test_all_of_needs_every_part() -> None:
    assert fact_scores("Mara leads sales", [], [["Mara"], ["sales", "the sales team"]])[0] == 1.0
    assert fact_scores("Mara leads", [], [["Mara"], ["sales"]])[0] == 0.0


def test_process_recall_and_order() -> None:
    steps = ["open a ticket", "print the label", "book the pickup"]
    assert process_scores("1. Open a ticket\n2. Print the label\n3. Book the pickup", steps) == (1.0, 1.0)
    recall, order = process_scores("Book the pickup, then print the label, then open a ticket", steps)
    assert recall == 1.0
    assert order == pytest.approx(1 / 3)
    recall, order = process_scores("print the label", steps)
    assert recall == pytest.approx(1 / 3)
    assert order is None
    assert process_scores("", steps) == (0.0, None)


def test_a_reworded_step_counts_when_its_words_share_a_line() -> None:
    assert process_scores("- label: print it\n- pickup: book it", ["print the label", "book the pickup"]) == (
        1.0,
        1.0,
    )


def test_style_rules() -> None:
    reply = "Ahoy from Acme!\n- your refund is on its way\n- thanks\nCheers, Ana"
    assert style_score(reply, ["starts_with: Ahoy from Acme", "ends_with: Cheers, Ana"]) == 1.0
    assert style_score(reply, ["bullets", "numbered"]) == 0.5
    assert style_score(reply, ["no_exclamation", "not_contains: refund", "max_words: 100"]) == pytest.approx(
        1 / 3
    )
    with pytest.raises(ValueError, match="unknown style rule"):
        parse_rule("shout: loudly")
    with pytest.raises(ValueError, match="needs an argument"):
        parse_rule("contains")


@given(st.lists(words, min_size=1, max_size=12))
def test_an_answer_always_contains_its_own_words(parts: list[str]) -> None:
    text = " ".join(parts)
    assert all(contains(text.upper() + "!", p) for p in parts)
    assert normalize(normalize(text)) == normalize(text)


@given(st.permutations(list(range(8))))
def test_order_is_one_only_for_the_gold_order(perm: list[int]) -> None:
    steps = [f"step{chr(97 + i)} done" for i in range(8)]
    answer = "\n".join(steps[i] for i in perm)
    recall, order = process_scores(answer, steps)
    assert recall == 1.0
    assert order is not None
    assert (order == 1.0) == (perm == sorted(perm))
    assert order == longest_increasing(perm) / 8


@given(st.lists(st.integers()))
def test_longest_increasing_is_at_most_the_length(values: list[int]) -> None:
    n = longest_increasing(values)
    assert 0 <= n <= len(values)
    assert (n == len(values)) == all(a < b for a, b in itertools.pairwise(values))


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(0, 2**16))
def test_bootstrap_interval_holds_the_mean_and_is_seeded(values: list[float], seed: int) -> None:
    e = bootstrap(values, seed=seed, resamples=200)
    assert e.low <= e.mean <= e.high
    assert min(values) - 1e-9 <= e.low and e.high <= max(values) + 1e-9
    assert bootstrap(values, seed=seed, resamples=200) == e


def test_bootstrap_interval_narrows_with_more_data() -> None:
    few = bootstrap([0.0, 1.0] * 5, seed=1)
    many = bootstrap([0.0, 1.0] * 200, seed=1)
    assert many.high - many.low < few.high - few.low
    assert bootstrap([], seed=1).n == 0
