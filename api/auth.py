"""A short-lived, in-process memory of API keys already verified.

Why: the key lookup is a database round trip on *every* request, which for the endpoints clients
poll (job status) doubled the cost of a request. Remembering a verified key for
``auth_cache_seconds`` removes it. The price, stated plainly: a revoked key keeps working for at most
that long in a process that had just verified it. Only successes are remembered, so a new key works
at once and a wrong key always reaches the database. Entries are keyed by the key's sha256, so the
cache never holds a usable secret.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache

from service.db.keys import Principal, hash_key
from service.settings import Settings

MAX_ENTRIES = 10_000


class AuthCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> Principal | None:
        if self.ttl_s <= 0:
            return None
        entry = self._entries.get(hash_key(token))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, token: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
            self._entries[hash_key(token)] = (now + self.ttl_s, principal)


@lru_cache(maxsize=8)
def build_auth_cache(settings: Settings) -> AuthCache:
    return AuthCache(settings.auth_cache_seconds)
