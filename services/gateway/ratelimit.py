"""Per-tenant rate limits: one token bucket per tenant, in this process.

A bucket holds up to `burst` tokens and refills at `per_s`; a request takes one token or is
refused with how long until the next one is there (the `Retry-After` of the 429). Several
gateway replicas each enforce the limit on their own share of the traffic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    per_s: float
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take a token: 0.0 if granted, else the seconds until one is available."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.per_s


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, tenant: str, per_s: float, burst: int) -> int:
        """0 if `tenant` may go on, else the whole seconds to put in `Retry-After` (at least 1)."""
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None or (bucket.per_s, bucket.burst) != (per_s, burst):
            # New tenant, or its limit was changed in the tenants file: start from a full bucket.
            bucket = self._buckets[tenant] = TokenBucket(per_s, burst, float(burst), now)
        wait = bucket.take(now)
        return 0 if wait == 0.0 else max(1, math.ceil(wait))
