"""Site keys on the hot path: which site a public key names, and whether an origin may use it.

Every door that takes a site key (the pixel and the beacon; SDK protocols, whichever way they
carry the key) finds its site through a `SiteKeys` cache (`ingest_api.sources.key_cache`).
"""

import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ingest_api.sources.key_cache import KeyCache
from shared.db.sites import KEY_SHAPE, Site, find_site


async def _active_site(conn: AsyncConnection, key: str) -> Site | None:
    site = await find_site(conn, key)
    usable = site is not None and site.revoked_at is None and site.tenant_active
    return site if usable else None


class SiteKeys(KeyCache[Site]):
    """The active site a key names; None for a malformed, unknown or revoked key, or one
    whose tenant is disabled."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl: float,
        max_entries: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            engine,
            _active_site,
            KEY_SHAPE,
            ttl=ttl,
            max_entries=max_entries,
            timeout=timeout,
            clock=clock,
        )


def origin_allowed(site: Site, origin: bytes | None) -> bool:
    """Requests without `Origin` (image loads, servers) pass; a browser's must be listed."""
    return origin is None or origin.decode("latin-1").lower() in site.origins
