"""Identity stitching through the partner API's doors, end to end (the API, the real worker,
PostgreSQL, read back through the API): a visitor browses two listings anonymously, then says
who they are, and becomes one person whose timeline holds both views.

The other doors are tested the same way with their own senders: the pixel and the beacon in
tests/ingest_api/sources/test_pixel.py, the snippet in a real browser
(tests/ingest_api/sources/test_snippet_browser.py).
"""

import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.support.http import wait_for_outcome

EVENTS = "/api/partner/events"


async def _single(client: httpx.AsyncClient, events: list[dict[str, object]]) -> list[str]:
    ids = []
    for event in events:
        response = await client.post(EVENTS, json=event)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def _batch(client: httpx.AsyncClient, events: list[dict[str, object]]) -> list[str]:
    response = await client.post(f"{EVENTS}/batch", json={"events": events})
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued"] * len(events)
    return [r["id"] for r in results]


Door = Callable[[httpx.AsyncClient, list[dict[str, object]]], Awaitable[list[str]]]


@pytest.mark.parametrize("door", [_single, _batch], ids=["events", "batch"])
async def test_two_anonymous_listing_views_then_identify_make_one_person(
    client: httpx.AsyncClient, door: Door
) -> None:
    visitor = f"v-{uuid.uuid4().hex}"
    email = f"ann-{uuid.uuid4().hex[:8]}@example.com"
    views: list[dict[str, object]] = [
        {"type": "page_view", "visitorId": visitor, "pageUrl": f"https://agent.example/l/{n}"}
        for n in (1, 2)
    ]
    viewed = await door(client, views)
    for view in viewed:  # stored anonymously first: only stitching can attach them later
        stored = await wait_for_outcome(client, view)
        assert stored.status_code == 200 and "person" not in stored.json(), stored.text
    [identified] = await door(
        client, [{"type": "identify", "visitorId": visitor, "person": {"emails": [email]}}]
    )
    outcome = await wait_for_outcome(client, identified)
    assert outcome.status_code == 201, outcome.text
    person = outcome.json()["person"]["id"]

    # The identify's transaction attached them: its outcome means they are the person's now.
    response = await client.get(EVENTS, params={"personId": person, "limit": 100})
    assert response.status_code == 200, response.text
    found = response.json()["events"]
    assert sorted(str(e["id"]) for e in found) == sorted([*viewed, identified])
    assert sorted(str(e["pageUrl"]) for e in found if e["eventType"] == "page_view") == [
        "https://agent.example/l/1",
        "https://agent.example/l/2",
    ]
    people = await client.get("/api/partner/people", params={"email": email})
    assert people.status_code == 200 and people.json()["id"] == person
