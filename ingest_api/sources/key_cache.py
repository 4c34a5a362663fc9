"""Public keys on the hot path: site keys and webhook source ids, found through a cache.

A door finds what its key names through `KeyCache.find`, which asks PostgreSQL at most once
per key per `LEADSTREAM_SITE_KEY_CACHE_SECONDS` in each API process: a revoked key keeps working
until its cached entry expires, and no longer. Unknown keys are cached too, and a key not
shaped like one is refused without a query, so a sender of made-up keys cannot turn the doors
into a stream of queries. While PostgreSQL does not answer, a key already seen keeps the answer
it had.
"""

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger(__name__)

# Concurrent lookups of different keys one process makes: PostgreSQL's connections are shared
# with the read routes.
MAX_LOOKUPS = 4

T = TypeVar("T")
# What a key names, or None when it is unknown, revoked or its tenant is disabled.
Loader = Callable[[AsyncConnection, str], Awaitable[T | None]]


class KeysUnavailableError(Exception):
    """PostgreSQL did not answer for a key this process has not seen."""


class KeyCache(Generic[T]):
    """A bounded, expiring cache of keys in front of PostgreSQL, one lookup per key at a
    time."""

    def __init__(
        self,
        engine: AsyncEngine,
        load: Loader[T],
        shape: re.Pattern[str],
        *,
        ttl: float,
        max_entries: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._load_one, self._shape = engine, load, shape
        self._ttl, self._max, self._timeout = ttl, max_entries, timeout
        self._clock = clock
        # key → (what it names, or None; when it was loaded)
        self._entries: OrderedDict[str, tuple[T | None, float]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[T | None]] = {}
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)

    async def find(self, key: str | None, *, max_age: float | None = None) -> T | None:
        """What `key` names; None for a malformed, unknown or revoked key. `max_age` (at most
        the cache's TTL) asks for an answer loaded no longer ago than that."""
        if key is None or not self._shape.fullmatch(key):
            return None
        entry = self._entries.get(key)
        age = min(self._ttl, max_age) if max_age is not None else self._ttl
        if entry is not None and self._clock() - entry[1] < age:
            return entry[0]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.create_task(self._load(key))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        try:
            # Shielded: a caller that goes away must not cancel the others' lookup.
            return await asyncio.shield(loading)
        except KeysUnavailableError:
            if entry is not None:
                return entry[0]  # stale, but the best this process knows
            raise

    async def _load(self, key: str) -> T | None:
        try:
            async with (
                self._lookups,
                asyncio.timeout(self._timeout),
                self._engine.connect() as conn,
            ):
                found = await self._load_one(conn, key)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # PostgreSQL cannot answer now; each door decides what that means for its sender.
            log.warning("keys.unavailable", error=str(exc) or type(exc).__name__)
            raise KeysUnavailableError(type(exc).__name__) from None
        self._entries[key] = (found, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return found
