"""The training loop: AdamW on the adapter's weights, warm-up, gradient clipping, NaN guard, and
the forward pass in bf16 where the hardware computes it natively (`precision`).

It is deliberately a bare peft loop plus the checks a service needs (the benchmark holds it to
≥ 0.9× a bare loop's tokens/s); the loss is read every step anyway, so the NaN check is free.
bf16 is autocast, not a bf16 copy of the model: the frozen base weights are cast per matrix
product, and the adapter's weights, their gradients and AdamW's moments stay fp32, so small
updates are not rounded away.

The loss is the mean cross-entropy of the learned tokens, as transformers computes it, but the
vocabulary projection is computed only where a token is learned (`learned_loss`): a
retrieval-aware example learns its 30-token answer after 500 tokens of passages, and projecting
every position onto 49,152 words was a quarter of the step's time. A batch wider than
`micro_batch_tokens` is cut into micro-batches (`micro_batches`) whose gradients accumulate into
the same step.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from loraswarm.services.trainer.dataset import IGNORE, Batch, length_runs
from loraswarm.services.trainer.errors import NonFiniteLoss
from loraswarm.shared.models import native_cpu_bf16
from loraswarm.shared.settings.trainer import Hyperparameters

OnStep = Callable[[int, int, float], None]  # (step, total steps, loss)


class Cancelled(Exception):
    """The job was stopped from outside (the service shuts down); it resumes on restart."""


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The dtype the forward pass is autocast to, or None for none (fp32, or the model's own)."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device == "cuda" or native_cpu_bf16():
        return torch.bfloat16
    return None  # auto on a CPU that would only emulate bf16: slower than fp32


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    precision: str = "fp32"  # what the steps ran in: "bf16" (autocast) or "fp32"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def micro_batches(batch: Batch, max_tokens: int) -> list[Batch]:
    """The batch's rows in runs of at most `max_tokens` tokens each (rows x their padded width),
    each run cut to its own widest row; at least one row per run."""
    lengths = batch.attention_mask.sum(dim=1).tolist()  # (B,)
    runs = length_runs(lengths, max_tokens)
    out = []
    for rows in runs:
        index = torch.tensor(rows)
        width = int(max(lengths[r] for r in rows))
        out.append(
            Batch(
                batch.input_ids[index, :width],
                batch.attention_mask[index, :width],
                batch.labels[index, :width],
            )
        )
    return out


def learned_count(batch: Batch) -> int:
    """Tokens the batch learns: each labelled token after the first position."""
    return int((batch.labels[:, 1:] != IGNORE).sum())


# Model types whose logits are their output layer's product and nothing after it (no soft-capping,
# scale or multiplier, as Gemma 2, Cohere, Granite and Falcon-H1 apply): only these are projected
# at the learned positions alone; any other model is run whole, its own forward making its logits.
PLAIN_HEADS = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3"})


def learned_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy (nats) of the batch's learned tokens, the vocabulary projection
    computed at those positions only where the model's logits are its output layer's (`PLAIN_HEADS`)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets = batch.labels[:, 1:]  # (B, T-1): token t is predicted at position t-1
    if inner.config.model_type not in PLAIN_HEADS:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum"
        )
    hidden = inner.get_decoder()(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask
    ).last_hidden_state  # (B, T, H)
    keep = targets != IGNORE  # (B, T-1)
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V), N learned tokens
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


class AdapterTraining:
    """One job's optimizer and schedule; `step(batch)` is one optimizer step with its checks."""

    def __init__(
        self, model: Any, hp: Hyperparameters, *, device: str, on_step: OnStep | None = None
    ) -> None:
        self.model = model
        self.hp = hp
        self.device = device
        self.on_step = on_step
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=hp.rate, weight_decay=hp.weight_decay)
        warmup = max(hp.warmup_steps, 0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)) if warmup else 1.0
        )
        self.autocast = autocast_dtype(hp.precision, device)
        self.result = TrainResult(precision="fp32" if self.autocast is None else "bf16")
        model.train()

    def step(self, batch: Batch) -> float:
        hp, step = self.hp, len(self.result.losses) + 1
        batch = batch.to(self.device)
        count = max(1, learned_count(batch))
        loss = 0.0
        for part in micro_batches(batch, hp.micro_batch_tokens):
            # The backward pass follows the forward's dtypes by itself; only the forward is wrapped.
            with torch.autocast(
                self.device, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
            ):
                part_loss = learned_loss(self.model, part) / count  # its share of the batch's mean
            loss += float(part_loss.detach().item())
            if not math.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLoss(
                    f"the loss became {loss} at step {step} of {hp.steps} (learning_rate={hp.rate:g}); "
                    "lower the learning rate and ask again",
                    {"nan_step": float(step), "steps": float(hp.steps)},
                )
            torch.autograd.backward(part_loss)
        torch.nn.utils.clip_grad_norm_(self.params, hp.max_grad_norm)
        try:
            self.optimizer.step()
        except RuntimeError as exc:  # torch refuses an update too large for the weights' dtype
            if "overflow" not in str(exc):
                raise
            raise NonFiniteLoss(
                f"the update overflowed at step {step} of {hp.steps} (learning_rate={hp.rate:g}); "
                "lower the learning rate and ask again",
                {"nan_step": float(step), "steps": float(hp.steps)},
            ) from exc
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.result.losses.append(loss)
        self.result.tokens += batch.tokens
        if self.on_step is not None:
            self.on_step(step, hp.steps, loss)
        return loss

    def finish(self) -> TrainResult:
        """Back to eval mode, after checking that the weights survived the last step."""
        self.model.eval()
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            steps = float(len(self.result.losses))
            raise NonFiniteLoss(
                "the adapter's weights became NaN or infinite in the last step "
                f"(learning_rate={self.hp.rate:g}); lower the learning rate and ask again",
                {"nan_step": steps, "steps": float(self.hp.steps)},
            )
        return self.result


def train_adapter(
    model: Any,
    batches: Iterator[Batch],
    hp: Hyperparameters,
    *,
    device: str,
    on_step: OnStep | None = None,
    stop: threading.Event | None = None,
) -> TrainResult:
    training = AdapterTraining(model, hp, device=device, on_step=on_step)
    started = time.perf_counter()
    for step in range(1, hp.steps + 1):
        if stop is not None and stop.is_set():
            raise Cancelled(f"stopped at step {step} of {hp.steps}")
        training.step(next(batches))
    training.result.seconds = time.perf_counter() - started
    return training.finish()
