"""Turning tokens into text one at a time, so that the streamed pieces add up to the whole.

A token alone often decodes wrongly: a leading space depends on the token before it, and a
multi-byte character may span tokens. So, like TGI, each step decodes a short window of recent
tokens and emits only what the window gained; a piece that ends in an incomplete character
waits for the next token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_WINDOW = 5  # tokens of context before the first generated one


@dataclass
class IncrementalDetokenizer:
    tokenizer: Any
    ids: list[int]
    prefix_offset: int
    read_offset: int

    @classmethod
    def after_prompt(cls, tokenizer: Any, prompt_ids: list[int]) -> IncrementalDetokenizer:
        context = prompt_ids[-_WINDOW:]
        return cls(tokenizer, list(context), 0, len(context))

    def push(self, token: int) -> str:
        """Add a token; the text it completes (possibly empty)."""
        self.ids.append(token)
        prefix = self.tokenizer.decode(
            self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=False
        )
        text = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=False)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return str(text[len(prefix) :])
        return ""


def generated_text(tokenizer: Any, prompt_ids: list[int], generated: list[int]) -> str:
    """The whole generated text, special tokens left out, with the right leading space."""
    context = prompt_ids[-1:]
    prefix = tokenizer.decode(context, skip_special_tokens=True)
    full = tokenizer.decode(context + generated, skip_special_tokens=True)
    return (
        str(full[len(prefix) :])
        if full.startswith(prefix)
        else str(tokenizer.decode(generated, skip_special_tokens=True))
    )
