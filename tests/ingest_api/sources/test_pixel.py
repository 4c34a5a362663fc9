"""The pixel through the running stack: events land in PostgreSQL through the real worker, and
every answer is the same GIF, whatever was refused."""

import base64
import re

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest_api.sources.pixel import GIF
from shared.db.tables import people_t
from tests.support.processes import WorkerProcess
from tests.support.sites import ORIGIN, make_site, stored_events
from tests.support.tenants import Tenant

PIXEL = "/pixel.gif"
BEACON = "/beacon"
# The well-known transparent GIF, as it is usually quoted.
TRANSPARENT_GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")


def assert_gif(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.content == TRANSPARENT_GIF and len(response.content) == 43
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["cache-control"] == "no-store"


async def refused(http: httpx.AsyncClient, reason: str) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(rf'^leadstream_pixel_refused_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_gif_is_the_43_byte_transparent_one() -> None:
    assert GIF == TRANSPARENT_GIF


async def test_page_views_then_a_beacon_identify_make_one_person(
    api_url: str, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id)
    browser = {"User-Agent": "Mozilla/5.0 (test)", "Referer": "https://agent.example/listing/1"}
    async with httpx.AsyncClient(base_url=api_url, headers=browser) as http:
        first = await http.get(
            PIXEL, params={"k": site.key, "v": "visitor-7", "pid": "1", "ti": "Listing 1"}
        )
        second = await http.get(
            PIXEL,
            params={
                "k": site.key,
                "v": "visitor-7",
                "u": "https://agent.example/listing/2",
                "pid": "2",
                "d": "1200",
                "m.campaign": "spring",
            },
        )
        for response in (first, second):
            assert_gif(response)
        views = await stored_events(engine, tenant.id, 2)
        identify = await http.post(
            f"{BEACON}?k={site.key}",
            content=b'{"type":"identify","visitorId":"visitor-7",'
            b'"person":{"emails":["Buyer@Example.com"],"firstName":"Ada"}}',
            headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": ORIGIN},
        )
        assert identify.status_code == 204, identify.text
        rows = await stored_events(engine, tenant.id, 3)

    assert [row.page_url for row in views] == [
        "https://agent.example/listing/1",  # from Referer, which the query did not override
        "https://agent.example/listing/2",
    ]
    by_property = {row.property["id"]: row for row in views}
    assert by_property["1"].page_title == "Listing 1"
    assert by_property["2"].page_duration == 1200
    assert by_property["2"]._mapping["metadata"] == {"campaign": "spring"}
    for row in views:
        assert row.event_type == "page_view"
        assert row.user_agent == "Mozilla/5.0 (test)"
        assert row.ip_address == "127.0.0.0"  # the default policy truncates the last octet

    async def person_of_every_event() -> set[object]:
        return {row.person_id for row in await stored_events(engine, tenant.id, 3)}

    # The identify attaches the visitor's earlier views to the person it names.
    people = await person_of_every_event()
    assert len(people) == 1 and None not in people, rows
    async with engine.connect() as conn:
        count = (
            await conn.execute(
                select(func.count()).select_from(people_t).where(people_t.c.tenant_id == tenant.id)
            )
        ).scalar_one()
    assert count == 1


async def test_garbage_unknown_keys_and_bad_input_still_get_the_gif(
    api_url: str, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id)
    async with httpx.AsyncClient(base_url=api_url) as http:
        before = {
            reason: await refused(http, reason)
            for reason in ("unknown_key", "invalid", "too_long", "too_many_params", "origin")
        }
        attempts = [
            ("unknown_key", f"{PIXEL}"),
            ("unknown_key", f"{PIXEL}?k=nope&v=visitor"),
            ("unknown_key", f"{PIXEL}?k=pk_{'A' * 32}&v=visitor"),  # well-formed, unknown
            ("unknown_key", f"{PIXEL}?%ff%fe=%00&k"),
            ("invalid", f"{PIXEL}?k={site.key}"),  # nobody: no visitor, no person
            ("invalid", f"{PIXEL}?k={site.key}&v=undefined"),
            ("invalid", f"{PIXEL}?k={site.key}&v=x&e=not-an-email"),
            ("invalid", f"{PIXEL}?k={site.key}&v=x&u=javascript:alert(1)"),
            ("invalid", f"{PIXEL}?k={site.key}&v=x&d=-5&ts=yesterday"),
            ("too_long", f"{PIXEL}?k={site.key}&v=x&ti={'a' * 9000}"),
            ("too_many_params", f"{PIXEL}?k={site.key}&v=x&" + "&".join(["a=1"] * 70)),
        ]
        for _, url in attempts:
            assert_gif(await http.get(url))
        assert_gif(
            await http.get(f"{PIXEL}?k={site.key}&v=x", headers={"Origin": "https://evil.example"})
        )
        head = await http.head(f"{PIXEL}?k={site.key}&v=head")
        assert head.status_code == 200 and head.headers["content-type"] == "image/gif"
        wrong_method = await http.post(f"{PIXEL}?k={site.key}&v=x")
        assert wrong_method.status_code == 405

        for reason in before:
            expected = sum(1 for r, _ in attempts if r == reason) + (reason == "origin")
            assert await refused(http, reason) - before[reason] == expected, reason

        # A good request after them all is the only event stored.
        assert_gif(await http.get(PIXEL, params={"k": site.key, "v": "sentinel"}))
    rows = await stored_events(engine, tenant.id, 1)
    assert [row.visitor_id for row in rows] == ["sentinel"]


async def test_over_the_rate_limit_the_pixel_still_answers_its_gif(
    api_url: str, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id, rate=0.001, burst=3)
    async with httpx.AsyncClient(base_url=api_url) as http:
        before = await refused(http, "rate_limited")
        for i in range(6):
            assert_gif(await http.get(PIXEL, params={"k": site.key, "v": f"visitor-{i}"}))
        assert await refused(http, "rate_limited") - before == 3
    rows = await stored_events(engine, tenant.id, 3)
    assert sorted(row.visitor_id for row in rows) == ["visitor-0", "visitor-1", "visitor-2"]
