"""The read routes: a person's timeline, people by id, e-mail, phone or external id, companies."""

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.auth import WRITE_SCOPE, mint_token
from shared.settings import Settings
from tests.support.http import wait_for_outcome
from tests.support.tenants import Tenant, make_tenant

EVENTS = "/api/partner/events"


async def test_people_and_companies_read_as_their_outcomes_show_them(
    client: httpx.AsyncClient,
    api_url: str,
    tenant: Tenant,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    created = await client.post(
        EVENTS,
        headers={"Prefer": "wait=10"},
        json={
            "type": "form_submission",
            "person": {
                "firstName": "Ada",
                "emails": ["Ada@Example.com"],
                "phones": ["+1-503-555-0199"],
            },
            "company": {"name": "Lovelace  Analytics", "industry": "Computing"},
        },
    )
    assert created.status_code == 201
    person, company = created.json()["person"], created.json()["company"]

    assert (await client.get(f"/api/partner/people/{person['id']}")).json() == person
    assert (await client.get(f"/api/partner/companies/{company['id']}")).json() == company
    # Looked up as ingestion matches: any case of the e-mail, any spelling of the (valid) phone.
    for query in ({"email": " ADA@example.COM "}, {"phone": "(503) 555 0199"}):
        found = await client.get("/api/partner/people", params=query)
        assert (found.status_code, found.json()) == (200, person), query

    for query, loc in (
        ({}, ["query", "email"]),
        ({"email": "ada@example.com", "phone": "+15551234"}, ["query", "phone"]),
        ({"email": "not-an-email"}, ["query", "email"]),
        ({"phone": "12"}, ["query", "phone"]),
    ):
        invalid = await client.get("/api/partner/people", params=query)
        assert invalid.status_code == 422, query
        assert invalid.json()["errors"][0]["loc"] == loc
    unknown = await client.get("/api/partner/people", params={"email": "nobody@example.com"})
    assert unknown.status_code == 404

    other = await make_tenant(engine, settings)
    async with httpx.AsyncClient(base_url=api_url, headers=other.headers) as foreign:
        for path in (
            f"/api/partner/people/{person['id']}",
            f"/api/partner/companies/{company['id']}",
        ):
            assert (await foreign.get(path)).status_code == 404
        by_email = await foreign.get("/api/partner/people", params={"email": "ada@example.com"})
        assert by_email.status_code == 404


async def test_a_person_is_found_by_its_external_id_as_sent_trimmed(
    client: httpx.AsyncClient, api_url: str, engine: AsyncEngine, settings: Settings
) -> None:
    created = await client.post(
        EVENTS,
        headers={"Prefer": "wait=10"},
        json={"type": "identify", "person": {"externalId": " App-User-42 "}},
    )
    assert created.status_code == 201
    person = created.json()["person"]
    assert person["externalId"] == "App-User-42"
    found = await client.get("/api/partner/people", params={"externalId": "App-User-42 "})
    assert (found.status_code, found.json()) == (200, person)
    # Apps' ids are case-sensitive: another case is another user.
    other_case = await client.get("/api/partner/people", params={"externalId": "app-user-42"})
    assert other_case.status_code == 404
    for query, loc in (
        ({"externalId": "   "}, ["query", "externalId"]),
        ({"email": "ada@example.com", "externalId": "App-User-42"}, ["query", "externalId"]),
    ):
        invalid = await client.get("/api/partner/people", params=query)
        assert invalid.status_code == 422, query
        assert invalid.json()["errors"][0]["loc"] == loc
    other = await make_tenant(engine, settings)
    async with httpx.AsyncClient(base_url=api_url, headers=other.headers) as foreign:
        by_id = await foreign.get("/api/partner/people", params={"externalId": "App-User-42"})
        assert by_id.status_code == 404


async def test_a_timeline_pages_newest_first_and_filters(client: httpx.AsyncClient) -> None:
    created = await client.post(
        EVENTS,
        headers={"Prefer": "wait=10"},
        json={"type": "form_submission", "person": {"emails": ["timeline@example.com"]}},
    )
    person_id = created.json()["person"]["id"]
    views = []
    for day in range(1, 6):
        posted = await client.post(
            EVENTS,
            json={
                "type": "property_view",
                "personId": person_id,
                "occurredAt": f"2026-01-0{day}T12:00:00Z",
                "property": {"id": f"p-{day}"},
            },
        )
        views.append(posted.json()["id"])
    for event_id in views:
        assert (await wait_for_outcome(client, event_id)).status_code == 200

    pages, cursor = [], None
    while True:
        params = {"personId": person_id, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(EVENTS, params=params)).json()
        pages.append([e["id"] for e in page["events"]])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    form_id = created.json()["event"]["id"]
    assert pages == [[form_id, views[4]], [views[3], views[2]], [views[1], views[0]]]

    filtered = await client.get(
        EVENTS,
        params={"personId": person_id, "type": "property_view", "since": "2026-01-04T00:00:00Z"},
    )
    assert [e["id"] for e in filtered.json()["events"]] == [views[4], views[3]]
    assert filtered.json()["events"][0]["property"] == {"id": "p-5"}

    for params, loc in (
        ({}, ["query", "personId"]),
        ({"personId": person_id, "limit": 101}, ["query", "limit"]),
        ({"personId": person_id, "cursor": "bm90LWEtY3Vyc29y"}, ["query", "cursor"]),
        ({"personId": person_id, "since": "2026-01-04T00:00:00"}, ["query", "since"]),
    ):
        invalid = await client.get(EVENTS, params=params)
        assert invalid.status_code == 422, params
        assert invalid.json()["errors"][0]["loc"] == loc
    unknown = await client.get(EVENTS, params={"personId": "01a216d8-0000-7000-8000-000000000000"})
    assert unknown.status_code == 404


async def test_reads_need_the_read_scope(api_url: str, settings: Settings, tenant: Tenant) -> None:
    token = mint_token(settings, tenant_id=tenant.id, scopes=(WRITE_SCOPE,), ttl_seconds=60)
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {token}"}
    ) as writer:
        for path in (
            "/api/partner/people/01a216d8-0000-7000-8000-000000000000",
            "/api/partner/companies/01a216d8-0000-7000-8000-000000000000",
            f"{EVENTS}?personId=01a216d8-0000-7000-8000-000000000000",
        ):
            assert (await writer.get(path)).status_code == 403, path
