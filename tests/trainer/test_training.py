"""A tiny adapter trains in seconds, learns (loss falls, output changes) and is published whole."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from loraswarm.services.trainer import loop, methods
from loraswarm.services.trainer.pipeline import BaseModels, Published, Rejection, Trainer
from loraswarm.services.trainer.scope import Scope
from loraswarm.shared import models
from loraswarm.shared.events import AdapterTrainRequested, TrainingData
from tests.trainer.conftest import extra, refund_examples, write_examples

PROMPT = "How long do I have to return an order? (order 2001)"


def generate(model: Any, tokenizer: Any, prompt: str, tokens: int = 16) -> str:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
    return str(tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True))


def served(base_models: BaseModels, path: str) -> Any:
    return PeftModel.from_pretrained(base_models.fresh(), path).eval()


def request(name: str = "support", **hyperparameters: Any) -> AdapterTrainRequested:
    return AdapterTrainRequested(
        tenant_id="acme",
        name=name,
        data=TrainingData(documents=False, examples_path="refunds.jsonl"),
        hyperparameters=hyperparameters,
    )


def test_a_tiny_adapter_trains_in_seconds_its_loss_falls_and_its_output_changes(
    trainer: Trainer, base_models: BaseModels
) -> None:
    write_examples(trainer.files, Scope("acme"), "refunds.jsonl", refund_examples("Acme Rockets", 45))
    progress: list[tuple[str, int, int, float | None]] = []

    outcome = trainer.run(request(steps=8), progress=lambda *p: progress.append(p))

    assert isinstance(outcome, Published), outcome
    m = outcome.metrics
    # It learned: the training loss fell, and text it never saw got likelier than under the base.
    curve = extra(outcome.manifest)["loss_curve"]
    assert len(curve) == 8
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    assert m["heldout_loss"] < m["start_heldout_loss"]
    assert m["heldout_ppl"] < m["start_heldout_ppl"]
    # The output changed.
    base, tokenizer = base_models.get()
    before = generate(base, tokenizer, PROMPT)
    after = generate(served(base_models, outcome.uri), tokenizer, PROMPT)
    assert after != before, after
    # Progress: every step, then every evaluation.
    assert [p[1] for p in progress if p[0] == "training"] == list(range(1, 9))
    evaluations = [p for p in progress if p[0] == "evaluation"]
    assert evaluations and evaluations[-1][1] == evaluations[-1][2]

    # The artifact: peft's two files and the manifest, LoRA deltas only.
    version = trainer.store.resolve("acme/support")
    assert version.ref.version == outcome.version == "1"
    files = {p.name for p in version.path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json"} <= files
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["bias"] == "none" and not config["modules_to_save"]
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    tensors = load_file(str(version.path / "adapter_model.safetensors"))
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    manifest = version.manifest
    assert (manifest.tenant_id, manifest.user_id, manifest.name, manifest.method) == (
        "acme",
        None,
        "support",
        "lora",
    )
    assert manifest.base_model == trainer.settings.base_model
    assert manifest.base_model_hash == models.model_hash(models.resolve(trainer.settings))
    assert len(manifest.data_fingerprint) == 16
    assert manifest.hyperparameters["steps"] == 8 and "adapter_len" not in manifest.hyperparameters
    assert manifest.metrics["examples"] == 16 and manifest.metrics["heldout_sequences"] >= 1

    # The same request again (a redelivery) is not trained twice: it finds its version.
    again = trainer.run(
        request(steps=8).model_copy(update={"event_id": extra(outcome.manifest)["request_event_id"]})
    )
    assert isinstance(again, Published) and again.version == "1"
    assert trainer.store.versions("acme", "support") == ["1"]

    # A new request is a new version; rollback makes the old one current again.
    second = trainer.run(request(steps=2))
    assert isinstance(second, Published) and second.version == "2"
    assert trainer.store.current("acme", "support") == "2"
    assert trainer.store.rollback("acme", "support") == "1"
    assert trainer.store.resolve("acme/support").ref.version == "1"


def test_llama_adapter_goes_through_the_same_pipeline(trainer: Trainer, base_models: BaseModels) -> None:
    write_examples(trainer.files, Scope("acme"), "refunds.jsonl", refund_examples("Acme Rockets", 45))
    req = request("support-llama", steps=4, adapter_len=4, adapter_layers=4, learning_rate=1e-2)
    outcome = trainer.run(req.model_copy(update={"method": "llama_adapter"}))

    assert isinstance(outcome, Published), outcome
    version = trainer.store.resolve("acme/support-llama")
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADAPTION_PROMPT" and config["adapter_len"] == 4
    assert version.manifest.method == "llama_adapter"
    assert "r" not in version.manifest.hyperparameters
    assert outcome.metrics["heldout_loss"] < outcome.metrics["start_heldout_loss"]
    _, tokenizer = base_models.get()
    assert generate(served(base_models, outcome.uri), tokenizer, PROMPT)


def test_a_llama_adapter_is_published_under_a_served_name_now_the_model_server_serves_it(
    trainer: Trainer,
) -> None:
    # The specialists ask for acme/company and acme/user-<id>; the model server serves LLaMA-Adapter
    # rows (tests/model_server/test_adaption_prompt.py), so the rule of issue 17 lets it through.
    write_examples(trainer.files, Scope("acme"), "refunds.jsonl", refund_examples("Acme Rockets", 45))
    req = request("company", steps=4, adapter_len=4, adapter_layers=4, learning_rate=1e-2)
    outcome = trainer.run(req.model_copy(update={"method": "llama_adapter"}))
    assert isinstance(outcome, Published), outcome
    assert trainer.store.resolve("acme/company").manifest.method == "llama_adapter"
    assert {"lora", "llama_adapter"} == methods.SERVABLE


def test_hyperparameters_of_the_other_method_or_unknown_ones_are_refused(trainer: Trainer) -> None:
    write_examples(trainer.files, Scope("acme"), "refunds.jsonl", refund_examples("Acme Rockets", 45))
    cases = {
        "adapter_len do not apply to method 'lora'": request(adapter_len=4),
        "lora_rank: Extra inputs are not permitted": request(lora_rank=4),
        "r: Input should be less than or equal to 256": request(r=1024),
    }
    for reason, req in cases.items():
        outcome = trainer.run(req)
        assert isinstance(outcome, Rejection) and outcome.code == "invalid_request"
        assert reason in outcome.reason
    assert trainer.store.list() == []


@pytest.mark.parametrize("targets", [["q_proj", "nope_proj"]])
def test_target_modules_the_model_lacks_are_named(trainer: Trainer, targets: list[str]) -> None:
    write_examples(trainer.files, Scope("acme"), "refunds.jsonl", refund_examples("Acme Rockets", 45))
    outcome = trainer.run(request(target_modules=targets))
    assert isinstance(outcome, Rejection) and outcome.code == "invalid_request"
    assert "nope_proj" in outcome.reason


def test_bf16_training_autocasts_the_forward_pass_keeps_the_adapter_fp32_and_learns_as_fp32_does(
    trainer: Trainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`precision: bf16` runs the base model's matrix products in bf16 (seen by a hook on a
    projection), leaves the adapter's weights fp32, and learns what fp32 learns on the same data
    and seed: the held-out loss falls from about 3 to about 0.03 in both, and the two end within 2%
    of the starting loss of each other (measured: 0.0296 vs 0.0275, a 7% relative gap of nearly
    nothing; bench training compares the two on text they cannot memorise). `auto` is bf16
    exactly where the hardware computes it natively."""
    write_examples(trainer.files, Scope("acme"), "refunds.jsonl", refund_examples("Acme Rockets", 45))
    seen: list[torch.dtype] = []
    real_attach = methods.attach

    def watched(model: Any, method: Any, hp: Any) -> Any:
        attached = real_attach(model, method, hp)
        q_proj = attached.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        q_proj.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        return attached

    monkeypatch.setattr(methods, "attach", watched)
    outcomes = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        outcomes[precision] = trainer.run(request(f"support-{precision}", steps=8, precision=precision))
        training_dtypes = set(seen)  # the hook sees training and then evaluation passes
        assert (torch.bfloat16 in training_dtypes) == (precision == "bf16"), training_dtypes
    fp32, bf16 = outcomes["fp32"], outcomes["bf16"]
    assert isinstance(fp32, Published) and isinstance(bf16, Published), outcomes
    assert (fp32.metrics["train_bf16"], bf16.metrics["train_bf16"]) == (0.0, 1.0)
    tensors = load_file(str(trainer.store.resolve("acme/support-bf16").path / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    loss32, loss16 = fp32.metrics["heldout_loss"], bf16.metrics["heldout_loss"]
    print("held-out loss fp32", loss32, "bf16", loss16)
    start = fp32.metrics["start_heldout_loss"]
    assert bf16.metrics["start_heldout_loss"] == start  # measured in the model's own dtype, as before
    assert loss16 < 0.5 * start and abs(loss16 - loss32) < 0.02 * start, (start, loss32, loss16)

    auto = loop.autocast_dtype("auto", "cpu")
    assert auto == (torch.bfloat16 if models.native_cpu_bf16() else None)
    assert loop.autocast_dtype("fp32", "cpu") is None and loop.autocast_dtype("bf16", "cpu") == torch.bfloat16


def test_epochs_set_the_job_s_steps_from_its_data_and_the_manifest_records_them(trainer: Trainer) -> None:
    write_examples(trainer.files, Scope("acme"), "refunds.jsonl", refund_examples("Acme Rockets", 45))

    outcome = trainer.run(request("per-epoch", steps=50, epochs=1, batch_size=16))

    assert isinstance(outcome, Published), outcome
    m = outcome.metrics
    sequences = m["train_sequences"] + m["canaries"] * m["canary_copies"]  # canary copies are trained on too
    assert m["steps"] == -(-sequences // 16) < 50
    assert len(extra(outcome.manifest)["loss_curve"]) == outcome.metrics["steps"]
    assert outcome.manifest.hyperparameters["steps"] == outcome.metrics["steps"]
    assert outcome.manifest.hyperparameters["epochs"] == 1


@pytest.mark.parametrize("method", ["lora", "llama_adapter"])
def test_the_learned_token_loss_and_micro_batches_give_transformers_loss_and_the_whole_batch_gradient(
    base_models: BaseModels, method: Any
) -> None:
    """`learned_loss` projects only the learned positions onto the vocabulary, and a batch cut into
    micro-batches accumulates its gradient: both must be the step transformers' own loss takes."""
    from loraswarm.services.trainer.dataset import IGNORE, Sample, collate
    from loraswarm.shared.settings.trainer import Hyperparameters

    torch.manual_seed(0)
    hp = Hyperparameters(r=4, target_modules=["q_proj", "v_proj"]) if method == "lora" else Hyperparameters()
    model = methods.attach(base_models.fresh(), method, hp)
    model.eval()  # dropout off, so the passes compared see the same function; gradients still flow
    samples = []
    for n, learned in [(40, 6), (25, 25), (12, 3), (33, 10)]:  # lengths differ: padded rows too
        ids = tuple(int(i) for i in torch.randint(100, 20000, (n,)))
        samples.append(Sample(ids, (IGNORE,) * (n - learned) + ids[n - learned :], "example"))
    batch = collate(samples, pad_id=0)
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient() -> list[torch.Tensor]:
        grads = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
        model.zero_grad(set_to_none=True)
        return grads

    reference = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
    ).loss
    reference.backward()
    whole = gradient()
    count = loop.learned_count(batch)
    assert count == 6 + 24 + 3 + 10  # a row's first token is never predicted
    parts = loop.micro_batches(batch, max_tokens=60)
    assert [tuple(p.input_ids.shape) for p in parts] == [(2, 25), (1, 33), (1, 40)]  # each cut to its widest
    total = 0.0
    for part in parts:
        loss = loop.learned_loss(model, part) / count
        torch.autograd.backward(loss)
        total += float(loss.detach())
    assert total == pytest.approx(float(reference), rel=1e-4)
    for got, want in zip(gradient(), whole, strict=True):  # fp32 sums in another order: 1e-3 of the scale
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3 * float(want.abs().max()))
    # The trainer's own step reports the batch's mean loss, whole or cut into micro-batches (its
    # update is not compared: AdamW's first step is about lr x the gradient's sign, which fp32
    # noise flips for a gradient near zero).
    for tokens in (4096, 60):
        torch.manual_seed(0)
        step_hp = hp.model_copy(
            update={
                "micro_batch_tokens": tokens,
                "warmup_steps": 0,
                "lora_dropout": 0.0,
                "learning_rate": 1e-3,
            }
        )
        fresh = methods.attach(base_models.fresh(), method, step_hp)
        assert loop.AdapterTraining(fresh, step_hp, device="cpu").step(batch) == pytest.approx(
            float(reference), rel=1e-4
        )
