"""The outcome listener, against the real Redis: it survives what it cannot read, is restarted
whatever ends it, and a process lets only so many callers wait."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest_api.waiter import OutcomeWaiter
from shared.contract.outcomes import StoredOutcome, event_key, outcome_channel
from shared.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    created = aioredis.Redis.from_url(settings.redis_url)
    yield created
    await created.aclose()


@pytest.fixture
def channel(settings: Settings) -> str:
    # A channel of this test's own: the session's worker and API use the settings' one.
    return outcome_channel(settings.redis_url, f"waiter-test-{uuid.uuid4().hex[:8]}")


async def _started(waiter: OutcomeWaiter, client: aioredis.Redis, channel: str) -> None:
    waiter.start()
    async with asyncio.timeout(10):
        while await _subscribers(client, channel) == 0:  # noqa: ASYNC110 - Redis signals nothing
            await asyncio.sleep(0.05)


async def _processed(client: aioredis.Redis) -> tuple[uuid.UUID, StoredOutcome]:
    """An event whose outcome the worker kept for a waiting caller."""
    event_id = uuid.uuid4()
    outcome = StoredOutcome(
        tenant_id=uuid.uuid4(), status="processed", http_status=201, body={"event": {}}
    )
    await client.set(event_key(event_id), outcome.dumps(), ex=60)
    return event_id, outcome


def _notice(event_id: uuid.UUID, outcome: StoredOutcome) -> bytes:
    return orjson.dumps(
        {
            "id": str(event_id),
            "tenantId": str(outcome.tenant_id),
            "status": outcome.status,
            "httpStatus": outcome.http_status,
        }
    )


async def test_malformed_messages_do_not_stop_the_listener(
    client: aioredis.Redis, engine: AsyncEngine, channel: str
) -> None:
    waiter = OutcomeWaiter(client, engine, channel)
    await _started(waiter, client, channel)
    try:
        event_id = uuid.uuid4()
        waiting = waiter.register(event_id)
        for junk in (b"not json", b"[]", b"{}", orjson.dumps({"id": 7})):
            await client.publish(channel, junk)
        outcome = StoredOutcome(
            tenant_id=uuid.uuid4(), status="processed", http_status=201, body={"event": {}}
        )
        await client.publish(channel, _notice(event_id, outcome))
        await asyncio.wait_for(waiting, 10)
    finally:
        await waiter.stop()


async def test_the_listener_is_restarted_when_it_dies(
    client: aioredis.Redis, engine: AsyncEngine, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter = OutcomeWaiter(client, engine, channel)
    heard: list[bytes] = []
    receive = waiter._receive

    def crash_once(data: bytes) -> None:
        heard.append(data)
        if len(heard) == 1:
            raise RuntimeError("a bug the listener did not foresee")
        receive(data)

    monkeypatch.setattr(waiter, "_receive", crash_once)
    await _started(waiter, client, channel)
    try:
        await client.publish(channel, b"the message that kills the listener")
        async with asyncio.timeout(10):
            while heard == []:  # noqa: ASYNC110 - the listener signals nothing
                await asyncio.sleep(0.01)
        # A later wait still gets its answer: announced before the restart (read once the
        # listener has resubscribed) or after it (heard on the channel).
        event_id, outcome = await _processed(client)
        waiting = waiter.register(event_id)
        await client.publish(channel, _notice(event_id, outcome))
        await asyncio.wait_for(waiting, 10)  # woken by a listener, not timed out
        assert await waiter.wait(event_id, waiting, 0) == outcome
        assert waiter.waiting() == 0
    finally:
        await waiter.stop()


async def _subscribers(client: aioredis.Redis, channel: str) -> int:
    [(_, count)] = await client.pubsub_numsub(channel)
    return int(count)


async def test_a_process_lets_only_so_many_callers_wait(
    client: aioredis.Redis, engine: AsyncEngine, channel: str
) -> None:
    waiter = OutcomeWaiter(client, engine, channel, max_waiters=2)
    first, second = uuid.uuid4(), uuid.uuid4()
    futures = [waiter.register(first), waiter.register(second)]
    assert not waiter.has_room()
    waiter.unregister(first, futures[0])
    assert waiter.has_room()
