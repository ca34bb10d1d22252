"""The prompt a specialist sends to its model, in one place.

The specialist renders it for every task, and the trainer's training-set builder renders the very
same text for its retrieval-aware examples (services/trainer/builder/raft.py): an adapter learns
to use passages in exactly the form it will be given them. Services may not import each other,
so the one definition lives here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

NO_DOCUMENTS = "(no documents)"


def specialist_messages(
    instructions: str, question: str, passages: Sequence[str], targets: Sequence[str] = ()
) -> tuple[str, str]:
    """(system, user) of a specialist's prompt: its instructions, the numbered passages, the question."""
    context = "\n".join(f"[{i}] {text}" for i, text in enumerate(passages, 1)) or NO_DOCUMENTS
    handoff = (
        f" If another specialist ({', '.join(targets)}) should answer instead, name it in `handoff`."
        if targets
        else ""
    )
    system = f"{instructions}\nAnswer in JSON with `answer` and `handoff`.{handoff}"
    user = f"Documents:\n{context}\n\nQuestion: {question}"
    return system, user


def specialist_prompt(
    instructions: str,
    question: str,
    passages: Sequence[str],
    targets: Sequence[str] = (),
    *,
    tokenizer_chat: bool = True,
) -> str:
    """The text TGI's /generate receives: ChatML (the default base model's template) or plain."""
    system, user = specialist_messages(instructions, question, passages, targets)
    if not tokenizer_chat:
        return f"{system}\n\n{user}\n"
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def specialist_answer(answer: str, handoff: str | None = None) -> str:
    """What a specialist's grammar makes the model write: `{"answer": ..., "handoff": ...}`."""
    return json.dumps({"answer": answer, "handoff": handoff}, ensure_ascii=False)
