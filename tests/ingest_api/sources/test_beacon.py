"""The beacon through the running stack: CORS per origin, limits, validation, rate limits."""

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.http import accepted_count
from tests.support.processes import WorkerProcess
from tests.support.sites import ORIGIN, make_site, stored_events
from tests.support.tenants import Tenant

BEACON = "/beacon"
PLAIN = {"Content-Type": "text/plain;charset=UTF-8"}
VIEW = b'{"type":"page_view","visitorId":"visitor-1","pageUrl":"https://agent.example/l/1"}'


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        yield client


async def test_allowed_origins_get_cors_and_others_are_refused_with_nothing_stored(
    http: httpx.AsyncClient, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id, origins=[ORIGIN, "http://localhost:8080"])
    url = f"{BEACON}?k={site.key}"
    preflight = await http.options(
        url,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Content-Type" in preflight.headers["access-control-allow-headers"]
    assert preflight.headers["vary"] == "Origin"

    evil = {"Origin": "https://evil.example"}
    refused_preflight = await http.options(url, headers=evil)
    assert refused_preflight.status_code == 403
    assert "access-control-allow-origin" not in refused_preflight.headers

    before = await accepted_count(http)
    refused = await http.post(url, content=VIEW, headers={**PLAIN, **evil})
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert "access-control-allow-origin" not in refused.headers
    assert await accepted_count(http) == before

    allowed = await http.post(url, content=VIEW, headers={**PLAIN, "Origin": ORIGIN})
    assert allowed.status_code == 204, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["vary"] == "Origin"
    assert allowed.content == b""
    # An origin is matched as browsers write it (lower case, no default port).
    other = await http.post(
        url,
        content=VIEW.replace(b"visitor-1", b"visitor-2"),
        headers={"Content-Type": "application/json", "Origin": "http://localhost:8080"},
    )
    assert other.status_code == 204
    # No Origin: a server or a tool, accepted (and rate-limited).
    server = await http.post(url, content=VIEW.replace(b"visitor-1", b"visitor-3"))
    assert server.status_code == 204
    assert "access-control-allow-origin" not in server.headers
    rows = await stored_events(engine, tenant.id, 3)
    assert sorted(row.visitor_id for row in rows) == ["visitor-1", "visitor-2", "visitor-3"]
    assert {row.ip_address for row in rows} == {"127.0.0.0"}


async def test_keys_bodies_and_events_are_checked(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id)
    url = f"{BEACON}?k={site.key}"
    for key in ("", "?k=nope", f"?k=pk_{'B' * 32}"):
        unknown = await http.post(f"{BEACON}{key}", content=VIEW, headers=PLAIN)
        assert unknown.status_code == 401, key
        assert unknown.json()["type"].endswith("/unauthorized")

    too_large = await http.post(url, content=b"x" * (64 * 1024 + 1), headers=PLAIN)
    assert too_large.status_code == 413

    invalid = await http.post(
        url,
        content=b'{"type":"page_view","visitorId":"v","pageUrl":"javascript:alert(1)"}',
        headers={**PLAIN, "Origin": ORIGIN},
    )
    assert invalid.status_code == 422
    assert invalid.headers["access-control-allow-origin"] == ORIGIN  # readable by the page
    assert invalid.json()["errors"][0]["loc"] == ["body", "pageUrl"]

    malformed = await http.post(url, content=b"{not json", headers=PLAIN)
    assert malformed.status_code == 400

    form = await http.post(
        url, content=VIEW, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415

    wrong_method = await http.get(url)
    assert wrong_method.status_code == 405


async def test_the_request_after_the_burst_gets_429_with_retry_after(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id, rate=0.01, burst=3)
    url = f"{BEACON}?k={site.key}"
    for i in range(3):
        body = VIEW.replace(b"visitor-1", f"visitor-{i}".encode())
        assert (await http.post(url, content=body, headers=PLAIN)).status_code == 204
    over = await http.post(url, content=VIEW, headers={**PLAIN, "Origin": ORIGIN})
    assert over.status_code == 429
    assert over.json()["type"].endswith("/rate-limited")
    assert 1 <= int(over.headers["retry-after"]) <= 100  # one token at 0.01/s
    assert over.headers["ratelimit-limit"] == "3"
    assert over.headers["ratelimit-remaining"] == "0"
    assert int(over.headers["ratelimit-reset"]) > 0
    assert over.headers["access-control-allow-origin"] == ORIGIN
    assert "Retry-After" in over.headers["access-control-expose-headers"]
