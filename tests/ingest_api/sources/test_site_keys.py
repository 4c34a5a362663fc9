"""The site-key cache on the real PostgreSQL: found once, revoked (or its tenant disabled)
within the TTL, malformed keys never queried, the last answer kept while PostgreSQL is away."""

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest_api.sources.key_cache import KeysUnavailableError
from ingest_api.sources.site_keys import SiteKeys, origin_allowed
from ops.processes import free_port
from shared.db.engine import create_engine
from shared.db.sites import normalize_origin, revoke_site
from shared.db.tenants import set_tenant_active
from shared.settings import Settings
from tests.support.sites import ORIGIN, make_site
from tests.support.tenants import Tenant


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_revoked_key_stops_working_once_its_entry_expires(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id)
    clock = Clock()
    keys = SiteKeys(engine, ttl=30, max_entries=10, timeout=5, clock=clock)
    found = await keys.find(site.key)
    assert found is not None and found.tenant_id == tenant.id
    assert found.origins == {ORIGIN} and found.ip_policy == "truncate"
    async with engine.begin() as conn:
        assert await revoke_site(conn, site.key)
    clock.now += 29
    assert await keys.find(site.key) == found  # cached: documented as up to the TTL
    clock.now += 2
    assert await keys.find(site.key) is None


async def test_a_disabled_tenants_key_stops_working_once_its_entry_expires(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id)
    clock = Clock()
    keys = SiteKeys(engine, ttl=30, max_entries=10, timeout=5, clock=clock)
    assert await keys.find(site.key) is not None
    async with engine.begin() as conn:
        assert await set_tenant_active(conn, name=tenant.name, active=False) == tenant.id
    clock.now += 31
    assert await keys.find(site.key) is None


async def test_malformed_keys_cost_no_query_and_known_ones_survive_an_outage(
    engine: AsyncEngine, tenant: Tenant, settings: Settings
) -> None:
    site = await make_site(engine, tenant.id)
    unreachable = create_engine(
        settings.model_copy(
            update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"}
        )
    )
    clock = Clock()
    keys = SiteKeys(unreachable, ttl=30, max_entries=10, timeout=2, clock=clock)
    # Refused by their shape: were they looked up, the unreachable database would raise.
    for key in (None, "", "nope", "pk_short", f"pk_{'!' * 32}", f"{site.key}x"):
        assert await keys.find(key) is None
    with pytest.raises(KeysUnavailableError):
        await keys.find(site.key)
    # Seen once while PostgreSQL answered, the key keeps that answer while it does not.
    keys._engine = engine
    assert await keys.find(site.key) is not None
    keys._engine = unreachable
    clock.now += 60
    assert await keys.find(site.key) is not None
    await unreachable.dispose()


def test_origins_are_matched_as_browsers_write_them() -> None:
    assert normalize_origin("HTTPS://Agent.Example:443/") == "https://agent.example"
    assert normalize_origin("http://localhost:8080") == "http://localhost:8080"
    for bad in ("agent.example", "ftp://agent.example", "https://agent.example/path", "https://"):
        with pytest.raises(ValueError, match="not an origin"):
            normalize_origin(bad)


async def test_origin_check(engine: AsyncEngine, tenant: Tenant) -> None:
    site = await make_site(engine, tenant.id, origins=["https://Agent.Example"])
    assert origin_allowed(site, None)  # image loads and servers send none
    assert origin_allowed(site, b"https://agent.example")
    assert not origin_allowed(site, b"https://agent.example.evil")
    assert not origin_allowed(site, b"null")
