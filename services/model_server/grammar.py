"""Constrained decoding with xgrammar: a JSON schema or a regex becomes a per-step token mask.

TGI takes `grammar = {"type": "json" | "json_schema" | "regex", "value": ...}` on the generate
routes and `response_format` on the chat route; both end up here. Compiled grammars are cached
(a specialist asks for the same schema again and again); every sequence gets its own matcher,
which the engine advances with each chosen token.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch


class GrammarError(ValueError):
    """The grammar cannot be used; the message is TGI's validation text."""


@dataclass(frozen=True)
class GrammarSpec:
    kind: Literal["json_schema", "regex", "any_json"]
    text: str  # the schema as JSON text, or the regex


def json_schema_spec(schema: Any) -> GrammarSpec:
    """TGI's checks on a JSON-schema grammar: valid JSON, a valid schema, with `properties`."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"grammar is not valid: {exc}") from exc
    if not isinstance(schema, dict):
        raise GrammarError("grammar is not supported")
    import jsonschema  # type: ignore[import-untyped]

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise GrammarError(f"grammar is not valid: {exc.message}") from exc
    if "properties" not in schema:
        raise GrammarError("grammar is not valid: Grammar must have a 'properties' field")
    # Key order kept: xgrammar has the model write properties in the schema's order (as TGI's
    # outlines does); sorted keys made a composition start with "rationale" instead of "title".
    return GrammarSpec("json_schema", json.dumps(schema))


class GrammarCompiler:
    """Compiles grammars for one tokenizer, with an LRU of compiled ones."""

    def __init__(self, tokenizer: Any, vocab_size: int, cache_size: int = 256) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(self.info, cache_enabled=False)
        self._cache: OrderedDict[GrammarSpec, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._pending: dict[GrammarSpec, concurrent.futures.Future[Any]] = {}

    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled grammar of `spec`: from the cache, or compiled once however many ask.

        Compiling costs seconds for a schema with long `maxLength` strings (xgrammar unrolls the
        bound), and a burst of requests brings the same schema many times at once: the first
        compiles it, the others wait for that result instead of each burning a core on a copy.
        """
        with self._lock:
            if spec in self._cache:
                self._cache.move_to_end(spec)
                return self._cache[spec]
            pending = self._pending.get(spec)
            if pending is None:
                pending = self._pending[spec] = concurrent.futures.Future()
                mine = True
            else:
                mine = False
        if not mine:
            return pending.result()
        try:
            compiled = self._compile(spec)
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._pending.pop(spec, None)
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        pending.set_result(compiled)
        return compiled

    def _compile(self, spec: GrammarSpec) -> Any:
        try:
            if spec.kind == "json_schema":
                # No free whitespace (as TGI's outlines regex allows at most one space): a small
                # model under a strong adapter would otherwise fill the budget with newlines.
                return self._compiler.compile_json_schema(spec.text, any_whitespace=False, strict_mode=False)
            if spec.kind == "regex":
                return self._compiler.compile_regex(spec.text)
            return self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses
            raise GrammarError(f"grammar is not valid: {exc}") from exc

    def matcher(self, compiled: Any) -> GrammarState:
        return GrammarState(self._xgr.GrammarMatcher(compiled), self._xgr, self.vocab_size)


class GrammarState:
    """One sequence's position in its grammar."""

    def __init__(self, matcher: Any, xgr: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._xgr = xgr
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def allowed(self) -> torch.Tensor:
        """The bitmask of tokens allowed next, (1, words)."""
        self._matcher.fill_next_token_bitmask(self._bitmask, 0)
        bitmask: torch.Tensor = self._bitmask
        return bitmask

    def accept(self, token: int) -> bool:
        return bool(self._matcher.accept_token(token))

    @property
    def finished(self) -> bool:
        return bool(self._matcher.is_terminated())
