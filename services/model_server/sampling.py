"""Choosing each row's next token the way TGI's server does.

Order, per row: repetition penalty, frequency penalty, no-repeat n-grams, grammar mask, then the warpers
(temperature, top-k, top-p, typical-p). A row samples when `do_sample` is set or any warper is
active, else it takes the argmax. The reported logprob is the chosen token's under the final
(warped) distribution, as TGI reports it. Rows without any processing, the common case, are
handled for the whole batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # Not TGI's (transformers' `no_repeat_ngram_size`): a token that would repeat an n-gram of
    # the generated text is pushed below every other allowed token. Only the generated tokens
    # count, so copying a fact from the prompt is not penalized.
    no_repeat_ngram_size: int = 0
    do_sample: bool = False
    seed: int = 0

    @property
    def has_warpers(self) -> bool:
        return self.temperature != 1.0 or self.top_k != 0 or self.top_p < 1.0 or self.typical_p < 1.0

    @property
    def sampling(self) -> bool:
        return self.do_sample or self.has_warpers

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
            or self.no_repeat_ngram_size > 0
        )


@dataclass
class RowState:
    """What choosing a row's token needs besides its logits."""

    params: SamplingParams
    ids: list[int]  # prompt + generated so far (penalties read them)
    generator: torch.Generator | None
    bitmask: torch.Tensor | None  # xgrammar's allowed-token bitmask for this step, (1, words)
    prompt_length: int = 0  # where the generated tokens start in `ids`


@dataclass(frozen=True)
class Choice:
    token: int
    logprob: float
    logprobs: torch.Tensor  # (V,) of the final distribution, for top-n tokens


def choose(logits: torch.Tensor, rows: list[RowState]) -> list[Choice]:
    """The next token of every row. logits: (B, V), float32."""
    assert logits.shape[0] == len(rows)
    choices: list[Choice | None] = [None] * len(rows)
    plain = [i for i, r in enumerate(rows) if _is_plain(r)]
    if plain:
        index = torch.tensor(plain, device=logits.device)
        logprobs = torch.log_softmax(logits.index_select(0, index), dim=-1)  # (P, V)
        tokens = logprobs.argmax(dim=-1)
        picked = logprobs.gather(1, tokens[:, None])[:, 0]
        for j, i in enumerate(plain):
            choices[i] = Choice(int(tokens[j]), float(picked[j]), logprobs[j])
    for i, row in enumerate(rows):
        if choices[i] is None:
            choices[i] = _choose_one(logits[i : i + 1].clone(), row)
    return [c for c in choices if c is not None]


def _is_plain(row: RowState) -> bool:
    return not row.params.sampling and not row.params.has_penalties and row.bitmask is None


def _choose_one(scores: torch.Tensor, row: RowState) -> Choice:
    params = row.params
    device = scores.device
    if params.has_penalties:
        ids = torch.tensor([row.ids], device=device)
        if params.repetition_penalty != 1.0:
            scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, scores)
        if params.frequency_penalty != 0.0:
            counts = torch.zeros_like(scores).scatter_add_(1, ids, torch.ones_like(ids, dtype=scores.dtype))
            scores = scores - params.frequency_penalty * counts / ids.shape[1]
        if params.presence_penalty != 0.0:
            present = torch.zeros_like(scores).scatter_(1, ids, 1.0)
            scores = scores - params.presence_penalty * present
        if params.no_repeat_ngram_size > 0:
            banned = repeating_tokens(row.ids[row.prompt_length :], params.no_repeat_ngram_size)
            if banned:
                # Below every allowed token, yet above the grammar's -inf: when the grammar allows
                # nothing else (a closing quote), the grammar wins.
                scores[0, banned] -= _NGRAM_PUSH
    if row.bitmask is not None:
        import xgrammar as xgr

        xgr.apply_token_bitmask_inplace(scores, row.bitmask.to(device))
    if params.has_warpers:
        scores = _warp(scores, params)
    logprobs = torch.log_softmax(scores, dim=-1)[0]
    if params.sampling:
        token = int(torch.multinomial(logprobs.exp(), 1, generator=row.generator)[0])
    else:
        token = int(logprobs.argmax())
    return Choice(token, float(logprobs[token]), logprobs)


_NGRAM_PUSH = 1e4


def repeating_tokens(generated: list[int], n: int) -> list[int]:
    """The tokens that would complete an n-gram already in `generated`."""
    if n <= 0 or len(generated) < n:
        return []
    if n == 1:
        return sorted(set(generated))
    tail = generated[-(n - 1) :]
    return sorted(
        {generated[i + n - 1] for i in range(len(generated) - n + 1) if generated[i : i + n - 1] == tail}
    )


def _warp(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    ids = torch.empty(1, 0, dtype=torch.long, device=scores.device)  # the warpers do not read them
    if params.temperature != 1.0:
        scores = TemperatureLogitsWarper(params.temperature)(ids, scores)
    if params.top_k != 0:
        scores = TopKLogitsWarper(params.top_k)(ids, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(ids, scores)
    if params.typical_p < 1.0:
        scores = TypicalLogitsWarper(params.typical_p)(ids, scores)
    return scores


def top_tokens(logprobs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely tokens of a distribution with their logprobs."""
    if n <= 0:
        return []
    values, indices = torch.topk(logprobs, n)
    return [(int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
