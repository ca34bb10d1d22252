"""Grammar compilation: cached, and compiled once when a burst asks for the same schema at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from transformers import AutoTokenizer

from loraswarm.services.model_server.grammar import (
    GrammarCompiler,
    GrammarError,
    GrammarSpec,
    json_schema_spec,
)
from loraswarm.shared import models
from loraswarm.shared.settings import Settings

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 1, "maxLength": 120}},
    "required": ["answer"],
}


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(Settings()))
    return GrammarCompiler(tokenizer, len(tokenizer))


class Counting(GrammarCompiler):
    """Counts real compilations; each takes long enough that the burst overlaps it."""

    def __init__(self, base: GrammarCompiler) -> None:
        self.__dict__.update(base.__dict__)
        self._cache = type(base._cache)()
        self._pending = {}
        self._lock = threading.Lock()
        self.compiled = 0
        self.started = threading.Event()

    def _compile(self, spec: GrammarSpec) -> Any:
        self.compiled += 1
        self.started.set()
        threading.Event().wait(0.3)
        return super()._compile(spec)


def test_a_burst_of_one_schema_compiles_it_once(compiler: GrammarCompiler) -> None:
    counting = Counting(compiler)
    spec = json_schema_spec(SCHEMA)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: counting.compile(spec), range(8)))
    assert counting.compiled == 1
    assert all(r is results[0] for r in results)
    assert counting.compile(spec) is results[0]  # and then from the cache
    assert counting.compiled == 1


def test_a_failed_compile_fails_every_waiter_and_is_not_cached(compiler: GrammarCompiler) -> None:
    counting = Counting(compiler)
    bad = GrammarSpec("regex", "(unclosed")
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(counting.compile, bad) for _ in range(4)]
        for future in futures:
            with pytest.raises(GrammarError, match="grammar is not valid"):
                future.result()
    assert counting.compiled == 1
    with pytest.raises(GrammarError):
        counting.compile(bad)
    assert counting.compiled == 2  # a failure is not remembered: the next request tries again


def test_the_length_bound_is_enforced_token_by_token(compiler: GrammarCompiler) -> None:
    """What the planner relies on: a string at its maxLength must be closed."""
    state = compiler.matcher(compiler.compile(json_schema_spec(SCHEMA)))
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(Settings()))
    for token in tokenizer.encode('{"answer": "' + "a" * 120):
        assert state.accept(token)
    assert not state.accept(tokenizer.encode("a")[0]), "a 121st character was accepted"
    assert state.accept(tokenizer.encode('"')[0])
