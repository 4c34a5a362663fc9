"""POST /api/partner/events/batch: each event stands alone, good ones are never dropped."""

import httpx
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
