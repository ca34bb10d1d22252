"""Kill the planner after fan-out, start it again: the request still completes, exactly once.

Real Kafka, a real planner process (`loraswarm serve planner`), SIGKILL. The planner's state for
the request lives in the compacted state topic, so the new process picks it up from there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import (
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
    RetrievalCompleted,
    RetrievalRequested,
    SpecialistResult,
    SpecialistTask,
)
from tests.conftest import isolated_settings
from tests.planner.scripted_llm import Script, serve
from tests.planner.test_planner import COMPOSED, TWO_PLAN
from tests.planner.world import PASSAGE
from tests.shared.test_bus import until

ROOT = Path(__file__).parents[2]


def start_planner(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "loraswarm.cli", "serve", "planner", "--broker", "kafka"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def client_outcomes(bus: EventBus) -> list[RecommendationCompleted | RecommendationFailed]:
    """Every outcome the client's consumers receive, in arrival order (copies too)."""
    outcomes: list[RecommendationCompleted | RecommendationFailed] = []

    @bus.consumer(RecommendationCompleted, group="client")
    async def completed(event: RecommendationCompleted) -> None:
        outcomes.append(event)

    @bus.consumer(RecommendationFailed, group="client-failed")
    async def failed(event: RecommendationFailed) -> None:
        outcomes.append(event)

    return outcomes


async def test_the_planner_killed_after_fan_out_finishes_the_request_once(
    kafka_bootstrap: str, tmp_path: Path, tenants_dir: Path
) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    script = Script([TWO_PLAN], default=COMPOSED)
    with serve(script) as llm_url:
        env = {
            **os.environ,
            "LORASWARM_BROKER": "kafka",
            "LORASWARM_DATA_DIR": str(tmp_path / "planner-data"),
            "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "LORASWARM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "LORASWARM_KAFKA__PARTITIONS": str(settings.kafka.partitions),
            "LORASWARM_ORCHESTRATION__TENANTS_DIR": str(tenants_dir),
            "LORASWARM_ORCHESTRATION__PRIMARY_LLM_BASE_URL": llm_url,
            "LORASWARM_ORCHESTRATION__DEADLINE_CHECK_S": "0.2",
        }
        bus = EventBus(settings, service="crash-test")
        tasks: list[SpecialistTask] = []
        outcomes = client_outcomes(bus)

        @bus.consumer(RetrievalRequested, group="fake-retriever")
        async def retrieve(event: RetrievalRequested) -> None:
            await bus.publish(event.caused(RetrievalCompleted, passages=[PASSAGE]))

        @bus.consumer(SpecialistTask, group="fake-specialists")
        async def collect(task: SpecialistTask) -> None:
            tasks.append(task)

        async with bus:
            first = start_planner(env)
            request = RecommendationRequested(
                tenant_id="acme", user_id="ana", question="Refund after 20 days?", deadline_s=120
            )
            try:
                await bus.publish(request)
                await until(lambda: len(tasks) == 2, timeout_s=90)  # fanned out
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait()

            for task in tasks:  # the specialists answer while no planner runs
                await bus.publish(
                    task.caused(
                        SpecialistResult,
                        specialist=task.specialist,
                        task_id=task.event_id,
                        answer="30 days with receipt.",
                    )
                )
            second = start_planner(env)
            try:
                await until(lambda: len(outcomes) >= 1, timeout_s=90)
                await asyncio.sleep(2.0)  # a duplicate would arrive now
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(timeout=30)

    mine = [o for o in outcomes if o.request_id == request.request_id]
    assert len({o.event_id for o in mine}) == 1, f"{len(mine)} outcomes"
    assert isinstance(mine[0], RecommendationCompleted)
    assert {c.specialist for c in mine[0].contributions} == {"policy", "support"}
    assert len(tasks) == 2, "the restarted planner fanned out again"
