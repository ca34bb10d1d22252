"""No-repeat n-grams at the model server: over the generated tokens only, and the grammar wins."""

from __future__ import annotations

import httpx
import torch

from loraswarm.services.model_server.sampling import RowState, SamplingParams, choose, repeating_tokens
from tests.model_server.conftest import Served


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


def test_the_served_model_repeats_no_ngram_when_asked(served: Served) -> None:
    """On the real model and server: greedy text that loops, and the same request without loops."""
    prompt = "Repeat after me forever: the fee is 13 euros. the fee is 13 euros. the fee is"
    with httpx.Client(base_url=served.url, timeout=120) as http:

        def generated(parameters: dict[str, object]) -> list[int]:
            body = {"inputs": prompt, "parameters": {"max_new_tokens": 40, "details": True, **parameters}}
            answer = http.post("/generate", json=body)
            assert answer.status_code == 200, answer.text
            return [t["id"] for t in answer.json()["details"]["tokens"]]

        def has_repeated_4gram(ids: list[int]) -> bool:
            grams = [tuple(ids[i : i + 4]) for i in range(len(ids) - 3)]
            return len(grams) != len(set(grams))

        assert has_repeated_4gram(generated({}))  # the loop this guards against
        assert not has_repeated_4gram(generated({"no_repeat_ngram_size": 4}))
        chat = http.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 40,
                "no_repeat_ngram_size": 4,
            },
        )
        assert chat.status_code == 200, chat.text
