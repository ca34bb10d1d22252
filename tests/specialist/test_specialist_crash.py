"""Kill the specialist while its model call is in flight, start it again: the task is answered once.

Real Kafka, the real model server with a real peft adapter, a real specialist process
(`loraswarm serve specialist`), SIGKILL. The task's offset was not committed, so it comes again.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

from loraswarm.shared.bus import EventBus
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import RecommendationRequested, SpecialistResult, SpecialistTask
from loraswarm.shared.settings import ModelServerSettings
from tests.conftest import isolated_settings
from tests.e2e.world import model_server, publish_adapters
from tests.planner.conftest import ACME, write_tenant
from tests.shared.test_bus import until

ROOT = Path(__file__).parents[2]


def start_specialist(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "loraswarm.cli", "serve", "specialist", "--broker", "kafka"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def requests_seen(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^tgi_request_count (\d+)", text, re.M)
    return int(match.group(1)) if match else 0


async def test_a_specialist_killed_mid_task_answers_after_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    settings.device = "cpu"
    settings.model_server = ModelServerSettings(max_input_tokens=768, max_total_tokens=1024)
    tenants = tmp_path / "tenants"
    write_tenant(tenants, {**ACME, "limits": {**ACME["limits"], "deadline_s": 600}})
    publish_adapters(settings, tmp_path)
    results: list[SpecialistResult] = []
    with model_server(settings) as url:
        env = {
            **os.environ,
            "LORASWARM_BROKER": "kafka",
            "LORASWARM_DATA_DIR": str(tmp_path / "specialist-data"),
            "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "LORASWARM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "LORASWARM_KAFKA__PARTITIONS": str(settings.kafka.partitions),
            "LORASWARM_ORCHESTRATION__TENANTS_DIR": str(tenants),
            "LORASWARM_ORCHESTRATION__TGI_URL": url,
            "LORASWARM_ORCHESTRATION__LLM_TIMEOUT_S": "300",
            "LORASWARM_RETRIEVAL__COLLECTION": "SpecialistCrashNone",
        }
        bus = EventBus(settings, service="crash-test")

        @bus.consumer(SpecialistResult, group="planner-stand-in")
        async def collect(result: SpecialistResult) -> None:
            results.append(result)

        request = RecommendationRequested(tenant_id="acme", user_id="ana", question="Refund after 20 days?")
        task = request.caused(
            SpecialistTask,
            specialist="policy",
            question="What is the refund window?",
            adapter_ids=["acme/company"],
            deadline_at=utc_now() + timedelta(minutes=10),
        )
        async with bus:
            before = requests_seen(url)
            first = start_specialist(env)
            try:
                await bus.publish(task)
                await until(lambda: requests_seen(url) > before, timeout_s=120)  # the model call is in flight
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait()
            assert not results, "the task finished before the kill"
            second = start_specialist(env)
            try:
                await until(lambda: bool(results), timeout_s=300)
                await asyncio.sleep(2.0)
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(timeout=30)

    # The task's own result (a hand-off the model may choose answers under a task of its own);
    # redelivered, it carries the same id, so the planner counts it once.
    own = [r for r in results if r.task_id == task.event_id]
    assert {r.event_id for r in own} == {
        task.caused(SpecialistResult, specialist="policy", task_id=task.event_id).event_id
    }
    result = own[0]
    assert {r.task_id for r in results} <= {task.event_id, *(h.task_id for h in result.handoffs)}
    assert result.adapter_ids == ["acme/company"]
    assert result.error is None, result.error
    assert result.usage.output_tokens > 0
