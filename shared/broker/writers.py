"""How events reach the broker: the only code that writes queue messages and "queued" markers.

A writer gives the broker `timeout` seconds (more for a large write) and answers within
`write_bound(timeout)`: it returns once the broker holds the events, or raises
QueueUnavailableError for any failure of Redis or the broker. Anything else it raises is a bug,
and is left to propagate as one.
"""

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Protocol
from uuid import UUID

import kombu
import kombu.exceptions
import redis.asyncio as aioredis
from kombu.connection import Connection
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError

from shared.broker.wire import publish_wires, task_message
from shared.contract.outcomes import event_key, queued_marker
from shared.contract.queues import Envelope

_ENQUEUE_SCRIPT = files("shared.broker").joinpath("enqueue.lua").read_text()

# Redis (markers, the Redis broker) and kombu failing; TimeoutError is an OSError.
_REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)

# The script refuses to run past its deadline; the API waits this much longer for the reply,
# so an answer sent in time (slowed by the network, the event loop, or a Redis clock up to
# the skew the start-up check tolerates) is heard instead of being taken for a refusal.
REPLY_MARGIN = 0.25
# The deadline grows with what is sent (a 512 KB batch is a ~1 MB message): 10 MB/s.
_SECONDS_PER_BYTE = 1e-7


class QueueUnavailableError(Exception):
    """The broker did not take the events in time; the API answers 503."""


@dataclass(frozen=True)
class Claim:
    """An Idempotency-Key to claim together with its event: the Redis key and its record."""

    key: bytes
    record: bytes


class BrokerWriter(Protocol):
    async def write(
        self,
        by_queue: dict[str, list[Envelope]],
        timeout: float,
        claims: Mapping[UUID, Claim] | None = None,
    ) -> dict[UUID, bytes]:
        """Queue every envelope, each list on its queue; one with a claim only if its key is
        free, claiming it. Return the records of the keys already taken (those events were not
        queued), by event id."""

    async def close(self) -> None:
        """Release what the writer holds, once no write is in flight."""


def write_bound(timeout: float) -> float:
    """The longest a write may take before it answers (an absent or hung broker)."""
    return 2 * timeout + REPLY_MARGIN


def _chunks(envelopes: list[Envelope], size: int) -> list[list[dict[str, Any]]]:
    wires = [envelope.to_wire() for envelope in envelopes]
    return [wires[i : i + size] for i in range(0, len(wires), size)]


class RedisWriter:
    """Redis broker: markers, Celery messages and Idempotency-Keys in one atomic Lua call, so
    a write is queued whole or not at all, and a call Redis runs after its deadline changes
    nothing.

    The deadline is set the moment the call is sent, so it measures the broker, not the time
    this process spent elsewhere (validating other requests' batches); getting a connection
    first has `timeout` of its own, and a 503 there sent nothing. The reply is awaited until
    the deadline plus REPLY_MARGIN, and a reply already read when that timer fires still counts:
    a 503 means the script did not run, unless its reply took longer than the margin.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        marker_ttl: int,
        key_ttl: int,
        max_events_per_message: int,
    ) -> None:
        self._pool = client.connection_pool
        probe = self._pool.connection_class(**self._pool.connection_kwargs)
        if probe.socket_timeout is not None:
            raise ValueError("RedisWriter bounds its calls itself: give it socket_timeout=None")
        self._marker_ttl, self._key_ttl = marker_ttl, key_ttl
        self._max_events = max_events_per_message
        # EVALSHA names a script by its SHA-1 (Redis' choice, not a security use).
        self._sha = hashlib.sha1(_ENQUEUE_SCRIPT.encode(), usedforsecurity=False).hexdigest()

    async def write(
        self,
        by_queue: dict[str, list[Envelope]],
        timeout: float,
        claims: Mapping[UUID, Claim] | None = None,
    ) -> dict[UUID, bytes]:
        claims = claims or {}
        queues, messages, markers, keyed_keys, keyed_args = [], [], [], [], []
        for queue, queued in by_queue.items():
            unkeyed = [e for e in queued if e.id not in claims]
            for chunk in _chunks(unkeyed, self._max_events):
                queues.append(queue)
                messages.append(task_message(queue, chunk))
            markers += unkeyed
            # Each keyed event has a message of its own: the script drops it if its key is
            # taken, and cannot rebuild a shared message without it.
            for e in queued:
                if (claim := claims.get(e.id)) is not None:
                    keyed_keys += [queue, event_key(e.id), claim.key]
                    keyed_args += [
                        task_message(queue, [e.to_wire()]),
                        queued_marker(e.tenant_id),
                        claim.record,
                    ]
        keys = [*queues, *(event_key(e.id) for e in markers), *keyed_keys]
        args: list[Any] = [
            self._marker_ttl,
            0,  # the deadline, set as the call is sent
            len(messages),
            len(markers),
            self._key_ttl,
            *messages,
            *(queued_marker(e.tenant_id) for e in markers),
            *keyed_args,
        ]
        size = sum(map(len, messages)) + sum(len(a) for a in keyed_args)
        answers = await self._run(keys, args, timeout + size * _SECONDS_PER_BYTE)
        if answers == -1:
            raise QueueUnavailableError("the queue answered after the deadline")
        keyed = [e.id for queued in by_queue.values() for e in queued if e.id in claims]
        return {event_id: answer for event_id, answer in zip(keyed, answers, strict=True) if answer}

    async def close(self) -> None:
        """The client belongs to the caller."""

    async def _run(self, keys: list[Any], args: list[Any], timeout: float) -> Any:
        # A connection that is ready when the timer fires counts, as a reply does: checking
        # one out takes a turn of the event loop, which a loaded process makes long.
        acquiring = asyncio.ensure_future(self._pool.get_connection())
        await asyncio.wait({acquiring}, timeout=timeout)
        if not acquiring.done():
            acquiring.cancel()
            raise QueueUnavailableError("the queue is unavailable: no connection in time")
        try:
            connection = acquiring.result()
        except _REDIS_ERRORS as exc:
            raise QueueUnavailableError(f"the queue is unavailable: {exc!r}") from None
        try:
            try:
                return await self._evalsha(connection, keys, args, timeout)
            except NoScriptError:  # a Redis restarted since: that call ran nothing
                await connection.send_command("SCRIPT", "LOAD", _ENQUEUE_SCRIPT)
                await self._reply(connection, time.time() + timeout)
                return await self._evalsha(connection, keys, args, timeout)
        except _REDIS_ERRORS as exc:
            # nowait: closing must not wait for a hung Redis to take what is still buffered.
            await connection.disconnect(nowait=True)
            raise QueueUnavailableError(f"the queue is unavailable: {exc!r}") from None
        finally:
            await self._pool.release(connection)

    async def _evalsha(
        self, connection: AbstractConnection, keys: list[Any], args: list[Any], timeout: float
    ) -> Any:
        deadline = time.time() + timeout
        args[1] = int(deadline * 1000)
        # No await between the deadline and the bytes leaving (no health check, and the
        # connection has no socket timeout, whose wait_for would yield first): a stalled event
        # loop cannot eat the broker's time.
        # A hung Redis stops reading: a write larger than the socket buffers waits in drain(),
        # unsent, so Redis cannot run it in time, and a 503 is honest.
        async with asyncio.timeout(timeout + REPLY_MARGIN):
            await connection.send_command(
                "EVALSHA", self._sha, len(keys), *keys, *args, check_health=False
            )
        return await self._reply(connection, deadline)

    @staticmethod
    async def _reply(connection: AbstractConnection, deadline: float) -> Any:
        reply = asyncio.ensure_future(connection.read_response())
        await asyncio.wait({reply}, timeout=max(0.0, deadline + REPLY_MARGIN - time.time()))
        if not reply.done():
            reply.cancel()
            raise TimeoutError("no answer by the deadline")
        return reply.result()


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
        key_ttl: int,
        max_events_per_message: int,
        connect_timeout: float,
    ) -> None:
        self._redis = client
        self._marker_ttl, self._key_ttl = marker_ttl, key_ttl
        self._max_events = max_events_per_message
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

    async def write(
        self,
        by_queue: dict[str, list[Envelope]],
        timeout: float,
        claims: Mapping[UUID, Claim] | None = None,
    ) -> dict[UUID, bytes]:
        claims = claims or {}
        taken = await self._claim(claims, timeout) if claims else {}
        if taken:
            by_queue = {q: [e for e in es if e.id not in taken] for q, es in by_queue.items()}
        try:
            await self._publish_all(by_queue, timeout)
        except QueueUnavailableError:
            mine = [c.key for event_id, c in claims.items() if event_id not in taken]
            if mine:
                with contextlib.suppress(*_REDIS_ERRORS):
                    await self._redis.delete(*mine)  # a retry must be able to queue them
            raise
        return taken

    async def _claim(self, claims: Mapping[UUID, Claim], timeout: float) -> dict[UUID, bytes]:
        """Claim every free key (SET NX); the records of the others, by event id."""
        try:
            async with asyncio.timeout(timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for claim in claims.values():
                        pipe.set(claim.key, claim.record, nx=True, ex=self._key_ttl)
                    claimed = await pipe.execute()
                others = [c.key for c, ok in zip(claims.values(), claimed, strict=True) if not ok]
                records = await self._redis.mget(others) if others else []
        except _REDIS_ERRORS as exc:
            raise QueueUnavailableError(f"redis is unavailable: {exc!r}") from None
        found = [r for r in records if isinstance(r, bytes)]
        if len(found) < len(records):  # expired between the two calls: a retry can claim it
            mine = [c.key for c, ok in zip(claims.values(), claimed, strict=True) if ok]
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._redis.delete(*mine, b"ls:none")  # never called empty
            raise QueueUnavailableError("an Idempotency-Key changed hands; retry")
        ids = [i for i, ok in zip(claims, claimed, strict=True) if not ok]
        return dict(zip(ids, found, strict=True))

    async def _publish_all(self, by_queue: dict[str, list[Envelope]], timeout: float) -> None:
        keys = [event_key(e.id) for envelopes in by_queue.values() for e in envelopes]
        if not keys:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
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
                    if envelopes:
                        chunks = _chunks(envelopes, self._max_events)
                        await loop.run_in_executor(self._thread, self._publish, queue, chunks)
        except self._errors as exc:
            # A marker must not say "queued" for what was refused (a replayed dead letter's
            # failure would hide behind it); a late publish's outcome overwrites it anyway.
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._redis.delete(*keys)
            raise QueueUnavailableError(f"the queue is unavailable: {exc!r}") from None

    async def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._connection.release()

    def _publish(self, queue: str, chunks: list[list[dict[str, Any]]]) -> None:
        publish_wires(self._connection, queue, chunks)
