"""Our hand-written Celery messages must be what Celery itself would put on the queue, and
the API must group page views into them as configured."""

import asyncio
import base64
import json
import uuid
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis
from celery import Celery

from ingest_api.enqueuer import Enqueuer
from shared.broker.wire import celery_task_message
from shared.broker.writers import RedisWriter
from shared.contract.queues import (
    PROCESS_EVENTS_TASK,
    Envelope,
    queue_for,
)
from shared.settings import Settings


@pytest.fixture
def celery_message(settings: Settings) -> dict:
    """The message Celery's own producer writes for the same task, read back from Redis."""
    client = redis.Redis.from_url(settings.redis_url)
    app = Celery(broker=settings.redis_url)
    app.conf.task_ignore_result = True
    queue = "contract-check"
    app.send_task(PROCESS_EVENTS_TASK, args=[[{"id": "x"}]], queue=queue)
    raw = client.rpop(queue)
    client.delete(queue, f"_kombu.binding.{queue}")
    app.close()
    return json.loads(raw)


def test_message_has_celerys_shape(celery_message: dict) -> None:
    ours = json.loads(
        celery_task_message(
            task=PROCESS_EVENTS_TASK, queue="contract-check", args=[[{"id": "x"}]], argsrepr="x"
        )
    )
    assert ours.keys() == celery_message.keys()
    assert ours["headers"].keys() == celery_message["headers"].keys()
    assert ours["properties"].keys() == celery_message["properties"].keys()
    for key in ("content-type", "content-encoding"):
        assert ours[key] == celery_message[key]
    assert ours["headers"]["task"] == celery_message["headers"]["task"]
    assert ours["properties"]["delivery_info"] == celery_message["properties"]["delivery_info"]
    assert ours["properties"]["body_encoding"] == "base64"
    ours_body = json.loads(base64.b64decode(ours["body"]))
    theirs_body = json.loads(base64.b64decode(celery_message["body"]))
    assert ours_body == theirs_body  # [args, kwargs, embed]


def test_leads_and_activity_routing() -> None:
    assert queue_for("form_submission") == queue_for("inquiry") == "leads"
    assert queue_for("page_view") == queue_for("my_custom_type") == "activity"


async def test_a_lingering_queue_shares_a_message_until_it_is_full(
    client: aioredis.Redis, queues: tuple[str, str]
) -> None:
    """A full message goes out at once, however long the linger; a lone one after the linger;
    a queue without a linger never waits."""
    lingering, eager = queues
    tenant = uuid.uuid4()

    def envelope() -> Envelope:
        return Envelope(
            id=uuid.uuid4(),
            tenant_id=tenant,
            received_at=datetime.now(UTC),
            payload={"type": "page_view", "visitorId": "v"},
        )

    def events_per_message(raw: list[bytes]) -> list[int]:
        return [len(json.loads(base64.b64decode(json.loads(m)["body"]))[0][0]) for m in raw]

    writer = RedisWriter(client, marker_ttl=60, key_ttl=60, max_events_per_message=200)
    flush = {lingering: 3}
    # Had the 60 s linger not been cut short by the third event, this would time out.
    full = Enqueuer(writer, timeout=0.5, linger={lingering: 60}, flush_events=flush)
    async with asyncio.timeout(5):
        await asyncio.gather(*(full.enqueue(envelope(), queue=lingering) for _ in range(3)))
    assert events_per_message(await client.lrange(lingering, 0, -1)) == [3]

    lone = Enqueuer(writer, timeout=0.5, linger={lingering: 0.05}, flush_events=flush)
    await lone.enqueue(envelope(), queue=lingering)
    await lone.enqueue(envelope(), queue=eager)
    assert events_per_message(await client.lrange(lingering, 0, -1)) == [1, 3]
    assert events_per_message(await client.lrange(eager, 0, -1)) == [1]
