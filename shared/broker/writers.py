"""How events reach the broker: the only code that writes queue messages and "queued" markers.

A writer answers by `deadline` (Unix seconds), the moment the caller gives up and answers 503:
it returns once the broker holds the events, or raises QueueUnavailableError for any failure
of Redis or the broker. Anything else it raises is a bug, and is left to propagate as one.
"""

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import Any, Protocol
from uuid import UUID

import kombu
import kombu.exceptions
import redis.asyncio as aioredis
from kombu.connection import Connection
from redis.exceptions import RedisError

from shared.broker.wire import publish_wires, task_message
from shared.contract.outcomes import event_key, idempotency_key, queued_marker
from shared.contract.queues import Envelope

_ENQUEUE_SCRIPT = files("shared.broker").joinpath("enqueue.lua").read_text()
_ENQUEUE_KEYED_SCRIPT = files("shared.broker").joinpath("enqueue_keyed.lua").read_text()

# Redis (markers, the Redis broker) and kombu failing; TimeoutError is an OSError.
_REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


class QueueUnavailableError(Exception):
    """The broker did not take the events by the deadline; the API answers 503."""


class BrokerWriter(Protocol):
    async def write(self, by_queue: dict[str, list[Envelope]], deadline: float) -> None:
        """Queue every envelope, each list on its queue."""

    async def write_keyed(
        self, envelope: Envelope, queue: str, key: str, key_ttl: int, deadline: float
    ) -> UUID:
        """Queue the envelope unless the tenant's `key` already names an event; return the id
        the key names (this envelope's if it was queued)."""

    async def close(self) -> None:
        """Release what the writer holds, once no write is in flight."""


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.time())


def _chunks(envelopes: list[Envelope], size: int) -> list[list[dict[str, Any]]]:
    wires = [envelope.to_wire() for envelope in envelopes]
    return [wires[i : i + size] for i in range(0, len(wires), size)]


def _owner(value: bytes | str) -> UUID:
    return UUID(value.decode() if isinstance(value, bytes) else value)


class RedisWriter:
    """Redis broker: markers and Celery messages in one atomic Lua call, so a batch is queued
    whole or not at all, and a call Redis runs after the deadline changes nothing."""

    def __init__(
        self, client: aioredis.Redis, *, marker_ttl: int, max_events_per_message: int
    ) -> None:
        self._marker_ttl, self._max_events = marker_ttl, max_events_per_message
        self._script = client.register_script(_ENQUEUE_SCRIPT)
        self._keyed_script = client.register_script(_ENQUEUE_KEYED_SCRIPT)

    async def write(self, by_queue: dict[str, list[Envelope]], deadline: float) -> None:
        queues, messages, envelopes = [], [], []
        for queue, queued in by_queue.items():
            for chunk in _chunks(queued, self._max_events):
                queues.append(queue)
                messages.append(task_message(queue, chunk))
            envelopes += queued
        written = await self._run(
            self._script,
            keys=[*queues, *(event_key(e.id) for e in envelopes)],
            args=[
                self._marker_ttl,
                int(deadline * 1000),
                len(messages),
                *messages,
                *(queued_marker(e.tenant_id) for e in envelopes),
            ],
            deadline=deadline,
        )
        if written == -1:
            raise QueueUnavailableError("the queue answered after the deadline")

    async def write_keyed(
        self, envelope: Envelope, queue: str, key: str, key_ttl: int, deadline: float
    ) -> UUID:
        owner = await self._run(
            self._keyed_script,
            keys=[queue, event_key(envelope.id), idempotency_key(envelope.tenant_id, key)],
            args=[
                self._marker_ttl,
                int(deadline * 1000),
                task_message(queue, [envelope.to_wire()]),
                queued_marker(envelope.tenant_id),
                str(envelope.id),
                key_ttl,
            ],
            deadline=deadline,
        )
        if owner == -1:
            raise QueueUnavailableError("the queue answered after the deadline")
        return _owner(owner)

    async def close(self) -> None:
        """The client belongs to the caller."""

    @staticmethod
    async def _run(script: Any, *, keys: list[Any], args: list[Any], deadline: float) -> Any:
        try:
            async with asyncio.timeout(_remaining(deadline)):
                return await script(keys=keys, args=args)
        except _REDIS_ERRORS as exc:
            raise QueueUnavailableError(f"the queue is unavailable: {exc!r}") from None


class KombuWriter:
    """Any Celery broker through kombu, with publisher confirms; markers in Redis.

    kombu is synchronous and a connection is not thread-safe, so publishing happens on one
    dedicated thread, one publish at a time. A late publish cannot be withdrawn: a 503 may still
    have been queued (retry with an Idempotency-Key).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        broker_url: str,
        *,
        marker_ttl: int,
        max_events_per_message: int,
        connect_timeout: float,
    ) -> None:
        self._redis = client
        self._marker_ttl, self._max_events = marker_ttl, max_events_per_message
        self._connection = Connection(
            broker_url, transport_options={"confirm_publish": True}, connect_timeout=connect_timeout
        )
        self._errors = (
            *_REDIS_ERRORS,
            kombu.exceptions.OperationalError,
            *self._connection.connection_errors,
            *self._connection.channel_errors,
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kombu-publish")

    async def write(self, by_queue: dict[str, list[Envelope]], deadline: float) -> None:
        keys = [event_key(e.id) for envelopes in by_queue.values() for e in envelopes]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_remaining(deadline)):
                # Markers first, here and in the dead-letter replay: the worker overwrites a
                # marker with the outcome, never the other way round. A replayed event's message
                # may reach a worker before the replay commits; the replay holds the event's
                # advisory lock until then, so the worker waits and sees it replayed.
                async with self._redis.pipeline(transaction=False) as pipe:
                    for envelopes in by_queue.values():
                        for e in envelopes:
                            pipe.set(
                                event_key(e.id), queued_marker(e.tenant_id), ex=self._marker_ttl
                            )
                    await pipe.execute()
                for queue, envelopes in by_queue.items():
                    chunks = _chunks(envelopes, self._max_events)
                    await loop.run_in_executor(self._thread, self._publish, queue, chunks)
        except self._errors as exc:
            # A marker must not say "queued" for what was refused (a replayed dead letter's
            # failure would hide behind it); a late publish's outcome overwrites it anyway.
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._redis.delete(*keys)
            raise QueueUnavailableError(f"the queue is unavailable: {exc!r}") from None

    async def write_keyed(
        self, envelope: Envelope, queue: str, key: str, key_ttl: int, deadline: float
    ) -> UUID:
        redis_key = idempotency_key(envelope.tenant_id, key)
        try:
            async with asyncio.timeout(_remaining(deadline)):
                claimed = await self._redis.set(redis_key, str(envelope.id), nx=True, ex=key_ttl)
                first = None if claimed else await self._redis.get(redis_key)
        except _REDIS_ERRORS as exc:
            raise QueueUnavailableError(f"redis is unavailable: {exc!r}") from None
        if first is not None:
            return _owner(first)
        try:
            await self.write({queue: [envelope]}, deadline)
        except Exception:
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._redis.delete(redis_key)  # a retry must be able to queue it
            raise
        return envelope.id

    async def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._connection.release()

    def _publish(self, queue: str, chunks: list[list[dict[str, Any]]]) -> None:
        publish_wires(self._connection, queue, chunks)
