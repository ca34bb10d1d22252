"""Training data without training: JSONL examples, tenant files, packing, labels, the held-out split."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.services.trainer.dataset import (
    BUILT_KINDS,
    IGNORE,
    Kind,
    Unit,
    document_units,
    example_sample,
    section_units,
    split_heldout,
    style_units,
    training_batches,
)
from loraswarm.services.trainer.errors import CorruptData, InvalidRequest, ScopeViolation
from loraswarm.services.trainer.examples import ChatExample, Message, read_examples
from loraswarm.services.trainer.scope import Scope, TenantFiles
from loraswarm.shared import models
from loraswarm.shared.settings import Settings


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(models.resolve(Settings()))


# ---------------------------------------------------------------- examples


def test_examples_in_chat_and_pair_form_are_read_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ex.jsonl"
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path.write_text(json.dumps(chat) + "\n\n" + json.dumps({"prompt": "Q", "completion": "A"}) + "\n")
    examples = read_examples(path)
    assert [e.line for e in examples] == [1, 3]
    assert examples[1].messages == (Message(role="user", content="Q"), Message(role="assistant", content="A"))


def test_corrupt_lines_reject_the_file_naming_each_line_and_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "ex.jsonl"
    good = json.dumps({"prompt": "Q", "completion": "A"})
    lines = [
        good,
        '{"prompt": "Q", "completion": ',  # 2: cut off
        good,
        json.dumps(
            {"messages": [{"role": "user", "content": "only a question"}, {"role": "user", "content": "?"}]}
        ),
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        "[1, 2]",
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    with pytest.raises(CorruptData) as caught:
        read_examples(path, "ex.jsonl")
    reason = caught.value.reason
    assert reason.startswith("ex.jsonl has 5 corrupt line(s) of 7")
    assert "line 2: not valid JSON" in reason
    assert "line 4: " in reason and "no assistant message" in reason
    assert "line 5: messages.0.role" in reason
    assert "line 6: a JSON list" in reason
    assert "line 7: not UTF-8" in reason
    assert "line 1" not in reason and "line 3" not in reason
    assert caught.value.metrics == {"corrupt_lines": 5.0, "valid_lines": 2.0}


# ---------------------------------------------------------------- tenant files


def test_a_scope_reads_only_its_own_files(tmp_path: Path) -> None:
    files = TenantFiles(tmp_path / "tenants")
    company, alice, bob = Scope("acme"), Scope("acme", "alice"), Scope("acme", "bob")
    for scope in (company, alice, bob, Scope("globex")):
        files.folder(scope).mkdir(parents=True)
        (files.folder(scope) / "ex.jsonl").write_text("{}")
    (files.folder(company) / "link.jsonl").symlink_to(files.folder(Scope("globex")) / "ex.jsonl")

    assert files.resolve(company, "ex.jsonl") == (files.folder(company) / "ex.jsonl").resolve()
    assert files.resolve(alice, "ex.jsonl") == (files.folder(alice) / "ex.jsonl").resolve()
    refused = {
        (company, "../globex/ex.jsonl"): "tenant 'globex''s data",
        (company, str(files.folder(Scope("globex")) / "ex.jsonl")): "tenant 'globex''s data",
        (company, "link.jsonl"): "tenant 'globex''s data",
        (company, "/etc/passwd"): "outside the tenant data store",
        (company, "users/alice/ex.jsonl"): "user 'alice''s private data; a company adapter",
        (bob, "../alice/ex.jsonl"): "user 'alice''s private data; user 'bob''s adapter may not read it",
        (alice, "../../ex.jsonl"): "is company data; a user adapter trains on that user's own files",
    }
    for (scope, path), reason in refused.items():
        with pytest.raises(ScopeViolation, match=reason.replace("(", r"\(")):
            files.resolve(scope, path)
    with pytest.raises(InvalidRequest, match="does not exist"):
        files.resolve(company, "missing.jsonl")


def test_imported_files_land_in_the_scope_folder(tmp_path: Path) -> None:
    files = TenantFiles(tmp_path / "tenants")
    source = tmp_path / "mine.jsonl"
    source.write_text("{}\n")
    name = files.import_file(Scope("acme", "alice"), source)
    assert files.resolve(Scope("acme", "alice"), name).read_text() == "{}\n"
    assert files.has_tenant("acme") and files.delete_tenant("acme") and not files.has_tenant("acme")


# ---------------------------------------------------------------- samples and batches


def chunk(doc: str, position: int, text: str) -> CorpusChunk:
    return CorpusChunk(doc, position, "v1", "company", text)


def test_documents_are_packed_in_order_one_document_per_block(tokenizer: Any) -> None:
    chunks = [
        chunk("b", 1, "second part of b."),
        chunk("a", 0, "all of a."),
        chunk("b", 0, "first part of b,"),
    ]
    units = document_units(chunks, tokenizer, seq_len=8)
    assert [u.key for u in units] == ["doc:a", "doc:b"]
    b_text = tokenizer.decode([t for s in units[1].samples for t in s.input_ids])
    assert b_text == "first part of b,<|im_end|>second part of b.<|im_end|>"
    assert all(len(s.input_ids) <= 8 and s.labels == s.input_ids for u in units for s in u.samples)


def test_only_the_assistants_tokens_of_an_example_are_learned(tokenizer: Any) -> None:
    example = ChatExample(
        (
            Message(role="user", content="What is the refund window?"),
            Message(role="assistant", content="45 days."),
        ),
        line=1,
    )
    sample = example_sample(example, tokenizer, seq_len=256)
    assert sample is not None
    learned = tokenizer.decode([t for t in sample.labels if t != IGNORE])
    assert learned == "45 days.<|im_end|>\n"
    assert "refund window" in tokenizer.decode(sample.input_ids)
    # Cut before the answer: nothing left to learn, so no sample.
    assert example_sample(example, tokenizer, seq_len=10) is None


def test_held_out_units_are_whole_stable_and_never_everything(tokenizer: Any) -> None:
    units = document_units(
        [chunk(f"d{i}", 0, f"document number {i} " * 30) for i in range(20)], tokenizer, 16
    )
    train, heldout = split_heldout(units, 0.1, cap=64)
    total = sum(len(u.samples) for u in units)
    assert len(train) + len(heldout) == total
    assert 0 < len(heldout) <= 0.1 * total + max(len(u.samples) for u in units)
    held = {s.input_ids for s in heldout}
    assert all(
        all(s.input_ids in held for s in u.samples) or not any(s.input_ids in held for s in u.samples)
        for u in units
    )
    assert split_heldout(units, 0.1, cap=64) == (train, heldout)
    # One document alone: its blocks are split; one block alone: nothing can be held out.
    assert split_heldout(units[:1], 0.5, cap=64)[1]
    single = [Unit("doc:x", units[0].samples[:1])]
    assert split_heldout(single, 0.5, cap=64) == (single[0].samples, [])


def test_a_unit_larger_than_the_held_out_share_is_not_held_out_while_a_smaller_one_can_be(
    tokenizer: Any,
) -> None:
    # A user's scope as the eval saw it: one document whose built examples are 20 sequences,
    # two of 3; 10% is 2 sequences. Held out before: the big one (6 left to train on).
    block = document_units([chunk("x", 0, "word " * 12)], tokenizer, 16)[0].samples[0]
    sizes = {"doc:notes": 20, "doc:checklist": 3, "doc:preferences": 3}
    units = [Unit(key, [block] * n) for key, n in sizes.items()]
    for order in (units, units[::-1]):
        train, heldout = split_heldout(order, 0.1, cap=64)
        assert (len(train), len(heldout)) == (23, 3)
    # Units that all fit: as many as fit in the share, never more.
    many = [Unit(f"doc:{i}", [block]) for i in range(40)]
    train, heldout = split_heldout(many, 0.1, cap=64)
    assert (len(train), len(heldout)) == (36, 4)
    assert len(split_heldout(many, 0.5, cap=3)[1]) == 3


def test_a_style_document_is_never_held_out(tokenizer: Any) -> None:
    # The demo's acme company: three small fact documents and its one tone document, the
    # smallest unit, which the fallback held out alone before (and the gate measured only it).
    chunks = [
        chunk("refunds.md", 0, "Acme refunds tents within 30 days. " * 6),
        chunk("repairs.md", 0, "Acme repairs zips for free for two years. " * 6),
        chunk("warranty.md", 0, "The warranty covers seams for two years. " * 6),
        chunk("tone.md", 0, "# How we talk to customers\nWe are warm and practical."),
        chunk("notes.md", 0, "# Ben's email templates\nReturn approved: Hi {name}."),
    ]
    keep = style_units(chunks)
    assert keep == {"doc:tone.md#0", "doc:notes.md#0"}
    units = section_units(chunks, tokenizer, 16)
    kept = {s.input_ids for u in units if u.key in keep for s in u.samples}
    before = split_heldout(units, 0.1, cap=64)[1]
    assert {s.input_ids for s in before} <= kept  # without `keep`: a style document, alone
    train, heldout = split_heldout(units, 0.1, cap=64, keep=keep)
    assert heldout and not kept & {s.input_ids for s in heldout}
    assert kept <= {s.input_ids for s in train}
    # Only style documents: nothing can be held out, and everything trains.
    only_style = [u for u in units if u.key in keep]
    assert split_heldout(only_style, 0.5, cap=64, keep=keep)[1] == []


def test_sections_are_held_out_when_no_whole_document_fits(tokenizer: Any) -> None:
    # A generated company: a few documents of several sections each, none within the 10% target.
    # The smallest document alone held out all of its processes, and no adapter learnt one.
    chunks = [
        chunk(doc, i, f"{doc} section {i}: " + "a fact stated plainly. " * 12)
        for doc in ("organisation.md", "policies.md", "processes.md")
        for i in range(4)
    ]
    units = section_units(chunks, tokenizer, 16)
    by_doc = {
        d: sum(len(u.samples) for u in units if u.key.startswith(f"doc:{d}#")) for d in ("processes.md",)
    }
    total = sum(len(u.samples) for u in units)
    assert by_doc["processes.md"] > 0.1 * total  # no document fits
    train, heldout = split_heldout(units, 0.1, cap=64)
    assert heldout and len(heldout) <= 0.1 * total
    trained = {s.input_ids for s in train}
    for doc in ("organisation.md", "policies.md", "processes.md"):  # every document still trains
        assert any(
            s.input_ids in trained for u in units if u.key.startswith(f"doc:{doc}#") for s in u.samples
        )
    assert split_heldout(units, 0.1, cap=64) == (train, heldout)  # the same split every run
    # A document that fits is still held out whole, before any section.
    small = [*units, *section_units([chunk("faq.md", 0, "A short answer.")], tokenizer, 16)]
    assert split_heldout(small, 0.1, cap=64)[1] == next(u for u in small if u.key == "doc:faq.md#0").samples


def test_built_examples_always_train_and_only_raw_text_or_own_examples_are_held_out(tokenizer: Any) -> None:
    # A generated user's scope as the eval saw it: the checklist (3 process and 2 retrieval-aware
    # examples beside its raw block), the notes (facts, style, retrieval-aware, raw), the writing
    # guide (kept). Held out whole before: the checklist, the user's only process.
    def made(key: str, kinds: dict[Kind, int]) -> Unit:
        block = document_units([chunk(key, 0, f"{key} " * 12)], tokenizer, 16)[0].samples[0]
        return Unit(f"doc:{key}#0", [replace(block, kind=k) for k, n in kinds.items() for _ in range(n)])

    units = [
        made("checklist", {"process": 3, "raft": 2, "document": 1}),
        made("notes", {"fact": 18, "style": 8, "raft": 10, "document": 1}),
        made("writing", {"document": 1}),
    ]
    keep = frozenset({"doc:writing#0"})
    train, heldout = split_heldout(units, 0.1, cap=64, keep=keep)
    built = [s for u in units for s in u.samples if s.kind in BUILT_KINDS]
    assert Counter(s for s in train if s.kind in BUILT_KINDS) == Counter(built)
    assert len(heldout) == 1 and heldout[0].kind == "document"  # one document's raw block
    assert heldout[0] not in train and units[2].samples[0] in train
    assert len(train) + len(heldout) == sum(len(u.samples) for u in units)
    assert split_heldout(units, 0.1, cap=64, keep=keep) == (train, heldout)
    # Without built examples (the raw-text recipe, the tenant's own examples): whole units, as before.
    raw = [Unit(u.key, [s for s in u.samples if s.kind == "document"]) for u in units]
    assert split_heldout(raw, 0.1, cap=64, keep=keep)[1] == heldout
    # A scope of one short document (one raw block, nothing else to hold out): its built
    # examples are held out as before, rather than none (the job refused as a tiny dataset).
    alone = [made("alone", {"fact": 6, "document": 1})]
    train, heldout = split_heldout(alone, 0.5, cap=64)
    assert heldout and len(train) + len(heldout) == 7


def test_batches_are_grouped_by_length_and_padded_with_ignored_labels(tokenizer: Any) -> None:
    short = [chunk(f"s{i}", 0, "tiny") for i in range(8)]
    long = [chunk(f"l{i}", 0, "a much longer document " * 5) for i in range(8)]
    samples = [s for u in document_units(short + long, tokenizer, 64) for s in u.samples]
    batches = training_batches(samples, batch_size=4, pad_id=tokenizer.pad_token_id, seed=0)
    seen = [next(batches) for _ in range(4)]  # one epoch
    widths = sorted(b.input_ids.shape[1] for b in seen)
    assert widths[0] < 5 < widths[-1], "short and long samples were not grouped apart"
    for batch in seen:
        assert (batch.labels[batch.attention_mask == 0] == IGNORE).all()
    assert sum(b.tokens for b in seen) == sum(len(s.input_ids) for s in samples)


# ---------------------------------------------------------------- the mix and the steps


def test_a_scope_s_units_hold_its_built_examples_with_raw_text_kept_whole_when_small(tokenizer: Any) -> None:
    from loraswarm.services.trainer.builder.model import BuiltExample
    from loraswarm.services.trainer.dataset import scope_units

    chunks = [
        chunk("a", 0, "The head office is in Ghent. " * 4),
        chunk("b", 0, "Shipping costs 9 euros. " * 4),
    ]
    built = [
        BuiltExample(
            "fact",
            (
                Message(role="user", content=f"Where is the head office? ({i})"),
                Message(role="assistant", content="In Ghent."),
            ),
            "a#0",
            "extractor",
        )
        for i in range(12)
    ]
    kw: dict[str, Any] = {"seq_len": 16, "max_example_tokens": 64, "raw_text_share": 0.0}
    # Built examples join their section's unit; at raw share 0 no raw block stays...
    units, too_long = scope_units(chunks, built, tokenizer, **kw, min_tokens=0)
    assert too_long == 0 and [u.key for u in units] == ["doc:a#0"]
    assert len(units[0].samples) == 12 and {s.kind for s in units[0].samples} == {"fact"}
    # ... unless that leaves fewer learned tokens than the minimum: then all raw text stays.
    whole, _ = scope_units(chunks, built, tokenizer, **kw, min_tokens=10_000)
    raw = section_units(chunks, tokenizer, 16)
    assert sum(len(u.samples) for u in whole) == 12 + sum(len(u.samples) for u in raw)
    # Nothing built (the raw-text recipe): the documents' blocks alone.
    alone, _ = scope_units(chunks, None, tokenizer, **kw, min_tokens=0)
    assert [[s.input_ids for s in u.samples] for u in alone] == [
        [s.input_ids for s in u.samples] for u in raw
    ]
    # A built example longer than the limit is counted, never cut.
    _, cut = scope_units(chunks, built, tokenizer, **{**kw, "max_example_tokens": 8}, min_tokens=0)
    assert cut == 12


@pytest.mark.parametrize(
    ("epochs", "sequences", "expected"),
    [(None, 10, 100), (4, 10, 5), (4, 1_000, 100), (0.1, 3, 1), (2, 24, 6)],
)
def test_epochs_bound_the_steps_by_the_data(epochs: float | None, sequences: int, expected: int) -> None:
    from loraswarm.services.trainer.dataset import steps_for
    from loraswarm.shared.settings.trainer import Hyperparameters

    hp = Hyperparameters(steps=100, batch_size=8, epochs=epochs)
    assert steps_for(hp, sequences) == expected
