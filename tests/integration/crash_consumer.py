"""A consumer process for the crash test: handles retrieval.requested, emits retrieval.completed.

Every handler run appends the event id to the file named by CRASH_HANDLED_LOG (so the test can
see re-runs), and emits a derived `retrieval.completed`. Configured by LORASWARM_* variables, and
CRASH_CONCURRENCY (records handled at once, shared/lanes.py).
"""

from __future__ import annotations

import asyncio
import os
import signal

from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import RetrievalCompleted, RetrievalRequested
from loraswarm.shared.settings import Settings


async def main() -> None:
    bus = EventBus(Settings(), service="crash-test")
    log = open(os.environ["CRASH_HANDLED_LOG"], "a", buffering=1)  # noqa: SIM115, ASYNC230 (lives as long as the process)

    concurrency = int(os.environ.get("CRASH_CONCURRENCY", "1"))

    @bus.consumer(RetrievalRequested, group="crash-test", concurrency=concurrency)
    async def handle(event: RetrievalRequested) -> None:
        log.write(f"{event.event_id}\n")
        # Varied work between starting and taking effect: side by side, records finish out of
        # order, and a kill lands on some that started and never took effect.
        await asyncio.sleep(0.002 if concurrency == 1 else (event.event_id.int % 20) / 1000)
        await bus.publish(event.caused(RetrievalCompleted, passages=[]))

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with bus:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
