"""POST /api/partner/events/batch: each event stands alone, good ones are never dropped."""

import gzip

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.http import accepted_count, wait_for_outcome
from tests.support.messages import totals
from tests.support.tenants import Tenant

BATCH = "/api/partner/events/batch"


async def test_bad_events_are_listed_and_the_good_ones_stored(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    before = await accepted_count(client)
    events = [
        {"type": "page_view", "visitorId": "batch-v1", "pageUrl": "https://example.com/l/1"},
        {"type": 42, "visitorId": "batch-v2"},
        {"type": "form_submission", "person": {"emails": ["Batch@Example.com"]}},
        {"type": "form_submission", "person": {"emails": ["not-an-email"]}},
        {"type": "page_view"},
    ]
    response = await client.post(BATCH, json={"events": events})
    assert response.status_code == 202
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    statuses = [r["status"] for r in results]
    assert statuses == ["queued", "rejected", "queued", "rejected", "rejected"]
    assert [e["loc"] for e in results[1]["errors"]] == [["body", "events", 1, "type"]]
    assert results[3]["errors"][0]["loc"] == ["body", "events", 3, "person", "emails", 0, "value"]
    assert results[4]["errors"][0]["loc"] == ["body", "events", 4]
    assert await accepted_count(client) == before + 2

    # The page view went to `activity`, the form to `leads`: both stored, and only they.
    page_view = await wait_for_outcome(client, results[0]["id"])
    form = await wait_for_outcome(client, results[2]["id"])
    assert (page_view.status_code, form.status_code) == (200, 201)
    assert form.json()["person"]["emails"][0]["value"] == "batch@example.com"
    assert await totals(engine, tenant.id) == {
        "events": 2,
        "people": 1,
        "emails": 1,
        "companies": 0,
    }


async def test_gzip_bodies_and_their_limits(client: httpx.AsyncClient) -> None:
    gzipped = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    events = [{"type": "page_view", "visitorId": f"gz-{i}"} for i in range(300)]
    body = gzip.compress(orjson.dumps({"events": events}))
    response = await client.post(BATCH, content=body, headers=gzipped)
    assert response.status_code == 202
    assert {r["status"] for r in response.json()["results"]} == {"queued"}
    assert len(response.json()["results"]) == 300

    # 600 KB of JSON compresses to a few KB: the limit applies to what it decodes to.
    blob = {"type": "page_view", "visitorId": "v", "metadata": {"blob": "x" * 600_000}}
    bomb = gzip.compress(orjson.dumps({"events": [blob]}))
    assert len(bomb) < 32_000
    too_large = await client.post(BATCH, content=bomb, headers=gzipped)
    assert too_large.status_code == 413

    not_gzip = await client.post(BATCH, content=b'{"events": []}', headers=gzipped)
    assert not_gzip.status_code == 400
    brotli = {**gzipped, "Content-Encoding": "br"}
    assert (await client.post(BATCH, content=body, headers=brotli)).status_code == 415


async def test_a_body_that_is_no_batch_is_refused_whole(client: httpx.AsyncClient) -> None:
    before = await accepted_count(client)
    page_view = {"type": "page_view", "visitorId": "v"}
    for body, loc in (
        ({"events": []}, ["body", "events"]),
        ({"events": [page_view] * 501}, ["body", "events"]),
        ({"events": {"0": page_view}}, ["body", "events"]),
        ([page_view], ["body", "events"]),
        ({"events": [page_view], "source": "x"}, ["body", "source"]),
    ):
        response = await client.post(BATCH, json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["loc"] == loc

    malformed = await client.post(
        BATCH, content=b'{"events": [', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    keyed = await client.post(
        BATCH, json={"events": [page_view]}, headers={"Idempotency-Key": "k-1"}
    )
    assert keyed.status_code == 422
    assert keyed.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    plain = await client.post(BATCH, content=b"{}", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    listing = await client.get(BATCH)
    assert (listing.status_code, listing.headers["allow"]) == (405, "POST")
    async with httpx.AsyncClient(base_url=str(client.base_url)) as anonymous:
        assert (await anonymous.post(BATCH, json={"events": [page_view]})).status_code == 401
    assert await accepted_count(client) == before
