"""The gateway's parts and their lifetime: bus, store, access rules, tenant configuration, rate
limiter, progress board, delivery dispatcher. `async with Gateway(settings):` starts and stops
them in order; the HTTP app (app.py) is built on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Self

import httpx

from loraswarm.services.gateway.access import AccessDirectory, access_file
from loraswarm.services.gateway.deliveries import DeliveryDispatcher
from loraswarm.services.gateway.progress import ProgressBoard
from loraswarm.services.gateway.ratelimit import RateLimiter
from loraswarm.services.gateway.store import GatewayStore
from loraswarm.shared.bus import EventBus
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.settings import Settings
from loraswarm.shared.tenants import TenantConfig, TenantConfigError, TenantRegistry

SERVICE = "gateway"

log = logging.getLogger("loraswarm.gateway")


class Gateway:
    def __init__(self, settings: Settings, *, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.config = settings.gateway
        self.bus = EventBus(settings, service=SERVICE)
        self.store = GatewayStore(settings.data_dir / "gateway" / "gateway.sqlite")
        self.access = AccessDirectory(access_file(settings))
        self.tenants = TenantRegistry(settings.orchestration.tenants_dir)
        self.limiter = RateLimiter()
        self.board = ProgressBoard()
        # Redirects are not followed: a webhook that moves must be reconfigured, not chased.
        self.http = http or httpx.AsyncClient(follow_redirects=False)
        self.dispatcher = DeliveryDispatcher(self.store, self.access, self.config, self.http)
        self._dispatching: asyncio.Task[None] | None = None

    async def publish(self, event: Envelope) -> None:
        """Publish a request's event; raises if the bus does not confirm it in time."""
        await asyncio.wait_for(self.bus.publish(event), timeout=self.config.publish_timeout_s)

    def tenant_of_slack_team(self, team_id: str) -> TenantConfig | None:
        """The tenant whose configuration lists this Slack workspace (tenant files are hot-reloaded)."""
        for path in sorted(self.tenants.folder.glob("*.yaml")):
            try:
                config = self.tenants.get(path.stem)
            except TenantConfigError:
                # One broken tenant file must not take every other workspace down.
                log.exception("skipping tenant file %s", path)
                continue
            if config is not None and team_id in config.slack_team_ids:
                return config
        return None

    def rate_limit(self, tenant: str) -> int:
        """0 if `tenant` may make a request now, else the seconds for `Retry-After`."""
        access = self.access.get(tenant)
        limit = access.rate_limit if access else None
        per_s = limit.per_s if limit else self.config.rate_per_s
        burst = limit.burst if limit else self.config.rate_burst
        return self.limiter.check(tenant, per_s, burst)

    async def start(self) -> None:
        await self.bus.start()
        self._dispatching = asyncio.create_task(self.dispatcher.run(), name="gateway-deliveries")

    async def stop(self) -> None:
        if self._dispatching is not None:
            self._dispatching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatching
            self._dispatching = None
        await self.bus.stop()
        await self.http.aclose()
        self.store.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
