"""`loraswarm eval --quick` end to end on the real model, and what each condition really used.

The model server and the retriever are watched where the requests arrive: `ModelServer.prepare`
(every TGI and OpenAI-route request, with the adapters it asks for) and `Retriever.search` (every
retrieval), each wrapped to record and then run the real thing. The runner's `run_condition` is
wrapped the same way to know which condition is running, so each observed request is charged to
the condition that made it — nothing is read from the eval's own flags.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loraswarm.cli import app
from loraswarm.eval import conditions
from loraswarm.services.model_server.server import ModelServer
from loraswarm.shared.retrieval import Retriever

pytestmark = pytest.mark.weaviate


class Observed:
    def __init__(self) -> None:
        self.condition = "setup"
        self.generations: list[tuple[str, tuple[str, ...], str | None]] = []
        self.retrievals: list[tuple[str, str, str | None]] = []

    def adapters(self, condition: str) -> Counter[tuple[str, ...]]:
        return Counter(a for c, a, _ in self.generations if c == condition)

    def retrieved(self, condition: str) -> list[tuple[str, str | None]]:
        return [(t, u) for c, t, u in self.retrievals if c == condition]


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch) -> Observed:
    seen = Observed()
    prepare, search, run_condition = ModelServer.prepare, Retriever.search, conditions.run_condition

    async def watched_prepare(
        self: ModelServer, valid: Any, adapter_ids: tuple[str, ...], tenant: str | None, **kw: Any
    ) -> Any:
        seen.generations.append((seen.condition, tuple(adapter_ids), tenant))
        return await prepare(self, valid, adapter_ids, tenant, **kw)

    def watched_search(self: Retriever, tenant_id: str, query: str, **kw: Any) -> Any:
        seen.retrievals.append((seen.condition, tenant_id, kw.get("user_id")))
        return search(self, tenant_id, query, **kw)

    async def watched_run(
        name: Any, questions: Any, ctx: Any, progress: Callable[[], None] = lambda: None
    ) -> Any:
        seen.condition = name
        try:
            return await run_condition(name, questions, ctx, progress)
        finally:
            seen.condition = "between"

    monkeypatch.setattr(ModelServer, "prepare", watched_prepare)
    monkeypatch.setattr(Retriever, "search", watched_search)
    monkeypatch.setattr(conditions, "run_condition", watched_run)
    return seen


def test_quick_eval_end_to_end(tmp_path: Path, observed: Observed) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((out / "report.json").read_text())
    questions = [json.loads(line) for line in (out / "data" / "questions.jsonl").read_text().splitlines()]
    n, with_user = len(questions), sum(1 for q in questions if q.get("user"))
    tenant = questions[0]["tenant"]
    user = next(q["user"] for q in questions if q.get("user"))
    company, personal = f"{tenant}/company", f"{tenant}/user-{user}"

    # The report's shape: every condition, every metric, every answer, the files.
    names = [
        "base",
        "rag",
        "company",
        "company_user",
        "adapter_rag",
        "swarm",
        "raw_company_user",
        "raw_adapter_rag",
    ]
    assert list(report["conditions"]) == names
    assert {q["kind"] for q in questions} == {"fact", "process", "style"}
    for c in names:
        cell = report["estimates"][c]["all"]
        assert cell["fact_accuracy"]["n"] == sum(q["kind"] == "fact" for q in questions)
        assert cell["style_adherence"]["n"] == sum(q["kind"] == "style" for q in questions)
        assert (
            0.0
            <= cell["fact_accuracy"]["low"]
            <= cell["fact_accuracy"]["mean"]
            <= cell["fact_accuracy"]["high"]
            <= 1.0
        )
        assert report["costs"][c]["failed"] == 0, [a for a in report["answers"] if a["condition"] == c]
        assert report["costs"][c]["output_tokens_mean"] > 0
        assert report["costs"][c]["latency_ms_p50"] > 0
    assert len(report["answers"]) == n * len(names)
    assert all(a["published"] for a in report["adapters"])
    raw_company, raw_personal = f"{tenant}/raw-company", f"{tenant}/raw-user-{user}"
    assert {a["adapter_id"] for a in report["adapters"]} == {company, personal, raw_company, raw_personal}
    md = (out / "report.md").read_text()
    assert all(f"| {label} |" in md for label in report["conditions"].values())
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # What each condition really sent to the model server and asked the retriever.
    assert observed.adapters("base") == Counter({(): n})
    assert observed.retrieved("base") == []
    assert observed.adapters("rag") == Counter({(): n})
    assert Counter(observed.retrieved("rag")) == Counter((q["tenant"], q.get("user")) for q in questions)
    assert observed.adapters("company") == Counter({(company,): n})
    assert observed.retrieved("company") == []
    stacked = Counter({(company,): n - with_user, (company, personal): with_user})
    assert observed.adapters("company_user") == stacked
    assert observed.retrieved("company_user") == []
    assert observed.adapters("adapter_rag") == stacked
    assert len(observed.retrieved("adapter_rag")) == n
    # The raw-text arm: its own adapters (the builder off), stacked the same way.
    raw_stacked = Counter({(raw_company,): n - with_user, (raw_company, raw_personal): with_user})
    assert observed.adapters("raw_company_user") == raw_stacked
    assert observed.retrieved("raw_company_user") == []
    assert observed.adapters("raw_adapter_rag") == raw_stacked
    assert len(observed.retrieved("raw_adapter_rag")) == n
    # The swarm: the planner retrieves; both specialists fit the plan (planning: auto), so both
    # answer every question with the adapters and no plan call is made (the primary LLM, no
    # adapter, is asked at most to phrase).
    # A user's questions go out as the user's served stack (company + personal, joined).
    swarm = observed.adapters("swarm")
    assert sum(v for k, v in swarm.items() if company in k or f"{personal}.stack" in k) >= 2 * n
    assert swarm[(f"{personal}.stack",)] > 0
    assert observed.retrieved("swarm")
    assert all(t == tenant for c, _, t in observed.generations if c != "setup" and t is not None)
