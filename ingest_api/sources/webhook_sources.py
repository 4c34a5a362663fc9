"""Webhook sources on the hot path: the active source an id names, through the key cache."""

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ingest_api.sources.key_cache import KeyCache
from shared.db.sources import ID_SHAPE, Source, find_source


async def _active_source(conn: AsyncConnection, source_id: str) -> Source | None:
    source = await find_source(conn, source_id)
    usable = source is not None and source.revoked_at is None and source.tenant_active
    return source if usable else None


class WebhookSources(KeyCache[Source]):
    """The active source an id names; None for a malformed, unknown or revoked id, or one
    whose tenant is disabled."""

    def __init__(
        self, engine: AsyncEngine, *, ttl: float, max_entries: int, timeout: float
    ) -> None:
        super().__init__(
            engine, _active_source, ID_SHAPE, ttl=ttl, max_entries=max_entries, timeout=timeout
        )
