"""`loraswarm ask` says what is missing within seconds, each with the command that fixes it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from loraswarm.cli import preflight
from loraswarm.shared.settings import Settings
from tests.conftest import TOPIC_PREFIX
from tests.processes import free_ports

CLI = [sys.executable, "-m", "loraswarm.cli"]


def nothing_running(tmp_path: Path) -> dict[str, str]:
    kafka, weaviate, grpc, model = free_ports(4)
    return {
        **os.environ,
        "LORASWARM_DATA_DIR": str(tmp_path / "data"),
        "LORASWARM_ORCHESTRATION__TENANTS_DIR": str(tmp_path / "tenants"),
        "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "LORASWARM_RETRIEVAL__WEAVIATE__HTTP_PORT": str(weaviate),
        "LORASWARM_RETRIEVAL__WEAVIATE__GRPC_PORT": str(grpc),
        "LORASWARM_ORCHESTRATION__TGI_URL": f"http://127.0.0.1:{model}",
        "COLUMNS": "200",
    }


def test_with_nothing_running_ask_names_each_fix_within_10_s(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, "ask", "--tenant", "northwind", "What is the refund window?"],
        env=nothing_running(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert any("no Kafka" in line and "loraswarm infra up kafka" in line for line in lines), done.stdout
    assert any("no model server" in line and "loraswarm serve all --broker kafka" in line for line in lines)
    assert any("no tenant 'northwind'" in line and "loraswarm infra up weaviate" in line for line in lines)
    assert elapsed < 10, f"the hints took {elapsed:.1f} s"


def test_a_planner_counts_only_when_it_consumes_this_prefix(kafka_bootstrap: str, tmp_path: Path) -> None:
    """On the real Kafka: no planner on this topic prefix is named; one that is consuming is not."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.kafka.bootstrap_servers = kafka_bootstrap
    settings.kafka.topic_prefix = f"{TOPIC_PREFIX}ask{uuid.uuid4().hex[:8]}."
    problem = preflight.planner_problem(settings)
    assert problem is not None and "loraswarm serve all --broker kafka" in problem

    async def with_a_planner_member() -> str | None:
        # A member of the planner's group on this prefix's request topic, as a running planner is.
        consumer = AIOKafkaConsumer(
            f"{settings.kafka.topic_prefix}recommendation.requested",
            bootstrap_servers=kafka_bootstrap,
            group_id=settings.kafka.group(preflight.PLANNER_GROUP),
        )
        await consumer.start()
        try:
            for _ in range(60):
                await consumer.getmany(timeout_ms=500)
                if consumer.assignment() or not await asyncio.to_thread(preflight.planner_problem, settings):
                    break
            return await asyncio.to_thread(preflight.planner_problem, settings)
        finally:
            await consumer.stop()

    assert asyncio.run(with_a_planner_member()) is None
