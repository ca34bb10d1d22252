"""`loraswarm bench chaos`: a stream of requests while services (and Kafka) are SIGKILLed.

Every request-path service runs as its own process (`loraswarm serve <name> --broker kafka`): the
model server (real, on this machine; it is also the planner's primary LLM), the retriever (the
local Weaviate), the planner and the specialist. Kafka is a broker of the benchmark's own (its
own port and data directory, so killing it disturbs nothing else on the machine).

The client is a Kafka client, as DESIGN.md allows: it publishes `recommendation.requested`
open-loop (Poisson arrivals over several tenants, whatever the answers do) and reads
`recommendation.completed/failed` with a consumer group of its own, recording every record it
receives. The gateway is not in the loop: what is measured is the event-driven core.

Two phases in one run, on the same processes: a baseline without kills, then the chaos phase,
where a killer SIGKILLs a random service every 5-10 s (Kafka itself with probability
`kafka_share`) and starts it again at once. Each phase ends with a drain: no new requests, no
kills, until every request has an outcome or its deadline plus a margin has passed.

Counted per phase, per request id, from what the client received:
- finished: exactly one outcome, `completed`; failed: exactly one, `failed`, with its code;
- duplicated: more than one distinct outcome event (two answers to one request); redelivered:
  the same outcome event more than once (at-least-once delivery; a client dedupes on event_id);
- lost: no outcome at all; not submitted: Kafka refused the publish for 30 s (broker down);
- latency p50/p95: publish to the first outcome; recovery after a kill: from the kill to the
  first outcome of a request published after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from loraswarm.bench.machine import describe
from loraswarm.bench.report import percentile, write_section
from loraswarm.shared.codec import encode
from loraswarm.shared.events import RecommendationRequested
from loraswarm.shared.settings import Settings
from loraswarm.shared.topics import prefixed

SERVICES = ("model_server", "retriever", "planner", "specialist")
TENANTS = ("acme", "globex", "initech")
QUESTIONS = (
    "Can a customer return a tent after 20 days?",
    "How should support answer a late delivery complaint?",
    "What is the warranty on hiking boots?",
    "Can an order be shipped abroad?",
)
PUBLISH_GIVE_UP_S = 30.0
# Generous: on a shared 2-core machine a grammar-constrained token took 2.6 s (measured).
DEADLINE_S = 300


@dataclass
class Sent:
    request_id: str
    tenant_id: str
    at: float  # monotonic, first publish attempt
    submitted: bool = False


@dataclass
class Received:
    event_id: str
    type: str
    code: str | None
    at: float


@dataclass
class Kill:
    target: str
    at: float
    recovery_s: float | None = None


@dataclass
class Phase:
    name: str
    minutes: float
    sent: dict[str, Sent] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    load_start: float = 0.0
    load_end: float = 0.0


@dataclass
class Tally:
    submitted: int
    not_submitted: int
    completed: int
    failed: Counter[str]
    duplicated: int
    redelivered: int
    lost: int
    p50_s: float
    p95_s: float
    kills: Counter[str]
    recovery_p50_s: float
    recovery_max_s: float
    unrecovered: int


def _tenant_config(tenant_id: str, max_new_tokens: int) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "display_name": tenant_id.title(),
        "limits": {"deadline_s": DEADLINE_S, "max_specialists": 1, "max_handoffs": 0, "token_budget": 4000},
        "specialists": [
            {
                "name": "advisor",
                "description": "Policies, support and products.",
                "instructions": f"You are {tenant_id.title()}'s advisor. Answer briefly.",
                "adapter": "none",
                "max_new_tokens": max_new_tokens,
            }
        ],
        "default_plan": [{"specialist": "advisor"}],
    }


class Cluster:
    """The benchmark's Kafka and one process per service, each killable and restartable."""

    def __init__(
        self, settings: Settings, root: Path, *, model_port: int, kafka_port: int, tokens: int
    ) -> None:
        self.root = root
        self.prefix = f"chaos-{uuid.uuid4().hex[:8]}."
        self.infra = settings.infra.model_copy(
            update={
                "state_dir": root / "kafka",
                "kafka_port": kafka_port,
                "kafka_controller_port": kafka_port + 1,
            }
        )
        self.bootstrap = f"127.0.0.1:{kafka_port}"
        self.model_url = f"http://127.0.0.1:{model_port}"
        tenants = root / "tenants"
        tenants.mkdir(parents=True, exist_ok=True)
        for tenant in TENANTS:
            (tenants / f"{tenant}.yaml").write_text(yaml.safe_dump(_tenant_config(tenant, tokens)))
        self.env = {
            **os.environ,
            "LORASWARM_BROKER": "kafka",
            "LORASWARM_DATA_DIR": str(root / "data"),
            "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "LORASWARM_KAFKA__TOPIC_PREFIX": self.prefix,
            "LORASWARM_ORCHESTRATION__TENANTS_DIR": str(tenants),
            "LORASWARM_ORCHESTRATION__PRIMARY_LLM_BASE_URL": f"{self.model_url}/v1",
            "LORASWARM_ORCHESTRATION__TGI_URL": self.model_url,
            "LORASWARM_ORCHESTRATION__PLAN_MAX_TOKENS": str(max(16, 3 * tokens)),
            "LORASWARM_ORCHESTRATION__COMPOSE_MAX_TOKENS": str(max(16, 4 * tokens)),
            "LORASWARM_ORCHESTRATION__LLM_TIMEOUT_S": str(DEADLINE_S // 2),
            "LORASWARM_MODEL_SERVER__PORT": str(model_port),
            "LORASWARM_RETRIEVAL__COLLECTION": f"Chaos{uuid.uuid4().hex[:8]}",
            "LORASWARM_TRACING__EXPORTER": "none",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def kafka_up(self) -> None:
        from loraswarm.infra import kafka
        from loraswarm.infra.process import InfraError

        try:
            kafka.up(self.infra)
        except InfraError:
            # Formatting fails when the random cluster id starts with "-" (read as an option);
            # a second id almost never does.
            kafka.up(self.infra)

    def kafka_kill(self) -> None:
        from loraswarm.infra import kafka

        pid = kafka.process(self.infra).pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                # Our child (kafka.up started it here): reap it, or its zombie looks alive.
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def kafka_down(self) -> None:
        from loraswarm.infra import kafka

        kafka.down(self.infra)

    def start(self, name: str) -> None:
        log = (self.root / "logs" / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "loraswarm.cli", "serve", name, "--broker", "kafka"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    async def wait_model_server(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.model_url}/health")).status_code == 200:
                        return
                if self.procs["model_server"].poll() is not None:
                    raise RuntimeError(f"the model server exited; see {self.root}/logs/model_server.log")
                await asyncio.sleep(1.0)
        raise TimeoutError("the model server did not become healthy")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Client:
    """Publishes requests and records every outcome record it receives."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.received: dict[str, list[Received]] = {}

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        self.producer = AIOKafkaProducer(bootstrap_servers=self.cluster.bootstrap, acks="all")
        await self.producer.start()
        topics = [
            prefixed(t, self.cluster.prefix) for t in ("recommendation.completed", "recommendation.failed")
        ]
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.cluster.bootstrap,
            group_id="chaos-client",
            auto_offset_reset="earliest",
            enable_auto_commit=True,
            metadata_max_age_ms=2000,
        )
        await self.consumer.start()
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        import json

        while True:
            try:
                batch = await self.consumer.getmany(timeout_ms=500)
            except Exception:  # the broker is down (killed): aiokafka reconnects, we poll again
                await asyncio.sleep(0.5)
                continue
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    value = json.loads(record.value)
                    self.received.setdefault(value["request_id"], []).append(
                        Received(value["event_id"], value["type"], value.get("code"), now)
                    )

    async def send(self, sent: Sent, tenant_id: str, question: str) -> None:
        request = RecommendationRequested(
            tenant_id=tenant_id,
            request_id=uuid.UUID(sent.request_id),
            question=question,
            deadline_s=DEADLINE_S,
        )
        record = encode(request)
        headers = [(k, v.encode()) for k, v in record.headers.items()]
        topic = prefixed("recommendation.requested", self.cluster.prefix)
        give_up = time.monotonic() + PUBLISH_GIVE_UP_S
        while time.monotonic() < give_up:
            try:
                await asyncio.wait_for(
                    self.producer.send_and_wait(topic, record.value, key=record.key, headers=headers), 5.0
                )
                sent.submitted = True
                return
            except Exception:  # broker down: retry until it is back or we give up
                await asyncio.sleep(0.5)


async def _stream(client: Client, phase: Phase, rate: float, rng: random.Random) -> None:
    """Open loop: Poisson arrivals at `rate`/s for the phase's duration, not waiting on answers."""
    end = time.monotonic() + phase.minutes * 60
    sends: list[asyncio.Task[None]] = []
    while time.monotonic() < end:
        await asyncio.sleep(rng.expovariate(rate))
        sent = Sent(str(uuid.uuid4()), rng.choice(TENANTS), time.monotonic())
        phase.sent[sent.request_id] = sent
        sends.append(asyncio.create_task(client.send(sent, sent.tenant_id, rng.choice(QUESTIONS))))
    await asyncio.gather(*sends)


async def _killer(
    cluster: Cluster, phase: Phase, rng: random.Random, kafka_share: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=rng.uniform(5.0, 10.0))
        if stop.is_set():
            return
        target = "kafka" if rng.random() < kafka_share else rng.choice(SERVICES)
        phase.kills.append(Kill(target, time.monotonic()))
        if target == "kafka":
            await asyncio.to_thread(cluster.kafka_kill)
            await asyncio.to_thread(cluster.kafka_up)
        else:
            cluster.kill(target)
            cluster.start(target)


async def _drain(client: Client, phase: Phase, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(r in client.received for r, s in phase.sent.items() if s.submitted):
            await asyncio.sleep(3.0)  # late copies (duplicates) would arrive now
            return
        await asyncio.sleep(1.0)


async def _phase(
    cluster: Cluster,
    client: Client,
    phase: Phase,
    rate: float,
    rng: random.Random,
    kill: bool,
    kafka_share: float,
) -> None:
    phase.load_start = os.getloadavg()[0]
    stop = asyncio.Event()
    killer = asyncio.create_task(_killer(cluster, phase, rng, kafka_share, stop)) if kill else None
    await _stream(client, phase, rate, rng)
    stop.set()
    if killer is not None:
        await killer
    await _drain(client, phase, timeout_s=DEADLINE_S + 60)
    phase.load_end = os.getloadavg()[0]


def tally(phase: Phase, received: dict[str, list[Received]]) -> Tally:
    failed: Counter[str] = Counter()
    completed = duplicated = redelivered = lost = 0
    latencies = []
    for request_id, sent in phase.sent.items():
        if not sent.submitted:
            continue
        got = received.get(request_id, [])
        distinct = {r.event_id: r for r in got}
        if not distinct:
            lost += 1
            continue
        if len(distinct) > 1:
            duplicated += 1
        if len(got) > len(distinct):
            redelivered += 1
        first = min(got, key=lambda r: r.at)
        latencies.append(first.at - sent.at)
        if first.type == "recommendation.completed":
            completed += 1
        else:
            failed[first.code or "unknown"] += 1
    outcomes = sorted(
        (min(r.at for r in received[rid]), s.at) for rid, s in phase.sent.items() if rid in received
    )
    for kill in phase.kills:
        after = [got for got, sent_at in outcomes if sent_at > kill.at]
        kill.recovery_s = (after[0] - kill.at) if after else None
    recoveries = [k.recovery_s for k in phase.kills if k.recovery_s is not None]
    submitted = sum(s.submitted for s in phase.sent.values())
    return Tally(
        submitted=submitted,
        not_submitted=len(phase.sent) - submitted,
        completed=completed,
        failed=failed,
        duplicated=duplicated,
        redelivered=redelivered,
        lost=lost,
        p50_s=percentile(latencies, 50),
        p95_s=percentile(latencies, 95),
        kills=Counter(k.target for k in phase.kills),
        recovery_p50_s=statistics.median(recoveries) if recoveries else float("nan"),
        recovery_max_s=max(recoveries) if recoveries else float("nan"),
        unrecovered=sum(k.recovery_s is None for k in phase.kills),
    )


def markdown(phases: list[Phase], tallies: list[Tally], rate: float, tokens: int) -> str:
    rows = [
        "| phase | minutes | kills | submitted | completed | failed (code) | lost | duplicated | "
        "redelivered copies | not submitted | p50 (s) | p95 (s) | recovery p50 / max (s) | load avg |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for phase, t in zip(phases, tallies, strict=True):
        kills = ", ".join(f"{k} {n}" for k, n in sorted(t.kills.items())) or "none"
        failed = ", ".join(f"{c} {n}" for c, n in sorted(t.failed.items())) or "0"
        recovery = (
            f"{t.recovery_p50_s:.1f} / {t.recovery_max_s:.1f}"
            + (f" ({t.unrecovered} never)" if t.unrecovered else "")
            if phase.kills
            else "–"
        )
        rows.append(
            f"| {phase.name} | {phase.minutes:g} | {kills} | {t.submitted} | {t.completed} | {failed} | "
            f"{t.lost} | {t.duplicated} | {t.redelivered} | {t.not_submitted} | {t.p50_s:.1f} | "
            f"{t.p95_s:.1f} | {recovery} | {phase.load_start:.1f} → {phase.load_end:.1f} |"
        )
    return "\n".join(
        [
            "## Chaos: requests while services and Kafka are SIGKILLed (`loraswarm bench chaos`)",
            "",
            f"Machine: {describe()}, shared with other work (load average in the table). Every "
            "service its own process on a Kafka broker of the benchmark's own; the model server "
            "real on the CPU, also the primary LLM. Client: a Kafka producer and consumer (the "
            f"gateway is not in the loop); {len(TENANTS)} tenants, open-loop Poisson arrivals at "
            f"{rate:g}/s, specialists' `max_new_tokens` {tokens}, deadline {DEADLINE_S} s. Chaos: a SIGKILL "
            "every 5-10 s of a random one of the model server, retriever, planner, specialist or "
            "(now and then) Kafka, restarted at once. Each phase ends with a drain without kills.",
            "Lost: no outcome at all. Duplicated: two different outcome events for one request. "
            "Redelivered copies: the same outcome event received again (at-least-once; the "
            "client dedupes on `event_id`). Recovery: from a kill to the first outcome of a "
            "request published after it.",
            "",
            *rows,
            "",
        ]
    )


async def run(
    settings: Settings,
    *,
    minutes: float,
    baseline_minutes: float,
    rate: float,
    tokens: int,
    kafka_share: float,
    out: Path,
    root: Path,
    seed: int = 17,
) -> tuple[list[Phase], list[Tally]]:
    rng = random.Random(seed)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    cluster = Cluster(settings, root, model_port=13917, kafka_port=19192, tokens=tokens)
    await asyncio.to_thread(cluster.kafka_up)
    client = Client(cluster)
    try:
        cluster.start("model_server")
        await cluster.wait_model_server()
        for name in SERVICES[1:]:
            cluster.start(name)
        await client.start()
        await asyncio.sleep(20.0)  # the services join their groups
        phases = [Phase("baseline (no kills)", baseline_minutes), Phase("chaos", minutes)]
        await _phase(cluster, client, phases[0], rate, rng, kill=False, kafka_share=kafka_share)
        await _phase(cluster, client, phases[1], rate, rng, kill=True, kafka_share=kafka_share)
        tallies = [tally(p, client.received) for p in phases]
    finally:
        with contextlib.suppress(Exception):
            await client.stop()
        cluster.stop_all()
        await asyncio.to_thread(cluster.kafka_down)
    write_section(out, "chaos", markdown(phases, tallies, rate, tokens))
    return phases, tallies
