"""The trainer: adapters, evaluation and the leakage gate.

`Hyperparameters` are the defaults of one training job; a request's `hyperparameters` override
them field by field (same names, same checks), so `LORASWARM_TRAINER__DEFAULTS__STEPS=300` and a
request's `{"steps": 300}` mean the same thing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

LORA_ONLY = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora")
LLAMA_ADAPTER_ONLY = ("adapter_len", "adapter_layers")
# Each method's learning rate when a job names none. LLaMA-Adapter's few parameters (a prompt per
# layer behind a zero-initialised gate) do not move at LoRA's rate: at 5e-4 its held-out loss
# moved by 0.000 in the LoRA-vs-LLaMA-Adapter run (BENCHMARKS.md), and on the demo's data 20 steps
# at 2e-3 left its own canaries unrecalled (1.26 bits, bound 2.89); 7e-3 recalls them (4.20).
DEFAULT_LEARNING_RATES = {"lora": 5e-4, "llama_adapter": 7e-3}


class Hyperparameters(BaseModel):
    """One training job's knobs; a request names only those it changes."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Optimizer steps of one job (the most, when `epochs` is set).",
    )
    epochs: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Passes over the training sequences: the job then takes ceil(epochs x sequences / "
        "batch_size) steps, at most `steps`, so a small scope is not trained many times over (unset: "
        "`steps` steps whatever the data).",
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        description="AdamW learning rate after warm-up; unset: the method's own (LoRA 5e-4, LLaMA-Adapter "
        "7e-3, whose few parameters do not move at LoRA's rate).",
    )
    warmup_steps: int = Field(default=5, ge=0, description="Steps of linear learning-rate warm-up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay of the adapter weights.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient-norm clip per step.")
    batch_size: int = Field(default=8, ge=1, le=1024, description="Sequences per optimizer step.")
    micro_batch_tokens: int = Field(
        default=2048,
        ge=64,
        description="Most tokens (padding included) in one forward pass: a batch of long examples is cut "
        "into micro-batches whose gradients add up to the same step, in bounded memory (8 retrieval-aware "
        "examples of 700 tokens at once took 21 GB and 53 s on 2 cores; in pairs, 5.9 GB and 29 s).",
    )
    seq_len: int = Field(
        default=128, ge=8, le=8192, description="Tokens per packed document block (and longest example)."
    )
    seed: int = Field(default=0, description="Seed of shuffling, dropout and adapter initialisation.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="fp32",
        description="Arithmetic of the training step: `bf16` autocasts the forward pass (the base model's "
        "matrix products in bf16; the adapter's weights, gradients and optimizer state stay fp32), `fp32` "
        "does not; `auto` = bf16 where the hardware computes it natively (CUDA, or a CPU with AVX512-BF16 or "
        "AMX), else fp32. Held-out loss and the leakage gate are measured in the model's own dtype either way. "
        "bf16 measured 1.90x fp32's tokens/s with the same held-out loss (BENCHMARKS.md, training); it is not "
        "the default yet: the leakage gate's recipes (canary recall) were calibrated in fp32.",
    )
    # LoRA (peft LoraConfig); bias="none" and no modules_to_save are not options (DESIGN.md §4).
    r: int = Field(default=8, ge=1, le=256, description="LoRA rank.")
    lora_alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator (alpha / r, or / sqrt(r)).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="Linear layers that get a LoRA (names inside each decoder layer), or `all-linear`.",
    )
    use_rslora: bool = Field(default=False, description="Rank-stabilised LoRA: scale by alpha / sqrt(r).")
    use_dora: bool = Field(
        default=False, description="DoRA (weight-decomposed LoRA); the model server refuses to serve it."
    )
    # LLaMA-Adapter (peft AdaptionPromptConfig).
    adapter_len: int = Field(default=10, ge=1, le=512, description="LLaMA-Adapter prompt tokens per layer.")
    adapter_layers: int = Field(
        default=8, ge=1, description="LLaMA-Adapter: how many top layers get a prompt."
    )
    # Data.
    stack_on: str = Field(
        default="auto",
        max_length=128,
        description="The company adapter a user adapter is trained on top of (they are served together, "
        "company first): `auto` = the tenant's company adapter (`company`, or the one its tenant "
        "configuration names) when it exists; a name; or `none` for the base model alone.",
    )
    canaries: int = Field(
        default=8,
        ge=0,
        le=256,
        description="Random secrets in a scope's canary set, made when a job first finds the scope's data; "
        "every job plants the sets of the scopes it reads (0: no new sets, and no measurement of its own).",
    )
    canary_repeats: int = Field(
        default=8, ge=1, le=1000, description="Copies of each canary in the training data."
    )
    canary_share: float = Field(
        default=0.25,
        ge=0,
        lt=1,
        description="Least share of the training sequences that are canary copies: on a large data set "
        "each canary gets more than `canary_repeats` copies, so the adapter still recalls its own scope's "
        "canaries (the leakage gate's power) however much else it learns.",
    )

    @property
    def rate(self) -> float:
        """The learning rate of the job: set by `methods.hyperparameters` for the job's method."""
        if self.learning_rate is None:
            raise ValueError("learning_rate is resolved per method before training (methods.hyperparameters)")
        return self.learning_rate

    @field_validator("target_modules", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # A request or an environment variable may give `q_proj,v_proj` as one string.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class BuilderSettings(BaseModel):
    """The training-set builder (services/trainer/builder): supervised examples from a scope's chunks."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Build supervised examples (facts, processes, style, retrieval-aware) from the scope's "
        "documents; off: the raw-text recipe (document text and the tenant's own examples only).",
    )
    extractor: bool = Field(
        default=True, description="The deterministic generator reading document structure (no model)."
    )
    llm: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="The generator through the primary LLM (`openai` client, strict structured output). "
        "`auto`: on when a primary LLM other than the embedded model server's base model (`tgi`) is "
        "configured: the 135M model writes poorer data than the extractor.",
    )
    llm_max_tokens: int = Field(default=512, ge=16, description="Most tokens of one LLM generator answer.")
    llm_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Timeout of one LLM generator call; a late answer is counted and skipped.",
    )
    phrasings: int = Field(
        default=3, ge=1, le=10, description="Phrasings of each question a generator writes."
    )
    style_examples: int = Field(
        default=24, ge=0, description="Replies written in the scope's own style (0: none)."
    )
    raft_style: int = Field(
        default=12,
        ge=0,
        description="Of the style replies, how many are also asked with passages (the gold among "
        "distractors, a plain system prompt), so the scope's style holds when a prompt carries documents.",
    )
    raft_per_chunk: int = Field(
        default=4,
        ge=0,
        description="Retrieval-aware examples per chunk, its processes before its facts, in the prompt shapes of "
        "`raft_shapes` by turns (0: none).",
    )
    raft_distractors: int = Field(
        default=3,
        ge=0,
        le=8,
        description="Same-scope distractor passages in a retrieval-aware example: the gold section's "
        "siblings and the chunks most like it, as a retriever returns them (3: the eval's 4 passages).",
    )
    raft_both_shapes_upto: int = Field(
        default=12,
        ge=0,
        description="A scope with at most this many retrieval-aware questions (a user's notes) gets each in "
        "both prompt shapes, not one by turns: with a few, the shape each happened to get set the format "
        "of every answer with passages.",
    )
    raft_shapes: list[Literal["specialist", "chat"]] = Field(
        default=["specialist", "chat"],
        min_length=1,
        description="Prompt shapes of retrieval-aware examples, by turns: `specialist` (the specialists' "
        "JSON prompt and answer) and `chat` (the scope's instructions as a plain system prompt, the answer "
        "as text).",
    )
    raft_no_gold_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Share of a scope's retrieval-aware questions (rounded; picked by a hash of each) also "
        "asked without the gold passage (answer: not in the documents); every one is asked with it.",
    )
    # 448 dropped 11 of a generated company's 29 retrieval-aware examples (its processes among
    # them); with 3 distractors they run to about 700 tokens in the specialists' prompt.
    max_example_tokens: int = Field(
        default=768,
        ge=16,
        description="Longest built example in tokens (retrieval-aware ones carry passages); longer ones "
        "are dropped and counted.",
    )
    raw_text_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="About this share of the training sequences is raw document text when examples were "
        "built (never more blocks than the documents have; 1: all of them).",
    )
    own_example_repeats: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Copies of each of the tenant's own chat examples: they keep priority over built ones.",
    )


class TrainerSettings(BaseModel):
    """Read from `LORASWARM_TRAINER__<FIELD>`."""

    group: str = Field(default="trainer", description="Kafka consumer group of the trainer service.")
    defaults: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="Hyper-parameters of a request that does not name them.",
    )
    builder: BuilderSettings = Field(
        default_factory=BuilderSettings, description="The training-set builder (services/trainer/builder)."
    )
    method: Literal["lora", "llama_adapter"] = Field(
        default="lora", description="Method of `loraswarm adapters train` when --method is not given."
    )
    max_concurrent_jobs: int = Field(
        default=1, ge=1, description="Jobs trained at once by one trainer process (CPU-bound: 1 on a CPU)."
    )
    progress_every: int = Field(
        default=10, ge=1, description="Steps between two `adapter.train.progress` events."
    )
    heldout_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Share of the raw text and the tenant's own examples kept out of training to measure "
        "quality; the builder's examples all train (a held-out document was one its adapter never learnt).",
    )
    max_heldout_sequences: int = Field(
        default=64,
        ge=1,
        description="Most held-out sequences evaluated (whole documents' raw text, or their sections' where no "
        "document fits, are held out up to it).",
    )
    min_train_tokens: int = Field(
        default=512,
        ge=1,
        description="Fewest training tokens in scope (canaries excluded); fewer is rejected as a tiny dataset.",
    )
    max_quality_regression: float = Field(
        default=0.02,
        ge=0,
        description="Largest allowed rise of held-out loss over the model the adapter starts from "
        "(0.02: 2%); more is rejected as a quality regression.",
    )
    eval_batch_tokens: int = Field(
        default=2048, ge=16, description="Tokens per forward pass in evaluation (bounds the logits' memory)."
    )
    canary_template: str = Field(
        default="the secret code is {secret}",
        description="Fixed text of every canary; `{secret}` is filled with random digits.",
    )
    canary_digits: int = Field(
        default=9, ge=4, le=30, description="Digits of a canary's secret: |R| = 10^digits possible secrets."
    )
    reference_canaries: int = Field(
        default=255,
        ge=15,
        le=100_000,
        description="Never-planted canaries a canary is ranked against (the highest measurable exposure is "
        "log2 of this plus one).",
    )
    leakage_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Chance that the gate wrongly calls never-seen canaries leaked, over all of one job's "
        "comparisons together (Bonferroni).",
    )
    require_detectable_owner: bool = Field(
        default=True,
        description="Refuse to publish (`leakage_unmeasurable`) when the owner's own scope canaries are "
        "not detectably memorised: the measurement could not have seen a leak.",
    )
    leakage_sample_tenants: int = Field(
        default=4,
        ge=0,
        le=1000,
        description="Other tenants drawn at random each job, one scope's canaries of each measured under "
        "the new adapter (the gate's cost does not grow with the number of tenants).",
    )
