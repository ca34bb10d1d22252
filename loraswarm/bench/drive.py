"""Driving a serving system over HTTP with a list of requests, the same way for every system.

A request is sent at its arrival time whatever the system is doing (open loop; a burst is a
list whose arrivals are all 0), and the wall time of each generated token is noted as it
streams back. One function per API shape, the scheduling and the clock shared:

- `drive_tgi`: TGI's `POST /generate_stream` (this project's model server), adapter by `adapter_id`;
- `drive_completions`: the OpenAI `POST /v1/completions` with `stream: true` (vLLM, llama-server),
  the adapter chosen by fields the caller adds per request (vLLM's `model`, llama-server's `lora`).

Where a completions stream carries several tokens in one chunk (a partial UTF-8 character held
back), the usage the stream ends with says how many tokens came: the missing ones are counted at
the time of the chunk they came in.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Request:
    prompt: str
    adapter: int  # index of the adapter (tenant t<i>, name "support")
    max_new_tokens: int
    arrival_s: float


@dataclass
class Outcome:
    arrival: float
    tokens: list[float] = field(default_factory=list)  # wall time of each generated token


@dataclass
class RunResult:
    """One system on one workload: every request's outcome, or why there is none (`missing`)."""

    name: str
    outcomes: list[Outcome]
    note: str = ""

    rounds: list[list[Outcome]] = field(default_factory=list)
    missing: str = ""  # why this row could not be measured ("" when it was)

    def __post_init__(self) -> None:
        if not self.rounds:
            self.rounds = [self.outcomes]

    def merged(self, other: RunResult) -> RunResult:
        """Two runs of the same workload as one result (throughput over both makespans)."""
        return RunResult(self.name, self.outcomes + other.outcomes, self.note, self.rounds + other.rounds)

    @property
    def tokens(self) -> int:
        return sum(len(o.tokens) for o in self.outcomes)

    @property
    def makespan(self) -> float:
        return sum(
            max(o.tokens[-1] for o in outcomes if o.tokens) - min(o.arrival for o in outcomes)
            for outcomes in self.rounds
        )

    @property
    def throughput(self) -> float:
        return self.tokens / self.makespan

    def ttft(self) -> list[float]:
        return [o.tokens[0] - o.arrival for o in self.outcomes if o.tokens]

    def itl(self) -> list[float]:
        return [b - a for o in self.outcomes for a, b in zip(o.tokens, o.tokens[1:], strict=False)]


Send = Callable[[httpx.AsyncClient, Request, Outcome], Awaitable[None]]


async def _open_loop(url: str, requests: Sequence[Request], send: Send) -> list[Outcome]:
    limits = httpx.Limits(max_connections=len(requests) + 8, max_keepalive_connections=len(requests) + 8)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        start = time.perf_counter()

        async def one(r: Request) -> Outcome:
            await asyncio.sleep(max(0.0, start + r.arrival_s - time.perf_counter()))
            outcome = Outcome(arrival=time.perf_counter())
            await send(client, r, outcome)
            return outcome

        return list(await asyncio.gather(*(one(r) for r in requests)))


async def drive_tgi(url: str, requests: Sequence[Request], *, adapters: bool, name: str) -> RunResult:
    """TGI's `/generate_stream`: one SSE event per token; `adapter_id` = `t<i>/support` when `adapters`."""

    async def send(client: httpx.AsyncClient, r: Request, outcome: Outcome) -> None:
        parameters: dict[str, Any] = {"max_new_tokens": r.max_new_tokens}
        headers = {}
        if adapters:
            parameters["adapter_id"] = f"t{r.adapter}/support"
            headers["X-Tenant-Id"] = f"t{r.adapter}"
        body = {"inputs": r.prompt, "parameters": parameters}
        async with client.stream("POST", "/generate_stream", json=body, headers=headers) as answer:
            if answer.status_code != 200:
                raise RuntimeError(f"{name}: HTTP {answer.status_code}: {(await answer.aread())[:300]!r}")
            async for line in answer.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if "error" in event:
                        raise RuntimeError(f"{name}: server error: {event}")
                    outcome.tokens.append(time.perf_counter())

    return RunResult(name, await _open_loop(url, requests, send))


def count_tokens(times: list[float], reported: int | None) -> list[float]:
    """Token times from chunk times, made to agree with the count the server reported.

    A chunk may carry several tokens (the later ones arrived with it); a trailing empty chunk
    carries none. Without a reported count, each chunk with text is one token.
    """
    if reported is None or reported == len(times):
        return times
    if reported < len(times):
        return times[:reported]
    if not times:
        return []
    return times + [times[-1]] * (reported - len(times))


async def drive_completions(
    url: str,
    requests: Sequence[Request],
    fields: Callable[[Request], dict[str, Any]],
    *,
    name: str,
) -> RunResult:
    """OpenAI `/v1/completions`, streamed, greedy, `ignore_eos` (each request gets all its tokens);
    `fields(request)` adds what picks the adapter or the base model on that server."""

    async def send(client: httpx.AsyncClient, r: Request, outcome: Outcome) -> None:
        body: dict[str, Any] = {
            "prompt": r.prompt,
            "max_tokens": r.max_new_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            **fields(r),
        }
        times: list[float] = []
        reported: int | None = None
        async with client.stream("POST", "/v1/completions", json=body) as answer:
            if answer.status_code != 200:
                raise RuntimeError(f"{name}: HTTP {answer.status_code}: {(await answer.aread())[:300]!r}")
            async for line in answer.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                now = time.perf_counter()
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    raise RuntimeError(f"{name}: server error: {chunk['error']}")
                if any(choice.get("text") for choice in chunk.get("choices") or []):
                    times.append(now)
                if chunk.get("usage"):
                    reported = int(chunk["usage"]["completion_tokens"])
        outcome.tokens = count_tokens(times, reported)

    return RunResult(name, await _open_loop(url, requests, send))
