"""Building and pushing real queue messages, and reading what the worker wrote."""

import asyncio
import base64
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from kombu.serialization import loads as kombu_loads
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker.wire import celery_task_message
from shared.contract.events import EventIn
from shared.contract.outcomes import OUTCOME_STREAM, StoredOutcome, event_key, queued_marker
from shared.contract.queues import PROCESS_EVENTS_TASK, Envelope, queue_for
from shared.db.reads import load_outcomes
from shared.db.tables import Company, Event, Person, PersonEmail


def envelope(tenant_id: uuid.UUID, payload: dict[str, Any], **extra: Any) -> Envelope:
    """An envelope as the API makes it: validated payload, fixed id and time."""
    event = EventIn.model_validate(payload)
    return Envelope(
        id=extra.pop("id", None) or uuid.uuid4(),
        tenant_id=tenant_id,
        received_at=datetime.now(UTC),
        payload=event.model_dump(mode="json", by_alias=True, exclude_none=True),
        **extra,
    )


def contact_rich(tenant_id: uuid.UUID, n: int, **payload: Any) -> list[Envelope]:
    """Events with five e-mails and five valid phones each: 12 advisory locks apiece."""
    return [
        envelope(
            tenant_id,
            {
                "type": "inquiry",
                "visitorId": f"v-{i}",
                "person": {
                    "emails": [f"p{i}-{j}@example.com" for j in range(5)],
                    "phones": [f"(503) 555-{100 * i + j:04d}" for j in range(5)],
                },
                **payload,
            },
        )
        for i in range(n)
    ]


def message(envelopes: list[Envelope]) -> bytes:
    queue = queue_for(envelopes[0].payload["type"])
    return celery_task_message(
        task=PROCESS_EVENTS_TASK,
        queue=queue,
        args=[[e.to_wire() for e in envelopes]],
        argsrepr="test",
    )


def worker_reads(message: bytes) -> list[Envelope]:
    """The envelopes of a Redis task message, decoded as the Celery worker decodes it."""
    wire = json.loads(message)
    body = base64.b64decode(wire["body"])
    args, _, _ = kombu_loads(body, wire["content-type"], wire["content-encoding"])
    return [Envelope.model_validate(e) for e in args[0]]


def push(
    client: redis.Redis, *messages: tuple[str, bytes], markers: Sequence[Envelope] = ()
) -> None:
    """LPUSH messages to their queues in one round trip, as a producer would."""
    pipe = client.pipeline()
    for e in markers:
        pipe.set(event_key(e.id), queued_marker(e.tenant_id))
    for queue, body in messages:
        pipe.lpush(queue, body)
    pipe.execute()


async def wait_outcomes(
    broker: redis.Redis, engine: AsyncEngine, ids: list[uuid.UUID], timeout: float = 60
) -> dict[uuid.UUID, StoredOutcome]:
    """Wait until every id has its outcome as `GET` reads it: no "queued" marker left in
    Redis, and the event or its dead letter in the database."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        markers = broker.mget([event_key(i) for i in ids])
        settled = [
            i
            for i, raw in zip(ids, markers, strict=True)
            if raw is None or StoredOutcome.loads(raw).status != "queued"
        ]
        async with engine.connect() as conn:
            done = await load_outcomes(conn, settled)
        if len(done) == len(ids):
            return done
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{len(ids) - len(done)} of {len(ids)} events have no outcome")
        await asyncio.sleep(0.05)


async def wait_announced(
    broker: redis.Redis, event_id: uuid.UUID, times: int, timeout: float = 30
) -> None:
    """Wait until the outcome stream has announced this event `times` times (once per
    processing of it, redeliveries included)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (
        sum(
            fields[b"id"] == str(event_id).encode()
            for _, fields in broker.xrevrange(OUTCOME_STREAM, count=2000)
        )
        < times
    ):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{event_id} was not announced {times} times")
        await asyncio.sleep(0.05)


async def count(engine: AsyncEngine, model: Any, tenant_id: uuid.UUID, *where: Any) -> int:
    async with engine.connect() as conn:
        result = await conn.execute(
            select(func.count()).select_from(model).where(model.tenant_id == tenant_id, *where)
        )
        return int(result.scalar_one())


async def totals(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[str, int]:
    return {
        "events": await count(engine, Event, tenant_id),
        "people": await count(engine, Person, tenant_id),
        "emails": await count(engine, PersonEmail, tenant_id),
        "companies": await count(engine, Company, tenant_id),
    }
