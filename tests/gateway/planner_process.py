"""A stand-in planner process for the trace test: its own service name and tracer provider.

Answers each `recommendation.requested` with a `recommendation.completed`; configured by the
LORASWARM_* variables; prints "ready" once consuming; stops on SIGTERM (spans flushed).
"""

from __future__ import annotations

import asyncio
import signal

from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import RecommendationRequested
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing
from tests.gateway.conftest import completed_for


async def main() -> None:
    settings = Settings()
    provider = configure_tracing("planner-stub", settings.tracing)
    bus = EventBus(settings, service="planner-stub")

    @bus.consumer(RecommendationRequested, group="planner-stub")
    async def on_request(event: RecommendationRequested) -> None:
        await bus.publish(completed_for(event))

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with bus:
            print("ready", flush=True)
            await stop.wait()
    finally:
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
