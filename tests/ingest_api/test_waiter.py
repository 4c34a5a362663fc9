"""The outcome listener, against the real Redis: it survives what it cannot read, and a process
lets only so many callers wait."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from ingest_api.waiter import OutcomeWaiter
from shared.contract.outcomes import OUTCOME_CHANNEL
from shared.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    created = aioredis.Redis.from_url(settings.redis_url)
    yield created
    await created.aclose()


async def test_malformed_messages_do_not_stop_the_listener(client: aioredis.Redis) -> None:
    waiter = OutcomeWaiter(client)
    others = await _subscribers(client)  # the session's API may be listening too
    waiter.start()
    try:
        async with asyncio.timeout(10):
            while await _subscribers(client) == others:  # noqa: ASYNC110 - Redis signals nothing
                await asyncio.sleep(0.05)
        event_id = uuid.uuid4()
        waiting = waiter.register(event_id)
        outcome = {"tenantId": str(uuid.uuid4()), "status": "processed", "httpStatus": 201}
        for junk in (
            b"not json",
            b"[]",
            orjson.dumps({"id": str(event_id)}),  # no outcome
            orjson.dumps({"id": str(event_id), "outcome": {"status": "from-the-future"}}),
        ):
            await client.publish(OUTCOME_CHANNEL, junk)
        await client.publish(
            OUTCOME_CHANNEL, orjson.dumps({"id": str(event_id), "outcome": outcome})
        )
        stored = await asyncio.wait_for(waiting, 10)
        assert (stored.status, stored.http_status) == ("processed", 201)
    finally:
        await waiter.stop()


async def _subscribers(client: aioredis.Redis) -> int:
    [(_, count)] = await client.pubsub_numsub(OUTCOME_CHANNEL)
    return int(count)


async def test_a_process_lets_only_so_many_callers_wait(client: aioredis.Redis) -> None:
    waiter = OutcomeWaiter(client, max_waiters=2)
    first, second = uuid.uuid4(), uuid.uuid4()
    futures = [waiter.register(first), waiter.register(second)]
    assert not waiter.has_room()
    waiter.unregister(first, futures[0])
    assert waiter.has_room()
