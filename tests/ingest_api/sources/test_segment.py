"""Segment's HTTP Tracking API through the running stack, with the real Segment and RudderStack
Python clients: mapping, people, dedupe by messageId, keys, gzip, per-event isolation."""

import asyncio
import base64
import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.tables import person_emails_t, person_external_ids_t
from tests.support.processes import WorkerProcess
from tests.support.sites import make_site, stored_events
from tests.support.tenants import Tenant


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        yield client


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(message_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Saved Property",
        "messageId": message_id,
        "anonymousId": "anon-9",
        "timestamp": "2026-11-30T12:00:00.000Z",
        **fields,
    }


def meta(row: Row[Any]) -> dict[str, Any]:
    stored: dict[str, Any] = row._mapping["metadata"]
    return stored


async def people(engine: AsyncEngine, tenant: Tenant) -> tuple[list[Row[Any]], list[Row[Any]]]:
    async with engine.connect() as conn:
        external = list(
            await conn.execute(
                select(person_external_ids_t).where(person_external_ids_t.c.tenant_id == tenant.id)
            )
        )
        emails = list(
            await conn.execute(
                select(person_emails_t).where(person_emails_t.c.tenant_id == tenant.id)
            )
        )
    return external, emails


async def test_the_segment_client_s_events_land_mapped_with_one_person(
    api_url: str, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id, ip_policy="keep")
    errors: list[Exception] = []
    client = SegmentClient(
        site.key,
        host=api_url,
        sync_mode=True,
        max_retries=0,
        on_error=lambda error, _batch: errors.append(error),
    )
    listing = "https://agent.example/listings/42"

    def send() -> None:
        client.identify("user-1", {"email": "Ann@Example.com", "firstName": "Ann"})
        client.page(anonymous_id="anon-1", name="Home", properties={"url": listing})
        client.track(
            "user-1",
            "Viewed Property",
            {"price": 450000, "beds": 3},
            context={"ip": "203.0.113.7", "userAgent": "Mozilla/5.0 test"},
        )

    await asyncio.to_thread(send)
    assert errors == []
    rows = await stored_events(engine, tenant.id, 3)
    by_type = {row.event_type: row for row in rows}
    assert sorted(by_type) == ["identify", "page_view", "property_view"]
    page, viewed, identify = by_type["page_view"], by_type["property_view"], by_type["identify"]
    assert page.visitor_id == "anon-1" and page.page_url == listing and page.person_id is None
    assert viewed.person_id == identify.person_id is not None
    assert viewed.ip_address == "203.0.113.7" and viewed.user_agent == "Mozilla/5.0 test"
    assert meta(viewed)["properties"] == {"price": 450000, "beds": 3}
    assert meta(viewed)["event"] == "Viewed Property" and meta(viewed)["messageId"]
    assert viewed.sent_at is not None and viewed.source == "segment"
    external, emails = await people(engine, tenant)
    assert [(r.value, r.person_id) for r in external] == [("user-1", identify.person_id)]
    assert [(r.value, r.person_id) for r in emails] == [("ann@example.com", identify.person_id)]


async def test_the_rudderstack_client_s_gzipped_events_land(
    api_url: str, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id)
    errors: list[Exception] = []
    client = RudderClient(
        site.key,
        host=api_url,
        sync_mode=True,
        max_retries=0,
        on_error=lambda error, _batch: errors.append(error),
    )
    assert client.gzip  # its default: the body arrives gzipped

    def send() -> None:
        client.track("user-7", "Form Submitted", {"form": "contact"}, anonymous_id="anon-7")
        client.alias(previous_id="anon-old", user_id="user-7")

    await asyncio.to_thread(send)
    assert errors == []
    rows = await stored_events(engine, tenant.id, 2)
    by_type = {row.event_type: row for row in rows}
    assert sorted(by_type) == ["alias", "form_submission"]
    assert by_type["alias"].visitor_id == "anon-old"
    assert by_type["alias"].person_id == by_type["form_submission"].person_id is not None
    assert meta(by_type["form_submission"])["channel"] == "server"


async def test_a_resent_batch_stores_nothing_twice(
    http: httpx.AsyncClient, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id)
    batch = orjson.dumps({"batch": [track("m-1"), track("m-2", event="Property Search")]})
    for _ in range(3):  # a client's retries after lost answers
        answered = await http.post("/v1/batch", content=batch, headers=basic(site.key))
        assert answered.status_code == 200 and answered.json() == {}
    rows = await stored_events(engine, tenant.id, 2)
    # Resent once its events are stored, then a new message: once that one is stored, the
    # resend was handled too (one queue, in order), and stored nothing.
    assert (await http.post("/v1/batch", content=batch, headers=basic(site.key))).status_code == 200
    last = orjson.dumps({"batch": [track("m-3", timestamp="2026-11-30T12:05:00Z")]})
    assert (await http.post("/v1/batch", content=last, headers=basic(site.key))).status_code == 200
    rows = await stored_events(engine, tenant.id, 3)
    assert sorted((meta(row)["messageId"], row.event_type) for row in rows) == [
        ("m-1", "saved_property"),
        ("m-2", "search"),
        ("m-3", "saved_property"),
    ]


async def test_keys_gzip_and_one_bad_event_in_a_batch(
    http: httpx.AsyncClient, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id)
    one = orjson.dumps(track("k-0"))
    for headers in ({}, basic("sk_" + "x" * 30), {"Authorization": "Bearer nonsense"}):
        refused = await http.post("/v1/track", content=one, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["content-type"] == "application/problem+json"
    unknown_in_body = orjson.dumps({**track("k-0"), "writeKey": "nope"})
    assert (await http.post("/v1/track", content=unknown_in_body)).status_code == 401

    # The key in each place a client puts it; a gzip body without Content-Encoding.
    in_body = orjson.dumps({**track("k-1"), "writeKey": site.key})
    assert (await http.post("/v1/track", content=in_body)).status_code == 200
    bearer = {"Authorization": f"Bearer {site.key}"}
    page = orjson.dumps({"messageId": "k-2", "anonymousId": "anon-9", "name": "Home"})
    assert (await http.post("/v1/page", content=page, headers=bearer)).status_code == 200
    packed = gzip.compress(orjson.dumps({"batch": [track("k-3")]}))
    zipped = await http.post(f"/v1/batch?writeKey={site.key}", content=packed)
    assert zipped.status_code == 200, zipped.text

    mixed = {
        "sentAt": "2026-11-30T12:00:01Z",
        "batch": [
            track("k-4"),
            {"type": "track", "event": "Saved Property", "messageId": "k-5"},  # no one
            "not a message",
            {"type": "frobnicate", "anonymousId": "anon-9"},
            track("k-6", properties={"bad": "\x00"}, context={"ip": "not an ip"}),
        ],
    }
    answered = await http.post("/v1/batch", content=orjson.dumps(mixed), headers=basic(site.key))
    assert answered.status_code == 200 and answered.json() == {}
    rows = await stored_events(engine, tenant.id, 5)
    assert sorted(meta(row)["messageId"] for row in rows) == ["k-1", "k-2", "k-3", "k-4", "k-6"]
    k6 = next(row for row in rows if meta(row)["messageId"] == "k-6")
    # What could not be stored was dropped, not the event.
    assert "properties" not in meta(k6) and k6.ip_address is None
    assert k6.sent_at is not None

    assert (await http.get("/v1/batch", headers=basic(site.key))).status_code == 405
    no_batch = await http.post("/v1/batch", content=b'{"batch": []}', headers=basic(site.key))
    assert no_batch.status_code == 422


async def test_the_site_key_s_rate_limit_answers_429_with_retry_after(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    site = await make_site(engine, tenant.id, rate=0.01, burst=1)
    body = orjson.dumps({"batch": [track("r-1")]})
    assert (await http.post("/v1/batch", content=body, headers=basic(site.key))).status_code == 200
    limited = await http.post("/v1/batch", content=body, headers=basic(site.key))
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
