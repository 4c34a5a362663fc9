"""The HTTP contract: validation, limits, auth, idempotency, tenant isolation."""

import asyncio

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings
from tests.support.http import accepted_count, wait_for_outcome
from tests.support.messages import totals
from tests.support.tenants import Tenant, make_tenant

EVENTS = "/api/partner/events"


@pytest.mark.parametrize(
    ("body", "status", "locs"),
    [
        ({"type": 42, "personId": "01a216d8-5721-7588-8fab-fccc1ac70d60"}, 422, [["body", "type"]]),
        ({"type": "page_view", "visitorId": "v", "pageUrll": "x"}, 422, [["body", "pageUrll"]]),
        ({"type": "page_view"}, 422, [["body"]]),
        ({"type": "page_view", "person": {"tags": ["x"]}}, 422, [["body"]]),
        (
            {"type": "page_view", "person": {"emails": ["not-an-email"]}},
            422,
            [["body", "person", "emails", 0, "value"]],
        ),
        (
            {"type": "page_view", "person": {"phones": [{"value": "12"}]}},
            422,
            [["body", "person", "phones", 0, "value"]],
        ),
        (
            {"type": "page_view", "visitorId": "v", "pageDuration": -1, "occurredAt": "yesterday"},
            422,
            [["body", "pageDuration"], ["body", "occurredAt"]],
        ),
        (
            {"type": "page_view", "visitorId": "v", "company": {"website": "x"}},
            422,
            [["body", "company"]],
        ),
        ({"type": "page_view", "visitorId": "v", "message": "nul\x00byte"}, 422, [["body"]]),
        ({"type": "", "personId": "not-a-uuid"}, 422, [["body", "type"], ["body", "personId"]]),
    ],
)
async def test_invalid_events_name_every_wrong_field_and_queue_nothing(
    client: httpx.AsyncClient, body: dict, status: int, locs: list
) -> None:
    before = await accepted_count(client)
    response = await client.post(EVENTS, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"]
    assert sorted(e["loc"] for e in problem["errors"]) == sorted(locs)
    assert await accepted_count(client) == before


async def test_malformed_json_wrong_type_oversize_bodies_and_methods(
    client: httpx.AsyncClient,
) -> None:
    before = await accepted_count(client)
    headers = {"Content-Type": "application/json"}
    malformed = await client.post(EVENTS, content=b'{"type": "page_view",', headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["type"].endswith("/malformed-json")

    plain = await client.post(EVENTS, content=b"{}", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415

    big = {"type": "page_view", "visitorId": "v", "metadata": {"blob": "x" * 33_000}}
    too_large = await client.post(EVENTS, json=big)
    assert too_large.status_code == 413
    assert too_large.headers["content-type"] == "application/problem+json"

    async def chunks():  # no Content-Length: the limit is enforced on the bytes received
        yield b'{"type": "page_view", "visitorId": "v", "metadata": {"blob": "'
        for _ in range(40):
            yield b"x" * 1000
        yield b'"}}'

    streamed = await client.post(EVENTS, content=chunks(), headers=headers)
    assert streamed.status_code == 413

    deleting = await client.delete(EVENTS)
    assert (deleting.status_code, deleting.headers["allow"]) == (405, "GET, POST")
    assert deleting.headers["content-type"] == "application/problem+json"
    assert await accepted_count(client) == before


async def test_auth_is_required_and_scoped(
    client: httpx.AsyncClient, api_url: str, settings: Settings, tenant: Tenant
) -> None:
    from shared.auth import READ_SCOPE, mint_token

    body = {"type": "page_view", "visitorId": "v"}
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        missing = await anonymous.post(EVENTS, json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        bad = await anonymous.post(EVENTS, json=body, headers={"Authorization": "Bearer x.y.z"})
        assert bad.status_code == 401
        expired = mint_token(
            settings, tenant_id=tenant.id, scopes=("events:write",), ttl_seconds=-10
        )
        late = await anonymous.post(
            EVENTS, json=body, headers={"Authorization": f"Bearer {expired}"}
        )
        assert late.status_code == 401
        reader = mint_token(settings, tenant_id=tenant.id, scopes=(READ_SCOPE,), ttl_seconds=60)
        forbidden = await anonymous.post(
            EVENTS, json=body, headers={"Authorization": f"Bearer {reader}"}
        )
        assert forbidden.status_code == 403


async def test_accepted_event_is_queued_then_readable(client: httpx.AsyncClient) -> None:
    response = await client.post(EVENTS, json={"type": "page_view", "visitorId": "anon-1"})
    assert response.status_code == 202
    event_id = response.json()["id"]
    assert response.json() == {"id": event_id, "status": "queued"}
    assert response.headers["location"] == f"{EVENTS}/{event_id}"
    assert event_id[14] == "7"  # UUIDv7: time-ordered ids

    outcome = await wait_for_outcome(client, event_id)
    assert outcome.status_code == 200
    assert outcome.json()["event"]["visitorId"] == "anon-1"
    assert "person" not in outcome.json()


async def test_same_idempotency_key_twice_gives_one_event(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    body = {"type": "inquiry", "person": {"emails": ["idem@example.com"]}, "message": "hi"}
    headers = {"Idempotency-Key": "order-42"}
    first, second = await asyncio.gather(
        client.post(EVENTS, json=body, headers=headers),
        client.post(EVENTS, json=body, headers=headers),
    )
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    waited = await client.post(EVENTS, json=body, headers={**headers, "Prefer": "wait=10"})
    assert waited.status_code == 201  # the first event's outcome: it created the person
    assert waited.json()["event"]["id"] == first.json()["id"]
    assert waited.headers["idempotent-replayed"] == "true"
    assert (await totals(engine, tenant.id))["events"] == 1

    other_key = await client.post(EVENTS, json=body, headers={"Idempotency-Key": "order-43"})
    assert other_key.json()["id"] != first.json()["id"]


async def test_tenants_cannot_see_or_attach_to_each_other(
    client: httpx.AsyncClient, api_url: str, engine: AsyncEngine, settings: Settings
) -> None:
    created = await client.post(
        EVENTS,
        json={"type": "form_submission", "person": {"emails": ["mine@example.com"]}},
        headers={"Prefer": "wait=10"},
    )
    assert created.status_code == 201
    event_id, person_id = created.json()["event"]["id"], created.json()["person"]["id"]

    other = await make_tenant(engine, settings)
    async with httpx.AsyncClient(base_url=api_url, headers=other.headers, timeout=30) as theirs:
        assert (await theirs.get(f"{EVENTS}/{event_id}")).status_code == 404
        attach = await theirs.post(
            EVENTS,
            json={"type": "page_view", "personId": person_id},
            headers={"Prefer": "wait=10"},
        )
        assert attach.status_code == 404
        assert attach.json()["title"] == "Person not found"
        same_email = await theirs.post(
            EVENTS,
            json={"type": "form_submission", "person": {"emails": ["mine@example.com"]}},
            headers={"Prefer": "wait=10"},
        )
        assert same_email.status_code == 201  # their own person, not ours
        assert same_email.json()["person"]["id"] != person_id
        # The failed event is readable as failed by its own tenant.
        failed = await theirs.get(f"{EVENTS}/{attach.json()['eventId']}")
        assert failed.status_code == 404 and failed.json()["title"] == "Person not found"
    assert (await client.get(f"{EVENTS}/{attach.json()['eventId']}")).status_code == 404


async def test_prefer_wait_is_capped_and_unknown_events_are_404(client: httpx.AsyncClient) -> None:
    response = await client.post(
        EVENTS, json={"type": "page_view", "visitorId": "v"}, headers={"Prefer": "wait=999"}
    )
    assert response.headers["preference-applied"] == "wait=30"
    missing = await client.get(f"{EVENTS}/01a216d8-0000-7000-8000-000000000000")
    assert missing.status_code == 404
    assert (await client.get(f"{EVENTS}/not-a-uuid")).status_code == 422


async def test_operations_endpoints_and_openapi(client: httpx.AsyncClient) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "database": "ok", "migrations": "ok"}
    spec = (await client.get("/openapi.json")).json()
    post = spec["paths"]["/api/partner/events"]["post"]
    assert {p["name"] for p in post["parameters"]} == {"Prefer", "Idempotency-Key"}
    assert {"200", "201", "202", "422", "503"} <= set(post["responses"])
    assert "EventIn" in spec["components"]["schemas"]


async def test_forged_tokens_are_refused(api_url: str, tenant: Tenant) -> None:
    import base64
    import json

    import jwt

    claims = {
        "iss": "leadstream",
        "tid": str(tenant.id),
        "scope": "events:write",
        "exp": 4_102_444_800,
    }
    wrong_key = jwt.encode(claims, "not-the-secret-not-the-secret-32b", algorithm="HS256")

    def b64(part: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    body = {"type": "page_view", "visitorId": "v"}
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        for token in (wrong_key, unsigned, tenant.token[:-2] + "xx"):
            response = await anonymous.post(
                EVENTS, json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401, token


async def test_hostile_strings_are_stored_verbatim(client: httpx.AsyncClient) -> None:
    hostile = "Robert'); DROP TABLE events;-- \\\\ %s $1 \u2028 🏠 " + "x" * 900
    body = {
        "type": "form_submission",
        "person": {"firstName": hostile[:255], "emails": ["o'brien+test@example.com"]},
        "company": {"name": "Bobby'; --Tables"},
        "message": hostile,
        "metadata": {hostile[:50]: [hostile, {"$where": "1=1"}]},
        "pageTitle": hostile,
    }
    response = await client.post(EVENTS, json=body, headers={"Prefer": "wait=10"})
    assert response.status_code == 201
    stored = (await wait_for_outcome(client, response.json()["event"]["id"])).json()
    assert stored["event"]["message"] == hostile
    assert stored["event"]["metadata"] == body["metadata"]
    assert stored["event"]["pageTitle"] == hostile
    assert stored["person"]["firstName"] == hostile[:255]
    assert stored["person"]["emails"][0]["value"] == "o'brien+test@example.com"
    assert stored["company"]["name"] == "Bobby'; --Tables"
