"""Which events a consumer group has already handled: idempotency on `event_id` across restarts.

Kafka delivers at least once: after a crash the uncommitted tail of a partition comes again.
The ids of handled events are kept in a small SQLite file per consumer group, written after the
handler succeeds, so the second delivery is recognised and skipped.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path


class ProcessedEvents:
    """A durable set of handled event ids for one consumer group."""

    def __init__(self, path: Path | None, *, retention_s: float = 7 * 24 * 3600) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None)
        # WAL + NORMAL: a write survives a killed process; only a power cut may lose the last
        # ones, and then Kafka redelivers and the handler's derived event ids dedupe downstream.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS processed (event_id TEXT PRIMARY KEY, at REAL NOT NULL)")
        self._retention_s = retention_s
        self._db.execute("DELETE FROM processed WHERE at < ?", (time.time() - retention_s,))

        self._pending: set[str] = set()

    def seen(self, event_id: uuid.UUID) -> bool:
        return self.seen_keys([str(event_id)]) != set()

    def seen_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these event ids (as `str(uuid)`) were handled: marked, flushed or not.

        One query for a whole batch: a consumer asks once per fetched batch, not once per record.
        """
        found = {key for key in keys if key in self._pending}
        rest = [key for key in keys if key not in found]
        if len(rest) == 1:  # a third of the cost of the query below, for one id
            rows = self._db.execute("SELECT event_id FROM processed WHERE event_id = ?", rest)
            found.update(row[0] for row in rows)
        elif rest:
            # One bound parameter, however many ids (SQLite limits the number of parameters).
            rows = self._db.execute(
                "SELECT event_id FROM processed WHERE event_id IN (SELECT value FROM json_each(?))",
                (json.dumps(rest),),
            )
            found.update(row[0] for row in rows)
        return found

    def mark(self, event_id: uuid.UUID) -> None:
        """Remember `event_id`; it is durable after the next `flush()`."""
        self.mark_key(str(event_id))

    def mark_key(self, key: str) -> None:
        self._pending.add(key)

    def flush(self) -> None:
        """Write the pending marks in one transaction (called just before an offset commit)."""
        if not self._pending:
            return
        now = time.time()
        rows = [(key, now) for key in self._pending]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO processed (event_id, at) VALUES (?, ?)", rows)
        self._pending.clear()

    def __len__(self) -> int:
        self.flush()
        return int(self._db.execute("SELECT count(*) FROM processed").fetchone()[0])

    def close(self) -> None:
        self.flush()
        self._db.close()


class ProcessedRegistry:
    """One `ProcessedEvents` per consumer group, under `data_dir/processed/` (or in memory)."""

    def __init__(self, data_dir: Path | None) -> None:
        self._dir = None if data_dir is None else data_dir / "processed"
        self._stores: dict[str, ProcessedEvents] = {}

    def for_group(self, group: str) -> ProcessedEvents:
        if group not in self._stores:
            path = None if self._dir is None else self._dir / f"{group}.sqlite"
            self._stores[group] = ProcessedEvents(path)
        return self._stores[group]

    def flush(self) -> None:
        for store in self._stores.values():
            store.flush()

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
