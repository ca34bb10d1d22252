"""Scoring text under a model: held-out loss, and the log-perplexity of canaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from loraswarm.services.trainer.dataset import IGNORE, Batch, Sample, collate, length_runs


def _batches(samples: Sequence[Sample], batch_tokens: int, pad_id: int) -> list[tuple[list[int], Batch]]:
    """Length-sorted batches of at most `batch_tokens` tokens (padding included), with the samples' indices."""
    runs = length_runs([len(s.input_ids) for s in samples], batch_tokens)
    return [(run, collate([samples[j] for j in run], pad_id)) for run in runs]


@torch.no_grad()
def token_losses(
    model: Any, samples: Sequence[Sample], *, batch_tokens: int, pad_id: int, device: str
) -> list[float]:
    """For each sample, the summed cross-entropy (nats) of its learned tokens given what precedes them."""
    model.eval()
    sums = [0.0] * len(samples)
    for idx, batch in _batches(samples, batch_tokens, pad_id):
        batch = batch.to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B, T, V)
        targets = batch.labels[:, 1:]  # (B, T-1): token t is predicted at position t-1
        nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
        )  # (B, T-1)
        for row, i in enumerate(idx):
            sums[i] = float(nll[row].sum())
    return sums


def predicted_tokens(sample: Sample) -> int:
    return sum(1 for label in sample.labels[1:] if label != IGNORE)


def heldout_loss(
    model: Any, samples: Sequence[Sample], *, batch_tokens: int, pad_id: int, device: str
) -> float:
    """Mean cross-entropy per learned token over the held-out samples (nats); perplexity is its exp."""
    sums = token_losses(model, samples, batch_tokens=batch_tokens, pad_id=pad_id, device=device)
    count = sum(predicted_tokens(s) for s in samples)
    assert count > 0, "held-out samples with nothing to predict"
    return sum(sums) / count


@torch.no_grad()
def log_perplexities(
    model: Any, samples: Sequence[Sample], *, batch_tokens: int, pad_id: int, device: str
) -> list[float]:
    """Carlini et al.'s log-perplexity of each sequence: −Σ log2 Pr(x_i | x_<i), in bits."""
    return [
        s / math.log(2)
        for s in token_losses(model, samples, batch_tokens=batch_tokens, pad_id=pad_id, device=device)
    ]
