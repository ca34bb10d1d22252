"""No-repeat n-grams at the model server: over the generated tokens only, and the grammar wins."""

from __future__ import annotations

import torch

from loraswarm.services.model_server.sampling import RowState, SamplingParams, choose, repeating_tokens


def test_the_tokens_completing_a_generated_ngram_are_found() -> None:
    assert repeating_tokens([5, 6, 7, 5, 6], 3) == [7]
    assert repeating_tokens([5, 6, 7, 5, 8], 3) == []
    assert repeating_tokens([5, 6], 3) == []
    assert repeating_tokens([1, 2, 1], 1) == [1, 2]


def row(ids: list[int], prompt_length: int, n: int) -> RowState:
    return RowState(SamplingParams(no_repeat_ngram_size=n), ids, None, None, prompt_length)


def test_greedy_decoding_does_not_repeat_a_generated_ngram() -> None:
    logits = torch.zeros(1, 10)
    logits[0, 7] = 5.0  # the model's favourite would say "5 6 7" again
    logits[0, 3] = 1.0
    assert choose(logits, [row([9, 5, 6, 7, 5, 6], 1, 3)])[0].token == 3
    assert choose(logits, [row([9, 5, 6, 7, 5, 6], 1, 0)])[0].token == 7  # off: TGI's behaviour


def test_the_prompt_is_not_counted_so_a_fact_can_be_copied() -> None:
    logits = torch.zeros(1, 10)
    logits[0, 7] = 5.0
    # "5 6 7" is in the prompt (the first four tokens), the generation has only "5 6" so far
    assert choose(logits, [row([5, 6, 7, 0, 5, 6], 4, 3)])[0].token == 7


def test_when_only_the_repeating_token_is_allowed_it_is_still_chosen() -> None:
    logits = torch.full((1, 10), float("-inf"))  # what a grammar mask leaves: one allowed token
    logits[0, 7] = 0.0
    assert choose(logits, [row([9, 5, 6, 7, 5, 6], 1, 3)])[0].token == 7
