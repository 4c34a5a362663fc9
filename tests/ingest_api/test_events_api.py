"""The HTTP contract through the running stack: queueing, idempotency, tenant isolation.

What the intake decides before it queues (validation, limits, auth) is test_intake_asgi's."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contract.outcomes import event_key
from shared.db.locks import email_lock, lock_key
from shared.settings import Settings
from tests.support.http import wait_for_outcome
from tests.support.messages import totals
from tests.support.tenants import Tenant, make_tenant

EVENTS = "/api/partner/events"


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


async def test_readiness_checks_redis_the_database_and_migrations(
    client: httpx.AsyncClient,
) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "database": "ok", "migrations": "ok"}


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


@asynccontextmanager
async def email_locked(engine: AsyncEngine, tenant: Tenant, email: str) -> AsyncIterator[None]:
    """Hold the advisory lock the worker takes for this e-mail: an event naming it stays
    queued (its batch waits inside its transaction) until the block ends."""
    key = lock_key(email_lock(tenant.id, email))
    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


async def test_redis_forgets_a_committed_event_and_get_answers_as_before(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant, settings: Settings
) -> None:
    """202 while queued (the marker), then the outcome from PostgreSQL, with the very bytes the
    worker published; nothing of the event is left in Redis."""
    broker = redis.Redis.from_url(settings.redis_url)
    email = f"forgotten-{uuid.uuid4().hex[:8]}@example.com"
    async with email_locked(engine, tenant, email):
        queued = await client.post(EVENTS, json={"type": "inquiry", "person": {"emails": [email]}})
        event_id = queued.json()["id"]
        while_queued = await client.get(f"{EVENTS}/{event_id}")
        assert (while_queued.status_code, while_queued.json()) == (202, queued.json())
    outcome = await wait_for_outcome(client, event_id)
    assert outcome.status_code == 201 and outcome.json()["person"]["emails"][0]["value"] == email
    assert broker.exists(event_key(event_id)) == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (
            {
                "type": "form_submission",
                "person": {"emails": ["bytes@example.com"], "firstName": "Zoë", "tags": ["a"]},
                "company": {"name": "Bytes Ltd", "website": "https://bytes.example.com"},
                "metadata": {"n": [1, 2.5], "s": "é\u2028\\"},
                "occurredAt": "2026-01-02T03:04:05.678901+02:00",
            },
            201,
        ),
        ({"type": "page_view", "visitorId": "v-bytes", "pageUrl": "https://example.com/"}, 200),
        ({"type": "page_view", "personId": "01a216d8-0000-7000-8000-000000000001"}, 404),
    ],
)
async def test_an_outcome_read_from_the_database_is_byte_identical_to_the_published_one(
    client: httpx.AsyncClient, settings: Settings, body: dict[str, Any], status: int
) -> None:
    """The waiting caller's answer is the worker's own outcome (its copy in Redis); `GET` once
    the copy is gone reads PostgreSQL: the same status, type and bytes."""
    waited = await client.post(EVENTS, json=body, headers={"Prefer": "wait=10"})
    assert waited.status_code == status, waited.text
    location = waited.headers["location"]
    expected = (status, waited.headers["content-type"], waited.content)
    from_copy = await client.get(location)
    assert (from_copy.status_code, from_copy.headers["content-type"], from_copy.content) == expected
    redis.Redis.from_url(settings.redis_url).delete(event_key(location.rsplit("/", 1)[1]))
    from_db = await client.get(location)
    assert (from_db.status_code, from_db.headers["content-type"], from_db.content) == expected


async def test_a_keyed_replay_that_waits_is_answered_once_the_first_event_commits(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    """The first request did not wait, so the worker kept no copy of its outcome: the replay's
    wait is woken by the notice of a keyed event and reads the outcome from PostgreSQL."""
    email = f"replayed-{uuid.uuid4().hex[:8]}@example.com"
    body = {"type": "inquiry", "person": {"emails": [email]}}
    headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    loop = asyncio.get_running_loop()
    async with email_locked(engine, tenant, email):
        first = await client.post(EVENTS, json=body, headers=headers)
        assert first.status_code == 202
        replay = asyncio.create_task(
            client.post(EVENTS, json=body, headers={**headers, "Prefer": "wait=8"})
        )
        await asyncio.sleep(1)  # the replay is waiting; the first event cannot commit yet
        assert not replay.done()
        released = loop.time()
    answered = await replay
    waited = loop.time() - released
    assert answered.status_code == 201 and answered.headers["idempotent-replayed"] == "true"
    assert answered.json()["event"]["id"] == first.json()["id"]
    # Woken by the notice, not by the end of its 8 s (the worker commits within milliseconds).
    assert waited < 4, f"the replay answered {waited:.1f}s after the first event could commit"
