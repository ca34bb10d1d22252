"""The gateway: HTTP API, Slack, outbound webhooks."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


def _slack_secret_from_short_name() -> SecretStr | None:
    # Slack's own docs and the issue name the variable LORASWARM_SLACK_SIGNING_SECRET; the nested
    # LORASWARM_GATEWAY__SLACK_SIGNING_SECRET, when set, wins over it.
    value = os.environ.get("LORASWARM_SLACK_SIGNING_SECRET")
    return SecretStr(value) if value else None


class GatewaySettings(BaseModel):
    """Read from `LORASWARM_GATEWAY__<FIELD>`."""

    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port when `--port` is 0.")
    access_file: Path | None = Field(
        default=None,
        description=(
            "YAML file of each tenant's API key hashes, rate limit, webhooks and Slack bot token "
            "(default: <data_dir>/gateway/access.yaml). Re-read when it changes. Slack workspaces "
            "map to tenants in the tenant configuration (LORASWARM_ORCHESTRATION__TENANTS_DIR)."
        ),
    )
    admin_api_key: SecretStr | None = Field(
        default=None,
        description=(
            "Key of the admin HTTP API (`/v1/admin/tenants`: create tenants, users and API keys, "
            "delete tenants), sent as `Authorization: Bearer <key>`. Unset: the admin API answers 403."
        ),
    )
    max_request_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest body of a recommendation request or Slack call; bigger ones get 413.",
    )
    max_documents_bytes: int = Field(
        default=900 * 1024,
        ge=1024,
        description=(
            "Largest body of `POST /v1/documents`; bigger ones get 413. The event built from it must "
            "also fit LORASWARM_KAFKA__MAX_MESSAGE_BYTES."
        ),
    )
    rate_per_s: float = Field(
        default=20.0, gt=0, description="Requests per second a tenant may make (tenants may override)."
    )
    rate_burst: int = Field(
        default=40, ge=1, description="Requests a tenant may make at once above its rate (token bucket)."
    )
    default_deadline_s: float = Field(
        default=60.0, gt=0, le=3600, description="Deadline of a request that does not name one."
    )
    publish_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Longest wait for Kafka to confirm a request; past it the client gets 503.",
    )
    slack_signing_secret: SecretStr | None = Field(
        default_factory=_slack_secret_from_short_name,
        description=(
            "The Slack app's signing secret. Also read from LORASWARM_SLACK_SIGNING_SECRET. "
            "Without it the Slack routes answer 503."
        ),
    )
    slack_tolerance_s: int = Field(
        default=300, ge=1, description="How far a Slack request's timestamp may be from now."
    )
    slack_response_url_prefixes: list[str] = Field(
        default_factory=lambda: ["https://hooks.slack.com/"],
        description="A Slack `response_url` must start with one of these (no requests elsewhere).",
    )
    slack_api_url: str = Field(
        default="https://slack.com/api/", description="Slack Web API base (chat.postMessage replies)."
    )
    webhook_timeout_s: float = Field(
        default=15.0, gt=0, description="Timeout of one webhook or response_url delivery attempt."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Attempts of one delivery before it is marked failed."
    )
    webhook_backoff_s: float = Field(
        default=2.0, ge=0, description="Base of the exponential back-off between attempts (full jitter)."
    )
    webhook_backoff_max_s: float = Field(
        default=600.0, ge=0, description="Longest pause between two attempts of one delivery."
    )
    webhook_concurrency: int = Field(default=16, ge=1, description="Deliveries in flight at once.")
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, description="Keep-alive comment interval of the progress stream."
    )
