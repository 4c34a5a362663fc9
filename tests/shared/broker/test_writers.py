"""The broker writers against the real Redis: what they write, and what they refuse to."""

import asyncio
import base64
import json
import socket
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from shared.broker import writers
from shared.broker.writers import Claim, KombuWriter, QueueUnavailableError, RedisWriter
from shared.contract.outcomes import event_key, idempotency_key, idempotency_record
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


def _claim(tenant: uuid.UUID, key: str, event: Envelope) -> Claim:
    return Claim(idempotency_key(tenant, key), idempotency_record(event.id, b"f" * 16))


async def test_markers_and_messages_are_written_together(
    client: aioredis.Redis, queues: tuple[str, str]
) -> None:
    first, second = queues
    tenant = uuid.uuid4()
    by_queue = {first: [_envelope(tenant) for _ in range(5)], second: [_envelope(tenant)]}
    writer = RedisWriter(client, marker_ttl=60, key_ttl=30, max_events_per_message=2)
    assert await writer.write(by_queue, 5) == {}
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
    writer = RedisWriter(client, marker_ttl=60, key_ttl=60, max_events_per_message=200)
    # This process' clock runs 10 s behind Redis': every deadline is already past for Redis.
    monkeypatch.setattr(writers, "time", SimpleNamespace(time=lambda: time.time() - 10))
    with pytest.raises(QueueUnavailableError, match="after the deadline"):
        await writer.write({queue: [envelope]}, 1)
    claim = _claim(envelope.tenant_id, "late-key", envelope)
    with pytest.raises(QueueUnavailableError, match="after the deadline"):
        await writer.write({queue: [envelope]}, 1, {envelope.id: claim})
    assert await client.exists(queue, event_key(envelope.id), claim.key) == 0


async def test_a_reply_heard_late_because_the_loop_stalled_is_not_a_503(
    client: aioredis.Redis, queues: tuple[str, str]
) -> None:
    """The script ran in time; this process was busy (a blocking call, a big validation) until
    after the deadline and its margin. The reply is there: the answer is "queued", not a 503
    that a client would retry into a duplicate."""
    queue, _ = queues
    writer = RedisWriter(client, marker_ttl=60, key_ttl=60, max_events_per_message=200)
    await writer.write({queue: [_envelope(uuid.uuid4())]}, 1)  # a connection in the pool
    envelope = _envelope(uuid.uuid4())

    async def stall() -> None:
        time.sleep(0.2 + writers.REPLY_MARGIN + 0.3)  # noqa: ASYNC251 (stalls the loop on purpose)

    written, _ = await asyncio.gather(writer.write({queue: [envelope]}, 0.2), stall())
    assert written == {}
    assert str(envelope.id) in _ids_per_message(await client.lrange(queue, 0, 0))[0]


async def test_the_first_event_under_a_key_owns_it(
    client: aioredis.Redis, queues: tuple[str, str]
) -> None:
    queue, other_queue = queues
    tenant = uuid.uuid4()
    first, second, third, unkeyed = (_envelope(tenant) for _ in range(4))
    writer = RedisWriter(client, marker_ttl=60, key_ttl=30, max_events_per_message=200)
    key = f"order-{uuid.uuid4().hex}"
    claim = _claim(tenant, key, first)
    assert await writer.write({queue: [first]}, 5, {first.id: claim}) == {}
    # Coalesced: a replay, a new key sharing a call with an unkeyed event, on two queues.
    taken = await writer.write(
        {queue: [second, unkeyed], other_queue: [third]},
        5,
        {second.id: _claim(tenant, key, second), third.id: _claim(tenant, key + "-2", third)},
    )
    assert taken == {second.id: claim.record}
    assert _ids_per_message(await client.lrange(queue, 0, -1)) == [
        [str(first.id)],
        [str(unkeyed.id)],
    ]
    assert _ids_per_message(await client.lrange(other_queue, 0, -1)) == [[str(third.id)]]
    assert await client.exists(*(event_key(e.id) for e in (first, third, unkeyed))) == 3
    assert await client.exists(event_key(second.id)) == 0
    assert 0 < await client.ttl(claim.key) <= 30
    # Two events of one call under one key: the first owns it.
    fourth, fifth = _envelope(tenant), _envelope(tenant)
    both = {
        fourth.id: _claim(tenant, key + "-3", fourth),
        fifth.id: _claim(tenant, key + "-3", fifth),
    }
    assert await writer.write({queue: [fourth, fifth]}, 5, both) == {
        fifth.id: both[fourth.id].record
    }


async def test_a_restarted_redis_without_the_script_still_takes_the_write(
    client: aioredis.Redis, queues: tuple[str, str]
) -> None:
    queue, _ = queues
    writer = RedisWriter(client, marker_ttl=60, key_ttl=60, max_events_per_message=200)
    await client.script_flush()
    envelope = _envelope(uuid.uuid4())
    assert await writer.write({queue: [envelope]}, 2) == {}
    assert _ids_per_message(await client.lrange(queue, 0, -1)) == [[str(envelope.id)]]


async def test_an_absent_redis_is_a_queue_unavailable_error(queues: tuple[str, str]) -> None:
    absent = aioredis.Redis(port=_closed_port(), socket_connect_timeout=0.2, socket_timeout=None)
    writer = RedisWriter(absent, marker_ttl=60, key_ttl=60, max_events_per_message=200)
    envelope = _envelope(uuid.uuid4())
    queue, _ = queues
    with pytest.raises(QueueUnavailableError, match="unavailable"):
        await writer.write({queue: [envelope]}, 2)
    with pytest.raises(QueueUnavailableError, match="unavailable"):
        await writer.write(
            {queue: [envelope]}, 2, {envelope.id: _claim(uuid.uuid4(), "k", envelope)}
        )
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
        client,
        settings.redis_url,
        marker_ttl=60,
        key_ttl=60,
        max_events_per_message=2,
        connect_timeout=5,
    )
    monkeypatch.setattr(writer, "_publish", publish)
    try:
        await writer.write({"activity": envelopes}, 10)
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
        client, broker, marker_ttl=60, key_ttl=60, max_events_per_message=200, connect_timeout=0.2
    )
    claim = _claim(envelope.tenant_id, "k", envelope)
    try:
        with pytest.raises(QueueUnavailableError, match="unavailable"):
            await writer.write({"leads": [envelope]}, 10)
        assert await client.exists(event_key(envelope.id)) == 0
        with pytest.raises(QueueUnavailableError, match="unavailable"):
            await writer.write({"leads": [envelope]}, 10, {envelope.id: claim})
        assert await client.exists(claim.key) == 0
    finally:
        await writer.close()


async def test_kombu_claims_keys_like_the_redis_writer(
    client: aioredis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = uuid.uuid4()
    first, second, third = (_envelope(tenant) for _ in range(3))
    published: list[str] = []
    writer = KombuWriter(
        client,
        settings.redis_url,
        marker_ttl=60,
        key_ttl=30,
        max_events_per_message=200,
        connect_timeout=5,
    )
    monkeypatch.setattr(
        writer,
        "_publish",
        lambda queue, chunks: published.extend(w["id"] for c in chunks for w in c),
    )
    key = f"order-{uuid.uuid4().hex}"
    claim = _claim(tenant, key, first)
    try:
        assert await writer.write({"leads": [first]}, 10, {first.id: claim}) == {}
        taken = await writer.write(
            {"leads": [second, third]}, 10, {second.id: _claim(tenant, key, second)}
        )
    finally:
        await writer.close()
    assert taken == {second.id: claim.record}
    assert published == [str(first.id), str(third.id)]
    assert 0 < await client.ttl(claim.key) <= 30
    assert await client.exists(event_key(second.id)) == 0
