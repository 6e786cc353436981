"""Per-API-key request limits: a fixed one-minute window.

Fixed windows are crude (a client can burst 2x across a boundary) but need one counter per key and
no clock coordination, which is all a "stop one runaway script from starving everyone" limit needs.
By default the counters live in the API process (no round trip on the hot path; with W processes a
key gets up to W times the limit). ``rate_limit_backend=redis`` keeps them in the Redis broker,
shared by every process, at one Redis round trip per request; if Redis is briefly unreachable we let
the request through: rate limiting protects capacity, it must not become an outage of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Protocol

from service.settings import Settings

# Kept hand-written rather than `limits`/`slowapi` (issue 17 item 7): the whole limiter is one counter
# per key and window in two backends (~60 lines), it must fail open when Redis is unreachable (above)
# and answer Retry-After from our own ApiError; slowapi decorates routes and keys by request, not by our
# authenticated key id, and `limits` would add a dependency for the same INCR + EXPIRE.
WINDOW_S = 60
log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    def hit(self, key_id: int) -> int | None:
        """Count a request; ``None`` if allowed, else the seconds until the window resets."""
        ...


class NoRateLimit:
    def hit(self, key_id: int) -> int | None:
        return None


class MemoryRateLimiter:
    """Counters in this process (the embedded single-process deployment, and tests)."""

    def __init__(self, limit_per_minute: int) -> None:
        self.limit = limit_per_minute
        self._lock = threading.Lock()
        self._counts: dict[int, tuple[int, int]] = {}

    def hit(self, key_id: int) -> int | None:
        now = time.time()
        window = int(now // WINDOW_S)
        with self._lock:
            seen_window, count = self._counts.get(key_id, (window, 0))
            if seen_window != window:
                count = 0
                if len(self._counts) > 100_000:  # forget idle keys from old windows
                    self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            count += 1
            self._counts[key_id] = (window, count)
        if count > self.limit:
            return max(1, int((window + 1) * WINDOW_S - now))
        return None


class RedisRateLimiter:
    """Counters in Redis, shared by every API process: ``INCR hydra:rl:<key>:<window>``."""

    def __init__(self, limit_per_minute: int, redis_url: str) -> None:
        import redis

        self.limit = limit_per_minute
        self.client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def hit(self, key_id: int) -> int | None:
        now = time.time()
        window = int(now // WINDOW_S)
        name = f"hydra:rl:{key_id}:{window}"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(name)
            pipe.expire(name, WINDOW_S + 1)
            count = int(pipe.execute()[0])
        except Exception as exc:  # noqa: BLE001 - fail open, see module docstring
            log.warning("rate limiter unavailable, allowing request: %s", exc)
            return None
        if count > self.limit:
            return max(1, int((window + 1) * WINDOW_S - now))
        return None


@lru_cache(maxsize=8)
def build_rate_limiter(settings: Settings) -> RateLimiter:
    """The limiter the settings call for (one per settings object, so counters persist)."""
    if settings.rate_limit_per_minute <= 0:
        return NoRateLimit()
    if settings.rate_limit_backend == "redis":
        if not settings.broker_url.startswith(("redis://", "rediss://")):
            raise ValueError("rate_limit_backend=redis needs a redis:// broker_url")
        return RedisRateLimiter(settings.rate_limit_per_minute, settings.broker_url)
    return MemoryRateLimiter(settings.rate_limit_per_minute)
