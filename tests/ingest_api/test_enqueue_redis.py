"""The intake and its enqueue path against a real Redis, in-process: bursts a healthy Redis
must take (no 503), each event queued exactly once, and the Idempotency-Key rules.

The app is `create_app()` with its own lifespan, served through httpx's ASGI transport, on a
Redis db no worker consumes, so the test reads back every queued message.
"""

import asyncio
import base64
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from ingest_api.app import create_app
from shared.contract.outcomes import event_key
from shared.contract.queues import ACTIVITY_QUEUE, LEADS_QUEUE
from shared.settings import Settings
from tests.support.redis_dbs import PIPELINE_OWN_WORKER, redis_url_with_db
from tests.support.tenants import Tenant

EVENTS = "/api/partner/events"
BATCH = f"{EVENTS}/batch"


@pytest.fixture
async def own_settings(settings: Settings) -> Settings:
    # The pipeline test's db: its worker lives only inside that test, and both flush it.
    return settings.model_copy(
        update={"redis_url": redis_url_with_db(settings.redis_url, PIPELINE_OWN_WORKER)}
    )


@pytest.fixture
async def broker(own_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_settings.redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def http(
    own_settings: Settings, broker: aioredis.Redis, tenant: Tenant
) -> AsyncIterator[httpx.AsyncClient]:
    intake = create_app(own_settings)
    async with (
        intake.app.router.lifespan_context(intake.app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=intake),
            base_url="http://intake",
            headers=tenant.headers,
            timeout=30,
        ) as client,
    ):
        yield client


async def queued_ids(broker: aioredis.Redis) -> Counter[str]:
    """How many times each event id sits in a queued message."""
    counts: Counter[str] = Counter()
    for queue in (LEADS_QUEUE, ACTIVITY_QUEUE):
        for raw in await broker.lrange(queue, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            counts.update(wire["id"] for wire in body[0][0])
    return counts


def contact_rich(n: int) -> dict[str, Any]:
    """A lead with many contact points, a company and some metadata (~1.3 KB of JSON)."""
    return {
        "type": "inquiry",
        "person": {
            "firstName": "Contact",
            "lastName": f"Rich {n}",
            "emails": [f"person{n}.{k}@example.com" for k in range(5)],
            "phones": [f"+1 415 555 {1000 + (n * 5 + k) % 9000:04d}" for k in range(5)],
        },
        "company": {"name": f"Company {n}", "website": f"https://company{n}.example.com"},
        "message": "I would like to see the property on Saturday morning. " * 4,
        "metadata": {"campaign": "spring", "source": "portal", "n": n},
    }


async def test_200_concurrent_keyed_requests_against_a_healthy_redis_all_answer_202(
    http: httpx.AsyncClient, broker: aioredis.Redis
) -> None:
    answers = await asyncio.gather(
        *(
            http.post(EVENTS, json=contact_rich(n), headers={"Idempotency-Key": f"burst-{n}"})
            for n in range(200)
        )
    )
    refused = [a.text for a in answers if a.status_code != 202]
    assert Counter(a.status_code for a in answers) == {202: 200}, refused[:3]
    ids = [a.json()["id"] for a in answers]
    assert await queued_ids(broker) == Counter(ids)  # each once, no other
    assert await broker.exists(*(event_key(i) for i in ids)) == 200


async def test_six_concurrent_batches_of_contact_rich_events_all_answer_202(
    http: httpx.AsyncClient, broker: aioredis.Redis
) -> None:
    batches = [{"events": [contact_rich(b * 200 + n) for n in range(200)]} for b in range(6)]
    answers = await asyncio.gather(*(http.post(BATCH, json=batch) for batch in batches))
    assert [a.status_code for a in answers] == [202] * 6, [a.text[:300] for a in answers]
    ids = [r["id"] for a in answers for r in a.json()["results"]]
    assert len(ids) == 1200
    assert await queued_ids(broker) == Counter(ids)


async def test_a_key_reused_with_another_event_is_a_422_and_the_same_event_a_replay(
    http: httpx.AsyncClient, broker: aioredis.Redis
) -> None:
    """The IETF idempotency-key draft; "the same" is the validated event, so a client may
    re-serialise its JSON (key order, spacing) and restamp sentAt."""
    key = {"Idempotency-Key": "order-1"}
    alice = {"type": "inquiry", "person": {"emails": ["alice@example.com"]}, "message": "hi"}
    first = await http.post(EVENTS, json={**alice, "sentAt": "2026-01-01T00:00:00Z"}, headers=key)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    reordered = (
        b'{ "message": "hi",  "person": {"emails": ["alice@example.com"]}, "type": "inquiry"}'
    )
    again = await http.post(
        EVENTS, content=reordered, headers={**key, "Content-Type": "application/json"}
    )
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"

    bob = {"type": "appointment_scheduled", "person": {"emails": ["bob@example.com"]}}
    refused = await http.post(EVENTS, json=bob, headers=key)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("/idempotency-key-reused")
    assert problem["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await queued_ids(broker) == Counter([first.json()["id"]])  # Bob's was not queued


async def test_an_idempotency_key_is_stored_compactly_for_the_ttl(
    http: httpx.AsyncClient, broker: aioredis.Redis, own_settings: Settings
) -> None:
    long_key = "k" * 255
    answer = await http.post(EVENTS, json=contact_rich(1), headers={"Idempotency-Key": long_key})
    assert answer.status_code == 202
    [name] = [k async for k in broker.scan_iter(match=b"ls:idem:*")]
    assert len(name) == len(b"ls:idem:") + 16  # whatever the key's length
    record = await broker.get(name)
    assert len(record) == 32 and record[:16] == uuid.UUID(answer.json()["id"]).bytes
    ttl = await broker.ttl(name)
    assert own_settings.idempotency_ttl_seconds - 5 < ttl <= own_settings.idempotency_ttl_seconds
