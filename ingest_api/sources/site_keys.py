"""Site keys on the hot path: which site a public key names, and whether an origin may use it.

Every door that takes a site key (the pixel and the beacon; SDK protocols, whichever way they
carry the key) finds its site through `SiteKeys.find`, which asks PostgreSQL at most once per
key per `LEADSTREAM_SITE_KEY_CACHE_SECONDS` in each API process: a revoked key keeps working
until its cached entry expires, and no longer. Unknown keys are cached too, and a key not
shaped like one is refused without a query, so a sender of made-up keys cannot turn the doors
into a stream of queries. While PostgreSQL does not answer, a key already seen keeps the answer
it had.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.sites import KEY_SHAPE, Site, find_site

log = structlog.get_logger(__name__)

# Concurrent lookups of different keys one process makes: PostgreSQL's connections are shared
# with the read routes.
MAX_LOOKUPS = 4


class SiteKeysUnavailableError(Exception):
    """PostgreSQL did not answer for a key this process has not seen."""


class SiteKeys:
    """A bounded, expiring cache of site keys in front of PostgreSQL, one lookup per key at a
    time."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl: float,
        max_entries: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._ttl, self._max, self._timeout = engine, ttl, max_entries, timeout
        self._clock = clock
        # key → (the active site, or None for unknown or revoked; when the entry expires)
        self._entries: OrderedDict[str, tuple[Site | None, float]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[Site | None]] = {}
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)

    async def find(self, key: str | None) -> Site | None:
        """The active site `key` names; None for a malformed, unknown or revoked key, or one whose
        tenant is disabled."""
        if key is None or not KEY_SHAPE.fullmatch(key):
            return None
        entry = self._entries.get(key)
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.create_task(self._load(key))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        try:
            # Shielded: a caller that goes away must not cancel the others' lookup.
            return await asyncio.shield(loading)
        except SiteKeysUnavailableError:
            if entry is not None:
                return entry[0]  # stale, but the best this process knows
            raise

    async def _load(self, key: str) -> Site | None:
        try:
            async with (
                self._lookups,
                asyncio.timeout(self._timeout),
                self._engine.connect() as conn,
            ):
                site = await find_site(conn, key)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # PostgreSQL cannot answer now; each door decides what that means for its sender.
            log.warning("site_keys.unavailable", error=str(exc) or type(exc).__name__)
            raise SiteKeysUnavailableError(type(exc).__name__) from None
        usable = site is not None and site.revoked_at is None and site.tenant_active
        active = site if usable else None
        self._entries[key] = (active, self._clock() + self._ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return active


def origin_allowed(site: Site, origin: bytes | None) -> bool:
    """Requests without `Origin` (image loads, servers) pass; a browser's must be listed."""
    return origin is None or origin.decode("latin-1").lower() in site.origins
