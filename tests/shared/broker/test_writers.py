"""The broker writers against the real Redis: what they write, and what they refuse to."""

import base64
import json
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from shared.broker import writers
from shared.broker.writers import KombuWriter, QueueUnavailableError, RedisWriter
from shared.contract.outcomes import event_key, idempotency_key
from shared.contract.queues import Envelope
from shared.settings import Settings


def _envelope(tenant: uuid.UUID) -> Envelope:
    return Envelope(
        id=uuid.uuid4(),
        tenant_id=tenant,
        received_at=datetime.now(UTC),
        payload={"type": "page_view", "visitorId": "v"},
    )


def _ids_per_message(raw: list[bytes]) -> list[list[str]]:
    """The envelope ids of each queued message, oldest first."""
    bodies = [json.loads(base64.b64decode(json.loads(m)["body"])) for m in reversed(raw)]
    return [[wire["id"] for wire in body[0][0]] for body in bodies]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_markers_and_messages_are_written_together(
    client: aioredis.Redis, queues: tuple[str, str]
) -> None:
    first, second = queues
    tenant = uuid.uuid4()
    by_queue = {first: [_envelope(tenant) for _ in range(5)], second: [_envelope(tenant)]}
    writer = RedisWriter(client, marker_ttl=60, max_events_per_message=2)
    await writer.write(by_queue, time.time() + 5)
    ids = {q: [str(e.id) for e in envelopes] for q, envelopes in by_queue.items()}
    assert _ids_per_message(await client.lrange(first, 0, -1)) == [
        ids[first][0:2],
        ids[first][2:4],
        ids[first][4:],
    ]
    assert _ids_per_message(await client.lrange(second, 0, -1)) == [ids[second]]
    for envelope in by_queue[first] + by_queue[second]:
        marker = json.loads(await client.get(event_key(envelope.id)))
        assert marker == {"tenantId": str(tenant), "status": "queued"}
        assert 0 < await client.ttl(event_key(envelope.id)) <= 60


async def test_a_write_redis_runs_past_its_deadline_changes_nothing(
    client: aioredis.Redis, queues: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis checks the deadline against its own clock: a call it runs late (it hung, or the
    clocks disagree) must not queue what the API has already refused."""
    queue, _ = queues
    envelope = _envelope(uuid.uuid4())
    writer = RedisWriter(client, marker_ttl=60, max_events_per_message=200)
    monkeypatch.setattr(writers, "_remaining", lambda deadline: 5.0)  # the API's side waits
    seconds, _ = await client.time()
    late = seconds - 1.0
    with pytest.raises(QueueUnavailableError, match="after the deadline"):
        await writer.write({queue: [envelope]}, late)
    with pytest.raises(QueueUnavailableError, match="after the deadline"):
        await writer.write_keyed(envelope, queue, "late-key", 60, late)
    assert await client.exists(queue, event_key(envelope.id)) == 0
    assert await client.exists(idempotency_key(envelope.tenant_id, "late-key")) == 0


async def test_the_first_event_under_a_key_owns_it(
    client: aioredis.Redis, queues: tuple[str, str]
) -> None:
    queue, _ = queues
    tenant = uuid.uuid4()
    first, second = _envelope(tenant), _envelope(tenant)
    writer = RedisWriter(client, marker_ttl=60, max_events_per_message=200)
    key = f"order-{uuid.uuid4().hex}"
    try:
        assert await writer.write_keyed(first, queue, key, 30, time.time() + 5) == first.id
        assert await writer.write_keyed(second, queue, key, 30, time.time() + 5) == first.id
        assert _ids_per_message(await client.lrange(queue, 0, -1)) == [[str(first.id)]]
        assert await client.exists(event_key(first.id)) == 1
        assert await client.exists(event_key(second.id)) == 0
        assert 0 < await client.ttl(idempotency_key(tenant, key)) <= 30
        other = await writer.write_keyed(second, queue, key + "-2", 30, time.time() + 5)
        assert other == second.id
    finally:
        await client.delete(idempotency_key(tenant, key), idempotency_key(tenant, key + "-2"))


async def test_an_absent_redis_is_a_queue_unavailable_error(queues: tuple[str, str]) -> None:
    absent = aioredis.Redis(port=_closed_port(), socket_connect_timeout=0.2)
    writer = RedisWriter(absent, marker_ttl=60, max_events_per_message=200)
    envelope = _envelope(uuid.uuid4())
    queue, _ = queues
    with pytest.raises(QueueUnavailableError, match="unavailable"):
        await writer.write({queue: [envelope]}, time.time() + 2)
    with pytest.raises(QueueUnavailableError, match="unavailable"):
        await writer.write_keyed(envelope, queue, "k", 60, time.time() + 2)
    await absent.aclose()


async def test_kombu_writes_the_markers_before_it_publishes(
    client: aioredis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker overwrites a marker with the outcome: the marker must exist before any
    message does (publishing itself is test_rabbitmq's)."""
    tenant = uuid.uuid4()
    envelopes = [_envelope(tenant) for _ in range(3)]
    markers = redis.Redis.from_url(settings.redis_url)
    published: list[tuple[str, list[list[str]], int]] = []

    def publish(queue: str, chunks: list[list[dict[str, Any]]]) -> None:
        present = markers.exists(*(event_key(e.id) for e in envelopes))
        published.append((queue, [[wire["id"] for wire in chunk] for chunk in chunks], present))

    writer = KombuWriter(
        client, settings.redis_url, marker_ttl=60, max_events_per_message=2, connect_timeout=5
    )
    monkeypatch.setattr(writer, "_publish", publish)
    try:
        await writer.write({"activity": envelopes}, time.time() + 10)
    finally:
        await writer.close()
        markers.close()
    ids = [str(e.id) for e in envelopes]
    assert published == [("activity", [ids[:2], ids[2:]], 3)]


async def test_a_refused_kombu_publish_leaves_no_marker_and_frees_the_key(
    client: aioredis.Redis, settings: Settings
) -> None:
    """A broker that does not answer: 503, and no marker may say "queued" for the event."""
    envelope = _envelope(uuid.uuid4())
    broker = f"amqp://guest:guest@127.0.0.1:{_closed_port()}//"
    writer = KombuWriter(
        client, broker, marker_ttl=60, max_events_per_message=200, connect_timeout=0.2
    )
    try:
        with pytest.raises(QueueUnavailableError, match="unavailable"):
            await writer.write({"leads": [envelope]}, time.time() + 10)
        assert await client.exists(event_key(envelope.id)) == 0
        with pytest.raises(QueueUnavailableError, match="unavailable"):
            await writer.write_keyed(envelope, "leads", "k", 60, time.time() + 10)
        assert await client.exists(idempotency_key(envelope.tenant_id, "k")) == 0
    finally:
        await writer.close()
