"""Site keys on the hot path: which site a public key names, and whether an origin may use it.

Every door that takes a site key (the pixel and the beacon; SDK protocols, whichever way they
carry the key) finds its site through a `SiteKeys` cache (`ingest_api.sources.key_cache`).
"""

from ingest_api.sources.key_cache import KeyCache
from shared.db.sites import KEY_SHAPE, Site, find_site


class SiteKeys(KeyCache[Site]):
    """The active site a key names; None for a malformed, unknown or revoked key, or one
    whose tenant is disabled."""

    name = "site_keys"
    shape = KEY_SHAPE
    lookup = staticmethod(find_site)


def origin_allowed(site: Site, origin: bytes | None) -> bool:
    """Requests without `Origin` (image loads, servers) pass; a browser's must be listed."""
    return origin is None or origin.decode("latin-1").lower() in site.origins
