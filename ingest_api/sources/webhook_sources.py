"""Webhook sources on the hot path: the active source an id names, through the key cache."""

from ingest_api.sources.key_cache import KeyCache
from shared.db.sources import ID_SHAPE, Source, find_source


class WebhookSources(KeyCache[Source]):
    """The active source an id names; None for a malformed, unknown or revoked id, or one
    whose tenant is disabled."""

    name = "webhook_sources"
    shape = ID_SHAPE
    lookup = staticmethod(find_source)
