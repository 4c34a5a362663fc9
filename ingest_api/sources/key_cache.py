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
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger(__name__)

# Concurrent lookups of different keys one process makes: PostgreSQL's connections are shared
# with the read routes.
MAX_LOOKUPS = 4


class Revocable(Protocol):
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def tenant_active(self) -> bool: ...


T = TypeVar("T", bound=Revocable)


class KeysUnavailableError(Exception):
    """PostgreSQL did not answer for a key this process has not seen."""


class KeyCache(Generic[T]):
    """A bounded, expiring cache of keys in front of PostgreSQL, one lookup per key at a
    time. A kind of key says its `name` (for the log), its `shape` and how to `lookup` what it
    names, revoked or not; a revoked one, or one whose tenant is disabled, counts as unknown."""

    name: str
    shape: re.Pattern[str]
    lookup: Callable[[AsyncConnection, str], Awaitable[T | None]]

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl: float,
        max_entries: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._ttl, self._max, self._timeout = ttl, max_entries, timeout
        self._clock = clock
        # key → (what it names, or None; when it was loaded)
        self._entries: OrderedDict[str, tuple[T | None, float]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[T | None]] = {}
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)

    async def find(self, key: str | None, *, max_age: float | None = None) -> T | None:
        """What `key` names; None for a malformed, unknown or revoked key. `max_age` (at most
        the cache's TTL) asks for an answer loaded no longer ago than that."""
        if key is None or not self.shape.fullmatch(key):
            return None
        entry = self._entries.get(key)
        age = min(self._ttl, max_age) if max_age is not None else self._ttl
        if entry is not None and self._clock() - entry[1] < age:
            self._entries.move_to_end(key)  # least recently used goes first, not oldest loaded
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
                found = await self.lookup(conn, key)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # PostgreSQL cannot answer now; each door decides what that means for its sender.
            log.warning(f"{self.name}.unavailable", error=str(exc) or type(exc).__name__)
            raise KeysUnavailableError(type(exc).__name__) from None
        if found is not None and (found.revoked_at is not None or not found.tenant_active):
            found = None
        self._entries[key] = (found, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return found
