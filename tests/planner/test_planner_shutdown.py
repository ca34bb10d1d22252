"""SIGTERM a planner process while it waits on the primary LLM: it exits within the grace, and
the event it was handling is handed back uncommitted, so the next planner finishes the request.

Real Kafka, a real `loraswarm serve planner` process, the scripted LLM hanging on cue.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import (
    RecommendationCompleted,
    RecommendationRequested,
    RetrievalCompleted,
    RetrievalRequested,
    SpecialistResult,
    SpecialistTask,
)
from tests.conftest import isolated_settings
from tests.planner.scripted_llm import Script, serve
from tests.planner.test_planner import COMPOSED, TWO_PLAN
from tests.planner.test_planner_crash import client_outcomes, start_planner
from tests.planner.world import PASSAGE
from tests.shared.test_bus import until

GRACE_S = 4.0


async def test_sigterm_with_an_llm_call_in_flight_exits_within_the_grace_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, tenants_dir: Path
) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    script = Script([None, TWO_PLAN], default=COMPOSED)  # the first plan call hangs
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
            "LORASWARM_ORCHESTRATION__LLM_TIMEOUT_S": "60",
            "LORASWARM_SHUTDOWN_GRACE_S": str(GRACE_S),
        }
        bus = EventBus(settings, service="shutdown-test")
        outcomes = client_outcomes(bus)

        @bus.consumer(RetrievalRequested, group="fake-retriever")
        async def retrieve(event: RetrievalRequested) -> None:
            await bus.publish(event.caused(RetrievalCompleted, passages=[PASSAGE]))

        @bus.consumer(SpecialistTask, group="fake-specialists")
        async def answer(task: SpecialistTask) -> None:
            await bus.publish(
                task.caused(
                    SpecialistResult, specialist=task.specialist, task_id=task.event_id, answer="30 days."
                )
            )

        async with bus:
            first = start_planner(env)
            request = RecommendationRequested(
                tenant_id="acme", user_id="ana", question="Refund after 20 days?", deadline_s=120
            )
            try:
                await bus.publish(request)
                await until(lambda: len(script.requests) == 1, timeout_s=90)  # planning, LLM hangs
            finally:
                began = time.monotonic()
                first.send_signal(signal.SIGTERM)
                status = first.wait(timeout=30)
                took = time.monotonic() - began
            assert took < GRACE_S + 0.5, f"exited {took:.1f} s after SIGTERM"
            assert status == 0
            assert outcomes == []

            second = start_planner(env)
            try:
                await until(lambda: len(outcomes) >= 1, timeout_s=90)
                await asyncio.sleep(2.0)  # a duplicate would arrive now
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(timeout=30)

    mine = [o for o in outcomes if o.request_id == request.request_id]
    assert len(mine) == 1, f"{len(mine)} outcomes"
    assert isinstance(mine[0], RecommendationCompleted)
    assert {c.specialist for c in mine[0].contributions} == {"policy", "support"}
