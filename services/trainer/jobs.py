"""One job per adapter at a time, and jobs that survive a restart.

`AdapterLocks`: an exclusive `flock` per adapter name under `<data_dir>/trainer/locks/`. The
kernel drops it when its holder exits, so a crash leaves no stale lock, and the CLI and every
trainer process sharing the data folder see each other's jobs. A request for an adapter that is
locked is rejected (`already_training`), naming the request that holds it.

`JobJournal`: a request accepted by the service is written to `<data_dir>/trainer/jobs/` before
its Kafka offset is committed and removed once its outcome is published; on start the service
runs what is left there again. Jobs are long, so they run after the handler returns (a handler
that held the consumer for minutes would be thrown out of its group); the journal keeps the
at-least-once promise instead.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from loraswarm.services.trainer.errors import AlreadyTraining
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import AdapterTrainRequested
from loraswarm.shared.files import write_atomic


@dataclass
class AdapterLock:
    adapter_id: str
    holder: str
    handle: IO[str] | None

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> AdapterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AdapterBusy(AlreadyTraining):
    def __init__(self, reason: str, holder: str) -> None:
        super().__init__(reason)
        self.holder = holder


class AdapterLocks:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, data_dir: Path) -> AdapterLocks:
        return cls(data_dir / "trainer" / "locks")

    def acquire(self, adapter_id: str, holder: str) -> AdapterLock:
        """Lock `adapter_id` for `holder` (a request id), or `AdapterBusy` naming who has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / (adapter_id.replace("/", "--") + ".lock")
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                info = json.loads(handle.read() or "{}")
            except ValueError:
                info = {}
            handle.close()
            owner = str(info.get("holder", "?"))
            raise AdapterBusy(
                f"{adapter_id} is already being trained (request {owner}, since {info.get('since', '?')}); "
                "ask again when that job has ended",
                owner,
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"holder": holder, "pid": os.getpid(), "since": utc_now().isoformat()}))
        handle.flush()
        return AdapterLock(adapter_id, holder, handle)


class JobJournal:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, data_dir: Path) -> JobJournal:
        return cls(data_dir / "trainer" / "jobs")

    def add(self, request: AdapterTrainRequested) -> None:
        write_atomic(self.root / f"{request.event_id}.json", request.model_dump_json())

    def remove(self, request: AdapterTrainRequested) -> None:
        (self.root / f"{request.event_id}.json").unlink(missing_ok=True)

    def pending(self) -> list[AdapterTrainRequested]:
        if not self.root.is_dir():
            return []
        found = [AdapterTrainRequested.model_validate_json(p.read_text()) for p in self.root.glob("*.json")]
        return sorted(found, key=lambda r: r.occurred_at)
