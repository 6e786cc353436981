"""Open event streams (``GET /v1/jobs/{id}/events`` as SSE): how many a key may hold, and the key
check that keeps running while one is open.

Why: a stream is one long request. Authentication at its start is not enough, since a key revoked
afterwards would keep reading its job's events until the job ends, while the settings promise a
revoked key stops working within ``auth_cache_seconds``. And each stream polls the database twice a
second: 1,000 streams from one key slowed every status read 4x.

- ``StreamSlots``: per-process counters, ``max_streams_per_key`` per key (429 naming the limit) and
  ``max_streams_total`` for all keys (503), taken when the stream is accepted and given back when its
  response ends however it ends (``SlotStreamingResponse``). Per API process, like the in-memory rate
  limiter: with W uvicorn processes a key may hold up to W times the limit.
- ``key_check_interval``: an open stream re-reads its key from the database (not the auth cache, whose
  entry could be as old as the promise itself) at least every ``auth_cache_seconds / 2``, so together
  with one poll interval it is closed within the promise; a revoked key's stream ends with an
  ``error`` event (``unauthorized``) and the connection is closed.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.errors import ApiError, ErrorCode
from service.settings import Settings

MIN_KEY_CHECK_S = 0.5


def key_check_interval(settings: Settings, poll_s: float) -> float:
    """Seconds between two key checks of an open stream (``auth_cache_seconds=0``: every poll)."""
    return max(poll_s, min(settings.auth_cache_seconds / 2, settings.auth_cache_seconds - poll_s), MIN_KEY_CHECK_S)


class StreamSlots:
    """Counts open streams per API key and in total; ``acquire`` refuses beyond the limits."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key, self.total = per_key, total
        self._open: dict[int, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def acquire(self, key_id: int) -> None:
        with self._lock:
            held = self._open.get(key_id, 0)
            if held >= self.per_key:
                raise ApiError(
                    ErrorCode.RATE_LIMITED,
                    f"too many open event streams for this API key: the limit is {self.per_key} "
                    "(max_streams_per_key); close one, or poll GET /v1/jobs/{id}/events?after=N instead",
                    headers={"Retry-After": "5"},
                )
            if self._total >= self.total:
                raise ApiError(
                    ErrorCode.SERVICE_UNAVAILABLE,
                    f"the service holds its limit of {self.total} open event streams (max_streams_total); "
                    "retry later, or poll GET /v1/jobs/{id}/events?after=N instead",
                    headers={"Retry-After": "5"},
                )
            self._open[key_id] = held + 1
            self._total += 1

    def release(self, key_id: int) -> None:
        with self._lock:
            held = self._open.get(key_id, 0) - 1
            if held > 0:
                self._open[key_id] = held
            else:
                self._open.pop(key_id, None)
            self._total = max(0, self._total - 1)

    def held(self, key_id: int | None = None) -> int:
        with self._lock:
            return self._total if key_id is None else self._open.get(key_id, 0)


@lru_cache(maxsize=8)
def build_stream_slots(settings: Settings) -> StreamSlots:
    """One counter per settings object (i.e. per app), like the rate limiter."""
    return StreamSlots(settings.max_streams_per_key, settings.max_streams_total)


class SlotStreamingResponse(StreamingResponse):
    """A streaming response that gives its stream slot back when it ends: finished, failed, or the
    client gone (a generator that never started has no ``finally`` of its own to do it)."""

    def __init__(self, *args: object, slots: StreamSlots, key_id: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._slots, self._key_id = slots, key_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.release(self._key_id)
