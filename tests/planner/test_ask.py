"""`loraswarm ask` publishes a request to Kafka and prints the recommendation when it arrives."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import isolated_settings
from tests.planner.scripted_llm import Script, serve
from tests.planner.test_planner import COMPOSED, TWO_PLAN
from tests.planner.world import configure, world


def ask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loraswarm.cli", "ask", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_ask_prints_the_recommendation_with_citations_and_adapters(
    kafka_bootstrap: str, tmp_path: Path, tenants_dir: Path
) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    settings.orchestration.composer = "legacy"  # the scripted LLM writes the composition
    with serve(Script([TWO_PLAN, COMPOSED])) as url:
        async with world(configure(settings, tenants_dir, url), {}):
            env = {
                **os.environ,
                "COLUMNS": "200",
                "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
                "LORASWARM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
                "LORASWARM_DATA_DIR": str(tmp_path / "cli-data"),
            }
            result = await asyncio.to_thread(
                ask, env, "--no-check", "--tenant", "acme", "--user", "ana", "Can I refund after 20 days?"
            )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Offer a refund." in result.stdout
    assert "Refund policy (handbook#0)" in result.stdout
    assert "acme/company + acme/user-ana" in result.stdout
