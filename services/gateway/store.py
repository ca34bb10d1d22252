"""What the gateway remembers, in one SQLite file (`<data_dir>/gateway/gateway.sqlite`).

- `requests`: every request it accepted (and every outcome it consumed), with the answer once it
  arrives; `GET /v1/recommendations/{id}` reads it, filtered by the caller's tenant.
- `progress`: the steps of a request, numbered, for the server-sent-events stream.
- `deliveries` + `delivery_attempts`: the outbox of webhooks and Slack replies, and the log of
  every attempt. One row per (request, kind, target) is what makes a delivery happen once.
- `disabled_endpoints`: webhooks that answered 410 Gone.

All calls are short and made from the event loop's thread; WAL lets readers run beside a writer.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

RequestStatus = Literal["pending", "completed", "failed"]
DeliveryKind = Literal["webhook", "slack_response_url", "slack_message"]
DeliveryStatus = Literal["pending", "delivered", "failed", "disabled"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT,
    channel TEXT NOT NULL,
    reply TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    result TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    request_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stage TEXT NOT NULL,
    data TEXT NOT NULL,
    source_event_id TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (request_id, seq),
    UNIQUE (request_id, source_event_id)
);
CREATE TABLE IF NOT EXISTS deliveries (
    webhook_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    trace TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (request_id, kind, target)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    webhook_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms REAL NOT NULL,
    PRIMARY KEY (webhook_id, attempt)
);
CREATE TABLE IF NOT EXISTS disabled_endpoints (
    tenant_id TEXT NOT NULL,
    url TEXT NOT NULL,
    reason TEXT NOT NULL,
    disabled_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, url)
);
"""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    tenant_id: str
    user_id: str | None
    channel: str
    reply: dict[str, Any]
    status: RequestStatus
    result: dict[str, Any] | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ProgressStep:
    seq: int
    stage: str
    data: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class Delivery:
    webhook_id: str
    request_id: str
    tenant_id: str
    kind: DeliveryKind
    target: str
    event_type: str
    payload: str
    trace: dict[str, str]
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_ms: float


class GatewayStore:
    def __init__(self, path: Path | None, *, retention_s: float = 7 * 24 * 3600) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._prune(time.time() - retention_s)

    def _prune(self, before: float) -> None:
        with self._tx():
            self._db.execute("DELETE FROM progress WHERE at < ?", (before,))
            self._db.execute("DELETE FROM requests WHERE updated_at < ? AND status != 'pending'", (before,))
            self._db.execute(
                "DELETE FROM delivery_attempts WHERE webhook_id IN "
                "(SELECT webhook_id FROM deliveries WHERE updated_at < ? AND status != 'pending')",
                (before,),
            )
            self._db.execute("DELETE FROM deliveries WHERE updated_at < ? AND status != 'pending'", (before,))

    @contextmanager
    def _tx(self) -> Iterator[None]:
        # Autocommit mode (isolation_level=None) so single statements need no ceremony; the
        # few multi-statement changes are made atomic explicitly.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ requests

    def add_request(
        self,
        request_id: str,
        tenant_id: str,
        *,
        user_id: str | None,
        channel: str,
        reply: dict[str, Any] | None = None,
    ) -> bool:
        """Remember a new request; False if its id is taken (a retry racing its first try)."""
        now = time.time()
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO requests (request_id, tenant_id, user_id, channel, reply, status, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (request_id, tenant_id, user_id, channel, json.dumps(reply or {}), now, now),
        ).rowcount
        return bool(inserted == 1)

    def forget_request(self, request_id: str) -> None:
        """Undo `add_request` for a request that never reached Kafka."""
        with self._tx():
            self._db.execute(
                "DELETE FROM requests WHERE request_id = ? AND status = 'pending'", (request_id,)
            )
            self._db.execute("DELETE FROM progress WHERE request_id = ?", (request_id,))

    def get_request(self, request_id: str, tenant_id: str) -> RequestRecord | None:
        """The request if it belongs to `tenant_id`; another tenant's is indistinguishable from none."""
        row = self._db.execute(
            "SELECT * FROM requests WHERE request_id = ? AND tenant_id = ?", (request_id, tenant_id)
        ).fetchone()
        return None if row is None else _request(row)

    def known_request(self, request_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone()
            is not None
        )

    def record_outcome(
        self, request_id: str, tenant_id: str, status: RequestStatus, result: dict[str, Any]
    ) -> RequestRecord | None:
        """Store the outcome of a request; the record if this was its first outcome, else None.

        A request another producer published straight to Kafka gets a row here too, so its
        tenant can read it back.
        """
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO requests (request_id, tenant_id, user_id, channel, status, "
                "created_at, updated_at) VALUES (?, ?, ?, 'kafka', 'pending', ?, ?)",
                (request_id, tenant_id, result.get("user_id"), now, now),
            )
            changed = self._db.execute(
                "UPDATE requests SET status = ?, result = ?, updated_at = ? "
                "WHERE request_id = ? AND tenant_id = ? AND status = 'pending'",
                (status, json.dumps(result), now, request_id, tenant_id),
            ).rowcount
        return self.get_request(request_id, tenant_id) if changed else None

    def count_requests(self, status: RequestStatus | None = None) -> int:
        if status is None:
            return int(self._db.execute("SELECT count(*) FROM requests").fetchone()[0])
        return int(
            self._db.execute("SELECT count(*) FROM requests WHERE status = ?", (status,)).fetchone()[0]
        )

    # ------------------------------------------------------------------ progress

    def add_progress(
        self, request_id: str, stage: str, data: dict[str, Any], *, source_event_id: str | None = None
    ) -> int | None:
        """Append a step; None if the event behind it was recorded already (a redelivery)."""
        with self._tx():
            row = self._db.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM progress WHERE request_id = ?", (request_id,)
            ).fetchone()
            seq = int(row[0])
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO progress (request_id, seq, stage, data, source_event_id, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, seq, stage, json.dumps(data), source_event_id, time.time()),
            ).rowcount
        return seq if inserted else None

    def progress_since(self, request_id: str, after_seq: int) -> list[ProgressStep]:
        rows = self._db.execute(
            "SELECT seq, stage, data, at FROM progress WHERE request_id = ? AND seq > ? ORDER BY seq",
            (request_id, after_seq),
        ).fetchall()
        return [ProgressStep(r["seq"], r["stage"], json.loads(r["data"]), r["at"]) for r in rows]

    # ------------------------------------------------------------------ deliveries

    def enqueue_delivery(
        self,
        *,
        webhook_id: str,
        request_id: str,
        tenant_id: str,
        kind: DeliveryKind,
        target: str,
        event_type: str,
        payload: str,
        trace: dict[str, str] | None = None,
    ) -> bool:
        """Queue one delivery; False if this request already has one to this target.

        `trace` is the W3C context to continue, so the delivery shows up in the request's trace.
        """
        now = time.time()
        return (
            self._db.execute(
                "INSERT OR IGNORE INTO deliveries (webhook_id, request_id, tenant_id, kind, target, "
                "event_type, payload, trace, status, next_attempt_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (
                    webhook_id,
                    request_id,
                    tenant_id,
                    kind,
                    target,
                    event_type,
                    payload,
                    json.dumps(trace or {}),
                    now,
                    now,
                    now,
                ),
            ).rowcount
            == 1
        )

    def due_deliveries(self, now: float, limit: int, exclude: set[str]) -> list[Delivery]:
        rows = self._db.execute(
            "SELECT * FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at LIMIT ?",
            (now, limit + len(exclude)),
        ).fetchall()
        return [d for d in map(_delivery, rows) if d.webhook_id not in exclude][:limit]

    def next_due_at(self) -> float | None:
        row = self._db.execute(
            "SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def record_attempt(
        self,
        delivery: Delivery,
        *,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
        new_status: DeliveryStatus,
        next_attempt_at: float,
    ) -> None:
        now = time.time()
        attempt = delivery.attempts + 1
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO delivery_attempts VALUES (?, ?, ?, ?, ?, ?)",
                (delivery.webhook_id, attempt, now, status_code, error, duration_ms),
            )
            self._db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_status = ?, "
                "last_error = ?, updated_at = ? WHERE webhook_id = ?",
                (new_status, attempt, next_attempt_at, status_code, error, now, delivery.webhook_id),
            )

    def deliveries_for(self, request_id: str) -> list[Delivery]:
        rows = self._db.execute(
            "SELECT * FROM deliveries WHERE request_id = ? ORDER BY created_at, target", (request_id,)
        ).fetchall()
        return [_delivery(r) for r in rows]

    def attempts_for(self, webhook_id: str) -> list[Attempt]:
        rows = self._db.execute(
            "SELECT attempt, at, status_code, error, duration_ms FROM delivery_attempts "
            "WHERE webhook_id = ? ORDER BY attempt",
            (webhook_id,),
        ).fetchall()
        return [Attempt(*tuple(r)) for r in rows]

    def disable_endpoint(self, tenant_id: str, url: str, reason: str) -> None:
        """Stop delivering to `url`: its queued deliveries end as `disabled` too."""
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO disabled_endpoints VALUES (?, ?, ?, ?)", (tenant_id, url, reason, now)
            )
            self._db.execute(
                "UPDATE deliveries SET status = 'disabled', updated_at = ? "
                "WHERE tenant_id = ? AND kind = 'webhook' AND target = ? AND status = 'pending'",
                (now, tenant_id, url),
            )

    def enable_endpoint(self, tenant_id: str, url: str) -> None:
        self._db.execute("DELETE FROM disabled_endpoints WHERE tenant_id = ? AND url = ?", (tenant_id, url))

    def endpoint_disabled(self, tenant_id: str, url: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM disabled_endpoints WHERE tenant_id = ? AND url = ?", (tenant_id, url)
        ).fetchone()
        return row is not None


def _request(row: sqlite3.Row) -> RequestRecord:
    return RequestRecord(
        request_id=row["request_id"],
        tenant_id=row["tenant_id"],
        user_id=row["user_id"],
        channel=row["channel"],
        reply=json.loads(row["reply"] or "{}"),
        status=row["status"],
        result=None if row["result"] is None else json.loads(row["result"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        webhook_id=row["webhook_id"],
        request_id=row["request_id"],
        tenant_id=row["tenant_id"],
        kind=row["kind"],
        target=row["target"],
        event_type=row["event_type"],
        payload=row["payload"],
        trace=json.loads(row["trace"]),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
    )
